// The compartment holder's phone pages (/lockers/app): login, my compartments, grant to a
// user, grant via a courier company (authorizer), the grant's status, the inbox, deposit into
// a held compartment (its pickup code shown once) and collection with a pickup code.
// The session is an HttpOnly cookie this script never sees; every change carries
// X-Latch-Client, which the server requires of cookie-authenticated writes.
"use strict";

const $ = (id) => document.getElementById(id);
const SCREENS = ["login", "home", "grant-user", "pick-authorizer", "confirm", "status",
  "deposit", "deposited", "collect"];
const SIZE = { small: "小 · small", medium: "中 · medium", large: "大 · large" };
const STATUS = { free: "空闲 · free", reserved: "已预约 · reserved", occupied: "已投递 · occupied" };
const GRANT_TEXT = {
  requested: "已发送，等待快递公司指派… Waiting for the courier company…",
  accepted: "快递公司已接受，正在转交… Accepted, handing over…",
  completed: "转让成功 · Granted",
  declined: "快递公司已拒绝，格口仍归您 · Declined; you still hold it",
  expired: "超时未答复，格口仍归您 · No answer in time; you still hold it",
  failed: "转让失败，格口仍归您 · Failed; you still hold it",
};
const OVER = ["completed", "declined", "expired", "failed"];
// Chinese first, then the API's own message, for the refusals a holder can meet at login.
const LOGIN_TEXT = {
  invalid_credentials: "用户号或密码错误，请重试。",
  user_disabled: "该用户已停用，请联系运营人员。",
  too_many_login_attempts: "尝试次数过多，请稍后再试。",
};
// The same for deposit and collection.
const PARCEL_TEXT = {
  wrong_pickup_code: "取件码错误，请核对后重试。",
  too_many_pickup_attempts: "尝试次数过多，请稍后再试。",
  not_occupied: "该格口没有待取的包裹。",
};

let me = null;
let chosen = null; // the compartment row being granted
let target = null; // {kind: "user", receiver} or {kind: "authorizer", number, name}
let follow = 0; // bumped to stop an older status poll
const shown = { compartments: null, inbox: null }; // what the lists were last drawn from

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

async function api(method, path, body) {
  const headers = method === "GET" ? {} : { "X-Latch-Client": "web" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (_) {
    return { status: 0, body: null };
  }
  let parsed = null;
  try { parsed = await res.json(); } catch (_) { parsed = null; }
  return { status: res.status, body: parsed };
}

function errorOf(r) {
  const e = r.body && r.body.error;
  if (e) return { code: e.code, message: e.message };
  if (r.status === 0) return { code: "network", message: "网络不可用 · The network is unreachable" };
  return { code: "http_" + r.status, message: "出错了 · Error " + r.status };
}

// A 401 anywhere means the session is over: back to the login screen.
function expired(r) {
  if (r.status !== 401) return false;
  me = null;
  $("who").textContent = "";
  show("login");
  return true;
}

function compartmentText(c) {
  const site = c.site_name ? c.site + " " + c.site_name : c.site;
  return site + " · 格口 " + c.number;
}

function li(text, data) {
  const item = document.createElement("li");
  if (text) item.textContent = text;
  for (const [k, v] of Object.entries(data || {})) item.dataset[k] = v;
  return item;
}

function button(text, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

// ---- login -------------------------------------------------------------------------------

function loginError(text, code) {
  const e = $("login-error");
  e.textContent = text || "";
  e.hidden = !text;
  if (code) e.dataset.code = code; else delete e.dataset.code;
}

async function login(ev) {
  ev.preventDefault();
  loginError("");
  $("login-submit").disabled = true;
  const r = await api("POST", "/lockers/page/login", {
    user_number: $("user-number").value.trim(),
    password: $("password").value,
  });
  $("login-submit").disabled = false;
  if (r.status === 200) {
    $("password").value = "";
    me = r.body;
    shown.compartments = shown.inbox = null;
    await home();
    return;
  }
  const e = errorOf(r);
  loginError((LOGIN_TEXT[e.code] || "") + e.message, e.code);
  $("password").select();
}

async function logout() {
  await api("POST", "/lockers/page/logout");
  me = null;
  $("who").textContent = "";
  show("login");
}

// ---- home: compartments and inbox --------------------------------------------------------

async function home() {
  follow++;
  location.hash = "";
  $("who").textContent = (me.name ? me.name + " · " : "") + me.user_number;
  show("home");
  await Promise.all([loadCompartments(), loadInbox()]);
}

async function loadCompartments() {
  const r = await api("GET", "/lockers/me/compartments");
  if (expired(r)) return;
  if (r.status !== 200) { const e = errorOf(r); showError(e.message, e.code); return; }
  // Unchanged data is not redrawn, so a refresh never swaps a button out from under a finger.
  const seen = JSON.stringify(r.body);
  if (seen === shown.compartments) return;
  shown.compartments = seen;
  const list = $("compartments");
  list.replaceChildren(...r.body.map((c) => {
    const item = li("", { compartment: c.compartment_id, status: c.status });
    const title = document.createElement("strong");
    title.textContent = compartmentText(c);
    const facts = document.createElement("span");
    facts.className = "muted facts";
    facts.textContent = (SIZE[c.size] || c.size) + " · " + (STATUS[c.status] || c.status);
    item.append(title, facts);
    if (c.status === "reserved") {
      const actions = document.createElement("div");
      actions.className = "actions";
      actions.append(
        button("存件 · Deposit", "deposit", () => startDeposit(c)),
        button("转让给用户 · To a user", "grant-user", () => startGrantUser(c)),
        button("通过快递公司 · Via courier", "grant-authorizer", () => startGrantAuthorizer(c)),
      );
      item.append(actions);
    }
    return item;
  }));
  $("no-compartments").hidden = r.body.length > 0;
  if (!$("reserve-site").value && r.body.length) $("reserve-site").value = r.body[0].site;
}

async function loadInbox() {
  const r = await api("GET", "/lockers/me/inbox");
  if (expired(r)) return;
  if (r.status !== 200) return;
  const seen = JSON.stringify(r.body);
  if (seen === shown.inbox) return;
  shown.inbox = seen;
  $("inbox").replaceChildren(...r.body.map((n) => {
    const item = li("", { kind: n.kind, compartment: n.compartment_id });
    const text = document.createElement("span");
    text.className = "message";
    text.textContent = n.message;
    const when = document.createElement("span");
    when.className = "muted facts";
    when.textContent = new Date(n.created_at).toLocaleString();
    item.append(text, when);
    return item;
  }));
  $("inbox-empty").hidden = r.body.length > 0;
}

async function reserve(ev) {
  ev.preventDefault();
  showError("");
  $("reserve-submit").disabled = true;
  const r = await api("POST", "/lockers/reservations", {
    site: $("reserve-site").value.trim(),
    size: $("reserve-size").value,
  });
  $("reserve-submit").disabled = false;
  if (expired(r)) return;
  if (r.status !== 201) { const e = errorOf(r); showError(e.message, e.code); return; }
  // The listing is a read model: wait (briefly) until it shows the new reservation.
  for (let i = 0; i < 20; i++) {
    await loadCompartments();
    if (document.querySelector('#compartments li[data-compartment="' + r.body.compartment_id + '"]')) return;
    await new Promise((done) => setTimeout(done, 250));
  }
}

// ---- granting ----------------------------------------------------------------------------

function setChosen(c) {
  chosen = c;
  for (const p of document.querySelectorAll(".chosen")) {
    p.textContent = compartmentText(c) + " · " + (SIZE[c.size] || c.size);
  }
}

function startGrantUser(c) {
  setChosen(c);
  $("receiver").value = "";
  show("grant-user");
  $("receiver").focus();
}

function receiverNext(ev) {
  ev.preventDefault();
  const receiver = $("receiver").value.trim();
  if (!/^\+?[0-9]{5,20}$/.test(receiver)) {
    showError("请输入接收人的用户号（手机号）· Enter the receiver's user number", "invalid_field");
    return;
  }
  if (me && receiver === me.user_number) {
    showError("不能转让给自己 · You cannot grant a compartment to yourself", "grant_to_self");
    return;
  }
  target = { kind: "user", receiver };
  confirmScreen();
}

async function startGrantAuthorizer(c) {
  setChosen(c);
  show("pick-authorizer");
  const r = await api("GET", "/lockers/authorizers");
  if (expired(r)) return;
  if (r.status !== 200) { const e = errorOf(r); showError(e.message, e.code); return; }
  $("authorizers").replaceChildren(...r.body.map((a) => {
    const item = li("", { authorizer: a.number });
    item.append(button(a.name + " · " + a.number, "pick", () => {
      target = { kind: "authorizer", number: a.number, name: a.name };
      confirmScreen();
    }));
    return item;
  }));
  $("no-authorizers").hidden = r.body.length > 0;
}

function targetText() {
  return target.kind === "user"
    ? "用户 · user " + target.receiver
    : target.name + "（" + target.number + "）由快递公司指派快递员 · the company picks its courier";
}

function confirmScreen() {
  $("confirm-compartment").textContent = compartmentText(chosen) + " · " + (SIZE[chosen.size] || chosen.size);
  $("confirm-to").textContent = targetText();
  $("confirm-yes").disabled = false;
  show("confirm");
}

function back() {
  if (target && target.kind === "authorizer") startGrantAuthorizer(chosen);
  else if (target) show("grant-user");
  else home();
}

async function confirmGrant() {
  $("confirm-yes").disabled = true;
  showError("");
  const via = target.kind === "authorizer";
  const r = via
    ? await api("POST", "/lockers/grants/via-authorizer",
        { site: chosen.site, compartment: chosen.number, authorizer: target.number })
    : await api("POST", "/lockers/grants",
        { site: chosen.site, compartment: chosen.number, receiver: target.receiver });
  if (expired(r)) return;
  if (r.status !== 201 && r.status !== 202) {
    $("confirm-yes").disabled = false;
    const e = errorOf(r);
    showError(e.message, e.code);
    return;
  }
  statusScreen(r.body.grant_id);
}

// ---- deposit and collection -------------------------------------------------------------

function parcelError(r) {
  const e = errorOf(r);
  showError((PARCEL_TEXT[e.code] || "") + e.message, e.code);
}

function startDeposit(c) {
  setChosen(c);
  $("parcel").value = "";
  $("deposit-submit").disabled = false;
  show("deposit");
  $("parcel").focus();
}

async function deposit(ev) {
  ev.preventDefault();
  showError("");
  $("deposit-submit").disabled = true;
  const r = await api("POST", "/lockers/compartments/" + encodeURIComponent(chosen.compartment_id) + "/deposit",
    { parcel: $("parcel").value.trim() });
  if (expired(r)) return;
  if (r.status !== 201) { $("deposit-submit").disabled = false; parcelError(r); return; }
  $("deposited-compartment").textContent = compartmentText(chosen);
  // Shown this once: a retry of the deposit cannot show it again.
  $("pickup-code").textContent = r.body.pickup_code;
  shown.compartments = null;
  show("deposited");
}

function startCollect() {
  $("collect-form").reset();
  $("collect-site").value = $("reserve-site").value;
  $("collected").hidden = true;
  show("collect");
  $($("collect-site").value ? "collect-number" : "collect-site").focus();
}

async function collect(ev) {
  ev.preventDefault();
  showError("");
  $("collected").hidden = true;
  const id = $("collect-site").value.trim() + ":" + $("collect-number").value.trim();
  $("collect-submit").disabled = true;
  const r = await api("POST", "/lockers/compartments/" + encodeURIComponent(id) + "/collect",
    { pickup_code: $("collect-code").value.trim() });
  $("collect-submit").disabled = false;
  if (expired(r)) return;
  if (r.status !== 200) { parcelError(r); $("collect-code").select(); return; }
  $("collect-code").value = "";
  const done = $("collected");
  done.textContent = "柜门正在打开，请取件。The door of " + id + " is opening: take your parcel.";
  done.dataset.compartment = r.body.compartment_id;
  done.hidden = false;
}

// ---- a grant's status --------------------------------------------------------------------

function renderGrant(g) {
  const p = $("grant-status");
  p.textContent = GRANT_TEXT[g.status] || g.status;
  p.dataset.status = g.status;
  $("status-compartment").textContent = g.compartment_id.replace(":", " · 格口 ");
  $("status-via").textContent = g.kind === "authorizer"
    ? "快递公司 · courier company " + g.authorizer
    : "直接转让 · direct";
  const holder = g.status === "completed" ? g.receiver : g.requester;
  $("grant-holder").textContent = holder + (g.status === "completed" ? "" : "（您 · you）");
  $("grant-holder").dataset.holder = holder;
  $("status-grant").textContent = g.grant_id;
}

async function statusScreen(grantId) {
  const mine = ++follow;
  location.hash = "grant=" + grantId;
  show("status");
  $("grant-status").textContent = GRANT_TEXT.requested;
  $("grant-status").dataset.status = "requested";
  $("grant-holder").textContent = "";
  $("status-grant").textContent = grantId;
  let delay = 500;
  while (mine === follow) {
    const r = await api("GET", "/lockers/grants/" + encodeURIComponent(grantId));
    if (mine !== follow || expired(r)) return;
    if (r.status === 200) {
      renderGrant(r.body);
      if (OVER.includes(r.body.status)) return;
    } else if (r.status !== 404) {
      // 404: the request is not in the read model yet.
      const e = errorOf(r);
      showError(e.message, e.code);
    }
    await new Promise((done) => setTimeout(done, delay));
    delay = Math.min(delay * 1.5, 3000);
  }
}

// ---- start -------------------------------------------------------------------------------

async function start() {
  $("login-form").addEventListener("submit", login);
  $("reserve-form").addEventListener("submit", reserve);
  $("receiver-form").addEventListener("submit", receiverNext);
  $("logout").addEventListener("click", logout);
  $("deposit-form").addEventListener("submit", deposit);
  $("collect-form").addEventListener("submit", collect);
  $("start-collect").addEventListener("click", startCollect);
  $("confirm-yes").addEventListener("click", confirmGrant);
  $("confirm-back").addEventListener("click", back);
  $("status-home").addEventListener("click", home);
  for (const b of document.querySelectorAll("button.back")) b.addEventListener("click", home);
  // Grants to me and confirmations arrive while the home screen is open.
  setInterval(() => {
    if (me && document.body.dataset.screen === "home" && !document.hidden) {
      loadCompartments();
      loadInbox();
    }
  }, 3000);
  const r = await api("GET", "/lockers/me");
  if (r.status !== 200) { show("login"); return; }
  me = r.body;
  $("who").textContent = (me.name ? me.name + " · " : "") + me.user_number;
  const grant = /^#grant=([0-9a-f-]{36})$/.exec(location.hash);
  if (grant) statusScreen(grant[1]);
  else await home();
}

start();
