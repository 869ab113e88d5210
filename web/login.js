// PC login page: show a QR code, follow its state over a WebSocket (polling /qr/login as the
// fallback), and go to the one-time login address once the phone confirms.
//
// statusflag: 0 waiting · 1 scanned · 2 confirmed (go to `url`) · -2 expired/cancelled · -1 gone.
// The test hooks are the DOM only: #qr, #qr-box[data-covered], #qr-cover, #status[data-state].
'use strict';
(() => {
  const POLL_MS = 2000;
  const WS_RETRY_MS = [2000, 5000, 10000, 20000, 30000];
  const REFRESH_WINDOW_MS = 30000;
  const REFRESH_LIMIT = 5;

  // Every prompt in the page's language: the server sets <html lang> from Accept-Language,
  // Chinese (the seed's wording) or English.
  const WORDS = {
    en: {
      title: 'Log in to Latch',
      intro: 'Open the Latch app on your phone and scan this code.',
      alt: 'QR code for logging in',
      loading: 'Loading a login code…',
      newCode: 'New code',
      waiting: 'Scan the code with the Latch app',
      scanned: 'Scanned — confirm on your phone',
      confirmed: 'Confirmed — logging you in…',
      declined: 'Login was declined on the phone',
      expired: 'The code expired — getting a new one…',
      gettingNew: 'Getting a new code…',
      tooMany: 'The login codes keep running out at once. Try again in a moment.',
      unreachable: 'Could not reach the server for a login code.',
      noCode: 'Could not get a login code.',
      noPicture: 'The login code picture could not be shown.',
      noUrl: 'The login was confirmed, but the server sent no usable login address.',
      retrying: 'Connection problem — retrying…',
    },
    zh: {
      title: '登录 Latch',
      intro: '请打开手机上的 Latch 应用,扫描下方二维码。',
      alt: '登录二维码',
      loading: '正在获取登录二维码…',
      newCode: '重新获取',
      waiting: '请使用 Latch 应用扫描二维码',
      scanned: '二维码已被扫描,请在手机上确认',
      confirmed: '已确认,正在登录…',
      declined: '已在手机上取消登录',
      expired: '二维码已失效,正在重新获取…',
      gettingNew: '正在获取新的二维码…',
      tooMany: '二维码连续失效,请稍后再试。',
      unreachable: '无法连接服务器获取二维码。',
      noCode: '无法获取登录二维码。',
      noPicture: '二维码图片无法显示。',
      noUrl: '登录已确认,但服务器没有返回可用的登录地址。',
      retrying: '网络连接异常,正在重试…',
    },
  };
  const T = document.documentElement.lang.startsWith('zh') ? WORDS.zh : WORDS.en;

  const $ = (id) => document.getElementById(id);
  const img = $('qr');
  const box = $('qr-box');
  const cover = $('qr-cover');
  const coverText = $('cover-text');
  const newCodeButton = $('new-code');
  const status = $('status');
  const hint = $('hint');

  let gen = 0; // bumped for every new code; callbacks of an older one bail out
  let ws = null;
  let wsRetryTimer = null;
  let wsFailures = 0;
  let polling = false;
  let pollTimer = null;
  let lastPollAt = 0;
  let finished = false; // confirmed, cancelled or failed: nothing more to listen for
  let objectUrl = null;
  let refreshes = [];

  document.title = T.title;
  $('intro').textContent = T.intro;
  img.alt = T.alt;
  newCodeButton.textContent = T.newCode;
  status.textContent = T.loading;

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function coverQr(text, offerNewCode) {
    box.dataset.covered = 'true';
    coverText.textContent = text;
    newCodeButton.hidden = !offerNewCode;
    cover.hidden = false;
  }

  function uncoverQr() {
    box.dataset.covered = 'false';
    cover.hidden = true;
    newCodeButton.hidden = true;
    coverText.textContent = '';
  }

  function stopPolling() {
    polling = false;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function stopListening() {
    stopPolling();
    if (wsRetryTimer !== null) clearTimeout(wsRetryTimer);
    wsRetryTimer = null;
    if (ws !== null) {
      const socket = ws;
      ws = null;
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000);
      } catch (_) {
        /* already closing */
      }
    }
  }

  function fail(message) {
    finished = true;
    stopListening();
    setStatus('error', message);
    coverQr(message, true);
  }

  // A fresh code: new picture, new `latch_qr` cookie, new WebSocket. No page reload.
  async function newCode() {
    stopListening();
    const my = ++gen;
    finished = false;
    const now = Date.now();
    refreshes = refreshes.filter((t) => now - t < REFRESH_WINDOW_MS);
    refreshes.push(now);
    if (refreshes.length > REFRESH_LIMIT) {
      fail(T.tooMany);
      return;
    }
    let res;
    try {
      res = await fetch('/qr/loginpic?qrSize=256', { credentials: 'same-origin', cache: 'no-store' });
    } catch (_) {
      if (my === gen) fail(T.unreachable);
      return;
    }
    if (my !== gen) return;
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      if (my === gen) fail(errorMessage(body, res.status, T.noCode));
      return;
    }
    const blob = await res.blob();
    if (my !== gen) return;
    const url = URL.createObjectURL(blob);
    try {
      await showImage(url);
    } catch (_) {
      URL.revokeObjectURL(url);
      if (my === gen) fail(T.noPicture);
      return;
    }
    if (my !== gen) {
      return;
    }
    if (objectUrl !== null) URL.revokeObjectURL(objectUrl);
    objectUrl = url;
    uncoverQr();
    hint.textContent = '';
    setStatus('waiting', T.waiting);
    connectWs(my);
  }

  function showImage(url) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error('image did not load'));
      img.src = url;
    });
  }

  function errorMessage(body, httpStatus, fallback) {
    const message = body && body.error && body.error.message;
    return typeof message === 'string' && message ? message : `${fallback} (HTTP ${httpStatus})`;
  }

  function sameOriginUrl(raw) {
    if (typeof raw !== 'string' || raw === '') return null;
    try {
      const url = new URL(raw, location.href);
      return url.origin === location.origin ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function handle(body, my) {
    if (my !== gen || finished || !body || typeof body.statusflag !== 'number') return;
    switch (body.statusflag) {
      case 0:
        uncoverQr();
        setStatus('waiting', T.waiting);
        break;
      case 1:
        setStatus('scanned', T.scanned);
        coverQr(T.scanned, false);
        break;
      case 2: {
        const url = sameOriginUrl(body.url);
        if (url === null) {
          fail(T.noUrl);
          return;
        }
        finished = true;
        stopListening();
        setStatus('confirmed', T.confirmed);
        coverQr(T.confirmed, false);
        location.assign(url);
        break;
      }
      case -2:
        if (body.state === 'cancelled') {
          finished = true;
          stopListening();
          setStatus('cancelled', T.declined);
          coverQr(T.declined, true);
        } else {
          expired();
        }
        break;
      case -1:
        expired();
        break;
      default:
        break; // a state this page does not know yet: keep listening
    }
  }

  function expired() {
    setStatus('expired', T.expired);
    coverQr(T.gettingNew, false);
    newCode();
  }

  function connectWs(my) {
    if (my !== gen || finished) return;
    let socket;
    try {
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      socket = new WebSocket(`${scheme}//${location.host}/qr/ws`);
    } catch (_) {
      wsDown(my);
      return;
    }
    ws = socket;
    socket.onopen = () => {
      if (ws !== socket) return;
      wsFailures = 0;
      stopPolling();
      hint.textContent = '';
    };
    socket.onmessage = (event) => {
      if (ws !== socket) return;
      let body;
      try {
        body = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      handle(body, my);
    };
    socket.onerror = () => {
      /* a close event follows */
    };
    socket.onclose = () => {
      if (ws !== socket) return;
      ws = null;
      wsDown(my);
    };
  }

  // The WebSocket could not connect or went away: poll, and try the socket again later.
  function wsDown(my) {
    if (my !== gen || finished) return;
    const delay = WS_RETRY_MS[Math.min(wsFailures, WS_RETRY_MS.length - 1)];
    wsFailures += 1;
    startPolling(my);
    if (wsRetryTimer !== null) clearTimeout(wsRetryTimer);
    wsRetryTimer = setTimeout(() => {
      wsRetryTimer = null;
      connectWs(my);
    }, delay);
  }

  function startPolling(my) {
    if (polling) return;
    polling = true;
    const wait = Math.max(0, lastPollAt + POLL_MS - Date.now());
    pollTimer = setTimeout(() => poll(my), wait);
  }

  async function poll(my) {
    pollTimer = null;
    if (!polling || my !== gen || finished) return;
    lastPollAt = Date.now();
    let delay = POLL_MS;
    try {
      const res = await fetch('/qr/login', { credentials: 'same-origin', cache: 'no-store' });
      const body = await res.json().catch(() => null);
      if (!polling || my !== gen || finished) return;
      if (res.status === 429) {
        const seconds =
          Number(body && body.intervalSeconds) || Number(res.headers.get('Retry-After')) || POLL_MS / 1000;
        delay = Math.max(POLL_MS, seconds * 1000);
      } else if (body && typeof body.statusflag === 'number') {
        hint.textContent = '';
        handle(body, my);
      } else {
        hint.textContent = T.retrying;
      }
    } catch (_) {
      if (!polling || my !== gen || finished) return;
      hint.textContent = T.retrying;
    }
    if (polling && my === gen && !finished) pollTimer = setTimeout(() => poll(my), delay);
  }

  newCodeButton.addEventListener('click', () => {
    refreshes = [];
    newCode();
  });

  newCode();
})();
