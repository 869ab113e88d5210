// The shopper's phone pages: /m/cabinet/{id} (the cabinet and "open") and /m/orders/{id}
// (door open -> order -> pay -> receipt). Writes carry X-Latch-Client, which the server
// requires for cookie-authenticated changes.
"use strict";

const $ = (id) => document.getElementById(id);
const CLIENT = { "X-Latch-Client": "web" };

function money(minor, currency) {
  const sign = currency === "CNY" ? "¥" : currency + " ";
  return sign + (minor / 100).toFixed(2);
}

function showError(text) {
  const e = $("error");
  e.textContent = text;
  e.hidden = !text;
}

async function api(method, path) {
  const res = await fetch(path, {
    method,
    headers: method === "GET" ? {} : CLIENT,
    credentials: "same-origin",
    cache: "no-store",
  });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  return { status: res.status, body };
}

function errorText(r) {
  return (r.body && r.body.error && r.body.error.message) || ("error " + r.status);
}

async function who() {
  const r = await api("GET", "/m/api/me");
  if (r.status === 200) {
    $("who").textContent = (r.body.nickname || r.body.user_id) + " · " + r.body.user_id;
  }
}

// ---- cabinet page ----------------------------------------------------------------------

async function loadCabinet(id) {
  const r = await api("GET", "/m/api/cabinets/" + id);
  if (r.status !== 200) { showError(errorText(r)); return null; }
  const c = r.body;
  $("title").textContent = c.label;
  $("cabinet-site").textContent = "Site · 网点 " + c.site;
  const products = $("products");
  products.replaceChildren(...c.products.map((p) => {
    const li = document.createElement("li");
    li.textContent = p.name + " — " + money(p.unit_price_minor, p.currency);
    return li;
  }));
  const blocked = $("blocked");
  blocked.replaceChildren(...c.blocked.map((b) => {
    const li = document.createElement("li");
    li.dataset.code = b.code;
    li.textContent = b.message;
    return li;
  }));
  $("unpaid").hidden = c.unpaid_orders.length === 0;
  if (c.unpaid_orders.length) {
    $("unpaid-link").href = "/m/orders/" + c.unpaid_orders[0] + "?cabinet=" + id;
  }
  $("open").disabled = !c.can_open;
  $("cabinet").hidden = false;
  return c;
}

async function cabinetPage(id) {
  await Promise.all([who(), loadCabinet(id)]);
  $("open").addEventListener("click", async () => {
    $("open").disabled = true;
    showError("");
    // The sticker's signature, handed on by the scan: opening needs it.
    const k = new URLSearchParams(location.search).get("k") || "";
    const r = await api("POST", "/m/api/cabinets/" + id + "/open?k=" + encodeURIComponent(k));
    if (r.status === 202) {
      location.href = "/m/orders/" + r.body.session_id + "?cabinet=" + id + "&request=" + r.body.request_id;
      return;
    }
    showError(errorText(r));
    await loadCabinet(id);
  });
  setInterval(() => loadCabinet(id), 5000);
}

// ---- order page ------------------------------------------------------------------------

const STATUS_TEXT = {
  open: "The door is open: take what you like, then close the door. 柜门已开，取货后请关门。",
  placed: "Your order · 您的订单",
  payment_pending: "Waiting for payment · 等待支付",
  needs_review: "We are checking what was taken; nothing is charged until then. 订单审核中，暂不扣款。",
  no_charge: "Nothing was taken — no charge. 未取商品，不收费。",
  abandoned: "The door did not open — no charge. 柜门未打开，不收费。",
  paid: "Paid — thank you! 支付成功，谢谢！",
  refunded: "Refunded · 已退款",
};

function renderOrder(o) {
  $("status").textContent = STATUS_TEXT[o.status] || o.status;
  $("status").dataset.status = o.status;
  const lines = $("lines");
  lines.replaceChildren(...(o.lines || []).map((l) => {
    const li = document.createElement("li");
    li.dataset.sku = l.sku;
    li.textContent = l.name + " × " + l.quantity + " — " + money(l.line_total.minor, l.line_total.currency);
    return li;
  }));
  const hasTotal = o.total_minor !== null && o.total_minor !== undefined && o.status !== "open";
  $("total-row").hidden = !hasTotal;
  if (hasTotal) $("total").textContent = money(o.total_minor, o.currency);
  const payable = o.status === "placed" || o.status === "payment_pending";
  $("pay").hidden = !payable;
  $("pay").textContent = o.status === "payment_pending"
    ? "Continue payment · 继续支付" : "Pay with Kazaya · 支付";
  if (o.payment_error && o.status === "placed") showError("Last payment: " + o.payment_error);
  const paid = o.status === "paid" || o.status === "refunded";
  $("receipt").hidden = !paid;
  if (paid) {
    $("receipt-amount").textContent = money(o.paid_minor, o.currency);
    $("receipt-ref").textContent = o.provider_ref || "";
    $("receipt-time").textContent = new Date(o.paid_at).toLocaleString();
    $("receipt-order").textContent = o.session_id;
  }
  return ["paid", "refunded", "no_charge", "abandoned"].includes(o.status);
}

async function orderPage(sid) {
  const params = new URLSearchParams(location.search);
  const cabinet = params.get("cabinet");
  const request = params.get("request");
  $("order").hidden = false;
  who();
  let synced = params.get("returned") !== "1";
  $("pay").addEventListener("click", async () => {
    $("pay").disabled = true;
    showError("");
    const r = await api("POST", "/m/api/orders/" + sid + "/pay");
    $("pay").disabled = false;
    if (r.status === 200) { location.href = r.body.pay_url; return; }
    showError(errorText(r));
  });
  // The order is pushed (server-sent events from the log, the current order first on every
  // reconnect); polling is the fallback while the push channel is down. localStorage
  // `latch_no_poll` = "1" turns the fallback off, which the browser tests use to show that the
  // push alone carries the order.
  let noPoll = false;
  try { noPoll = localStorage.getItem("latch_no_poll") === "1"; } catch (_) { noPoll = false; }
  let live = false;
  let seen = false;
  let done = false;
  const render = async (o, via) => {
    seen = true;
    $("status").dataset.via = via;
    $("status").dataset.shownAt = String(Date.now());
    if (!synced && o.status === "payment_pending") {
      synced = true;
      await api("POST", "/m/api/orders/" + sid + "/sync");
    }
    if (renderOrder(o)) done = true;
  };
  if (window.EventSource) {
    const events = new EventSource("/m/api/orders/" + sid + "/events");
    events.onopen = () => { live = true; };
    events.onerror = () => { live = false; };
    events.addEventListener("order", async (e) => {
      let o = null;
      try { o = JSON.parse(e.data); } catch (_) { return; }
      await render(o, "push");
      if (done) events.close();
    });
  }
  const tick = async () => {
    if (done) return;
    if (!live && !noPoll) {
      const r = await api("GET", "/m/api/orders/" + sid);
      if (r.status === 200) {
        await render(r.body, "poll");
        if (done) return;
      } else if (r.status !== 404) {
        showError(errorText(r));
      }
    }
    // Until an order exists, the cabinet says whether the door opened at all.
    if (!seen && cabinet && request) {
      const c = await api("GET", "/m/api/cabinets/" + cabinet + "?request=" + request);
      const outcome = c.body && c.body.open_outcome;
      if (outcome && outcome !== "pending" && outcome !== "confirmed" && outcome !== "unknown") {
        $("status").textContent = "The cabinet did not open (" + outcome + ") — no charge. 柜门未打开。";
        $("status").dataset.status = "open_failed";
        return;
      }
    }
    setTimeout(tick, 1000);
  };
  tick();
}

const path = location.pathname.split("/");
if (path[2] === "cabinet") cabinetPage(path[3]);
else if (path[2] === "orders") orderPage(path[3]);
