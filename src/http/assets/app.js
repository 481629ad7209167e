// chatloop's browser client: log in (unless the server runs with auth = off),
// open /ws/chat, send questions, render the answer as its tokens stream in,
// cancel. The WebSocket protocol is SPEC §4. No frameworks, no HTML parsing:
// everything the server or the user wrote goes in as text.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    newConversation: $('new-conversation'),
    logout: $('logout'),
    loginPanel: $('login-panel'),
    loginForm: $('login-form'),
    email: $('email'),
    password: $('password'),
    login: $('login'),
    register: $('register'),
    loginError: $('login-error'),
    chat: $('chat'),
    messages: $('messages'),
    ask: $('ask'),
    question: $('question'),
    send: $('send'),
    cancel: $('cancel'),
  };

  // The server marks the page with its auth mode ("off" | "required").
  const authOff = document.documentElement.dataset.auth === 'off';
  const TOKEN_KEY = 'chatloop.token';

  let token = sessionStorage.getItem(TOKEN_KEY);
  let ws = null;
  let connected = false; // the server said "connected" on the current socket
  let retryMs = 1000;
  let retryTimer = 0;
  let sessionId = newSessionId();
  const turns = new Map(); // session_id -> running turn (its answer bubble)

  // ---- helpers -----------------------------------------------------------

  function newSessionId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // crypto.randomUUID needs a secure context; getRandomValues does not.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function setStatus(text, isError = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle('error', isError);
  }

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Keeps the newest message in view unless the reader scrolled up.
  function append(node) {
    const m = ui.messages;
    const atBottom = m.scrollHeight - m.scrollTop - m.clientHeight < 40;
    m.append(node);
    if (atBottom) m.scrollTop = m.scrollHeight;
  }

  function followBottom() {
    const m = ui.messages;
    if (m.scrollHeight - m.scrollTop - m.clientHeight < 80) m.scrollTop = m.scrollHeight;
  }

  function notice(text) {
    append(el('p', 'notice', text));
  }

  // The composer follows the state of the current conversation.
  function refreshControls() {
    const running = turns.get(sessionId);
    ui.question.disabled = !connected;
    ui.send.disabled = !connected || !!running;
    ui.cancel.disabled = !connected || !running || running.cancelling;
    ui.newConversation.disabled = !connected;
    ui.newConversation.hidden = ui.chat.hidden;
    ui.logout.hidden = authOff || !token;
  }

  // ---- login -------------------------------------------------------------

  function showLogin(message) {
    ui.chat.hidden = true;
    ui.loginPanel.hidden = false;
    ui.loginError.textContent = message || '';
    setStatus('not logged in');
    refreshControls();
    (ui.email.value ? ui.password : ui.email).focus();
  }

  async function api(path, body) {
    let res;
    try {
      res = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (e) {
      throw new Error('cannot reach the server');
    }
    let j = null;
    try {
      j = await res.json();
    } catch {}
    if (!res.ok || !j || j.success === false) {
      throw new Error((j && j.message) || `the server answered ${res.status}`);
    }
    return j.data;
  }

  async function login(doRegister) {
    const email = ui.email.value.trim();
    const password = ui.password.value;
    if (!email || !password) {
      ui.loginError.textContent = 'Enter an email and a password.';
      return;
    }
    ui.login.disabled = ui.register.disabled = true;
    ui.loginError.textContent = '';
    try {
      if (doRegister) {
        setStatus('registering…');
        await api('/api/v1/auth/register', { email, password });
      }
      setStatus('logging in…');
      const data = await api('/api/v1/auth/login', { email, password });
      token = data.access_token;
      sessionStorage.setItem(TOKEN_KEY, token);
      ui.password.value = '';
      connect();
    } catch (e) {
      ui.loginError.textContent = e.message;
      setStatus('not logged in');
    } finally {
      ui.login.disabled = ui.register.disabled = false;
    }
  }

  ui.loginForm.addEventListener('submit', (e) => {
    e.preventDefault();
    login(false);
  });
  ui.register.addEventListener('click', () => login(true));
  ui.logout.addEventListener('click', () => {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    disconnect();
    showLogin();
  });

  // ---- the socket --------------------------------------------------------

  function disconnect() {
    clearTimeout(retryTimer);
    if (ws) {
      const old = ws;
      ws = null;
      old.onclose = old.onmessage = old.onerror = null;
      old.close(1000);
    }
    connected = false;
    failTurns('disconnected');
  }

  function connect() {
    disconnect();
    ui.loginPanel.hidden = true;
    ui.chat.hidden = false;
    setStatus('connecting…');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = token ? `?token=${encodeURIComponent(token)}` : '';
    const sock = new WebSocket(`${proto}//${location.host}/ws/chat${q}`);
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
    };
    sock.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      onMessage(msg);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      const was = connected;
      connected = false;
      failTurns('connection lost');
      if (!opened && !authOff) {
        // The upgrade was refused: no token, or an expired or foreign one.
        const had = !!token;
        token = null;
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(had ? 'Your session ended; please log in again.' : '');
        return;
      }
      if (was) retryMs = 1000;
      const why = ev.code === 1001 ? 'server going away' : ev.code === 1008 ? 'closed by the server' : 'disconnected';
      setStatus(`${why} — reconnecting in ${Math.round(retryMs / 1000)} s`, true);
      refreshControls();
      retryTimer = setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    };
    refreshControls();
  }

  function send(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  // ---- turns -------------------------------------------------------------

  function startTurn(question) {
    append(el('div', 'question', question));
    const bubble = el('div', 'answer');
    bubble.dataset.state = 'streaming';
    bubble.setAttribute('aria-busy', 'true');
    const textEl = el('span', 'text');
    const text = document.createTextNode('');
    textEl.append(text);
    const meta = el('span', 'meta', 'sending…');
    bubble.append(textEl, meta);
    append(bubble);
    const turn = { sessionId, bubble, text, meta, cancelling: false };
    turns.set(sessionId, turn);
    return turn;
  }

  function finish(sid, state, metaText) {
    const t = turns.get(sid);
    if (!t) return;
    turns.delete(sid);
    t.bubble.dataset.state = state;
    t.bubble.removeAttribute('aria-busy');
    t.meta.textContent = metaText;
    refreshControls();
  }

  function failTurns(why) {
    for (const sid of [...turns.keys()]) finish(sid, 'error', why);
  }

  function ms(v) {
    return typeof v === 'number' ? `${Math.round(v)} ms` : '?';
  }

  function onMessage(msg) {
    const t = msg.session_id !== undefined ? turns.get(msg.session_id) : undefined;
    switch (msg.type) {
      case 'connected':
        connected = true;
        retryMs = 1000;
        setStatus(`connected${msg.server ? ` · ${msg.server}` : ''}`);
        refreshControls();
        ui.question.focus();
        break;
      case 'status':
        if (t) t.meta.textContent = `${msg.message || msg.status}…`;
        break;
      case 'stream_start':
        if (t) {
          t.meta.textContent = 'generating…';
          if (msg.conversation_id) t.bubble.dataset.conversationId = msg.conversation_id;
        }
        break;
      case 'token':
        if (t && typeof msg.token === 'string') {
          t.text.appendData(msg.token);
          followBottom();
        }
        break;
      case 'tool_call':
        if (t) t.meta.textContent = `tool ${msg.name}…`;
        break;
      case 'stream_end':
        if (msg.reason === 'cancelled') finish(msg.session_id, 'cancelled', 'cancelled');
        break;
      case 'complete': {
        if (!t) break;
        const a = msg.answer || {};
        if (typeof a.text === 'string') t.text.data = a.text;
        const md = msg.metadata || {};
        const parts = [];
        if (a.model_used) parts.push(a.model_used);
        parts.push(`first token ${ms(md.ttft_ms)}`, `total ${ms(md.total_ms)}`);
        finish(msg.session_id, 'complete', parts.join(' · '));
        break;
      }
      case 'error': {
        const e = msg.error || {};
        const text = `${e.code || 'ERROR'}: ${e.message || 'unknown error'}`;
        if (t) finish(msg.session_id, 'error', text);
        // (NOT_FOUND for a session with no turn: a cancel that crossed its completion)
        else if (!(e.code === 'NOT_FOUND' && msg.session_id)) setStatus(text, true);
        break;
      }
      case 'pong':
        break;
      default:
        break;
    }
  }

  ui.ask.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = ui.question.value.trim();
    if (!q || !connected || turns.has(sessionId)) return;
    const turn = startTurn(q);
    if (!send({ type: 'query', session_id: turn.sessionId, question: q })) {
      finish(turn.sessionId, 'error', 'not connected');
      return;
    }
    ui.question.value = '';
    refreshControls();
  });

  ui.question.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ui.ask.requestSubmit();
    }
  });

  ui.cancel.addEventListener('click', () => {
    const t = turns.get(sessionId);
    if (!t || t.cancelling) return;
    t.cancelling = true;
    t.meta.textContent = 'cancelling…';
    send({ type: 'cancel', session_id: t.sessionId });
    refreshControls();
  });

  ui.newConversation.addEventListener('click', () => {
    sessionId = newSessionId();
    append(el('p', 'new-conversation', 'new conversation'));
    refreshControls();
    ui.question.focus();
  });

  // ---- start -------------------------------------------------------------

  if (authOff || token) connect();
  else showLogin();
})();
