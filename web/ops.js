// The operator console (/ops): the fleet, the order review queue with resolve and refund,
// lockers (sites, compartments, holders, open grants) and dead letters.
// The session is an HttpOnly cookie this script never sees (the pasted token goes to
// /ops/login once and is forgotten); every change carries X-Latch-Client, which the server
// requires of cookie-authenticated writes. What changed is pushed over /ops/live; the page
// re-reads that screen. While the channel is down it polls and reconnects.
"use strict";

const $ = (id) => document.getElementById(id);
const SCREENS = ["fleet", "orders", "lockers", "dead_letters"];
const POLL_MS = 15000;

let current = "fleet";
let socket = null;
let retry = 1000;
let pollTimer = 0;
const loading = {}; // screen -> a re-read is under way; again = another was asked meanwhile

function showScreen(name) {
  for (const s of ["login", ...SCREENS]) $("screen-" + s).hidden = s !== name;
  $("nav").hidden = name === "login";
  for (const b of document.querySelectorAll("#nav [data-go]")) {
    b.setAttribute("aria-current", b.dataset.go === name ? "page" : "false");
  }
  document.body.dataset.screen = name;
  if (name !== "login") current = name;
}

function showError(text, code) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
  if (code) e.dataset.code = code; else delete e.dataset.code;
}

function notify(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// A fresh idempotency key for one operator action (crypto.randomUUID needs a secure context).
function newKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function api(method, path, body, key) {
  const headers = method === "GET" ? {} : { "X-Latch-Client": "ops" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Idempotency-Key"] = key;
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
  if (r.status === 0) return { code: "network", message: "The network is unreachable" };
  return { code: "http_" + r.status, message: "Error " + r.status };
}

// A failed read or change: a lost session goes back to the login.
function failed(r) {
  const e = errorOf(r);
  if (r.status === 401) {
    loggedOut();
  }
  showError(e.message, e.code);
}

// ---- small DOM helpers (never markup strings) ----

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function td(text, props) {
  return el("td", Object.assign({ text: text === null || text === undefined ? "" : String(text) }, props || {}));
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function money(minor, currency) {
  if (minor === null || minor === undefined) return "";
  return (minor / 100).toFixed(2) + " " + (currency || "");
}

function fill(id, rows, emptyId) {
  $(id).replaceChildren(...rows);
  if (emptyId) $(emptyId).hidden = rows.length > 0;
}

// Redraws a list from `items`, keeping the element of an item whose version is unchanged, so
// a re-read never wipes what an operator is typing into a row that did not change.
function fillKeyed(id, items, key, version, build, emptyId) {
  const kept = new Map();
  for (const e of $(id).children) kept.set(e.dataset.key, e);
  const rows = items.map((item) => {
    const old = kept.get(key(item));
    if (old && old.dataset.version === String(version(item))) return old;
    const e = build(item);
    e.dataset.key = key(item);
    e.dataset.version = String(version(item));
    return e;
  });
  const same = rows.length === $(id).children.length && rows.every((r, i) => $(id).children[i] === r);
  if (!same) $(id).replaceChildren(...rows);
  if (emptyId) $(emptyId).hidden = rows.length > 0;
}

// ---- the screens ----

function deviceState(d) {
  if (d.fault_code) return "faulted";
  return d.online ? "online" : "offline";
}

async function loadFleet() {
  const r = await api("GET", "/devices?limit=1000");
  if (r.status !== 200) return failed(r);
  const counts = { online: 0, offline: 0, faulted: 0 };
  const rows = r.body.map((d) => {
    const state = deviceState(d);
    counts[state] += 1;
    const fault = d.fault_code ? d.fault_code + (d.fault_message ? ": " + d.fault_message : "") : "";
    return el("tr", { data: { device: d.device_id, state } },
      td(d.label, { title: d.device_id }), td(d.kind), td(d.site),
      td(state, { class: "state state-" + state }), td(d.door, { class: "door" }),
      td(when(d.last_seen), { class: "seen" }), td(fault, { class: "fault" }));
  });
  fill("fleet-rows", rows, "fleet-empty");
  $("fleet-summary").textContent =
    `${counts.online} online · ${counts.offline} offline · ${counts.faulted} faulted`;
}

function reasonText(reason) {
  // {"reason": "out_of_tolerance", "shelf": 1, "delta": 170} -> "out_of_tolerance: shelf 1, 170 g"
  if (reason === null || typeof reason !== "object") return String(reason);
  const facts = [];
  if (reason.shelf !== undefined) facts.push("shelf " + reason.shelf);
  if (reason.delta !== undefined) facts.push(reason.delta + " g");
  if (reason.grams !== undefined) facts.push(reason.grams + " g");
  return (reason.reason || "review") + (facts.length ? ": " + facts.join(", ") : "");
}

function lineEditor(line) {
  return el("li", { class: "line" },
    el("input", { name: "shelf", type: "number", min: "1", placeholder: "shelf", value: line ? line.shelf : "" }),
    el("input", { name: "sku", placeholder: "sku", maxlength: "64", value: line ? line.sku : "" }),
    el("input", { name: "quantity", type: "number", min: "0", placeholder: "qty", value: line ? line.quantity : "1" }));
}

function reviewCard(o) {
  const reasons = (o.review_reasons || []).map(reasonText).join("; ");
  const lines = el("ul", { class: "review-lines" }, ...((o.lines || []).map(lineEditor)));
  if (!lines.children.length) lines.append(lineEditor(null));
  const add = el("button", { type: "button", class: "add-line", text: "Add line" });
  add.addEventListener("click", () => lines.append(lineEditor(null)));
  const resolve = el("button", { type: "button", class: "resolve", text: "Resolve" });
  resolve.addEventListener("click", () => resolveReview(o.session_id, lines, false, resolve));
  const none = el("button", { type: "button", class: "no-charge", text: "Close without charge" });
  none.addEventListener("click", () => resolveReview(o.session_id, lines, true, none));
  return el("li", { data: { session: o.session_id } },
    el("strong", { text: o.session_id }),
    el("span", { class: "facts muted", text: `site ${o.site} · device ${o.device_id} · opened ${when(o.opened_at)}` }),
    el("span", { class: "reasons", text: reasons }),
    lines,
    el("div", { class: "actions" }, add, none, resolve));
}

async function resolveReview(session, lines, empty, button) {
  const body = { lines: [] };
  if (!empty) {
    for (const li of lines.children) {
      const v = (n) => li.querySelector(`[name=${n}]`).value.trim();
      if (!v("shelf") && !v("sku")) continue;
      body.lines.push({ shelf: Number(v("shelf")), sku: v("sku"), quantity: Number(v("quantity")) });
    }
  }
  button.disabled = true;
  const r = await api("POST", `/orders/${session}/review`, body, newKey());
  button.disabled = false;
  if (r.status !== 200) return failed(r);
  showError("");
  notify(`Order ${session} resolved.`);
  refresh("orders");
}

function paidRow(o) {
  const left = (o.paid_minor || 0) - (o.refunded_minor || 0);
  const amount = el("input", { name: "amount", type: "number", min: "1", max: String(left), value: String(left) });
  const go = el("button", { type: "button", class: "refund", text: "Refund" });
  go.disabled = left <= 0;
  go.addEventListener("click", () => refund(o.session_id, amount, go));
  return el("tr", { data: { session: o.session_id } },
    td(o.session_id), td(o.site), td(money(o.paid_minor, o.currency), { class: "paid" }),
    td(money(o.refunded_minor, o.currency), { class: "refunded" }), td(when(o.paid_at)),
    el("td", {}, amount, go));
}

async function refund(session, input, button) {
  const amount = Number(input.value);
  button.disabled = true;
  // One key per click: should the request be retried, the refund happens once.
  const r = await api("POST", `/orders/${session}/refunds`, { amount_minor: amount }, newKey());
  button.disabled = false;
  if (r.status !== 201) return failed(r);
  showError("");
  notify(`Refunded ${money(r.body.amount_minor, r.body.currency)} of order ${session}.`);
  refresh("orders");
}

async function loadOrders() {
  const [review, paid] = await Promise.all([
    api("GET", "/orders?status=needs_review&limit=500"),
    api("GET", "/orders?status=paid&limit=500"),
  ]);
  if (review.status !== 200) return failed(review);
  if (paid.status !== 200) return failed(paid);
  const key = (o) => o.session_id;
  const version = (o) => o.last_position;
  fillKeyed("review-rows", review.body, key, version, reviewCard, "review-empty");
  fillKeyed("paid-rows", paid.body, key, version, paidRow, "paid-empty");
}

function siteBlock(s) {
  const rows = s.compartments.map((c) => el("tr", { data: { compartment: c.compartment_id, status: c.status } },
    td(c.number), td(c.size), td(c.status, { class: "status" }), td(c.holder, { class: "holder" }),
    td(when(c.expires_at)), td(c.parcel), td(c.door || "no door", { class: "door" })));
  return el("section", { class: "site", data: { site: s.site } },
    el("h3", { text: `${s.name} (${s.site})` }),
    el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ...["No.", "Size", "Status", "Holder", "Until", "Parcel", "Door"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)));
}

async function loadLockers() {
  const [sites, grants] = await Promise.all([api("GET", "/lockers/sites"), api("GET", "/lockers/grants")]);
  if (sites.status !== 200) return failed(sites);
  if (grants.status !== 200) return failed(grants);
  fill("sites", sites.body.map(siteBlock), "sites-empty");
  fill("grant-rows", grants.body.map((g) => el("tr", { data: { grant: g.grant_id, status: g.status } },
    td(g.grant_id), td(g.compartment_id), td(g.requester),
    td(g.kind === "authorizer" ? "authorizer " + (g.authorizer || "") : "to " + (g.receiver || "")),
    td(g.status, { class: "status" }), td(when(g.requested_at)), td(when(g.deadline)))), "grants-empty");
}

async function loadDeadLetters() {
  const r = await api("GET", "/dead-letters?limit=200");
  if (r.status !== 200) return failed(r);
  fill("dead-rows", r.body.map((d) => el("tr", { data: { sequence: String(d.sequence), reason: d.reason } },
    td(d.sequence), td(when(d.kept_at)), td(d.consumer), td(d.reason, { class: "reason" }),
    td(d.detail, { class: "detail" }), td(d.subject), td(d.payload.slice(0, 120), { class: "payload" }))), "dead-empty");
}

const LOADERS = { fleet: loadFleet, orders: loadOrders, lockers: loadLockers, dead_letters: loadDeadLetters };

// Re-reads a screen; asked again while reading, it reads once more after.
async function refresh(screen) {
  if (loading[screen]) { loading[screen] = "again"; return; }
  loading[screen] = true;
  try {
    do {
      if (loading[screen] === "again") loading[screen] = true;
      await LOADERS[screen]();
      document.body.dataset["loaded_" + screen] = String(Date.now());
    } while (loading[screen] === "again");
  } finally {
    loading[screen] = false;
  }
}

// ---- the live channel, polling while it is down ----

function setLive(state) {
  $("live").dataset.state = state;
  $("live").textContent = state === "live" ? "● live" : state === "polling" ? "○ reconnecting (polling)" : "";
}

function connect() {
  if (socket) return;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ops/live";
  const ws = new WebSocket(url);
  socket = ws;
  ws.addEventListener("open", () => {
    retry = 1000;
    setLive("live");
    clearInterval(pollTimer);
    pollTimer = 0;
  });
  ws.addEventListener("message", (m) => {
    let msg = null;
    try { msg = JSON.parse(m.data); } catch (_) { return; }
    for (const screen of (msg.changed || [])) if (LOADERS[screen]) refresh(screen);
  });
  ws.addEventListener("close", () => {
    if (socket !== ws) return;
    socket = null;
    if (document.body.dataset.screen === "login") return setLive("off");
    setLive("polling");
    if (!pollTimer) pollTimer = setInterval(() => SCREENS.forEach(refresh), POLL_MS);
    setTimeout(async () => {
      // A channel refused for a lost session: back to the login rather than retry forever.
      const me = await api("GET", "/ops/me");
      if (me.status === 401 || me.status === 403) return loggedOut();
      connect();
    }, retry);
    retry = Math.min(retry * 2, 30000);
  });
}

function disconnect() {
  const ws = socket;
  socket = null;
  if (ws) ws.close();
  clearInterval(pollTimer);
  pollTimer = 0;
  setLive("off");
}

// ---- session ----

function loggedIn(session) {
  $("who").textContent = `Operator ${session.subject}`;
  showError("");
  showScreen(current);
  connect();
}

function loggedOut() {
  disconnect();
  $("who").textContent = "";
  showScreen("login");
}

async function login(ev) {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("login-submit").disabled = true;
  const r = await api("POST", "/ops/login", { token });
  $("login-submit").disabled = false;
  $("token").value = "";
  if (r.status !== 200) {
    const e = errorOf(r);
    const text = r.status === 403 ? "That token is not an operator's." :
      r.status === 401 ? "That token is not valid (" + e.code + ")." : e.message;
    return showError(text, e.code);
  }
  loggedIn(r.body);
}

async function logout() {
  await api("POST", "/ops/logout");
  notify("");
  loggedOut();
}

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  for (const b of document.querySelectorAll("#nav [data-go]")) {
    b.addEventListener("click", () => { showScreen(b.dataset.go); refresh(b.dataset.go); });
  }
  const me = await api("GET", "/ops/me");
  if (me.status === 200) loggedIn(me.body); else loggedOut();
}

start();
