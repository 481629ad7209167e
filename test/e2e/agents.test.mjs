// Agents (issue 11 items 2 and 9) against a real PostgreSQL and chatloop-mock:
// CRUD, every field validated with a 400 naming it, names unique per user,
// another user's agent 404 everywhere (routes, conversation create, the
// turn's agent_id over REST, /api/v1/chat and WebSocket — with nothing
// stored), the agent's values in the upstream request (recorded by the mock)
// with the precedence turn > conversation > agent > configuration, and an
// agent deleted under its conversations (still readable, still chatting).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { checkErrorEnvelope, makeTest } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { MODEL, checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, assertKeys, eventually, newUser, startChatServer, streamTurn } from './lib/chat.mjs';
import { connect, newSid } from './lib/ws.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 3, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { retries: 0 });
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const KEYS = ['id', 'name', 'system_prompt', 'model', 'temperature', 'max_tokens', 'top_p', 'reasoning_effort',
  'k', 'collection', 'tools', 'created_at', 'updated_at'];
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const NOBODY = '00000000-0000-4000-8000-000000000000';

const call = (u, method, path, body) => api(srv.port, method, path, { token: u.token, body });
const createAgent = async (u, body) => checkOkEnvelope(assert, await call(u, 'POST', '/api/v1/agents', body), 201);
const createConv = async (u, body = {}) => checkOkEnvelope(assert, await call(u, 'POST', '/api/v1/conversations', body), 201);
const count = async (sql, params) => (await pg.query(sql, params)).rows[0].n;

let seq = 0;
const unique = (tag) => `${tag}-${process.pid}-${Date.now()}-${++seq}`;

/** The one upstream request whose last message is `text`. */
async function upstreamFor(text) {
  const reqs = await eventually(async () => {
    const all = (await mock.requests()).filter((r) => r.path.endsWith('/chat/completions')
      && r.body?.messages?.at(-1)?.content === text);
    return all.length && all;
  }, 3000, `the upstream request for ${text}`);
  assert.equal(reqs.length, 1, `exactly one upstream request ends with ${text}`);
  return reqs[0].body;
}

/** A turn in conversation `id` (plain, not streamed); returns the upstream request it made. */
async function turnIn(u, id, extra = {}) {
  const message = unique('q');
  checkOkEnvelope(assert, await call(u, 'POST', `/api/v1/conversations/${id}/messages`, { message, ...extra }));
  return upstreamFor(message);
}

// ---- CRUD ---------------------------------------------------------------------------

test('create → 201 with every field; get; list newest first with limit/offset; patch a subset; null clears; delete', async () => {
  const u = await newUser(srv.port);
  const a = await createAgent(u, {
    name: 'Support ☎', system_prompt: 'You answer support calls.', model: 'agent-model', temperature: 0.3,
    max_tokens: 77, top_p: 0.9, reasoning_effort: 'low', k: 4, collection: 'faq', tools: ['tasks'],
  });
  assertKeys(assert, a, KEYS, 'agent');
  assert.match(a.id, /^[0-9a-f-]{36}$/);
  assert.deepEqual({ ...a, id: 0, created_at: 0, updated_at: 0 }, {
    id: 0, name: 'Support ☎', system_prompt: 'You answer support calls.', model: 'agent-model', temperature: 0.3,
    max_tokens: 77, top_p: 0.9, reasoning_effort: 'low', k: 4, collection: 'faq', tools: ['tasks'],
    created_at: 0, updated_at: 0,
  });
  assert.match(a.created_at, ISO);
  assert.match(a.updated_at, ISO);
  const row = (await pg.query('SELECT user_id, name, temperature, k, tools FROM agents WHERE id = $1', [a.id])).rows[0];
  assert.deepEqual(row, { user_id: u.userId, name: 'Support ☎', temperature: 0.3, k: 4, tools: ['tasks'] });

  // only a name: the rest is unset (k 0, tools [])
  const b = await createAgent(u, { name: 'bare' });
  assert.deepEqual([b.system_prompt, b.model, b.temperature, b.max_tokens, b.top_p, b.reasoning_effort, b.k, b.collection, b.tools],
    [null, null, null, null, null, null, 0, null, []]);

  const got = checkOkEnvelope(assert, await call(u, 'GET', `/api/v1/agents/${a.id}`));
  assert.deepEqual(got, a);

  const c = await createAgent(u, { name: 'third' });
  const all = checkOkEnvelope(assert, await call(u, 'GET', '/api/v1/agents'));
  assert.deepEqual(all.agents.map((x) => x.id), [c.id, b.id, a.id], 'newest first');
  assert.equal(all.next_offset, null);
  assertKeys(assert, all.agents[2], KEYS, 'listed agent');
  const p1 = checkOkEnvelope(assert, await call(u, 'GET', '/api/v1/agents?limit=2'));
  assert.deepEqual(p1.agents.map((x) => x.id), [c.id, b.id]);
  assert.equal(p1.next_offset, 2);
  const p2 = checkOkEnvelope(assert, await call(u, 'GET', `/api/v1/agents?limit=2&offset=${p1.next_offset}`));
  assert.deepEqual(p2.agents.map((x) => x.id), [a.id]);
  assert.equal(p2.next_offset, null);
  for (const q of ['?limit=0', '?limit=101', '?limit=x', '?offset=-1', '?offset=y']) {
    const r = await call(u, 'GET', `/api/v1/agents${q}`);
    const field = q.slice(1, q.indexOf('='));
    assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, field, q);
  }

  // a subset changes only itself
  const p = checkOkEnvelope(assert, await call(u, 'PATCH', `/api/v1/agents/${a.id}`, { temperature: 1.25, name: 'Support 2' }));
  assert.deepEqual({ ...p, updated_at: 0 }, { ...a, temperature: 1.25, name: 'Support 2', updated_at: 0 });
  assert.ok(p.updated_at > a.updated_at, 'updated_at moves');
  // null clears: optional fields to null, k to 0, tools to []
  const cleared = checkOkEnvelope(assert, await call(u, 'PATCH', `/api/v1/agents/${a.id}`, {
    system_prompt: null, model: null, temperature: null, max_tokens: null, top_p: null, reasoning_effort: null,
    k: null, collection: null, tools: null,
  }));
  assert.deepEqual([cleared.name, cleared.system_prompt, cleared.model, cleared.temperature, cleared.max_tokens, cleared.top_p,
    cleared.reasoning_effort, cleared.k, cleared.collection, cleared.tools], ['Support 2', null, null, null, null, null, null, 0, null, []]);

  const d = checkOkEnvelope(assert, await call(u, 'DELETE', `/api/v1/agents/${a.id}`));
  assert.deepEqual(d, { id: a.id, deleted: true });
  checkErrorEnvelope(assert, await call(u, 'GET', `/api/v1/agents/${a.id}`), 404, 'NOT_FOUND');
  checkErrorEnvelope(assert, await call(u, 'DELETE', `/api/v1/agents/${a.id}`), 404, 'NOT_FOUND');
  checkErrorEnvelope(assert, await call(u, 'PATCH', `/api/v1/agents/${a.id}`, { k: 1 }), 404, 'NOT_FOUND');
});

test('every bad field → 400 INVALID_REQUEST naming it; nothing stored', async () => {
  const u = await newUser(srv.port);
  const cases = [
    [{}, 'name'],
    [{ name: null }, 'name'],
    [{ name: '' }, 'name'],
    [{ name: 5 }, 'name'],
    [{ name: 'n'.repeat(101) }, 'name'],
    [{ name: 'tab\there' }, 'name'],
    [{ name: 'x', system_prompt: 5 }, 'system_prompt'],
    [{ name: 'x', system_prompt: 's'.repeat(32769) }, 'system_prompt'],
    [{ name: 'x', model: '' }, 'model'],
    [{ name: 'x', model: 'm'.repeat(129) }, 'model'],
    [{ name: 'x', temperature: -0.1 }, 'temperature'],
    [{ name: 'x', temperature: 2.01 }, 'temperature'],
    [{ name: 'x', temperature: '1' }, 'temperature'],
    [{ name: 'x', top_p: 1.5 }, 'top_p'],
    [{ name: 'x', top_p: -1 }, 'top_p'],
    [{ name: 'x', max_tokens: 0 }, 'max_tokens'],
    [{ name: 'x', max_tokens: 1.5 }, 'max_tokens'],
    [{ name: 'x', max_tokens: 131073 }, 'max_tokens'],
    [{ name: 'x', reasoning_effort: 'extreme' }, 'reasoning_effort'],
    [{ name: 'x', reasoning_effort: 1 }, 'reasoning_effort'],
    [{ name: 'x', k: 21 }, 'k'],
    [{ name: 'x', k: -1 }, 'k'],
    [{ name: 'x', k: 'many' }, 'k'],
    [{ name: 'x', collection: 'c'.repeat(129) }, 'collection'],
    [{ name: 'x', collection: 3 }, 'collection'],
    [{ name: 'x', tools: 'tasks' }, 'tools'],
    [{ name: 'x', tools: ['tasks', 'shell'] }, 'tools'],
    [{ name: 'x', temprature: 0.5 }, 'temprature'],
  ];
  for (const [body, field] of cases) {
    const r = await call(u, 'POST', '/api/v1/agents', body);
    const j = checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
    assert.equal(j.error.details.field, field, `${JSON.stringify(body).slice(0, 80)}: ${r.text}`);
    assert.match(j.message, new RegExp(`'${field}'|${field}`), j.message);
  }
  for (const body of ['{"name": ', '[1]', '"str"', '']) {
    checkErrorEnvelope(assert, await call(u, 'POST', '/api/v1/agents', body), 400, 'INVALID_REQUEST');
  }
  assert.equal(await count('SELECT count(*)::int AS n FROM agents WHERE user_id = $1', [u.userId]), 0);

  // PATCH: the same checks, plus an empty patch and a cleared name
  const a = await createAgent(u, { name: 'keep', temperature: 0.5 });
  for (const [body, field] of [[{}, 'body'], [{ name: null }, 'name'], [{ temperature: 3 }, 'temperature'],
    [{ tools: [1] }, 'tools'], [{ colour: 'red' }, 'colour']]) {
    const r = await call(u, 'PATCH', `/api/v1/agents/${a.id}`, body);
    assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, field, JSON.stringify(body));
  }
  const still = checkOkEnvelope(assert, await call(u, 'GET', `/api/v1/agents/${a.id}`));
  assert.deepEqual(still, a, 'a refused patch changes nothing');
});

test('a name is unique per user (409 naming it, on create and on rename); another user may use it', async () => {
  const u = await newUser(srv.port);
  const other = await newUser(srv.port);
  const a = await createAgent(u, { name: 'triage' });
  const r = await call(u, 'POST', '/api/v1/agents', { name: 'triage', model: 'x' });
  assert.equal(checkErrorEnvelope(assert, r, 409, 'INVALID_REQUEST').error.details.field, 'name');
  const b = await createAgent(other, { name: 'triage' });
  assert.notEqual(b.id, a.id);
  const c = await createAgent(u, { name: 'billing' });
  const rn = await call(u, 'PATCH', `/api/v1/agents/${c.id}`, { name: 'triage' });
  assert.equal(checkErrorEnvelope(assert, rn, 409, 'INVALID_REQUEST').error.details.field, 'name');
  assert.equal((checkOkEnvelope(assert, await call(u, 'GET', `/api/v1/agents/${c.id}`))).name, 'billing');
  assert.equal(await count('SELECT count(*)::int AS n FROM agents WHERE user_id = $1', [u.userId]), 2);
});

test("another user's agent (and a non-UUID id) is 404 on GET, PATCH, DELETE and as a conversation's agent_id", async () => {
  const u = await newUser(srv.port);
  const other = await newUser(srv.port);
  const theirs = await createAgent(other, { name: 'private', system_prompt: 'secret' });
  for (const id of [theirs.id, 'not-a-uuid', NOBODY]) {
    checkErrorEnvelope(assert, await call(u, 'GET', `/api/v1/agents/${id}`), 404, 'NOT_FOUND');
    checkErrorEnvelope(assert, await call(u, 'PATCH', `/api/v1/agents/${id}`, { name: 'mine now' }), 404, 'NOT_FOUND');
    checkErrorEnvelope(assert, await call(u, 'DELETE', `/api/v1/agents/${id}`), 404, 'NOT_FOUND');
    const r = await call(u, 'POST', '/api/v1/conversations', { agent_id: id });
    assert.equal(checkErrorEnvelope(assert, r, 404, 'NOT_FOUND').message, 'agent not found');
  }
  assert.deepEqual(checkOkEnvelope(assert, await call(other, 'GET', `/api/v1/agents/${theirs.id}`)), theirs, 'untouched');
  assert.deepEqual(checkOkEnvelope(assert, await call(u, 'GET', '/api/v1/agents')).agents, [], 'not in the list');
  assert.equal(await count('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1', [u.userId]), 0);
});

// ---- agents in turns ----------------------------------------------------------------

test("a conversation's agent reaches the upstream: its system prompt first, its model and parameters", async () => {
  const u = await newUser(srv.port);
  const a = await createAgent(u, { name: 'pirate', system_prompt: 'Talk like a pirate.', model: 'agent-model',
    temperature: 0.2, max_tokens: 55, top_p: 0.5, reasoning_effort: 'high' });
  const c = await createConv(u, { agent_id: a.id });
  assert.equal(c.agent_id, a.id);
  const first = await turnIn(u, c.id);
  assert.deepEqual(first.messages[0], { role: 'system', content: 'Talk like a pirate.' }, 'the system prompt first');
  assert.equal(first.messages.length, 2);
  assert.equal(first.model, 'agent-model');
  assert.equal(first.temperature, 0.2);
  assert.equal(first.max_tokens, 55);
  assert.equal(first.top_p, 0.5);
  assert.equal(first.reasoning_effort, 'high');
  // the second turn: system prompt, then the history
  const second = await turnIn(u, c.id);
  assert.equal(second.messages[0].content, 'Talk like a pirate.');
  assert.deepEqual(second.messages.map((m) => m.role), ['system', 'user', 'assistant', 'user']);

  // without an agent: the configuration's values
  const plain = await turnIn(u, (await createConv(u)).id);
  assert.equal(plain.messages[0].role, 'user', 'no system prompt');
  assert.equal(plain.model, MODEL);
  assert.equal(plain.temperature, 0.7);
  assert.equal(plain.max_tokens, 1024);
  assert.equal(plain.top_p, 1);
  assert.equal(plain.reasoning_effort, undefined);
});

test('precedence: turn > conversation > agent > configuration, field by field', async () => {
  const u = await newUser(srv.port);
  const a = await createAgent(u, { name: 'base', system_prompt: 'agent prompt', model: 'agent-model', temperature: 0.2,
    max_tokens: 55 });
  const b = await createAgent(u, { name: 'other', system_prompt: 'other prompt', model: 'other-model', temperature: 1.1,
    top_p: 0.25 });
  // the conversation's own prompt and model beat its agent's; the agent fills the rest
  const c = await createConv(u, { agent_id: a.id, system_prompt: 'conversation prompt', model: 'conv-model' });
  const r1 = await turnIn(u, c.id);
  assert.deepEqual([r1.messages[0].content, r1.model, r1.temperature, r1.max_tokens, r1.top_p],
    ['conversation prompt', 'conv-model', 0.2, 55, 1]);
  // the turn's own values beat everything
  const r2 = await turnIn(u, c.id, { model: 'turn-model', temperature: 1.5, max_tokens: 9, top_p: 0.75 });
  assert.deepEqual([r2.messages[0].content, r2.model, r2.temperature, r2.max_tokens, r2.top_p],
    ['conversation prompt', 'turn-model', 1.5, 9, 0.75]);
  // the turn's agent_id replaces the conversation's agent (for that turn only)
  const r3 = await turnIn(u, c.id, { agent_id: b.id });
  assert.deepEqual([r3.messages[0].content, r3.model, r3.temperature, r3.max_tokens, r3.top_p],
    ['conversation prompt', 'conv-model', 1.1, 1024, 0.25]);
  // a conversation with only an agent: the agent's prompt and model
  const c2 = await createConv(u, { agent_id: a.id });
  const r4 = await turnIn(u, c2.id, { agent_id: b.id, max_tokens: 3 });
  assert.deepEqual([r4.messages[0].content, r4.model, r4.temperature, r4.max_tokens, r4.top_p],
    ['other prompt', 'other-model', 1.1, 3, 0.25]);
  const r5 = await turnIn(u, c2.id);
  assert.deepEqual([r5.messages[0].content, r5.model, r5.temperature], ['agent prompt', 'agent-model', 0.2], 'back to its own agent');
});

test('/api/v1/chat and a WebSocket query with agent_id use the agent; the session keeps it', async () => {
  const u = await newUser(srv.port);
  const a = await createAgent(u, { name: 'chat', system_prompt: 'Be a haiku.', temperature: 0.4, max_tokens: 17, model: 'haiku-model' });

  const sid = unique('sess');
  const message = unique('chat');
  const t = await streamTurn(srv.port, '/api/v1/chat', { session_id: sid, message, agent_id: a.id }, { token: u.token });
  assert.equal(t.status, 200, t.raw);
  assert.ok(t.done, t.raw);
  const up = await upstreamFor(message);
  assert.deepEqual([up.messages[0], up.model, up.temperature, up.max_tokens],
    [{ role: 'system', content: 'Be a haiku.' }, 'haiku-model', 0.4, 17]);
  const conv = checkOkEnvelope(assert, await call(u, 'GET', `/api/v1/conversations/${t.start.conversation_id}`));
  assert.equal(conv.agent_id, a.id, 'the session-keyed conversation was created with the agent');
  // the next turn in that session, without agent_id, still uses it
  const again = unique('chat');
  checkOkEnvelope(assert, await call(u, 'POST', '/api/v1/chat', { session_id: sid, message: again }));
  assert.equal((await upstreamFor(again)).messages[0].content, 'Be a haiku.');

  const h = await connect(srv.port, { token: u.token });
  try {
    const wsid = newSid('agent');
    const question = unique('ws');
    h.send({ type: 'query', session_id: wsid, question, agent_id: a.id, temperature: 1.9 });
    const end = await h.waitFor((x) => x.of(wsid).find((m) => m.type === 'complete' || m.type === 'error'), 10000, 'complete');
    assert.equal(end.type, 'complete', JSON.stringify(end));
    const wup = await upstreamFor(question);
    assert.deepEqual([wup.messages[0].content, wup.model, wup.temperature, wup.max_tokens], ['Be a haiku.', 'haiku-model', 1.9, 17]);
  } finally {
    h.terminate();
  }
});

test("a bad agent_id in a turn (another user's, missing, not a UUID) → 404 \"agent not found\", nothing stored", async () => {
  const u = await newUser(srv.port);
  const other = await newUser(srv.port);
  const theirs = await createAgent(other, { name: 'theirs', system_prompt: 'not yours' });
  const c = await createConv(u);
  const requestsBefore = (await mock.stats()).requests;
  const sid = unique('bad');
  for (const agent_id of [theirs.id, NOBODY, 'not-a-uuid']) {
    // a turn in an existing conversation, plain and streamed
    for (const stream of [false, true]) {
      const r = await call(u, 'POST', `/api/v1/conversations/${c.id}/messages`, { message: 'hi', agent_id, stream });
      const j = checkErrorEnvelope(assert, r, 404, 'NOT_FOUND');
      assert.equal(j.message, 'agent not found', `${agent_id}: ${r.text}`);
    }
    // the session-keyed route: no conversation is created
    const r = await call(u, 'POST', '/api/v1/chat', { session_id: sid, message: 'hi', agent_id });
    assert.equal(checkErrorEnvelope(assert, r, 404, 'NOT_FOUND').message, 'agent not found', agent_id);
  }
  // a wrong type is a 400
  const r = await call(u, 'POST', '/api/v1/chat', { session_id: sid, message: 'hi', agent_id: 7 });
  assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, 'agent_id');

  const h = await connect(srv.port, { token: u.token });
  try {
    for (const agent_id of [theirs.id, NOBODY, 'not-a-uuid']) {
      const wsid = newSid('bad');
      h.send({ type: 'query', session_id: wsid, question: 'hi', agent_id });
      const e = await h.waitFor((x) => x.of(wsid).find((m) => m.type === 'error' || m.type === 'complete'), 5000, 'error');
      assert.equal(e.type, 'error', JSON.stringify(e));
      assert.deepEqual(e.error, { code: 'NOT_FOUND', message: 'agent not found' });
    }
    // the socket is still usable
    const ok = newSid('ok');
    h.send({ type: 'query', session_id: ok, question: unique('fine') });
    const end = await h.waitFor((x) => x.of(ok).find((m) => m.type === 'complete' || m.type === 'error'), 10000, 'complete');
    assert.equal(end.type, 'complete', JSON.stringify(end));
  } finally {
    h.terminate();
  }
  assert.equal(await count('SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1', [c.id]), 0,
    'no user message in the existing conversation');
  assert.equal(await count('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1', [u.userId]), 2,
    'only the created conversation and the good WebSocket query\'s');
  assert.equal(await count('SELECT count(*)::int AS n FROM conversations WHERE session_key = $1', [sid]), 0);
  assert.equal((await mock.stats()).requests, requestsBefore + 1, 'only the good query reached the provider');
  assert.deepEqual(checkOkEnvelope(assert, await call(other, 'GET', `/api/v1/agents/${theirs.id}`)), theirs);
});

test('deleting an agent leaves its conversations readable, and they chat with the configuration', async () => {
  const u = await newUser(srv.port);
  const a = await createAgent(u, { name: 'gone', system_prompt: 'Soon deleted.', temperature: 0.1, max_tokens: 5 });
  const c = await createConv(u, { agent_id: a.id, title: 'kept' });
  const before = await turnIn(u, c.id);
  assert.equal(before.messages[0].content, 'Soon deleted.');
  checkOkEnvelope(assert, await call(u, 'DELETE', `/api/v1/agents/${a.id}`));
  const conv = checkOkEnvelope(assert, await call(u, 'GET', `/api/v1/conversations/${c.id}`));
  assert.equal(conv.title, 'kept');
  assert.equal(conv.agent_id, null);
  assert.equal(conv.messages.length, 2, 'its messages are kept');
  const afterTurn = await turnIn(u, c.id);
  assert.deepEqual(afterTurn.messages.map((m) => m.role), ['user', 'assistant', 'user'], 'no system prompt any more');
  assert.equal(afterTurn.temperature, 0.7);
  assert.equal(afterTurn.max_tokens, 1024);
  assert.equal(afterTurn.model, MODEL);
});

// Last: it stops the database.
test('the database down → 503 DB_UNAVAILABLE on every agent route', async () => {
  const u = await newUser(srv.port);
  const a = await createAgent(u, { name: 'offline' });
  await pg.halt();
  try {
    for (const [method, path, body] of [['POST', '/api/v1/agents', { name: 'x' }], ['GET', '/api/v1/agents'],
      ['GET', `/api/v1/agents/${a.id}`], ['PATCH', `/api/v1/agents/${a.id}`, { k: 2 }], ['DELETE', `/api/v1/agents/${a.id}`]]) {
      const r = await eventually(async () => {
        const x = await call(u, method, path, body);
        return x.status === 503 && x;
      }, 10000, `${method} ${path} → 503`);
      checkErrorEnvelope(assert, r, 503, 'DB_UNAVAILABLE');
      assert.equal(r.headers['retry-after'], '1');
    }
  } finally {
    await pg.restart();
  }
});
