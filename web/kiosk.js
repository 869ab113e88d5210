// The locker's own screen (/lockers/kiosk/{site}): a holder logs in and deposits into their
// compartment at this site (the door opens, the pickup code is shown once); a recipient
// collects with the compartment number and pickup code. No cookies: the holder's token lives
// in this page's memory and is revoked on leaving or after a short idle time; collection runs
// on the kiosk's own token (role kiosk, subject kiosk:<site>), set up once by opening the page
// with #kiosk=<token> and kept in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const SCREENS = ["start", "login", "mine", "deposited", "collect", "collected"];
const SIZE = { small: "小 · small", medium: "中 · medium", large: "大 · large" };
const STATUS = { free: "空闲 · free", reserved: "已预约 · reserved", occupied: "已投递 · occupied" };
const TEXT = {
  invalid_credentials: "用户号或密码错误，请重试。",
  user_disabled: "该用户已停用，请联系运营人员。",
  too_many_login_attempts: "尝试次数过多，请稍后再试。",
  wrong_pickup_code: "取件码错误，请核对后重试。",
  too_many_pickup_attempts: "尝试次数过多，请稍后再试。",
  not_occupied: "该格口没有待取的包裹。",
  no_kiosk_token: "本机尚未设置取件功能，请联系运营人员。",
};

const SITE = decodeURIComponent(location.pathname.split("/").pop());
const STORE_KEY = "latch-kiosk-token:" + SITE;
// Seconds without a touch before the screen starts over (?idle=N, 5-600; 60 by default).
const IDLE_SECONDS = (() => {
  const n = Number(new URLSearchParams(location.search).get("idle"));
  return Number.isFinite(n) && n >= 1 && n <= 600 ? n : 60;
})();

let userToken = null; // the logged-in holder's token (memory only)
let me = null;
let idleTimer = 0;

function show(name) {
  for (const s of SCREENS) $("screen-" + s).hidden = s !== name;
  document.body.dataset.screen = name;
  showError("");
}

function showError(text, code) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
  if (code) e.dataset.code = code; else delete e.dataset.code;
}

function kioskToken() {
  try { return localStorage.getItem(STORE_KEY); } catch (_) { return null; }
}

async function api(method, path, token, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (_) {
    return { status: 0, body: null };
  }
  let parsed = null;
  try { parsed = await res.json(); } catch (_) { parsed = null; }
  return { status: res.status, body: parsed };
}

function fail(r) {
  const e = r.body && r.body.error;
  const code = e ? e.code : (r.status === 0 ? "network" : "http_" + r.status);
  const message = e ? e.message : (r.status === 0 ? "网络不可用 · The network is unreachable" : "出错了 · Error " + r.status);
  showError((TEXT[code] || "") + message, code);
}

// ---- idle: back to the start screen ------------------------------------------------------

function touched() {
  clearTimeout(idleTimer);
  if (document.body.dataset.screen !== "start") idleTimer = setTimeout(restart, IDLE_SECONDS * 1000);
}

async function restart() {
  clearTimeout(idleTimer);
  const token = userToken;
  userToken = null;
  me = null;
  $("who").textContent = "";
  for (const f of document.querySelectorAll("form")) f.reset();
  $("pickup-code").textContent = "";
  $("compartments").replaceChildren();
  show("start");
  // The holder's session ends with the screen: nobody after them can use it.
  if (token) await api("POST", "/logout", token);
}

// ---- holder: login, compartments, deposit ------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  showError("");
  $("login-submit").disabled = true;
  const r = await api("POST", "/lockers/login", null, {
    user_number: $("user-number").value.trim(),
    password: $("password").value,
  });
  $("login-submit").disabled = false;
  $("password").value = "";
  if (r.status !== 200) { fail(r); return; }
  userToken = r.body.token;
  me = r.body;
  $("who").textContent = (me.name ? me.name + " · " : "") + me.user_number;
  await mine();
}

async function mine() {
  $("pickup-code").textContent = ""; // shown once, then gone
  show("mine");
  const r = await api("GET", "/lockers/me/compartments", userToken);
  if (r.status === 401) { restart(); return; }
  if (r.status !== 200) { fail(r); return; }
  const here = r.body.filter((c) => c.site === SITE);
  $("compartments").replaceChildren(...here.map(row));
  $("no-compartments").hidden = here.length > 0;
}

function row(c) {
  const item = document.createElement("li");
  item.dataset.compartment = c.compartment_id;
  item.dataset.status = c.status;
  const title = document.createElement("strong");
  title.textContent = "格口 · Compartment " + c.number;
  const facts = document.createElement("span");
  facts.className = "muted facts";
  facts.textContent = (SIZE[c.size] || c.size) + " · " + (STATUS[c.status] || c.status);
  item.append(title, facts);
  if (c.status === "reserved") {
    const form = document.createElement("form");
    form.className = "stack deposit";
    const label = document.createElement("label");
    label.textContent = "快递单号 · Parcel number";
    const input = document.createElement("input");
    input.name = "parcel";
    input.maxLength = 64;
    input.required = true;
    label.append(input);
    const go = document.createElement("button");
    go.type = "submit";
    go.className = "wide open-door";
    go.textContent = "开门存件 · Open the door and deposit";
    form.append(label, go);
    form.addEventListener("submit", (ev) => { ev.preventDefault(); deposit(c, input.value.trim(), go); });
    item.append(form);
  }
  return item;
}

async function deposit(c, parcel, go) {
  showError("");
  go.disabled = true;
  const r = await api("POST", "/lockers/compartments/" + encodeURIComponent(c.compartment_id) + "/deposit",
    userToken, { parcel });
  go.disabled = false;
  if (r.status === 401) { restart(); return; }
  if (r.status !== 201) { fail(r); return; }
  $("deposited-compartment").textContent = "格口 · Compartment " + c.number;
  $("pickup-code").textContent = r.body.pickup_code;
  show("deposited");
}

// ---- recipient: collect with the pickup code ---------------------------------------------

async function collect(ev) {
  ev.preventDefault();
  showError("");
  const token = kioskToken();
  if (!token) {
    showError(TEXT.no_kiosk_token + "This screen is not set up for collection.", "no_kiosk_token");
    return;
  }
  const number = $("collect-number").value.trim();
  $("collect-submit").disabled = true;
  const r = await api("POST", "/lockers/compartments/" + encodeURIComponent(SITE + ":" + number) + "/collect",
    token, { pickup_code: $("collect-code").value.trim() });
  $("collect-submit").disabled = false;
  if (r.status !== 200) {
    fail(r);
    $("collect-code").select();
    return;
  }
  $("collect-form").reset();
  $("collected-compartment").textContent = "格口 · Compartment " + number;
  show("collected");
}

// ---- start -------------------------------------------------------------------------------

function start() {
  // One-time set-up: /lockers/kiosk/<site>#kiosk=<token>. Kept here, out of the address bar.
  const setup = /^#kiosk=([A-Za-z0-9_.~-]{1,200})$/.exec(location.hash);
  if (setup) {
    try { localStorage.setItem(STORE_KEY, setup[1]); } catch (_) { /* private mode */ }
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("site").textContent = "网点 · Site " + SITE;
  $("start-login").addEventListener("click", () => { show("login"); touched(); $("user-number").focus(); });
  $("start-collect").addEventListener("click", () => { show("collect"); touched(); $("collect-number").focus(); });
  $("login-form").addEventListener("submit", login);
  $("collect-form").addEventListener("submit", collect);
  $("deposited-back").addEventListener("click", mine);
  for (const b of document.querySelectorAll("button.cancel")) b.addEventListener("click", restart);
  for (const kind of ["pointerdown", "keydown", "input"]) document.addEventListener(kind, touched, true);
  show("start");
}

start();
