// Conversations over REST against a real PostgreSQL: create, list (newest
// first, paginated), get with messages in order, delete; bad input named;
// one user never sees another's conversations (404, never 403).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { checkErrorEnvelope, makeTest } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, assertKeys, newUser, startChatServer } from './lib/chat.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 4, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg);
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const create = async (u, body = {}) =>
  checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body }), 201);
const list = async (u, query = '') =>
  checkOkEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations${query}`, { token: u.token }));

test('create with title, system_prompt, model → 201 with the conversation; stored for the caller', async () => {
  const u = await newUser(srv.port);
  const c = await create(u, { title: 'Trip plans ✈', system_prompt: 'You are a travel agent.', model: 'my-model' });
  assertKeys(assert, c, ['id', 'title', 'agent_id', 'system_prompt', 'model', 'created_at', 'updated_at'], 'c');
  assert.match(c.id, /^[0-9a-f-]{36}$/);
  assert.equal(c.title, 'Trip plans ✈');
  assert.equal(c.system_prompt, 'You are a travel agent.');
  assert.equal(c.model, 'my-model');
  assert.equal(c.agent_id, null);
  assert.match(c.created_at, ISO);
  const row = (await pg.query('SELECT user_id, title, system_prompt, model, session_key FROM conversations WHERE id = $1', [c.id])).rows[0];
  assert.deepEqual(row, { user_id: u.userId, title: 'Trip plans ✈', system_prompt: 'You are a travel agent.', model: 'my-model', session_key: null });

  // every field is optional: an empty object, or no body at all
  const e = await create(u, {});
  assert.equal(e.title, null);
  assert.equal(e.system_prompt, null);
  assert.equal(e.model, null);
  const r = await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token });
  checkOkEnvelope(assert, r, 201);
});

test('create: bad fields → 400 naming the field; nothing stored', async () => {
  const u = await newUser(srv.port);
  const cases = [
    [{ title: 5 }, 'title'],
    [{ title: 'x'.repeat(201) }, 'title'],
    [{ title: 'line\nbreak' }, 'title'],
    [{ system_prompt: ['a'] }, 'system_prompt'],
    [{ system_prompt: 'x'.repeat(32769) }, 'system_prompt'],
    [{ model: '' }, 'model'],
    [{ model: 7 }, 'model'],
    [{ model: 'm'.repeat(129) }, 'model'],
    [{ agent_id: 5 }, 'agent_id'],
  ];
  for (const [body, field] of cases) {
    const r = await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body });
    const j = checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
    assert.equal(j.error.details.field, field, `${JSON.stringify(body).slice(0, 60)}: ${r.text}`);
  }
  // an agent_id that names none of the caller's agents is a missing agent: 404
  for (const agent_id of ['not-a-uuid', '00000000-0000-4000-8000-000000000000']) {
    const r = await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: { agent_id } });
    assert.equal(checkErrorEnvelope(assert, r, 404, 'NOT_FOUND').message, 'agent not found', agent_id);
  }
  for (const body of ['{"title": ', '[1]', '"str"']) {
    checkErrorEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body }), 400, 'INVALID_REQUEST');
  }
  const n = (await pg.query('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1', [u.userId])).rows[0].n;
  assert.equal(n, 0);
});

test('list: newest first, paginated with limit and before; bad limit/before → 400 naming it', async () => {
  const u = await newUser(srv.port);
  const made = [];
  for (let i = 0; i < 7; i++) made.push((await create(u, { title: `c${i}` })).id);
  const newestFirst = [...made].reverse();

  const all = await list(u);
  assert.deepEqual(all.conversations.map((c) => c.id), newestFirst);
  assert.equal(all.next_before, null);
  const c0 = all.conversations[0];
  assertKeys(assert, c0, ['id', 'title', 'agent_id', 'model', 'created_at', 'updated_at', 'message_count'], 'c0');
  assert.equal(c0.title, 'c6');
  assert.equal(c0.message_count, 0);

  const seen = [];
  let cursor = null;
  const pages = [];
  do {
    const page = await list(u, `?limit=3${cursor ? `&before=${encodeURIComponent(cursor)}` : ''}`);
    assert.ok(page.conversations.length <= 3);
    pages.push(page.conversations.length);
    seen.push(...page.conversations.map((c) => c.id));
    cursor = page.next_before;
  } while (cursor && pages.length < 10);
  assert.deepEqual(pages, [3, 3, 1]);
  assert.deepEqual(seen, newestFirst, 'pages concatenate to the whole list, nothing skipped or repeated');
  // limit = exactly what is left: no further page is announced
  const exact = await list(u, '?limit=7');
  assert.equal(exact.conversations.length, 7);
  assert.equal(exact.next_before, null);

  for (const q of ['?limit=0', '?limit=101', '?limit=x', '?limit=-1', '?limit=']) {
    const r = await api(srv.port, 'GET', `/api/v1/conversations${q}`, { token: u.token });
    assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, 'limit', q);
  }
  for (const q of ['?before=junk', '?before=123_not-a-uuid', `?before=x1_${made[0]}`]) {
    const r = await api(srv.port, 'GET', `/api/v1/conversations${q}`, { token: u.token });
    assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, 'before', q);
  }
});

test('get: the conversation with its messages in order; a turn moves it to the front of the list', async () => {
  const u = await newUser(srv.port);
  const a = await create(u, { title: 'first', system_prompt: 'Be brief.' });
  const b = await create(u, { title: 'second' });
  assert.deepEqual((await list(u)).conversations.map((c) => c.id), [b.id, a.id]);

  const turn = async (message) =>
    checkOkEnvelope(assert, await api(srv.port, 'POST', `/api/v1/conversations/${a.id}/messages`, { token: u.token, body: { message } }));
  const t1 = await turn('one');
  const t2 = await turn('two');
  const got = checkOkEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations/${a.id}`, { token: u.token }));
  assert.equal(got.id, a.id);
  assert.equal(got.title, 'first');
  assert.equal(got.system_prompt, 'Be brief.');
  assert.deepEqual(
    got.messages.map((m) => [m.role, m.content, m.status]),
    [
      ['user', 'one', 'complete'],
      ['assistant', mockText(4), 'complete'],
      ['user', 'two', 'complete'],
      ['assistant', mockText(4), 'complete'],
    ],
  );
  assert.equal(got.messages[1].id, t1.message_id);
  assert.equal(got.messages[3].id, t2.message_id);
  for (let i = 1; i < 4; i++) assert.ok(got.messages[i - 1].created_at <= got.messages[i].created_at, 'created_at ascending');
  for (const m of got.messages) assert.match(m.created_at, ISO);
  assert.equal(got.messages[1].completion_tokens, 4);

  const after = (await list(u)).conversations;
  assert.deepEqual(after.map((c) => c.id), [a.id, b.id], 'the conversation with a new turn comes first');
  assert.equal(after[0].message_count, 4);
  assert.equal(after[1].message_count, 0);

  for (const id of ['not-a-uuid', '00000000-0000-4000-8000-000000000000']) {
    checkErrorEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations/${id}`, { token: u.token }), 404, 'NOT_FOUND');
  }
});

test('delete: 200, then 404 on get and delete; its messages go, its usage stays', async () => {
  const u = await newUser(srv.port);
  const c = await create(u, { title: 'doomed' });
  const keep = await create(u, { title: 'kept' });
  checkOkEnvelope(assert, await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: u.token, body: { message: 'hello' } }));
  const del = checkOkEnvelope(assert, await api(srv.port, 'DELETE', `/api/v1/conversations/${c.id}`, { token: u.token }));
  assert.deepEqual(del, { id: c.id, deleted: true });
  checkErrorEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations/${c.id}`, { token: u.token }), 404, 'NOT_FOUND');
  checkErrorEnvelope(assert, await api(srv.port, 'DELETE', `/api/v1/conversations/${c.id}`, { token: u.token }), 404, 'NOT_FOUND');
  checkErrorEnvelope(
    assert,
    await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: u.token, body: { message: 'still there?' } }),
    404,
    'NOT_FOUND',
  );
  assert.deepEqual((await list(u)).conversations.map((x) => x.id), [keep.id]);
  const msgs = (await pg.query('SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1', [c.id])).rows[0].n;
  assert.equal(msgs, 0, 'messages deleted with the conversation');
  const usage = (await pg.query('SELECT count(*)::int AS n FROM usage_events WHERE user_id = $1 AND conversation_id IS NULL', [u.userId])).rows[0].n;
  assert.equal(usage, 1, 'the usage event stays, detached');
  const totals = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: u.token })).totals;
  assert.equal(totals.turns, 1);
});

test('two users are isolated: B gets 404 on everything of A\'s and sees an empty list', async () => {
  const A = await newUser(srv.port);
  const B = await newUser(srv.port);
  const c = await create(A, { title: 'private', system_prompt: 'secret prompt' });
  checkOkEnvelope(assert, await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: A.token, body: { message: 'my secret' } }));
  const requestsBefore = (await mock.stats()).requests;

  const get = await api(srv.port, 'GET', `/api/v1/conversations/${c.id}`, { token: B.token });
  checkErrorEnvelope(assert, get, 404, 'NOT_FOUND');
  assert.ok(!get.text.includes('secret'), get.text);
  checkErrorEnvelope(assert, await api(srv.port, 'DELETE', `/api/v1/conversations/${c.id}`, { token: B.token }), 404, 'NOT_FOUND');
  checkErrorEnvelope(
    assert,
    await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: B.token, body: { message: 'let me in' } }),
    404,
    'NOT_FOUND',
  );
  const sse = await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: B.token, body: { message: 'x', stream: true } });
  checkErrorEnvelope(assert, sse, 404, 'NOT_FOUND');
  assert.deepEqual(await list(B), { conversations: [], next_before: null });
  const bu = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: B.token }));
  assert.deepEqual(bu, { usage: [], totals: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, turns: 0 } });
  assert.equal((await mock.stats()).requests, requestsBefore, 'nothing of B\'s reached the provider');

  // A's conversation is untouched by B's attempts
  const mine = checkOkEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations/${c.id}`, { token: A.token }));
  assert.equal(mine.messages.length, 2);
  assert.deepEqual((await list(A)).conversations.map((x) => x.id), [c.id]);
  // B's session key is B's alone: the same session_id makes a new conversation for B
  const sa = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/chat', { token: A.token, body: { session_id: 'shared-name', message: 'a' } }));
  const sb = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/chat', { token: B.token, body: { session_id: 'shared-name', message: 'b' } }));
  assert.notEqual(sa.conversation_id, sb.conversation_id);
  assert.deepEqual((await list(B)).conversations.map((x) => x.id), [sb.conversation_id]);
  const rows = (await pg.query('SELECT DISTINCT user_id FROM messages WHERE conversation_id = $1', [sb.conversation_id])).rows;
  assert.deepEqual(rows, [{ user_id: B.userId }]);
});
