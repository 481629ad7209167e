// chatloop's browser client: log in (unless the server runs with auth = off),
// open /ws/chat, send questions, render the answer as its tokens stream in,
// cancel; reopen past conversations, pick or create an agent, create and
// revoke API keys. The WebSocket protocol is SPEC §4. No frameworks, no HTML
// parsing: everything the server or the user wrote goes in as text.
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
    showChat: $('show-chat'),
    showKeys: $('show-keys'),
    sidebar: $('sidebar'),
    conversations: $('conversations'),
    conversationsError: $('conversations-error'),
    loadMore: $('load-more'),
    agent: $('agent'),
    agentCreate: $('agent-create'),
    agentForm: $('agent-form'),
    agentName: $('agent-name'),
    agentPrompt: $('agent-prompt'),
    agentModel: $('agent-model'),
    agentError: $('agent-error'),
    keysPanel: $('keys-panel'),
    keyForm: $('key-form'),
    keyName: $('key-name'),
    keyNew: $('key-new'),
    keyValue: $('key-value'),
    keyCopy: $('key-copy'),
    keyDone: $('key-done'),
    keysError: $('keys-error'),
    keys: $('keys'),
    keysEmpty: $('keys-empty'),
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
  // The conversation on screen, once the server named it (stream_start) or
  // the user reopened it: later questions go to it by conversation_id.
  let conversationId = null;
  let view = 'chat'; // 'chat' | 'keys'
  let nextBefore = null; // the conversation list's cursor for "Load more"
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
    ui.agent.disabled = !!running;
    ui.logout.hidden = authOff || !token;
  }

  // ---- login -------------------------------------------------------------

  function showLogin(message) {
    ui.chat.hidden = ui.sidebar.hidden = ui.keysPanel.hidden = true;
    ui.showChat.hidden = ui.showKeys.hidden = true;
    hideNewKey();
    ui.loginPanel.hidden = false;
    ui.loginError.textContent = message || '';
    setStatus('not logged in');
    refreshControls();
    (ui.email.value ? ui.password : ui.email).focus();
  }

  // One call to the native API; resolves to the envelope's data. A refusal
  // throws with the server's own message (a 429 says when to retry).
  async function api(path, body, method = body === undefined ? 'GET' : 'POST') {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new Error('cannot reach the server');
    }
    let j = null;
    try {
      j = await res.json();
    } catch {}
    if (!res.ok || !j || j.success === false) {
      let text = (j && j.message) || `the server answered ${res.status}`;
      if (res.status === 429) {
        const d = (j && j.error && j.error.details) || {};
        const header = res.headers.get('Retry-After');
        const secs = Number.isFinite(d.retry_after) ? d.retry_after : header === null ? NaN : Number(header);
        if (Number.isFinite(secs)) text += ` — retry in ${secs} s`;
      }
      const err = new Error(text);
      err.status = res.status;
      if (res.status === 401 && token && !path.startsWith('/api/v1/auth/')) sessionEnded();
      throw err;
    }
    return j.data;
  }

  function sessionEnded() {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    disconnect();
    forgetUser();
    showLogin('Your session ended; please log in again.');
  }

  // Nothing of one account stays in the page for the next one to log in.
  function forgetUser() {
    clearConversation();
    listSeq++; // a list still loading is the old account's
    ui.conversations.replaceChildren();
    ui.loadMore.hidden = true;
    nextBefore = null;
    ui.keys.replaceChildren();
    const none = el('option', '', 'no agent');
    none.value = '';
    ui.agent.replaceChildren(none);
    ui.agentForm.reset();
    ui.agentCreate.open = false;
    for (const e of [ui.conversationsError, ui.agentError, ui.keysError]) e.textContent = '';
    view = 'chat';
  }

  function when(iso) {
    if (!iso) return 'never';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
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
    forgetUser();
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
    showView(view);
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
        loadConversations(true);
        loadAgents();
        break;
      case 'status':
        if (t) t.meta.textContent = `${msg.message || msg.status}…`;
        break;
      case 'stream_start':
        if (t) {
          t.meta.textContent = 'generating…';
          if (msg.conversation_id) {
            t.bubble.dataset.conversationId = msg.conversation_id;
            if (t.sessionId === sessionId && !conversationId) {
              conversationId = msg.conversation_id;
              markCurrent();
            }
          }
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
        loadConversations(true);
        break;
      }
      case 'error': {
        const e = msg.error || {};
        let text = `${e.code || 'ERROR'}: ${e.message || 'unknown error'}`;
        if (e.code === 'RATE_LIMITED' && Number.isFinite(msg.retry_after)) text += ` — retry in ${msg.retry_after} s`;
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
    const query = { type: 'query', session_id: turn.sessionId, question: q };
    if (conversationId) query.conversation_id = conversationId;
    if (ui.agent.value) query.agent_id = ui.agent.value;
    if (!send(query)) {
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

  // A fresh view: the next question starts a conversation of its own.
  function clearConversation() {
    sessionId = newSessionId();
    conversationId = null;
    ui.messages.replaceChildren();
    markCurrent();
  }

  ui.newConversation.addEventListener('click', () => {
    showView('chat');
    clearConversation();
    refreshControls();
    ui.question.focus();
  });

  // ---- views -------------------------------------------------------------

  function showView(name) {
    view = name;
    ui.chat.hidden = ui.sidebar.hidden = name !== 'chat';
    ui.keysPanel.hidden = name !== 'keys';
    ui.showChat.hidden = ui.showKeys.hidden = false;
    ui.showChat.setAttribute('aria-pressed', String(name === 'chat'));
    ui.showKeys.setAttribute('aria-pressed', String(name === 'keys'));
    if (name !== 'keys') hideNewKey();
    refreshControls();
  }

  ui.showChat.addEventListener('click', () => showView('chat'));
  ui.showKeys.addEventListener('click', () => {
    showView('keys');
    loadKeys();
  });

  // ---- the conversation list ---------------------------------------------

  const PAGE = 20;
  let listSeq = 0; // a newer load wins over one still in flight

  function markCurrent() {
    for (const li of ui.conversations.children) {
      if (li.dataset.id === conversationId) li.setAttribute('aria-current', 'true');
      else li.removeAttribute('aria-current');
    }
  }

  function conversationItem(c) {
    const li = el('li');
    li.dataset.id = c.id;
    const title = c.title || 'Untitled';
    const open = el('button', 'open');
    open.type = 'button';
    open.append(el('span', 'title', title), el('span', 'when', when(c.updated_at || c.created_at)));
    open.addEventListener('click', () => openConversation(c.id));
    const del = el('button', 'delete', '×');
    del.type = 'button';
    del.setAttribute('aria-label', `Delete conversation ${title}`);
    del.title = 'Delete';
    del.addEventListener('click', () => deleteConversation(c.id, title));
    li.append(open, del);
    return li;
  }

  async function loadConversations(reset) {
    const seq = ++listSeq;
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (!reset && nextBefore) q.set('before', nextBefore);
    try {
      const data = await api(`/api/v1/conversations?${q}`);
      if (seq !== listSeq) return;
      const items = (data.conversations || []).map(conversationItem);
      if (reset) ui.conversations.replaceChildren(...items);
      else ui.conversations.append(...items);
      nextBefore = data.next_before || null;
      ui.loadMore.hidden = !nextBefore;
      ui.conversationsError.textContent = '';
      markCurrent();
    } catch (e) {
      if (seq === listSeq) ui.conversationsError.textContent = e.message;
    }
  }

  ui.loadMore.addEventListener('click', () => loadConversations(false));

  async function openConversation(id) {
    let c;
    try {
      c = await api(`/api/v1/conversations/${encodeURIComponent(id)}`);
    } catch (e) {
      ui.conversationsError.textContent = e.message;
      return;
    }
    showView('chat');
    clearConversation();
    conversationId = c.id;
    for (const m of c.messages || []) {
      if (m.role === 'user') append(el('div', 'question', m.content || ''));
      else if (m.role === 'assistant') {
        const b = el('div', 'answer');
        b.dataset.state = m.status || 'complete';
        b.dataset.conversationId = c.id;
        b.append(el('span', 'text', m.content || ''), el('span', 'meta', `${m.status || 'complete'} · ${when(m.created_at)}`));
        append(b);
      }
    }
    ui.messages.scrollTop = ui.messages.scrollHeight;
    // The picker shows the conversation's own agent (or none): a turn's
    // agent_id would override the conversation's for that turn.
    ui.agent.value = c.agent_id && [...ui.agent.options].some((o) => o.value === c.agent_id) ? c.agent_id : '';
    markCurrent();
    refreshControls();
    ui.question.focus();
  }

  async function deleteConversation(id, title) {
    if (!window.confirm(`Delete the conversation "${title}" and all its messages?`)) return;
    try {
      await api(`/api/v1/conversations/${encodeURIComponent(id)}`, undefined, 'DELETE');
    } catch (e) {
      ui.conversationsError.textContent = e.message;
      return;
    }
    if (id === conversationId) clearConversation();
    loadConversations(true);
  }

  // ---- agents ------------------------------------------------------------

  async function loadAgents(select) {
    let data;
    try {
      data = await api('/api/v1/agents?limit=100');
    } catch (e) {
      ui.agentError.textContent = e.message;
      return;
    }
    const keep = select || ui.agent.value;
    const none = el('option', '', 'no agent');
    none.value = '';
    const opts = (data.agents || []).map((a) => {
      const o = el('option', '', a.model ? `${a.name} (${a.model})` : a.name);
      o.value = a.id;
      return o;
    });
    ui.agent.replaceChildren(none, ...opts);
    ui.agent.value = opts.some((o) => o.value === keep) ? keep : '';
  }

  ui.agentForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: ui.agentName.value.trim() };
    if (ui.agentPrompt.value.trim()) body.system_prompt = ui.agentPrompt.value;
    if (ui.agentModel.value.trim()) body.model = ui.agentModel.value.trim();
    ui.agentError.textContent = '';
    try {
      const a = await api('/api/v1/agents', body);
      ui.agentForm.reset();
      ui.agentCreate.open = false;
      await loadAgents(a.id);
      setStatus(`agent ${a.name} created`);
    } catch (err) {
      ui.agentError.textContent = err.message;
    }
  });

  // ---- API keys ----------------------------------------------------------
  // A new key lives only in this page's DOM until "Done": never in storage.

  function hideNewKey() {
    ui.keyValue.textContent = '';
    ui.keyNew.hidden = true;
  }

  async function loadKeys() {
    let data;
    try {
      data = await api('/api/v1/keys');
    } catch (e) {
      ui.keysError.textContent = e.message;
      return;
    }
    ui.keysError.textContent = '';
    const rows = (data.keys || []).map((k) => {
      const tr = el('tr');
      tr.dataset.id = k.id;
      const prefix = el('td');
      prefix.append(el('code', 'prefix', k.prefix));
      const act = el('td');
      const revoke = el('button', 'revoke', 'Revoke');
      revoke.type = 'button';
      revoke.setAttribute('aria-label', `Revoke key ${k.name || k.prefix}`);
      revoke.addEventListener('click', () => revokeKey(k));
      act.append(revoke);
      tr.append(el('td', 'name', k.name || '—'), prefix, el('td', '', when(k.created_at)), el('td', 'used', when(k.last_used_at)), act);
      return tr;
    });
    ui.keys.replaceChildren(...rows);
    ui.keysEmpty.hidden = rows.length > 0;
  }

  ui.keyForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {};
    if (ui.keyName.value.trim()) body.name = ui.keyName.value.trim();
    ui.keysError.textContent = '';
    try {
      const k = await api('/api/v1/keys', body);
      ui.keyForm.reset();
      ui.keyValue.textContent = k.key;
      ui.keyNew.hidden = false;
      ui.keyCopy.textContent = 'Copy';
      ui.keyCopy.focus();
      loadKeys();
    } catch (err) {
      ui.keysError.textContent = err.message;
    }
  });

  ui.keyCopy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(ui.keyValue.textContent);
      ui.keyCopy.textContent = 'Copied';
    } catch {
      // No clipboard (an insecure origin): select it for Ctrl+C instead.
      getSelection().selectAllChildren(ui.keyValue);
      ui.keyCopy.textContent = 'Selected — press Ctrl+C';
    }
  });
  ui.keyDone.addEventListener('click', hideNewKey);

  async function revokeKey(k) {
    if (!window.confirm(`Revoke the key ${k.prefix}…? Programs using it stop working.`)) return;
    try {
      await api(`/api/v1/keys/${encodeURIComponent(k.id)}`, undefined, 'DELETE');
    } catch (e) {
      ui.keysError.textContent = e.message;
      return;
    }
    loadKeys();
  }

  // ---- start -------------------------------------------------------------

  if (authOff || token) connect();
  else showLogin();
})();
