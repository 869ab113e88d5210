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
      fail('The login codes keep running out at once. Try again in a moment.');
      return;
    }
    let res;
    try {
      res = await fetch('/qr/loginpic?qrSize=256', { credentials: 'same-origin', cache: 'no-store' });
    } catch (_) {
      if (my === gen) fail('Could not reach the server for a login code.');
      return;
    }
    if (my !== gen) return;
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      if (my === gen) fail(errorMessage(body, res.status, 'Could not get a login code.'));
      return;
    }
    const blob = await res.blob();
    if (my !== gen) return;
    const url = URL.createObjectURL(blob);
    try {
      await showImage(url);
    } catch (_) {
      URL.revokeObjectURL(url);
      if (my === gen) fail('The login code picture could not be shown.');
      return;
    }
    if (my !== gen) {
      return;
    }
    if (objectUrl !== null) URL.revokeObjectURL(objectUrl);
    objectUrl = url;
    uncoverQr();
    hint.textContent = '';
    setStatus('waiting', 'Scan the code with the Latch app');
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
        setStatus('waiting', 'Scan the code with the Latch app');
        break;
      case 1:
        setStatus('scanned', 'Scanned — confirm on your phone');
        coverQr('Scanned — confirm on your phone', false);
        break;
      case 2: {
        const url = sameOriginUrl(body.url);
        if (url === null) {
          fail('The login was confirmed, but the server sent no usable login address.');
          return;
        }
        finished = true;
        stopListening();
        setStatus('confirmed', 'Confirmed — logging you in…');
        coverQr('Confirmed — logging you in…', false);
        location.assign(url);
        break;
      }
      case -2:
        if (body.state === 'cancelled') {
          finished = true;
          stopListening();
          setStatus('cancelled', 'Login was declined on the phone');
          coverQr('Login was declined on the phone', true);
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
    setStatus('expired', 'The code expired — getting a new one…');
    coverQr('Getting a new code…', false);
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
        hint.textContent = 'Connection problem — retrying…';
      }
    } catch (_) {
      if (!polling || my !== gen || finished) return;
      hint.textContent = 'Connection problem — retrying…';
    }
    if (polling && my === gen && !finished) pollTimer = setTimeout(() => poll(my), delay);
  }

  newCodeButton.addEventListener('click', () => {
    refreshes = [];
    newCode();
  });

  newCode();
})();
