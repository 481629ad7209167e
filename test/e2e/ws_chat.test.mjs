// The WebSocket chat of SPEC §4 end to end with the `ws` npm client, against
// a real PostgreSQL: the full message sequence of a query, two sessions
// interleaved on one socket, cancel (the upstream stream aborted, the
// partial answer stored as cancelled), the token checked before the upgrade
// (401), the transport's close codes (1009 too big, 1007 invalid UTF-8),
// protocol errors that leave the socket usable, 1,000 sockets streaming at
// once, and SIGTERM (running turns finish, then 1001, exit 0).
// Every wait is bounded; everything listens on 127.0.0.1.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import WebSocket from 'ws';
import { connect, newSid, openWs } from './lib/ws.mjs';
import { HOST, RawConn, makeTest, sleep, withTimeout } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { MODEL, startBuiltin, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { JWT_SECRET, assertKeys, eventually, newUser, signJwt, startChatServer } from './lib/chat.mjs';

let pg, fastMock, slowMock, srv, slowSrv, bulkSrv, termSrv, liveSrv;
const test = makeTest(() => [srv, slowSrv, bulkSrv, termSrv, liveSrv]);

const N = 12; // tokens in the fast mock's answers
const FAST = mockText(N);
const SLOW_N = 100; // 100 tokens, 30 ms apart: a 3 s answer
const SLOW = mockText(SLOW_N);

before(async () => {
  pg = await startPg();
  fastMock = await startMock({ mockTokens: N, mockTokenInterval: 5, mockFirstToken: 0 });
  slowMock = await startMock({ mockTokens: SLOW_N, mockTokenInterval: 30, mockFirstToken: 0 });
  // one at a time: each runs the migrations on the same database
  srv = await startChatServer(fastMock, pg, { retries: 0, maxWsMessageBytes: '1KiB' });
  slowSrv = await startChatServer(slowMock, pg, { retries: 0 });
});
after(async () => {
  try {
    await stopAll(srv, slowSrv, bulkSrv, termSrv, liveSrv, fastMock, slowMock);
  } finally {
    if (pg) await pg.stop();
  }
});

const isEnd = (m) => m.type === 'complete' || m.type === 'error' || (m.type === 'stream_end' && m.reason);
const finished = (sid) => (x) => x.of(sid).find(isEnd);
const complete = (sid) => (x) => x.of(sid).find((m) => m.type === 'complete' || m.type === 'error');

const rowsOf = (conversationId) =>
  pg
    .query('SELECT id, role, content, status, error FROM messages WHERE conversation_id = $1 ORDER BY created_at, id', [conversationId])
    .then((r) => r.rows);

// ---- 1. one query: the full sequence ----------------------------------------------

test('a query: connected, status loading_history, status generating, stream_start, tokens, stream_end, complete; text = tokens = the answer', async () => {
  const u = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token });
  try {
    const connected = h.msgs[0];
    assert.equal(connected.type, 'connected', 'the first message');
    assert.equal(connected.user_id, u.userId);
    assert.match(connected.server, /^chatloop\/\S+$/);

    const sid = newSid('one');
    h.send({ type: 'query', session_id: sid, question: 'say something' });
    const end = await h.waitFor(complete(sid), 10000, 'complete');
    assert.equal(end.type, 'complete', `the turn completed: ${JSON.stringify(end)}`);

    const seq = h.msgs.slice(1);
    assert.ok(seq.every((m) => m.session_id === sid), `every message after connected names the session: ${JSON.stringify(seq).slice(0, 400)}`);
    const types = seq.map((m) => (m.type === 'status' ? `status:${m.status}` : m.type));
    const compact = types.filter((t, i) => !(t === 'token' && types[i - 1] === 'token'));
    assert.deepEqual(compact, ['status:loading_history', 'status:generating', 'stream_start', 'token', 'stream_end', 'complete'], `sequence: ${types.join(' ')}`);
    for (const s of seq.filter((m) => m.type === 'status')) assert.equal(typeof s.message, 'string');

    const start = seq.find((m) => m.type === 'stream_start');
    assert.match(start.conversation_id, /^[0-9a-f-]{36}$/);
    assert.ok(!Number.isNaN(Date.parse(start.timestamp)), `stream_start.timestamp ISO 8601: ${start.timestamp}`);
    assert.match(start.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
    const se = seq.find((m) => m.type === 'stream_end');
    assert.ok(!Number.isNaN(Date.parse(se.timestamp)), `stream_end.timestamp: ${se.timestamp}`);
    assert.equal(se.reason, undefined, 'a normal end has no reason');

    const tokens = h.tokens(sid);
    assert.equal(tokens.join(''), FAST, 'the tokens are the answer');
    assertKeys(assert, end, ['session_id', 'conversation_id', 'message_id', 'answer', 'usage', 'metadata'], 'complete');
    assert.equal(end.answer.text, tokens.join(''), 'complete.answer.text = the tokens');
    assert.equal(end.answer.text, FAST);
    assert.equal(end.answer.model_used, MODEL);
    assert.equal(end.conversation_id, start.conversation_id);
    assert.match(end.message_id, /^[0-9a-f-]{36}$/);
    assert.equal(end.usage.completion_tokens, N);
    assert.equal(end.usage.total_tokens, end.usage.prompt_tokens + end.usage.completion_tokens);
    assertKeys(assert, end.metadata, ['documents_used', 'history_messages', 'ttft_ms', 'total_ms'], 'complete.metadata');
    assert.equal(end.metadata.documents_used, 0);
    assert.equal(end.metadata.history_messages, 0, 'a new conversation has no history');
    assert.equal(typeof end.metadata.ttft_ms, 'number');
    assert.equal(typeof end.metadata.total_ms, 'number');
    assert.ok(end.metadata.ttft_ms > 0 && end.metadata.ttft_ms <= end.metadata.total_ms, JSON.stringify(end.metadata));

    // stored: the user's question and the answer, complete
    const rows = await eventually(async () => {
      const r = await rowsOf(end.conversation_id);
      return r.length === 2 && r;
    }, 3000, 'two rows stored');
    assert.deepEqual(rows.map((r) => [r.role, r.content, r.status]), [
      ['user', 'say something', 'complete'],
      ['assistant', FAST, 'complete'],
    ]);
    assert.equal(rows[1].id, end.message_id);

    // the same session_id again continues the same conversation, with history
    h.msgs.length = 0;
    h.send({ type: 'query', session_id: sid, question: 'and again' });
    const end2 = await h.waitFor(complete(sid), 10000, 'second complete');
    assert.equal(end2.type, 'complete', JSON.stringify(end2));
    assert.equal(end2.conversation_id, end.conversation_id, 'session_id names the conversation');
    assert.equal(end2.metadata.history_messages, 2, JSON.stringify(end2.metadata));
  } finally {
    h.terminate();
  }
});

// ---- 2. two sessions on one socket ----------------------------------------------------

test('two concurrent sessions on one socket interleave, each with its own complete answer', async () => {
  const u = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token, bearer: true }); // Authorization: Bearer too
  try {
    const a = newSid('a');
    const b = newSid('b');
    h.send({ type: 'query', session_id: a, question: 'first' });
    h.send({ type: 'query', session_id: b, question: 'second' });
    await h.waitFor((x) => complete(a)(x) && complete(b)(x), 10000, 'both complete');
    const ea = complete(a)(h);
    const eb = complete(b)(h);
    assert.equal(ea.type, 'complete', JSON.stringify(ea));
    assert.equal(eb.type, 'complete', JSON.stringify(eb));
    assert.equal(h.tokens(a).join(''), FAST);
    assert.equal(h.tokens(b).join(''), FAST);
    assert.equal(ea.answer.text, FAST);
    assert.equal(eb.answer.text, FAST);
    assert.notEqual(ea.conversation_id, eb.conversation_id, 'two sessions, two conversations');
    assert.notEqual(ea.message_id, eb.message_id);
    // each session's own order holds
    for (const sid of [a, b]) {
      const types = h.of(sid).map((m) => m.type);
      assert.ok(types.indexOf('stream_start') < types.indexOf('token'), types.join(' '));
      assert.equal(types.lastIndexOf('token') < types.indexOf('stream_end'), true, types.join(' '));
      assert.equal(types.at(-1), 'complete');
      assert.equal(types.at(-2), 'stream_end');
    }
    // and they really ran at once: b's tokens began before a's complete
    const firstTokB = h.msgs.findIndex((m) => m.session_id === b && m.type === 'token');
    const doneA = h.msgs.findIndex((m) => m.session_id === a && m.type === 'complete');
    const firstTokA = h.msgs.findIndex((m) => m.session_id === a && m.type === 'token');
    const doneB = h.msgs.findIndex((m) => m.session_id === b && m.type === 'complete');
    assert.ok(firstTokB < doneA && firstTokA < doneB, `interleaved: tokens of each before the other completes (${firstTokA} ${doneA} ${firstTokB} ${doneB})`);
    // only the two sessions' messages (and connected)
    assert.ok(h.msgs.every((m) => m.type === 'connected' || m.session_id === a || m.session_id === b));
  } finally {
    h.terminate();
  }
});

// ---- 3. cancel ----------------------------------------------------------------------------

test('cancel: stream_end reason cancelled, the upstream stream aborted, the partial answer stored as cancelled', async () => {
  const u = await newUser(slowSrv.port);
  const h = await connect(slowSrv.port, { token: u.token });
  try {
    const before = await slowMock.stats();
    const sid = newSid('c');
    h.send({ type: 'query', session_id: sid, question: 'a long story please' });
    await h.waitFor((x) => x.tokens(sid).length >= 5, 5000, 'five tokens');
    const start = h.of(sid).find((m) => m.type === 'stream_start');
    const seen = h.tokens(sid).join('');
    assert.ok(SLOW.startsWith(seen));
    const t0 = Date.now();
    h.send({ type: 'cancel', session_id: sid });
    const end = await h.waitFor((x) => x.of(sid).find((m) => m.type === 'stream_end'), 2000, 'stream_end');
    assert.equal(end.reason, 'cancelled', JSON.stringify(end));
    assert.ok(Date.now() - t0 < 1000, `stream_end ${Date.now() - t0} ms after cancel`);

    await slowMock.waitStats(
      (x) => x.streams_aborted === before.streams_aborted + 1 && x.streams_open === 0,
      2000,
      'the upstream stream aborted',
    );
    const stats = await slowMock.stats();
    assert.equal(stats.streams_completed, before.streams_completed, 'the upstream stream did not run to its end');

    const rows = await eventually(async () => {
      const r = await rowsOf(start.conversation_id);
      return r.length === 2 && r[1].status !== 'streaming' && r;
    }, 3000, 'the question and the cancelled answer stored');
    const [user, asst] = rows;
    assert.deepEqual([user.role, user.content, user.status], ['user', 'a long story please', 'complete']);
    assert.equal(asst.role, 'assistant');
    assert.equal(asst.status, 'cancelled');
    assert.ok(SLOW.startsWith(asst.content), `stored a prefix: ${asst.content.slice(0, 60)}`);
    assert.ok(asst.content.length >= seen.length, `stored ${asst.content.length} chars, the client saw ${seen.length}`);
    assert.ok(asst.content.length < SLOW.length);

    // after the cancel: no complete for it, no further tokens, the socket works
    const count = h.of(sid).length;
    h.send({ type: 'ping' });
    await h.waitFor((x) => x.msgs.find((m) => m.type === 'pong'), 2000, 'pong after cancel');
    await sleep(200);
    assert.equal(h.of(sid).length, count, `nothing more for the cancelled session: ${JSON.stringify(h.of(sid).slice(count))}`);
    assert.ok(!h.of(sid).some((m) => m.type === 'complete'));

    // cancel of a session with nothing running: an error, the socket stays
    h.send({ type: 'cancel', session_id: 'nothing-here' });
    const err = await h.waitFor((x) => x.msgs.find((m) => m.type === 'error' && m.session_id === 'nothing-here'), 2000, 'error for an unknown cancel');
    assert.equal(typeof err.error.code, 'string');
    assert.equal(h.closed, null);
  } finally {
    h.terminate();
  }
});

test('per-socket cap (max_ws_sessions 8): the ninth query → RATE_LIMITED; a duplicate session_id → INVALID_REQUEST; closing the socket cancels every running turn', async () => {
  const u = await newUser(slowSrv.port);
  const h = await connect(slowSrv.port, { token: u.token });
  let closedAt = null;
  try {
    const before = await slowMock.stats();
    const sids = Array.from({ length: 9 }, (_, i) => newSid(`cap${i}`));
    for (const sid of sids) h.send({ type: 'query', session_id: sid, question: 'long' });
    const err = await h.waitFor((x) => x.of(sids[8]).find((m) => m.type === 'error'), 3000, 'the ninth refused');
    assert.equal(err.error.code, 'RATE_LIMITED', JSON.stringify(err));
    assert.match(err.error.message, /max_ws_sessions/);
    await h.waitFor((x) => sids.slice(0, 8).every((sid) => x.tokens(sid).length >= 2), 5000, 'eight turns streaming');
    await slowMock.waitStats((x) => x.streams_open === before.streams_open + 8, 2000, 'eight upstream streams');

    h.send({ type: 'query', session_id: sids[0], question: 'again' });
    const dup = await h.waitFor((x) => x.of(sids[0]).find((m) => m.type === 'error'), 2000, 'duplicate refused');
    assert.equal(dup.error.code, 'INVALID_REQUEST', JSON.stringify(dup));
    // the running one goes on
    const n = h.tokens(sids[0]).length;
    await h.waitFor((x) => x.tokens(sids[0]).length > n, 2000, 'the first session still streaming');

    const convs = sids.slice(0, 8).map((sid) => h.of(sid).find((m) => m.type === 'stream_start').conversation_id);
    h.terminate(); // the client leaves
    closedAt = Date.now();
    await slowMock.waitStats(
      (x) => x.streams_aborted === before.streams_aborted + 8 && x.streams_open === before.streams_open,
      2000,
      'eight upstream streams aborted',
    );
    assert.equal((await slowMock.stats()).streams_completed, before.streams_completed);
    const stored = await eventually(async () => {
      const r = await pg.query(
        "SELECT status, count(*)::int AS n FROM messages WHERE conversation_id = ANY($1) AND role = 'assistant' GROUP BY status",
        [convs],
      );
      return r.rows.length === 1 && r.rows[0].status === 'cancelled' && r.rows[0].n === 8 && r.rows;
    }, 3000, 'eight answers stored as cancelled');
    assert.ok(stored);
    assert.ok(Date.now() - closedAt < 3000);
  } finally {
    h.terminate();
  }
});

test('a conversation_id that is not valid or not the user\'s → NOT_FOUND; one of the user\'s continues it', async () => {
  const u = await newUser(srv.port);
  const other = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token });
  const ho = await connect(srv.port, { token: other.token });
  try {
    const s1 = newSid('own');
    h.send({ type: 'query', session_id: s1, question: 'one' });
    const e1 = await h.waitFor(complete(s1), 10000, 'first complete');
    assert.equal(e1.type, 'complete', JSON.stringify(e1));

    // a new session naming that conversation continues it
    const s2 = newSid('own2');
    h.send({ type: 'query', session_id: s2, question: 'two', conversation_id: e1.conversation_id });
    const e2 = await h.waitFor(complete(s2), 10000, 'second complete');
    assert.equal(e2.type, 'complete', JSON.stringify(e2));
    assert.equal(e2.conversation_id, e1.conversation_id);
    assert.equal(e2.metadata.history_messages, 2);

    h.send({ type: 'query', session_id: 'badconv', question: 'x', conversation_id: 'nope' });
    const bad = await h.waitFor((x) => x.of('badconv').find((m) => m.type === 'error'), 3000, 'bad conversation_id');
    assert.equal(bad.error.code, 'NOT_FOUND', JSON.stringify(bad));

    ho.send({ type: 'query', session_id: 'steal', question: 'x', conversation_id: e1.conversation_id });
    const steal = await ho.waitFor((x) => x.of('steal').find((m) => m.type === 'error' || m.type === 'complete'), 5000, "another user's conversation");
    assert.equal(steal.type, 'error', JSON.stringify(steal));
    assert.equal(steal.error.code, 'NOT_FOUND', JSON.stringify(steal));
    assert.equal((await rowsOf(e1.conversation_id)).length, 4, 'nothing added by the other user');
  } finally {
    h.terminate();
    ho.terminate();
  }
});

// ---- 4. the token, before the upgrade --------------------------------------------------

test('auth required: no token, a bad token, a forged token → 401 before the upgrade; a good one connects', async () => {
  const u = await newUser(srv.port);
  const cases = [
    ['no token', {}],
    ['garbage', { token: 'not-a-jwt' }],
    ['wrong secret', { token: signJwt({ sub: u.userId, exp: Math.floor(Date.now() / 1000) + 600 }, 'another-secret-0123456789abcdef') }],
    ['expired', { token: signJwt({ sub: u.userId, iat: 1000, exp: 2000 }, JWT_SECRET) }],
    ['bad bearer', { token: 'not-a-jwt', bearer: true }],
  ];
  for (const [what, opts] of cases) {
    const h = openWs(srv.port, opts);
    try {
      await h.waitFor((x) => x.refused || x.open, 5000, `${what}: answer to the upgrade`);
      assert.equal(h.open, false, `${what}: must not upgrade`);
      assert.equal(h.refused.status, 401, `${what}: ${JSON.stringify(h.refused)}`);
      assert.match(h.refused.headers['www-authenticate'] || '', /^Bearer/i, `${what}: WWW-Authenticate`);
      const j = JSON.parse(h.refused.body);
      assert.equal(j.success, false, h.refused.body);
      assert.equal(j.error.code, 'UNAUTHORIZED', h.refused.body);
    } finally {
      h.terminate();
    }
  }
  for (const bearer of [false, true]) {
    const h = await connect(srv.port, { token: u.token, bearer });
    try {
      assert.equal(h.msgs[0].type, 'connected');
      assert.equal(h.msgs[0].user_id, u.userId, `bearer=${bearer}`);
    } finally {
      h.terminate();
    }
  }
});

// ---- 5. transport and protocol errors -------------------------------------------------

test('an oversized message (2 KiB > max_ws_message_bytes 1 KiB) → close 1009', async () => {
  const u = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token });
  try {
    h.send(JSON.stringify({ type: 'query', session_id: 'big', question: 'x'.repeat(2048) }));
    const c = await h.waitClose(5000, 'close after an oversized message');
    assert.equal(c.code, 1009, JSON.stringify(c));
    assert.ok(!h.msgs.some((m) => m.session_id === 'big'), 'the message was not handled');
  } finally {
    h.terminate();
  }
  // just under the limit is fine
  const h2 = await connect(srv.port, { token: u.token });
  try {
    const msg = JSON.stringify({ type: 'ping', pad: 'y'.repeat(900) });
    assert.ok(Buffer.byteLength(msg) <= 1024);
    h2.send(msg);
    await h2.waitFor((x) => x.msgs.find((m) => m.type === 'pong'), 2000, 'pong for a message under the limit');
  } finally {
    h2.terminate();
  }
});

/** A raw socket upgraded to a WebSocket: {c} with c.buf holding what followed the 101. */
async function rawWs(port, token) {
  const c = await RawConn.open(port);
  await c.write(`GET /ws/chat?token=${token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  const r = await c.readResponse();
  assert.equal(r.status, 101, r.text);
  return c;
}

/** The first close frame in the server's bytes after the 101: {code, reason}. */
async function rawClose(c, ms) {
  let close = null;
  await c.waitFor(() => {
    for (let at = 0; at + 2 <= c.buf.length;) {
      const op = c.buf[at] & 15;
      let n = c.buf[at + 1] & 127, hl = 2;
      if (n === 126) [n, hl] = [c.buf.readUInt16BE(at + 2), 4];
      else if (n === 127) [n, hl] = [Number(c.buf.readBigUInt64BE(at + 2)), 10];
      if (c.buf.length < at + hl + n) return false;
      if (op === 8) {
        const p = c.buf.subarray(at + hl, at + hl + n);
        close = { code: n >= 2 ? p.readUInt16BE(0) : null, reason: p.subarray(2).toString() };
        return true;
      }
      at += hl + n;
    }
    return false;
  }, ms, 'a close frame');
  return close;
}

test('frames refused at their header, with the code in the close frame: 2^40 bytes announced → 1009, unmasked or reserved opcode → 1002', async () => {
  const u = await newUser(srv.port);
  const cases = [
    // text, 64-bit length 2^40: nothing of the payload (not even the mask key) is sent
    ['2^40 bytes announced', Buffer.from([0x81, 0xff, 0, 0, 1, 0, 0, 0, 0, 0]), 1009],
    // 600 + 600 bytes against 1 KiB: refused at the second fragment's header
    ['fragments past the limit', Buffer.concat([wsFrame(0x01, 'a'.repeat(600), false), Buffer.from([0x80, 0xfe, 0x02, 0x58])]), 1009],
    ['unmasked frame', Buffer.from([0x81, 0x05]), 1002],
    ['reserved opcode', Buffer.from([0x83, 0x85]), 1002],
    ['fragmented ping', Buffer.from([0x09, 0x80]), 1002],
  ];
  for (const [what, bytes, code] of cases) {
    const c = await rawWs(srv.port, u.token);
    try {
      const t0 = Date.now();
      await c.write(bytes);
      const close = await rawClose(c, 2000);
      assert.equal(close.code, code, `${what}: ${JSON.stringify(close)}`);
      assert.ok(close.reason.length > 0, `${what}: a reason`);
      await c.waitClosed(2000);
      assert.ok(Date.now() - t0 < 1500, `${what}: closed ${Date.now() - t0} ms after the header`);
    } finally {
      c.destroy();
    }
  }
});

/** A masked client frame (mask key 0: the payload reads as is). */
function wsFrame(op, text, fin = true) {
  const p = Buffer.from(text);
  const h = p.length < 126 ? Buffer.from([(fin ? 0x80 : 0) | op, 0x80 | p.length])
    : Buffer.from([(fin ? 0x80 : 0) | op, 0x80 | 126, p.length >> 8, p.length & 255]);
  return Buffer.concat([h, Buffer.alloc(4), p]);
}

test('invalid UTF-8 in a text message → close 1007', async () => {
  const u = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token });
  try {
    // ws does not validate what it sends: a text frame with C3 28
    h.ws.send(Buffer.from([0x7b, 0xc3, 0x28, 0x7d]), { binary: false });
    const c = await h.waitClose(5000, 'close after invalid UTF-8');
    assert.equal(c.code, 1007, JSON.stringify(c));
  } finally {
    h.terminate();
  }
});

test('a binary message → close 1003', async () => {
  const u = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token });
  try {
    h.ws.send(Buffer.from('{"type":"ping"}'), { binary: true });
    const c = await h.waitClose(5000, 'close after a binary message');
    assert.equal(c.code, 1003, JSON.stringify(c));
  } finally {
    h.terminate();
  }
});

test('invalid JSON, a non-object, an unknown type, missing fields → error INVALID_REQUEST; the socket stays usable', async () => {
  const u = await newUser(srv.port);
  const h = await connect(srv.port, { token: u.token });
  try {
    const cases = [
      ['invalid JSON', '{"type": "query", ', null],
      ['not an object', '[1,2,3]', null],
      ['no type', { session_id: 'x1', question: 'q' }, null],
      ['unknown type', { type: 'explode', session_id: 'x2' }, null],
      ['type not a string', { type: 7 }, null],
      ['query without session_id', { type: 'query', question: 'q' }, null],
      ['query with an empty session_id', { type: 'query', session_id: '', question: 'q' }, null],
      ['query without question', { type: 'query', session_id: 'noq' }, 'noq'],
      ['query with a numeric question', { type: 'query', session_id: 'numq', question: 42 }, 'numq'],
      ['cancel without session_id', { type: 'cancel' }, null],
    ];
    for (const [what, msg, sid] of cases) {
      const n = h.msgs.length;
      h.send(msg);
      const err = await h.waitFor((x) => x.msgs.slice(n).find((m) => m.type === 'error'), 2000, `error for ${what}`);
      assert.equal(err.error.code, 'INVALID_REQUEST', `${what}: ${JSON.stringify(err)}`);
      assert.equal(typeof err.error.message, 'string');
      assert.ok(err.error.message.length > 0);
      if (sid) assert.equal(err.session_id, sid, `${what}: the error names the session`);
      // still usable: a ping gets a pong
      const m = h.msgs.length;
      h.send({ type: 'ping' });
      await h.waitFor((x) => x.msgs.slice(m).find((p) => p.type === 'pong'), 2000, `pong after ${what}`);
      assert.equal(h.closed, null, `${what}: socket still open`);
    }
    // and a real query still runs on it
    const sid = newSid('after');
    h.send({ type: 'query', session_id: sid, question: 'still there?' });
    const end = await h.waitFor(complete(sid), 10000, 'complete after the errors');
    assert.equal(end.type, 'complete', JSON.stringify(end));
    assert.equal(end.answer.text, FAST);
  } finally {
    h.terminate();
  }
});

test('liveness: WebSocket pings every ws_ping_interval; a peer that never pongs → 1008; an idle one → 1000 after ws_idle_timeout; an active one stays', async () => {
  liveSrv = await startBuiltin({ wsPingInterval: '200ms', wsIdleTimeout: '1s' });
  const active = await connect(liveSrv.port);
  const idle = await connect(liveSrv.port);
  const deaf = await connect(liveSrv.port, { autoPong: false });
  const t0 = Date.now();
  let timer;
  try {
    timer = setInterval(() => active.send({ type: 'ping' }), 250);
    const cd = await deaf.waitClose(3000, 'the peer that never pongs closed');
    assert.equal(cd.code, 1008, JSON.stringify(cd));
    assert.ok(deaf.pings >= 2, `pings seen: ${deaf.pings}`);
    const ci = await idle.waitClose(3000, 'the idle peer closed');
    assert.equal(ci.code, 1000, JSON.stringify(ci));
    assert.ok(ci.at - t0 >= 900, `idle close after ${ci.at - t0} ms (limit 1 s)`);
    assert.ok(cd.at < ci.at, 'the deaf peer went first (two missed pings, ~0.6 s)');
    await sleep(Math.max(0, 1600 - (Date.now() - t0)));
    assert.equal(active.closed, null, 'the active peer is still open');
    assert.ok(active.pings >= 4, `active peer got WebSocket pings: ${active.pings}`);
    assert.ok(active.msgs.filter((m) => m.type === 'pong').length >= 4);
  } finally {
    clearInterval(timer);
    active.terminate();
    idle.terminate();
    deaf.terminate();
  }
});

// ---- 6. 1,000 sockets at once ----------------------------------------------------------

test('1,000 concurrent sockets each stream a turn to the exact text', { timeout: 45000 }, async () => {
  const TOKENS = 10;
  const TEXT = mockText(TOKENS);
  const SOCKETS = 1000;
  bulkSrv = await startBuiltin({
    databaseUrl: pg.url,
    mockTokens: TOKENS,
    mockTokenInterval: '20ms',
    workers: 2,
    dbPoolSize: 32,
    maxConnections: 5000,
  });
  const hs = [];
  const t0 = Date.now();
  try {
    for (let i = 0; i < SOCKETS; i++) hs.push(openWs(bulkSrv.port));
    await Promise.all(hs.map((h, i) => h.waitFor((x) => x.msgs.find((m) => m.type === 'connected'), 15000, `socket ${i} connected`)));
    const tConnected = Date.now();
    const sids = hs.map((_, i) => newSid(`bulk${i}`));
    hs.forEach((h, i) => h.send({ type: 'query', session_id: sids[i], question: `question ${i}` }));
    const ends = await Promise.all(hs.map((h, i) => h.waitFor(complete(sids[i]), 30000, `socket ${i} complete`)));
    const tDone = Date.now();
    const bad = [];
    ends.forEach((e, i) => {
      const toks = hs[i].tokens(sids[i]).join('');
      if (e.type !== 'complete' || e.answer.text !== TEXT || toks !== TEXT) bad.push({ i, e: JSON.stringify(e).slice(0, 200), toks: toks.slice(0, 80) });
    });
    assert.deepEqual(bad.slice(0, 5), [], `${bad.length} of ${SOCKETS} sockets did not get the exact text`);
    const distinct = new Set(ends.map((e) => e.conversation_id));
    assert.equal(distinct.size, SOCKETS, 'one conversation per session');
    assert.ok(hs.every((h) => h.closed === null), 'no socket closed');
    const convs = ends.map((e) => e.conversation_id);
    const r = await pg.query(
      "SELECT role, status, count(*)::int AS n FROM messages WHERE conversation_id = ANY($1) GROUP BY role, status ORDER BY role",
      [convs],
    );
    assert.deepEqual(r.rows.map((x) => [x.role, x.status, x.n]), [['assistant', 'complete', SOCKETS], ['user', 'complete', SOCKETS]]);
    console.log(`# 1000 sockets: connected in ${tConnected - t0} ms, all turns complete ${tDone - tConnected} ms later`);
  } finally {
    for (const h of hs) h.terminate();
  }
});

// ---- 7. SIGTERM --------------------------------------------------------------------------

test('SIGTERM: running turns finish (complete), then 1001; idle sockets get 1001 at once; exit 0', async () => {
  termSrv = await startBuiltin({ databaseUrl: pg.url, mockTokens: 30, mockTokenInterval: '50ms', drainTimeout: '10s' });
  const busy = await connect(termSrv.port);
  const busy2 = await connect(termSrv.port);
  const idle = await connect(termSrv.port);
  try {
    const sid = newSid('term');
    const sid2 = newSid('term2');
    busy.send({ type: 'query', session_id: sid, question: 'keep going' });
    busy.send({ type: 'query', session_id: sid2, question: 'me too' });
    await busy.waitFor((x) => x.tokens(sid).length >= 3 && x.tokens(sid2).length >= 1, 5000, 'tokens before SIGTERM');
    busy2.send({ type: 'query', session_id: sid, question: 'another socket' });
    await busy2.waitFor((x) => x.tokens(sid).length >= 1, 5000, 'tokens on the second socket before SIGTERM');
    const tSig = Date.now();
    process.kill(termSrv.pid, 'SIGTERM');

    const ci = await idle.waitClose(3000, 'the idle socket closed');
    assert.equal(ci.code, 1001, `idle socket: ${JSON.stringify(ci)}`);
    assert.ok(ci.at - tSig < 2000, `idle socket closed ${ci.at - tSig} ms after SIGTERM`);

    // a new query while draining is refused; the socket stays for its running turns
    const late = newSid('late');
    busy.send({ type: 'query', session_id: late, question: 'too late' });
    const lerr = await busy.waitFor((x) => x.of(late).find((m) => m.type === 'error'), 3000, 'error for a query while draining');
    assert.equal(lerr.error.code, 'SERVICE_UNAVAILABLE', JSON.stringify(lerr));

    for (const [h, sids] of [[busy, [sid, sid2]], [busy2, [sid]]]) {
      const c = await h.waitClose(8000, 'the busy socket closed after its turns');
      for (const s of sids) {
        const end = complete(s)(h);
        assert.ok(end, `session ${s} ended before the close; messages ${JSON.stringify(h.of(s).slice(-2))}`);
        assert.equal(end.type, 'complete', `the running turn completed: ${JSON.stringify(end)}`);
        assert.equal(end.answer.text, mockText(30));
        assert.equal(h.tokens(s).join(''), mockText(30));
      }
      assert.equal(c.code, 1001, `busy socket: ${JSON.stringify(c)}`);
    }
    const ex = await termSrv.waitExit(8000, 'exit after SIGTERM');
    assert.deepEqual(ex, { code: 0, signal: null }, JSON.stringify(ex));
    await termSrv.stop(); // checks for leftovers and sanitizer reports
  } finally {
    busy.terminate();
    busy2.terminate();
    idle.terminate();
  }
});
