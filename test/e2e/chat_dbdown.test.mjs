// PostgreSQL going away under load: /health says 503, new turns fail fast
// with DB_UNAVAILABLE, turns already streaming finish for their clients, and
// their writes wait in the queue until the database is back — then every
// completed turn has exactly one user message, one assistant message and one
// usage event. A write cut off mid-statement is sent again, stored once.
// Graceful shutdown flushes the queue (bounded by drain_timeout).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import pgClient from 'pg';
import { checkErrorEnvelope, get, makeTest, sleep } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, openStream, startChatServer, streamTurn } from './lib/chat.mjs';

const TOKENS = 20;
const TURNS = 50;
let pg, mock, srv, srvB, srv2, srv3;
const test = makeTest(() => [srv, srvB, srv2, srv3]);

before(async () => {
  pg = await startPg();
  // 20 tokens, 75 ms apart: each turn streams for ~1.5 s
  mock = await startMock({ mockTokens: TOKENS, mockTokenInterval: 75, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { workers: 2, dbPoolSize: 4 });
});
after(async () => {
  try {
    await stopAll(srv, srvB, srv2, srv3, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const health = async (s) => {
  const r = await get(s.port, '/health', { timeout: 3000 });
  return { status: r.status, body: r.json() };
};
/** Waits until /health answers `status` `times` times in a row (every worker agrees). */
async function healthIs(s, status, ms, times = 6) {
  let streak = 0;
  let last;
  await eventually(async () => {
    last = await health(s);
    streak = last.status === status ? streak + 1 : 0;
    return streak >= times;
  }, ms, `/health ${status} ${times} times in a row (last: ${JSON.stringify(last)})`);
  return last;
}
const count = async (sql, params) => (await pg.query(sql, params)).rows[0].n;

test('50 streaming turns while PostgreSQL stops and restarts: all finish, every write stored exactly once', { timeout: 60000 }, async (t) => {
  const u = await newUser(srv.port);
  // an existing conversation, to try a turn in it while the database is down
  const quiet = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const tag = `down-${Date.now()}`;
  const streams = Array.from({ length: TURNS }, (_, i) =>
    openStream(srv.port, '/api/v1/chat', { session_id: `${tag}-${i}`, message: `question ${i}` }, { token: u.token }),
  );
  await Promise.all(streams.map((s) => s.waitFor((h) => h.tokens().length >= 1, 10000, 'the first token')));

  const tHalt = Date.now();
  const halting = pg.halt();
  // chatloop notices at once (its idle connections are closed by the server)
  const down = await healthIs(srv, 503, 5000);
  const noticedMs = Date.now() - tHalt;
  const streaming = streams.filter((s) => !s.ended).length;
  assert.equal(down.body.db.status, 'down', JSON.stringify(down.body));
  assert.equal(down.body.status, 'degraded');
  assert.ok(streaming >= 40, `turns still streaming when the database went down: ${streaming} of ${TURNS} (noticed after ${noticedMs} ms)`);
  await halting;

  // new turns fail fast; so does anything else that needs the database
  for (const [path, body] of [
    ['/api/v1/chat', { session_id: `${tag}-new`, message: 'while down' }],
    ['/api/v1/chat', { session_id: `${tag}-new`, message: 'while down', stream: true }],
    [`/api/v1/conversations/${quiet.id}/messages`, { message: 'while down' }],
    [`/api/v1/conversations/${quiet.id}/messages`, { message: 'while down', stream: true }],
  ]) {
    const t0 = Date.now();
    const r = await api(srv.port, 'POST', path, { token: u.token, body });
    const took = Date.now() - t0;
    checkErrorEnvelope(assert, r, 503, 'DB_UNAVAILABLE');
    assert.equal(r.headers['retry-after'], '1');
    assert.ok(took < 500, `${path} failed in ${took} ms`);
  }
  checkErrorEnvelope(assert, await api(srv.port, 'GET', '/api/v1/conversations', { token: u.token }), 503, 'DB_UNAVAILABLE');
  checkErrorEnvelope(assert, await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email: u.email, password: u.password } }), 503, 'DB_UNAVAILABLE');

  // the turns in flight complete for their clients
  await Promise.all(streams.map((s) => s.finished));
  const done = [];
  for (const [i, s] of streams.entries()) {
    assert.equal(s.status, 200, `turn ${i}`);
    const kinds = s.events.map((e) => e.event);
    assert.deepEqual(kinds, ['start', ...Array(TOKENS).fill('token'), 'done'], `turn ${i}: ${kinds.join(',')}`);
    const d = s.events.at(-1).data;
    assert.equal(d.response, mockText(TOKENS));
    assert.equal(s.tokens().join(''), d.response);
    done.push(d);
  }
  assert.equal(new Set(done.map((d) => d.conversation_id)).size, TURNS);
  // their writes wait in the queue (each worker reports its own)
  let pending = 0;
  for (let i = 0; i < 6; i++) pending = Math.max(pending, (await health(srv)).body.db.pending_writes);
  assert.ok(pending > 0, 'writes are queued while the database is down');

  await pg.restart();
  const tBack = Date.now();
  const up = await healthIs(srv, 200, 10000);
  assert.equal(up.body.db.status, 'ok');
  const recoveredMs = Date.now() - tBack;

  const convIds = done.map((d) => d.conversation_id);
  const perConv = async () =>
    (
      await pg.query(
        `SELECT c.id,
                (SELECT count(*)::int FROM messages m WHERE m.conversation_id = c.id AND m.role = 'user') AS users,
                (SELECT count(*)::int FROM messages m WHERE m.conversation_id = c.id AND m.role = 'assistant') AS assistants,
                (SELECT count(*)::int FROM usage_events e WHERE e.conversation_id = c.id) AS usage
           FROM conversations c WHERE c.id = ANY($1::uuid[])`,
        [convIds],
      )
    ).rows;
  await eventually(async () => {
    const rows = await perConv();
    return rows.length === TURNS && rows.every((r) => r.users >= 1 && r.assistants >= 1 && r.usage >= 1);
  }, 10000, 'every completed turn stored');
  await sleep(500); // a replay arriving late would show now
  const rows = await perConv();
  const wrong = rows.filter((r) => r.users !== 1 || r.assistants !== 1 || r.usage !== 1);
  assert.deepEqual(wrong, [], 'exactly one user message, one assistant message and one usage event per turn');

  const stored = (
    await pg.query(
      `SELECT id, conversation_id, content, status, prompt_tokens, completion_tokens FROM messages WHERE role = 'assistant' AND conversation_id = ANY($1::uuid[])`,
      [convIds],
    )
  ).rows;
  const byId = new Map(stored.map((m) => [m.id, m]));
  for (const d of done) {
    const m = byId.get(d.message_id);
    assert.ok(m, `the acknowledged answer ${d.message_id} is stored`);
    assert.equal(m.conversation_id, d.conversation_id);
    assert.equal(m.content, d.response);
    assert.equal(m.status, 'complete');
    assert.equal(m.completion_tokens, d.usage.completion_tokens);
    assert.equal(m.prompt_tokens, d.usage.prompt_tokens);
  }
  // user before assistant in every conversation
  const order = (
    await pg.query(
      `SELECT conversation_id, array_agg(role ORDER BY created_at, id) AS roles FROM messages WHERE conversation_id = ANY($1::uuid[]) GROUP BY 1`,
      [convIds],
    )
  ).rows;
  for (const o of order) assert.deepEqual(o.roles, ['user', 'assistant']);
  // the refused turns left nothing behind
  assert.equal(await count('SELECT count(*)::int AS n FROM conversations WHERE session_key = $1', [`${tag}-new`]), 0);
  assert.equal(await count('SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1', [quiet.id]), 0);
  assert.equal(await count('SELECT count(*)::int AS n FROM usage_events WHERE user_id = $1', [u.userId]), TURNS);
  // the usage endpoint agrees
  const usage = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: u.token }));
  assert.equal(usage.totals.turns, TURNS);
  assert.equal(usage.totals.completion_tokens, TURNS * TOKENS);
  for (let i = 0; i < 6; i++) assert.equal((await health(srv)).body.db.pending_writes, 0);
  // and new turns work again
  const again = await streamTurn(srv.port, '/api/v1/chat', { session_id: `${tag}-0`, message: 'back?' }, { token: u.token });
  assert.ok(again.done, again.raw);
  assert.equal(again.done.conversation_id, done[0].conversation_id);
  t.diagnostic(`db down noticed in ${noticedMs} ms; back in ${recoveredMs} ms`);
});

test('a write cut off mid-statement by the shutdown is sent again after the restart and stored once', { timeout: 30000 }, async () => {
  const u = await newUser(srv.port);
  const c = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  // Hold a lock the answer's INSERT needs: the statement is running (waiting)
  // in PostgreSQL when the server shuts down and terminates it.
  const locker = new pgClient.Client({ connectionString: pg.url });
  locker.on('error', () => {}); // terminated by the shutdown: expected
  await locker.connect();
  try {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE');
    const d = checkOkEnvelope(assert, await api(srv.port, 'POST', `/api/v1/conversations/${c.id}/messages`, { token: u.token, body: { message: 'blocked write' } }));
    // the answer's statement is waiting on the lock
    await eventually(async () => {
      const r = await pg.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO usage_events%'`);
      return r.rows[0].n >= 1;
    }, 5000, 'the answer INSERT waiting on the lock');
    await pg.halt();
    await healthIs(srv, 503, 5000);
    await pg.restart();
    await healthIs(srv, 200, 10000);
    const rows = await eventually(async () => {
      const r = (await pg.query('SELECT id, role, status FROM messages WHERE conversation_id = $1 ORDER BY created_at, id', [c.id])).rows;
      return r.length === 2 && r;
    }, 10000, 'both messages stored after the restart');
    assert.deepEqual(rows.map((r) => r.role), ['user', 'assistant']);
    assert.equal(rows[1].id, d.message_id);
    assert.equal(await count('SELECT count(*)::int AS n FROM usage_events WHERE message_id = $1', [d.message_id]), 1);
    assert.doesNotMatch(srv.stderr, /storing a chat message failed/, 'no write was given up');
  } finally {
    await locker.end().catch(() => {});
  }
});

test('a write that fails after the outage (its conversation was deleted) does not take the other queued writes with it', { timeout: 30000 }, async () => {
  // One worker, so every write waits in one queue and goes out together
  // when the database is back.
  srvB = await startChatServer(mock, pg, { workers: 1 });
  const u = await newUser(srvB.port);
  const conv = async () => checkOkEnvelope(assert, await api(srvB.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201).id;
  const ids = [];
  for (let i = 0; i < 7; i++) ids.push(await conv());
  const doomed = ids[4]; // its answer is queued between the others'
  const streams = [];
  for (const [i, id] of ids.entries()) {
    const s = openStream(srvB.port, `/api/v1/conversations/${id}/messages`, { message: `queued ${i}` }, { token: u.token });
    await s.waitFor((h) => h.tokens().length >= 1, 5000, 'the first token');
    streams.push(s);
  }
  // the user deletes one conversation while its answer streams (another tab)
  checkOkEnvelope(assert, await api(srvB.port, 'DELETE', `/api/v1/conversations/${doomed}`, { token: u.token }));
  await pg.halt();
  try {
    await healthIs(srvB, 503, 5000, 2);
    await Promise.all(streams.map((s) => s.finished));
    for (const s of streams) assert.equal(s.events.at(-1)?.event, 'done', JSON.stringify(s.events.at(-1)));
    assert.ok((await health(srvB)).body.db.pending_writes >= 7, 'the answers wait in the queue');
  } finally {
    await pg.restart();
  }
  await healthIs(srvB, 200, 10000, 2);
  await eventually(async () => (await health(srvB)).body.db.pending_writes === 0, 10000, 'the queue drained');
  const kept = ids.filter((id) => id !== doomed);
  const stored = (
    await pg.query(
      `SELECT conversation_id, count(*) FILTER (WHERE role = 'assistant')::int AS answers, count(*)::int AS n
         FROM messages WHERE conversation_id = ANY($1::uuid[]) GROUP BY 1`,
      [kept],
    )
  ).rows;
  const byConv = Object.fromEntries(stored.map((r) => [r.conversation_id, r]));
  const lost = kept.filter((id, i) => byConv[id]?.answers !== 1).map((id) => `conversation ${ids.indexOf(id)}: ${JSON.stringify(byConv[id] ?? 'no messages')}`);
  assert.deepEqual(lost, [], 'every acknowledged answer of the other conversations is stored');
  assert.equal(await count('SELECT count(*)::int AS n FROM usage_events WHERE conversation_id = ANY($1::uuid[])', [kept]), kept.length);
  assert.equal(await count('SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1', [doomed]), 0);
  await srvB.stop();
});

test('graceful shutdown flushes writes queued while the database was down', { timeout: 30000 }, async () => {
  srv2 = await startChatServer(mock, pg, { drainTimeout: '8s' });
  const u = await newUser(srv2.port);
  const c = checkOkEnvelope(assert, await api(srv2.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const s = openStream(srv2.port, `/api/v1/conversations/${c.id}/messages`, { message: 'flush me' }, { token: u.token });
  await s.waitFor((h) => h.tokens().length >= 1, 5000, 'the first token');
  await pg.halt();
  await healthIs(srv2, 503, 5000, 2);
  await s.finished;
  const d = s.events.at(-1);
  assert.equal(d.event, 'done', JSON.stringify(s.events.at(-1)));
  assert.ok((await health(srv2)).body.db.pending_writes >= 1, 'the answer waits in the queue');
  await sleep(1500); // let the reconnect backoff grow a little

  await pg.restart();
  const t0 = Date.now();
  process.kill(srv2.pid, 'SIGTERM');
  const exit = await srv2.waitExit(12000, 'chatloop exit after SIGTERM');
  const took = Date.now() - t0;
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.doesNotMatch(srv2.stderr, /not stored/, srv2.logTail());
  const rows = (await pg.query('SELECT id, role, content, status FROM messages WHERE conversation_id = $1 ORDER BY created_at, id', [c.id])).rows;
  assert.deepEqual(rows.map((r) => [r.role, r.status]), [['user', 'complete'], ['assistant', 'complete']]);
  assert.equal(rows[1].id, d.data.message_id);
  assert.equal(rows[1].content, mockText(TOKENS));
  assert.equal(await count('SELECT count(*)::int AS n FROM usage_events WHERE message_id = $1', [d.data.message_id]), 1);
  // it left as soon as the queue was empty, not at the drain timeout
  assert.ok(took < 6000, `exited ${took} ms after SIGTERM (drain_timeout 8 s)`);
  await srv2.stop();
});

test('shutdown while the database stays down is bounded by drain_timeout and says what was not stored', { timeout: 30000 }, async () => {
  srv3 = await startChatServer(mock, pg, { drainTimeout: '1s' });
  const u = await newUser(srv3.port);
  const c = checkOkEnvelope(assert, await api(srv3.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const s = openStream(srv3.port, `/api/v1/conversations/${c.id}/messages`, { message: 'lost cause' }, { token: u.token });
  await s.waitFor((h) => h.tokens().length >= 1, 5000, 'the first token');
  await pg.halt();
  try {
    await s.finished;
    const t0 = Date.now();
    process.kill(srv3.pid, 'SIGTERM');
    const exit = await srv3.waitExit(6000, 'chatloop exit after SIGTERM');
    const took = Date.now() - t0;
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(took < 3500, `exited ${took} ms after SIGTERM (drain_timeout 1 s)`);
    assert.match(srv3.stderr, /stopping with \d+ database write\(s\) not stored/, srv3.logTail());
    await srv3.stop();
  } finally {
    await pg.restart();
  }
});
