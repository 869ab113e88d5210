// Logged-in view: who am I, according to the session cookie.
'use strict';
(async () => {
  const $ = (id) => document.getElementById(id);
  const show = (id) => {
    $('loading').hidden = true;
    $(id).hidden = false;
  };
  // Logging out revokes the session server-side (a copy of the cookie stops working too).
  $('logout').addEventListener('click', async () => {
    await fetch('/logout', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-Latch-Client': 'web' },
    }).catch(() => null);
    $('signed-in').hidden = true;
    $('signed-out').hidden = false;
  });
  try {
    const res = await fetch('/me', { credentials: 'same-origin', cache: 'no-store' });
    const body = await res.json().catch(() => null);
    if (res.ok && body && typeof body.userId === 'string') {
      $('me').textContent = body.userId;
      $('role').textContent = body.role || '';
      show('signed-in');
    } else if (res.status === 401) {
      show('signed-out');
    } else {
      const message = body && body.error && body.error.message;
      $('console-error').textContent = message || `The server answered HTTP ${res.status}.`;
      show('console-error');
    }
  } catch (_) {
    $('console-error').textContent = 'Could not reach the server.';
    show('console-error');
  }
})();
