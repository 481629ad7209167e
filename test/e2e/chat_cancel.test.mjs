// Turns that do not end well, against a real PostgreSQL: a client that
// leaves mid-stream (the upstream stream is dropped, the partial answer is
// stored as cancelled with an estimated usage event), and an upstream that
// fails mid-answer or at once (an SSE error event; the answer stored with
// status error).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { RawConn, expectServing, makeTest } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, openStream, startChatServer, streamTurn } from './lib/chat.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  // 100 tokens, 30 ms apart: a 3 s answer
  mock = await startMock({ mockTokens: 100, mockTokenInterval: 30, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { retries: 0 });
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const FULL = mockText(100);
const rowsOf = (conversationId) =>
  pg
    .query('SELECT id, role, content, status, error, prompt_tokens, completion_tokens FROM messages WHERE conversation_id = $1 ORDER BY created_at, id', [conversationId])
    .then((r) => r.rows);
const usageFor = (messageId) => pg.query('SELECT * FROM usage_events WHERE message_id = $1', [messageId]).then((r) => r.rows);
const createConv = async (u) => checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);

test('client gone mid-stream: upstream aborted, answer stored as cancelled (a prefix at least as long as seen), usage estimated', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u);
  const before = await mock.stats();
  const s = openStream(srv.port, `/api/v1/conversations/${c.id}/messages`, { message: 'tell me a long story' }, { token: u.token });
  await s.waitFor((h) => h.tokens().length >= 5, 5000, 'five tokens');
  const start = s.events[0];
  assert.equal(start.event, 'start');
  const seen = s.tokens().join('');
  assert.ok(FULL.startsWith(seen), `tokens so far are the answer's start: ${seen}`);
  const t0 = Date.now();
  s.destroy();

  await mock.waitStats(
    (x) => x.streams_aborted === before.streams_aborted + 1 && x.streams_open === 0,
    1000,
    'the upstream stream aborted',
  );
  const stats = await mock.stats();
  assert.equal(stats.streams_completed, before.streams_completed, 'the upstream stream did not run to its end');

  const rows = await eventually(async () => {
    const r = await rowsOf(c.id);
    return r.length === 2 && r;
  }, 2000, 'the user message and the cancelled answer stored');
  const took = Date.now() - t0;
  assert.ok(took < 2000, `stored ${took} ms after the client left`);
  const [user, asst] = rows;
  assert.deepEqual([user.role, user.content, user.status], ['user', 'tell me a long story', 'complete']);
  assert.equal(asst.id, start.data.message_id);
  assert.equal(asst.role, 'assistant');
  assert.equal(asst.status, 'cancelled');
  assert.equal(asst.error, null);
  assert.ok(FULL.startsWith(asst.content), `stored content is a prefix of the answer: ${JSON.stringify(asst.content.slice(0, 80))}`);
  assert.ok(asst.content.length >= seen.length, `stored ${asst.content.length} chars, the client saw ${seen.length}`);
  assert.ok(asst.content.length < FULL.length, 'not the whole answer');
  assert.ok(asst.completion_tokens > 0, `completion_tokens ${asst.completion_tokens}`);

  const ev = await eventually(async () => {
    const r = await usageFor(asst.id);
    return r.length && r;
  }, 2000, 'the usage event');
  assert.equal(ev.length, 1);
  assert.equal(ev[0].estimated, true);
  assert.equal(ev[0].source, 'chat');
  assert.equal(ev[0].idempotency_key, `turn:${asst.id}`);
  assert.ok(ev[0].completion_tokens > 0, `usage completion_tokens ${ev[0].completion_tokens}`);
  assert.equal(ev[0].completion_tokens, asst.completion_tokens);
  assert.equal(ev[0].prompt_tokens, asst.prompt_tokens);
  assert.ok(ev[0].prompt_tokens > 0);
  await expectServing(srv.port);

  // the next turn in that conversation sends the cancelled partial answer as history
  const next = await streamTurn(srv.port, `/api/v1/conversations/${c.id}/messages`, { message: 'go on', max_tokens: 3 }, { token: u.token });
  assert.ok(next.done, next.raw);
  const sent = (await mock.requests()).filter((r) => r.body?.messages?.at(-1)?.content === 'go on');
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].body.messages.map((m) => m.role), ['user', 'assistant', 'user']);
  assert.equal(sent[0].body.messages[1].content, asst.content);
});

test('client gone during a non-streamed turn: the partial answer is stored as cancelled too', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u);
  const before = await mock.stats();
  const body = Buffer.from(JSON.stringify({ message: 'patience' }));
  const conn = await RawConn.open(srv.port);
  await conn.write(
    `POST /api/v1/conversations/${c.id}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${u.token}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
  await mock.waitStats((x) => x.streams_started === before.streams_started + 1, 3000, 'the upstream stream started');
  await new Promise((r) => setTimeout(r, 300)); // ~10 tokens
  conn.destroy();
  await mock.waitStats((x) => x.streams_aborted === before.streams_aborted + 1, 1000, 'the upstream stream aborted');
  const rows = await eventually(async () => {
    const r = await rowsOf(c.id);
    return r.length === 2 && r;
  }, 2000, 'two messages stored');
  const asst = rows[1];
  assert.equal(asst.status, 'cancelled');
  assert.ok(asst.content.length > 0 && FULL.startsWith(asst.content) && asst.content.length < FULL.length, asst.content);
  const ev = await eventually(async () => (await usageFor(asst.id)).at(0), 2000, 'usage event');
  assert.equal(ev.estimated, true);
  assert.ok(ev.completion_tokens > 0);
});

test('upstream cut mid-answer: SSE error event after the tokens; stored with status error and the partial text', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u);
  // model mock-cut: the mock closes the stream after half the tokens
  const s = await streamTurn(srv.port, `/api/v1/conversations/${c.id}/messages`, { message: 'cut me', model: 'mock-cut', max_tokens: 10 }, { token: u.token });
  assert.equal(s.status, 200, s.raw);
  const kinds = s.events.map((e) => e.event);
  assert.equal(kinds[0], 'start');
  assert.equal(kinds.at(-1), 'error', s.raw);
  assert.ok(!kinds.includes('done'));
  assert.equal(s.error.code, 'LLM_ERROR');
  assert.equal(typeof s.error.message, 'string');
  const partial = s.tokens.join('');
  assert.ok(partial.length > 0 && mockText(10).startsWith(partial), partial);
  const rows = await eventually(async () => {
    const r = await rowsOf(c.id);
    return r.length === 2 && r;
  }, 2000, 'two messages stored');
  assert.equal(rows[1].id, s.start.message_id);
  assert.equal(rows[1].status, 'error');
  assert.equal(rows[1].content, partial, 'what the client saw is what is stored');
  assert.ok(rows[1].error && rows[1].error.length > 0, 'the error is recorded');
  const ev = await eventually(async () => (await usageFor(rows[1].id)).at(0), 2000, 'usage event for the partial answer');
  assert.ok(ev.completion_tokens > 0);
});

test('upstream refuses at once: 502 envelope (plain) or start + error event (SSE); nothing spent, no usage row', async () => {
  const u = await newUser(srv.port);
  const c = await createConv(u);
  const plain = await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: u.token, body: { message: 'fail plain', model: 'mock-400' } });
  assert.equal(plain.status, 502, plain.text);
  assert.equal(plain.j.error.code, 'LLM_ERROR');
  const s = await streamTurn(srv.port, `/api/v1/conversations/${c.id}/messages`, { message: 'fail sse', model: 'mock-400' }, { token: u.token });
  assert.deepEqual(s.events.map((e) => e.event), ['start', 'error'], s.raw);
  assert.equal(s.error.code, 'LLM_ERROR');
  const rows = await eventually(async () => {
    const r = await rowsOf(c.id);
    return r.length === 4 && r;
  }, 2000, 'four messages stored');
  assert.deepEqual(rows.map((r) => [r.role, r.status]), [['user', 'complete'], ['assistant', 'error'], ['user', 'complete'], ['assistant', 'error']]);
  assert.deepEqual(rows.map((r) => r.content), ['fail plain', '', 'fail sse', '']);
  const n = (await pg.query('SELECT count(*)::int AS n FROM usage_events WHERE conversation_id = $1', [c.id])).rows[0].n;
  assert.equal(n, 0, 'no tokens were spent: no usage event');
});
