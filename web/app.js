// Phone-app stand-in: confirm or decline a QR login. The code comes from the URL fragment
// (`/app/qr#code=lq1_...`), the app user's token from localStorage.latch_app_token.
'use strict';
(() => {
  const TOKEN_KEY = 'latch_app_token';
  const $ = (id) => document.getElementById(id);
  const tokenForm = $('token-form');
  const loginForm = $('login-form');
  const tokenInput = $('token');
  const phase = $('phase');
  const request = $('request');
  const confirmButton = $('confirm');
  const declineButton = $('decline');
  const result = $('result');

  let code = '';
  let run = 0; // bumped per code; answers for an older one are dropped

  function token() {
    try {
      return localStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function codeFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    return (params.get('code') || '').trim();
  }

  function errorMessage(body, httpStatus) {
    const message = body && body.error && body.error.message;
    return typeof message === 'string' && message ? message : `The server answered HTTP ${httpStatus}.`;
  }

  function showResult(kind, message) {
    request.hidden = true;
    phase.hidden = true;
    result.dataset.result = kind;
    result.textContent = message;
    result.hidden = false;
  }

  function reset() {
    request.hidden = true;
    result.hidden = true;
    delete result.dataset.result;
    result.textContent = '';
    tokenForm.hidden = true;
    loginForm.hidden = true;
    phase.hidden = false;
    phase.textContent = 'Checking the code…';
    setButtons(false);
  }

  function setButtons(enabled) {
    confirmButton.disabled = !enabled;
    declineButton.disabled = !enabled;
  }

  async function post(path, body) {
    const res = await fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token()}` },
      body: JSON.stringify(body),
    });
    const json = await res.json().catch(() => null);
    return { status: res.status, ok: res.ok, body: json };
  }

  function formatTime(raw) {
    if (typeof raw !== 'string' || raw === '') return '—';
    const t = new Date(raw);
    return Number.isNaN(t.getTime()) ? raw : t.toLocaleString();
  }

  async function start() {
    const my = ++run;
    reset();
    code = codeFromFragment();
    if (code === '') {
      showResult('error', 'No login code here. Scan the QR code on the computer’s login page.');
      return;
    }
    if (token() === '') {
      phase.hidden = true;
      askToLogIn();
      return;
    }
    let answer;
    try {
      answer = await post('/qr/lock', { code });
    } catch (_) {
      if (my === run) showResult('error', 'Could not reach the server.');
      return;
    }
    if (my !== run) return;
    const body = answer.body || {};
    if (answer.ok && body.statusflag === 0) {
      const origin = body.origin || {};
      $('origin-ip').textContent = origin.ip || '—';
      $('origin-browser').textContent = origin.browser || origin.userAgent || '—';
      $('origin-time').textContent = formatTime(origin.mintedAt);
      phase.hidden = true;
      request.hidden = false;
      setButtons(true);
    } else if (body.statusflag === -2) {
      showResult('expired', 'This login code has expired or was cancelled. Scan a new one.');
    } else {
      showResult('error', errorMessage(body, answer.status));
      if (answer.status === 401) askToLogIn();
    }
  }

  async function answer(path, doneKind, doneMessage) {
    const my = run;
    setButtons(false);
    let reply;
    try {
      reply = await post(path, { code });
    } catch (_) {
      if (my === run) {
        showResult('error', 'Could not reach the server.');
      }
      return;
    }
    if (my !== run) return;
    const body = reply.body || {};
    if (reply.ok && body.statusflag === 0) {
      showResult(doneKind, doneMessage);
    } else if (body.statusflag === -2) {
      showResult('expired', 'This login code has expired or was cancelled. Scan a new one.');
    } else {
      showResult('error', errorMessage(body, reply.status));
    }
  }

  confirmButton.addEventListener('click', () =>
    answer('/qr/activate', 'confirmed', 'Done — you are logged in on that computer.'),
  );
  declineButton.addEventListener('click', () =>
    answer('/qr/cancel', 'declined', 'Declined — nobody was logged in.'),
  );

  // No token yet (or a dead one): the app user logs in with their user number and password,
  // the same login the locker pages use, and the page keeps the session token it gets.
  function askToLogIn() {
    loginForm.hidden = false;
    tokenForm.hidden = false;
    $('user-number').focus();
  }

  loginForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const userNumber = $('user-number').value.trim();
    const password = $('password').value;
    let res;
    try {
      res = await fetch('/lockers/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user_number: userNumber, password }),
      });
    } catch (_) {
      showResult('error', 'Could not reach the server.');
      return;
    }
    const body = await res.json().catch(() => null);
    if (!res.ok || !body || typeof body.token !== 'string') {
      showResult('error', errorMessage(body || {}, res.status));
      return;
    }
    try {
      localStorage.setItem(TOKEN_KEY, body.token);
    } catch (_) {
      showResult('error', 'This browser does not let the page keep the token.');
      return;
    }
    $('password').value = '';
    loginForm.hidden = true;
    start();
  });

  tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = tokenInput.value.trim();
    if (value === '') return;
    try {
      localStorage.setItem(TOKEN_KEY, value);
    } catch (_) {
      showResult('error', 'This browser does not let the page keep the token.');
      return;
    }
    tokenInput.value = '';
    start();
  });

  window.addEventListener('hashchange', start);
  start();
})();
