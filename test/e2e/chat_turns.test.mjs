// Chat turns through chatloop-mock with a real PostgreSQL: the envelope and
// the SSE stream (start, token..., done), history reaching the upstream,
// the session-keyed /api/v1/chat, the rows stored in order with their token
// counts, one usage event per turn, GET /api/v1/usage; and bad input to a
// turn refused with a 400 naming the field (nothing sent upstream or stored).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { checkErrorEnvelope, makeTest } from './lib/server.mjs';
import { mockPromptTokens, mockText, mockTokens, startMock } from './lib/mock.mjs';
import { MODEL, checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, assertKeys, eventually, newUser, startChatServer, streamTurn } from './lib/chat.mjs';

const N = 12;
let pg, mock, srv, short;
const test = makeTest(() => [srv, short]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: N, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { maxMessageChars: 50 });
  // the same database, two messages of history
  short = await startChatServer(mock, pg, { historyMessages: 2 });
});
after(async () => {
  try {
    await stopAll(srv, short, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const turnPath = (id) => `/api/v1/conversations/${id}/messages`;
const createConv = async (u, body = {}, s = srv) =>
  checkOkEnvelope(assert, await api(s.port, 'POST', '/api/v1/conversations', { token: u.token, body }), 201);
const turn = async (u, id, body, s = srv) =>
  checkOkEnvelope(assert, await api(s.port, 'POST', turnPath(id), { token: u.token, body }));

/** The upstream requests whose last message is `text` (oldest first). */
async function upstreamFor(text) {
  const all = await mock.requests();
  return all
    .filter((r) => r.path.endsWith('/chat/completions'))
    .filter((r) => {
      const m = r.body?.messages;
      return Array.isArray(m) && m.length && m[m.length - 1].content === text;
    });
}
const upstreamOne = async (text) => {
  const r = await upstreamFor(text);
  assert.equal(r.length, 1, `exactly one upstream request ends with ${JSON.stringify(text)}`);
  return r[0].body;
};

const messagesOf = (conversationId) =>
  pg
    .query(
      `SELECT id, role, content, status, model, prompt_tokens, completion_tokens, user_id, error,
              to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS at
         FROM messages WHERE conversation_id = $1 ORDER BY created_at, id`,
      [conversationId],
    )
    .then((r) => r.rows);
const usageOf = (conversationId) =>
  pg.query('SELECT * FROM usage_events WHERE conversation_id = $1 ORDER BY id', [conversationId]).then((r) => r.rows);

test('non-streaming turn: the envelope data of SPEC §3, the prompt sent upstream', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u, { system_prompt: 'You are terse.' });
  const d = await turn(u, c.id, { message: 'q-nonstream' });
  assertKeys(assert, d, ['response', 'model_used', 'message_id', 'conversation_id', 'usage', 'documents_retrieved', 'tool_calls'], 'd');
  assert.equal(d.response, mockText(N));
  assert.equal(d.model_used, MODEL);
  assert.equal(d.conversation_id, c.id);
  assert.match(d.message_id, /^[0-9a-f-]{36}$/);
  const sent = await upstreamOne('q-nonstream');
  assert.deepEqual(sent.messages, [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'q-nonstream' },
  ]);
  assert.equal(sent.model, MODEL);
  assert.equal(sent.stream, true, 'always streamed upstream');
  const prompt = mockPromptTokens(sent.messages);
  assert.deepEqual(d.usage, { prompt_tokens: prompt, completion_tokens: N, total_tokens: prompt + N });
  assert.deepEqual(d.documents_retrieved, []);
  assert.deepEqual(d.tool_calls, []);
});

test('streaming turn (stream: true, or Accept: text/event-stream): start, tokens, done; tokens == done.response', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u);
  for (const [how, body, headers] of [
    ['stream: true', { message: 'q-sse-1' }, {}],
    ['Accept header', { message: 'q-sse-2', stream: undefined }, { accept: 'text/event-stream' }],
  ]) {
    const s = await streamTurn(srv.port, turnPath(c.id), body, { token: u.token, headers });
    assert.equal(s.status, 200, `${how}: ${s.raw}`);
    assert.match(s.headers['content-type'], /^text\/event-stream/, how);
    assert.equal(s.headers['cache-control'], 'no-store'); // user data: every API answer is no-store
    const kinds = s.events.map((e) => e.event);
    assert.deepEqual(kinds, ['start', ...Array(N).fill('token'), 'done'], `${how}: ${s.raw.slice(0, 300)}`);
    assertKeys(assert, s.start, ['conversation_id', 'message_id'], 's.start');
    assert.equal(s.start.conversation_id, c.id);
    assert.deepEqual(s.tokens, mockTokens(N), how);
    assert.equal(s.answer, mockText(N));
    assert.equal(s.done.response, s.answer);
    assert.equal(s.done.message_id, s.start.message_id);
    assert.equal(s.done.conversation_id, c.id);
    assertKeys(assert, s.done, ['response', 'model_used', 'message_id', 'conversation_id', 'usage', 'documents_retrieved', 'tool_calls'], 's.done');
    assert.equal(s.done.usage.completion_tokens, N);
    assert.ok(s.raw.endsWith('\n\n'), 'the stream ends after a complete event');
  }
  // done carries the same object as the non-streaming data
  const plain = await turn(u, c.id, { message: 'q-sse-3' });
  const s = await streamTurn(srv.port, turnPath(c.id), { message: 'q-sse-4' }, { token: u.token });
  assert.deepEqual(Object.keys(s.done), Object.keys(plain));
});

test('history reaches the upstream: the second request holds [system, user1, assistant1, user2] exactly', async () => {
  const u = await newUser(srv.port);
  // the history is spliced into the request as PostgreSQL's JSON text: escapes
  // and non-ASCII text must arrive exactly
  const sys = 'Remember "everything" \u00e9\u4e2d \\ \n\t.';
  const c = await createConv(u, { system_prompt: sys });
  const q1 = `My name is Ada ${Date.now()}`;
  const q2 = 'What is my name? \u00e9\u4e2d "quoted" \\ \n newline';
  const first = await turn(u, c.id, { message: q1 });
  const second = await streamTurn(srv.port, turnPath(c.id), { message: q2 }, { token: u.token });
  assert.ok(second.done, second.raw);
  const sent = await upstreamOne(q2);
  assert.deepEqual(sent.messages, [
    { role: 'system', content: sys },
    { role: 'user', content: q1 },
    { role: 'assistant', content: first.response },
    { role: 'user', content: q2 },
  ]);
  // and a third turn sees both exchanges
  const q3 = 'third';
  await turn(u, c.id, { message: q3 });
  assert.deepEqual(
    (await upstreamOne(q3)).messages.map((m) => [m.role, m.content]),
    [['system', sys], ['user', q1], ['assistant', mockText(N)], ['user', q2], ['assistant', mockText(N)], ['user', q3]],
  );
});

test('read your writes: a turn acknowledged to the client is in its very next request (history and GET), under concurrency', async () => {
  // 12 clients, each: 40 turns back to back in its own conversation, every
  // other one followed at once by a GET. A client that got its answer must
  // see it — in the next turn's history and in the conversation — even
  // when the next request is sent the moment the answer arrived.
  const u = await newUser(srv.port);
  const C = 12;
  const T = 40;
  const problems = [];
  await Promise.all(
    Array.from({ length: C }, async (_, ci) => {
      const c = await createConv(u);
      for (let i = 0; i < T; i++) {
        const d = await turn(u, c.id, { message: `ryw${ci}-${i}` });
        if (i % 2 === 0) continue; // the next turn goes straight on
        const g = checkOkEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations/${c.id}`, { token: u.token }));
        const tail = g.messages.slice(-2).map((m) => `${m.role}:${m.role === 'user' ? m.content : m.id}`);
        const want = [`user:ryw${ci}-${i}`, `assistant:${d.message_id}`];
        if (tail.join() !== want.join()) problems.push(`GET after turn ${ci}/${i}: ends with ${JSON.stringify(tail)}, want ${JSON.stringify(want)}`);
      }
    }),
  );
  const reqs = (await mock.requests()).filter((r) => /^ryw\d+-\d+$/.test(r.body?.messages?.at(-1)?.content ?? ''));
  assert.equal(reqs.length, C * T);
  for (const r of reqs) {
    const msgs = r.body.messages;
    const [ci, i] = msgs.at(-1).content.slice(3).split('-').map(Number);
    const want = [];
    for (let k = Math.max(0, i - 10); k < i; k++) want.push(`user:ryw${ci}-${k}`, `assistant:${mockText(N)}`);
    const got = msgs.slice(0, -1).map((m) => `${m.role}:${m.content}`);
    if (got.join('|') !== want.join('|')) problems.push(`turn ${ci}/${i} sent ${got.length} history messages, want ${want.length}`);
  }
  assert.deepEqual(problems, [], `${problems.length} stale reads in ${C * T} turns`);
});

test('history_messages bounds the history sent: the last 2 messages only', async () => {
  const u = await newUser(short.port);
  const c = await createConv(u, { system_prompt: 'S' }, short);
  for (const m of ['h1', 'h2', 'h3']) await turn(u, c.id, { message: m }, short);
  assert.deepEqual(
    (await upstreamOne('h3')).messages,
    [{ role: 'system', content: 'S' }, { role: 'user', content: 'h2' }, { role: 'assistant', content: mockText(N) }, { role: 'user', content: 'h3' }],
  );
});

test('model: the conversation\'s model goes upstream; a turn\'s model overrides it', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u, { model: 'conv-model' });
  const d1 = await turn(u, c.id, { message: 'q-model-1' });
  assert.equal((await upstreamOne('q-model-1')).model, 'conv-model');
  assert.equal(d1.model_used, 'conv-model');
  const d2 = await turn(u, c.id, { message: 'q-model-2', model: 'turn-model', temperature: 0.2, max_tokens: 50, top_p: 0.5 });
  const sent = await upstreamOne('q-model-2');
  assert.equal(sent.model, 'turn-model');
  assert.equal(sent.temperature, 0.2);
  assert.equal(sent.max_tokens, 50);
  assert.equal(sent.top_p, 0.5);
  assert.equal(d2.model_used, 'turn-model');
  const rows = await eventually(async () => {
    const r = await messagesOf(c.id);
    return r.length === 4 && r;
  }, 3000, 'four messages');
  assert.deepEqual(rows.filter((m) => m.role === 'assistant').map((m) => m.model), ['conv-model', 'turn-model']);
});

test('session-keyed /api/v1/chat: created on first use, reused after (same conversation_id, history sent)', async () => {
  const u = await newUser(srv.port);
  const sid = `sess-${Date.now()}`;
  const first = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: sid, message: 'session hello' } }));
  assert.equal(first.response, mockText(N));
  const conv = (await pg.query('SELECT id, user_id, session_key, title FROM conversations WHERE session_key = $1', [sid])).rows;
  assert.deepEqual(conv, [{ id: first.conversation_id, user_id: u.userId, session_key: sid, title: 'session hello' }]);

  const second = await streamTurn(srv.port, '/api/v1/chat', { session_id: sid, message: 'session again' }, { token: u.token });
  assert.equal(second.start.conversation_id, first.conversation_id);
  assert.equal(second.done.conversation_id, first.conversation_id);
  assert.deepEqual((await upstreamOne('session again')).messages, [
    { role: 'user', content: 'session hello' },
    { role: 'assistant', content: mockText(N) },
    { role: 'user', content: 'session again' },
  ]);
  const third = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: sid, message: 'third' } }));
  assert.equal(third.conversation_id, first.conversation_id);
  assert.equal((await pg.query('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1', [u.userId])).rows[0].n, 1);
  // a new session id is a new conversation; the conversation is a normal one
  const other = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: `${sid}-b`, message: 'x' } }));
  assert.notEqual(other.conversation_id, first.conversation_id);
  const got = checkOkEnvelope(assert, await api(srv.port, 'GET', `/api/v1/conversations/${first.conversation_id}`, { token: u.token }));
  await eventually(async () => (await messagesOf(first.conversation_id)).length === 6, 3000, 'six messages');
  assert.ok(got.messages.length >= 5);

  // concurrent first uses of one session id: one conversation
  const sid2 = `race-${Date.now()}`;
  const racers = await Promise.all(
    Array.from({ length: 8 }, (_, i) => api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: sid2, message: `r${i}` } })),
  );
  const ids = new Set(racers.map((r) => checkOkEnvelope(assert, r).conversation_id));
  assert.equal(ids.size, 1, 'one conversation for one session id');
});

test('rows stored in order with the token counts reported; one usage event per turn; GET /api/v1/usage sums them', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u, { system_prompt: 'sys' });
  const reported = [];
  const sent = ['m1', 'm2 a bit longer', 'm3'];
  for (const [i, m] of sent.entries()) {
    if (i % 2) {
      const s = await streamTurn(srv.port, turnPath(c.id), { message: m }, { token: u.token });
      reported.push(s.done);
    } else {
      reported.push(await turn(u, c.id, { message: m }));
    }
  }
  const rows = await eventually(async () => {
    const r = await messagesOf(c.id);
    return r.length === 6 && r;
  }, 3000, 'six messages stored');
  assert.deepEqual(rows.map((r) => r.role), ['user', 'assistant', 'user', 'assistant', 'user', 'assistant']);
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].at < rows[i].at, `created_at strictly ascending: ${rows[i - 1].at} < ${rows[i].at}`);
  for (const [i, m] of sent.entries()) {
    const user = rows[2 * i];
    const asst = rows[2 * i + 1];
    const r = reported[i];
    assert.equal(user.content, m);
    assert.equal(user.status, 'complete');
    assert.equal(user.user_id, u.userId);
    assert.equal(asst.id, r.message_id);
    assert.equal(asst.content, r.response);
    assert.equal(asst.status, 'complete');
    assert.equal(asst.error, null);
    assert.equal(asst.model, r.model_used);
    assert.equal(asst.prompt_tokens, r.usage.prompt_tokens);
    assert.equal(asst.completion_tokens, r.usage.completion_tokens);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  }
  const ev = await usageOf(c.id);
  assert.equal(ev.length, 3, 'one usage event per turn');
  for (const [i, e] of ev.entries()) {
    const r = reported[i];
    assert.equal(e.user_id, u.userId);
    assert.equal(e.message_id, r.message_id);
    assert.equal(e.idempotency_key, `turn:${r.message_id}`);
    assert.equal(e.source, 'chat');
    assert.equal(e.estimated, false);
    assert.equal(e.model, r.model_used);
    assert.deepEqual([e.prompt_tokens, e.completion_tokens, e.total_tokens], [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens]);
  }

  const usage = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: u.token }));
  const sum = (k) => reported.reduce((a, r) => a + r.usage[k], 0);
  assert.deepEqual(usage.totals, { prompt_tokens: sum('prompt_tokens'), completion_tokens: sum('completion_tokens'), total_tokens: sum('total_tokens'), turns: 3 });
  const today = new Date().toISOString().slice(0, 10);
  assert.deepEqual(usage.usage, [{ day: today, model: MODEL, ...usage.totals }]);
  const one = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage?days=1', { token: u.token }));
  assert.deepEqual(one.totals, usage.totals);
  for (const q of ['?days=0', '?days=367', '?days=x']) {
    const r = await api(srv.port, 'GET', `/api/v1/usage${q}`, { token: u.token });
    assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, 'days');
  }
});

test('bad turn input → 400 naming the field; malformed JSON → 400; nothing upstream, nothing stored', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u);
  const requestsBefore = (await mock.stats()).requests;
  const fifty = 'é'.repeat(50); // 50 characters (100 bytes): at the limit
  const cases = [
    [{}, 'message'],
    [{ stream: true }, 'message'],
    [{ message: 42 }, 'message'],
    [{ message: null }, 'message'],
    [{ message: ['hi'] }, 'message'],
    [{ message: { text: 'hi' } }, 'message'],
    [{ message: true }, 'message'],
    [{ message: '' }, 'message'],
    [{ message: 'x'.repeat(51) }, 'message'],
    [{ message: fifty + 'é' }, 'message'],
    [{ message: 'hi', stream: 'yes' }, 'stream'],
    [{ message: 'hi', stream: 1 }, 'stream'],
    [{ message: 'hi', temperature: '0.5' }, 'temperature'],
    [{ message: 'hi', temperature: 3 }, 'temperature'],
    [{ message: 'hi', temperature: -0.1 }, 'temperature'],
    [{ message: 'hi', max_tokens: 1.5 }, 'max_tokens'],
    [{ message: 'hi', max_tokens: '10' }, 'max_tokens'],
    [{ message: 'hi', max_tokens: 0 }, 'max_tokens'],
    [{ message: 'hi', top_p: 'all' }, 'top_p'],
    [{ message: 'hi', top_p: 1.5 }, 'top_p'],
    [{ message: 'hi', model: 5 }, 'model'],
    [{ message: 'hi', model: '' }, 'model'],
    [{ message: 'hi', reasoning_effort: 'max' }, 'reasoning_effort'],
    [{ message: 'hi', k: -1 }, 'k'],
    [{ message: 'hi', tools: 'tasks' }, 'tools'],
  ];
  for (const [path, extra] of [[turnPath(c.id), {}], ['/api/v1/chat', { session_id: 'bad-input' }]]) {
    for (const [body, field] of cases) {
      for (const streamFlag of [undefined, true]) {
        const b = { ...extra, ...body };
        if (streamFlag && field !== 'stream') b.stream = true;
        const r = await api(srv.port, 'POST', path, { token: u.token, body: b });
        const j = checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
        assert.equal(j.error.details.field, field, `${path} ${JSON.stringify(b).slice(0, 80)}: ${r.text}`);
        assert.match(j.message, new RegExp(field), r.text);
      }
    }
    for (const body of ['{"message": "hi",', '{"message": "hi"} trailing', 'message=hi', '', '\u00ff']) {
      const r = await api(srv.port, 'POST', path, { token: u.token, body });
      checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
    }
    // valid JSON but not an object (scalars are refused by the parser already)
    for (const body of ['[]', '[{"message": "hi"}]', '"hi"', '42', 'null']) {
      const r = await api(srv.port, 'POST', path, { token: u.token, body });
      const j = checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
      if (body.startsWith('[')) assert.equal(j.error.details.field, 'body', r.text);
    }
  }
  const big = await api(srv.port, 'POST', turnPath(c.id), { token: u.token, body: { message: 'x'.repeat(51) } });
  assert.match(big.j.message, /51 characters; the limit is 50/);
  // session_id on /api/v1/chat
  for (const session_id of [undefined, '', 5, null, ['a'], 'x'.repeat(129)]) {
    const r = await api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id, message: 'hi' } });
    assert.equal(checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST').error.details.field, 'session_id', JSON.stringify(session_id));
  }
  assert.equal((await mock.stats()).requests, requestsBefore, 'no bad request reached the provider');
  assert.equal((await pg.query('SELECT count(*)::int AS n FROM messages WHERE user_id = $1', [u.userId])).rows[0].n, 0);
  assert.equal((await pg.query('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1', [u.userId])).rows[0].n, 1, 'no session conversation made');

  // at the limit exactly: accepted (characters, not bytes)
  const ok = await turn(u, c.id, { message: fifty });
  assert.equal(ok.response, mockText(N));
  assert.equal((await upstreamOne(fifty)).messages.at(-1).content, fifty);
});

test('unknown conversation, malformed id, another user\'s conversation → 404 (plain and streaming)', async () => {
  const A = await newUser(srv.port);
  const B = await newUser(srv.port);
  const a = await createConv(A);
  const requestsBefore = (await mock.stats()).requests;
  for (const id of ['00000000-0000-4000-8000-000000000000', 'nope', a.id]) {
    for (const stream of [false, true]) {
      const r = await api(srv.port, 'POST', turnPath(id), { token: B.token, body: { message: 'hi', stream } });
      checkErrorEnvelope(assert, r, 404, 'NOT_FOUND');
    }
  }
  assert.equal((await mock.stats()).requests, requestsBefore, 'nothing reached the provider');
  assert.equal((await pg.query('SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1', [a.id])).rows[0].n, 0);
});
