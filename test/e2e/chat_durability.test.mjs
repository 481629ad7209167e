// What a client was told is stored, is stored — tried the way a hostile
// operator would: kill -9 mid-stream, the conversation deleted mid-turn,
// kill -9 while the database is down (the whole server, or only a worker),
// a table locked from psql, a full write queue. Every wait is bounded.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import pgClient from 'pg';
import { checkErrorEnvelope, get, makeTest, sleep } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, openStream, startChatServer } from './lib/chat.mjs';
import { connect, newSid } from './lib/ws.mjs';

const TOKENS = 20;
let pg, mock, srv, srv2;
const spoolDirs = [];
const started = []; // every server, so a failed test cannot leave one running
const baseTest = makeTest(() => [srv, srv2]);
const startChat = async (...args) => {
  const s = await startChatServer(...args);
  started.push(s);
  return s;
};
let pgDown = false;
/** Each test starts with PostgreSQL up, whatever the one before it left. */
const test = (name, opts, fn) => {
  if (typeof opts === 'function') [fn, opts] = [opts, {}];
  return baseTest(name, opts, async (t) => {
    if (pgDown) {
      await pg.restart();
      pgDown = false;
    }
    await fn(t);
  });
};
const haltPg = async () => {
  pgDown = true;
  await pg.halt();
};
const restartPg = async () => {
  await pg.restart();
  pgDown = false;
};

before(async () => {
  pg = await startPg();
  // 20 tokens, 100 ms apart: each turn streams for ~2 s
  mock = await startMock({ mockTokens: TOKENS, mockTokenInterval: 100, mockFirstToken: 0 });
});
after(async () => {
  try {
    await stopAll(...started.filter((s) => !s.exited), mock);
  } finally {
    if (pg) await pg.stop();
    for (const d of spoolDirs) rmSync(d, { recursive: true, force: true });
  }
});

function newSpoolDir() {
  const d = mkdtempSync(path.join(tmpdir(), 'chatloop-spool-'));
  spoolDirs.push(d);
  return d;
}

/** SIGKILL a server's whole process group (supervisor and workers) and wait for the exit. */
async function killServer(s) {
  process.kill(-s.pid, 'SIGKILL');
  await s.waitExit(5000, 'server exit after SIGKILL');
  // the workers are reaped by init once orphaned: wait until the group is gone
  await eventually(() => {
    try {
      process.kill(-s.pid, 0);
      return false;
    } catch {
      return true;
    }
  }, 5000, 'every process of the group gone');
}

const health = async (s) => {
  const r = await get(s.port, '/health', { timeout: 3000 });
  return { status: r.status, body: r.json() };
};
const rows = async (sql, params) => (await pg.query(sql, params)).rows;

test('kill -9 mid-stream: the user message (and its conversation) are already stored', async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir() });
  const u = await newUser(srv.port);
  const message = `remember this ${Date.now()}`;
  const s = openStream(srv.port, '/api/v1/chat', { session_id: `kill-${Date.now()}`, message }, { token: u.token });
  await s.waitFor((h) => h.tokens().length >= 2, 10000, 'two tokens');
  const start = s.events.find((e) => e.event === 'start').data;
  await killServer(srv);
  await s.finished;
  const users = await rows(
    "SELECT content, status FROM messages WHERE conversation_id = $1 AND role = 'user'",
    [start.conversation_id],
  );
  assert.deepEqual(users, [{ content: message, status: 'complete' }]);
  const conv = await rows('SELECT user_id FROM conversations WHERE id = $1', [start.conversation_id]);
  assert.equal(conv.length, 1);
  assert.equal(conv[0].user_id, u.userId);
  await srv.stop();
  srv = null;
});

test('the conversation deleted mid-turn: the client hears NOT_FOUND, not done; the tokens are still billed', async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir() });
  const u = await newUser(srv.port);
  const conv = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const s = openStream(srv.port, `/api/v1/conversations/${conv.id}/messages`, { message: 'hello' }, { token: u.token });
  await s.waitFor((h) => h.tokens().length >= 3, 10000, 'three tokens');
  const start = s.events.find((e) => e.event === 'start').data;
  checkOkEnvelope(assert, await api(srv.port, 'DELETE', `/api/v1/conversations/${conv.id}`, { token: u.token }));
  await s.finished;
  const kinds = s.events.map((e) => e.event);
  assert.equal(kinds.at(-1), 'error', kinds.join(','));
  assert.ok(!kinds.includes('done'), kinds.join(','));
  const err = s.events.at(-1).data;
  assert.equal(err.code, 'NOT_FOUND');
  assert.match(err.message, /deleted/);
  const usage = await eventually(async () => {
    const r = await rows('SELECT conversation_id, completion_tokens, source FROM usage_events WHERE message_id = $1', [start.message_id]);
    return r.length ? r : null;
  }, 5000, 'the usage event');
  assert.equal(usage.length, 1);
  assert.equal(usage[0].conversation_id, null);
  assert.ok(usage[0].completion_tokens >= TOKENS, JSON.stringify(usage));
  assert.equal((await rows('SELECT 1 FROM messages WHERE id = $1', [start.message_id])).length, 0);
  // and the usage report counts it
  const rep = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: u.token }));
  assert.ok(JSON.stringify(rep).includes(String(usage[0].completion_tokens)), JSON.stringify(rep));
  await srv.stop();
  srv = null;
});

/** Streams `n` turns, halts PostgreSQL once each has a token, waits for every one to end. */
async function turnsAcrossAnOutage(server, u, n, tag) {
  const streams = Array.from({ length: n }, (_, i) =>
    openStream(server.port, '/api/v1/chat', { session_id: `${tag}-${i}`, message: `question ${tag} ${i}` }, { token: u.token }),
  );
  await Promise.all(streams.map((s) => s.waitFor((h) => h.tokens().length >= 1, 10000, 'the first token')));
  await haltPg();
  await Promise.all(streams.map((s) => s.finished));
  return streams;
}

function acknowledged(streams) {
  const done = [];
  for (const [i, s] of streams.entries()) {
    const kinds = s.events.map((e) => e.event);
    assert.equal(kinds.at(-1), 'done', `turn ${i}: ${kinds.join(',')}`);
    const d = s.events.at(-1).data;
    assert.equal(d.response, mockText(TOKENS));
    done.push({ ...d, question: s.events.find((e) => e.event === 'start') && undefined });
  }
  return done;
}

async function assertStoredOnce(done, tag) {
  for (const [i, d] of done.entries()) {
    const msgs = await rows(
      'SELECT role, content, status FROM messages WHERE conversation_id = $1 ORDER BY created_at',
      [d.conversation_id],
    );
    assert.deepEqual(
      msgs,
      [
        { role: 'user', content: `question ${tag} ${i}`, status: 'complete' },
        { role: 'assistant', content: mockText(TOKENS), status: 'complete' },
      ],
      `turn ${i}`,
    );
    const usage = await rows('SELECT count(*)::int AS n FROM usage_events WHERE message_id = $1', [d.message_id]);
    assert.equal(usage[0].n, 1, `turn ${i}: usage events`);
  }
}

test('kill -9 of the whole server during an outage: every acknowledged turn is stored exactly once after restart', { timeout: 90000 }, async () => {
  const spoolDir = newSpoolDir();
  srv = await startChat(mock, pg, { spoolDir, workers: 2 });
  const u = await newUser(srv.port);
  const tag = `outage-${Date.now()}`;
  const streams = await turnsAcrossAnOutage(srv, u, 12, tag);
  const done = acknowledged(streams);
  // the writes are on disk, not only in memory
  const files = readdirSync(spoolDir).filter((f) => f.endsWith('.spool'));
  const bytes = files.reduce((n, f) => n + statSync(path.join(spoolDir, f)).size, 0);
  assert.ok(bytes > 0, `spool files: ${files.join(', ')}`);
  await killServer(srv);
  await srv.stop();
  srv = null;
  await restartPg();
  // a replay that cannot finish in time (a table locked from psql) keeps
  // the files and refuses to start, rather than hang or drop them
  const lock = await lockTable('conversations');
  const t0 = Date.now();
  let refused = null;
  try {
    await startChat(mock, pg, { spoolDir, workers: 2, dbQueryTimeout: '1s' }, { readyMs: 15000 });
  } catch (e) {
    refused = e;
  } finally {
    await lock.release();
  }
  assert.ok(refused, 'startup must fail while the replay cannot store the spool');
  assert.match(refused.message, /kept for the next start/);
  assert.ok(Date.now() - t0 < 8000, `refused after ${Date.now() - t0} ms (db_query_timeout 1 s)`);
  assert.ok(readdirSync(spoolDir).some((f) => f.endsWith('.spool') && statSync(path.join(spoolDir, f)).size > 0), 'the spool is kept');
  // a new server on the same spool_dir stores them before it serves
  srv2 = await startChat(mock, pg, { spoolDir, workers: 2 });
  await assertStoredOnce(done, tag);
  assert.deepEqual(
    readdirSync(spoolDir).filter((f) => f.endsWith('.spool') && statSync(path.join(spoolDir, f)).size > 0),
    [],
    'the replayed spool files are gone',
  );
  await srv2.stop();
  srv2 = null;
});

test('kill -9 of the worker during an outage: its replacement adopts the spool and stores it once the database is back', { timeout: 90000 }, async () => {
  const spoolDir = newSpoolDir();
  srv = await startChat(mock, pg, { spoolDir });
  srv.allowRestarts = true;
  const u = await newUser(srv.port);
  const tag = `worker-${Date.now()}`;
  const streams = await turnsAcrossAnOutage(srv, u, 6, tag);
  const done = acknowledged(streams);
  const before = await health(srv);
  assert.equal(before.status, 503);
  assert.ok(before.body.db.spooled_writes >= 6, JSON.stringify(before.body.db));
  process.kill(before.body.pid, 'SIGKILL');
  const adopted = await eventually(async () => {
    const h = await health(srv).catch(() => null);
    return h && h.body.pid !== before.body.pid && h.body.db.spooled_writes >= 6 ? h : null;
  }, 15000, 'the new worker with the adopted spool');
  assert.ok(adopted.body.db.pending_writes >= 6, JSON.stringify(adopted.body.db));
  await restartPg();
  await eventually(async () => (await health(srv)).status === 200, 15000, '/health 200');
  await eventually(async () => (await health(srv)).body.db.spooled_writes === 0, 10000, 'the spool settled');
  await assertStoredOnce(done, tag);
  await srv.stop();
  srv = null;
});

test('a full write queue during an outage fails the turn with DB_UNAVAILABLE instead of acknowledging it', { timeout: 60000 }, async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir(), dbWriteQueue: 3 });
  const u = await newUser(srv.port);
  const streams = await turnsAcrossAnOutage(srv, u, 6, `full-${Date.now()}`);
  const ends = streams.map((s) => s.events.at(-1));
  const ok = ends.filter((e) => e.event === 'done');
  const refused = ends.filter((e) => e.event === 'error');
  assert.equal(ok.length + refused.length, 6, JSON.stringify(ends));
  assert.equal(ok.length, 3, JSON.stringify(ends.map((e) => e.event)));
  for (const e of refused) {
    assert.equal(e.data.code, 'DB_UNAVAILABLE');
    assert.match(e.data.message, /write queue is full/);
  }
  await restartPg();
  await eventually(async () => (await health(srv)).status === 200, 15000, '/health 200');
  for (const e of ok) {
    await eventually(async () => (await rows('SELECT 1 FROM messages WHERE id = $1', [e.data.message_id])).length === 1, 10000, 'the acknowledged answer stored');
  }
  await srv.stop();
  srv = null;
});

test('a table locked from psql: turns answer 503 within db_query_timeout + 1 s, unrelated requests keep being served, /health says so', { timeout: 60000 }, async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir(), dbQueryTimeout: '2s', dbPoolSize: 2 });
  const u = await newUser(srv.port);
  const conv = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const locker = new pgClient.Client({ connectionString: pg.url });
  await locker.connect();
  try {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE');
    const t0 = Date.now();
    // as many stuck turns as the pool has connections, plus an unrelated request behind them
    const turns = [0, 1].map(() => api(srv.port, 'POST', `/api/v1/conversations/${conv.id}/messages`, { token: u.token, body: { message: 'locked?' }, timeout: 10000 }));
    await sleep(200);
    const t1 = Date.now();
    const usage = api(srv.port, 'GET', '/api/v1/usage', { token: u.token, timeout: 10000 });
    for (const r of await Promise.all(turns)) {
      checkErrorEnvelope(assert, r, 503, 'DB_UNAVAILABLE');
      assert.match(r.j.message, /db_query_timeout/);
    }
    const turnsMs = Date.now() - t0;
    assert.ok(turnsMs < 3000, `locked turns answered after ${turnsMs} ms (db_query_timeout 2 s + 1 s)`);
    const ur = await usage;
    assert.equal(ur.status, 200, ur.text);
    assert.ok(Date.now() - t1 < 3000, `the unrelated request took ${Date.now() - t1} ms`);
    const h = await health(srv);
    assert.equal(h.status, 503, JSON.stringify(h.body));
    assert.equal(h.body.db.status, 'timing_out');
    assert.ok(h.body.db.pool.timeouts >= 2, JSON.stringify(h.body.db));
  } finally {
    await locker.query('ROLLBACK').catch(() => {});
    await locker.end();
  }
  // the lock is gone: turns work again, and /health recovers
  const ok = await api(srv.port, 'POST', `/api/v1/conversations/${conv.id}/messages`, { token: u.token, body: { message: 'unlocked' }, timeout: 10000 });
  assert.equal(ok.status, 200, ok.text);
  await eventually(async () => (await health(srv)).status === 200, 8000, '/health 200 again');
  await srv.stop();
  srv = null;
});

/** A client holding an ACCESS EXCLUSIVE lock on `table` until release(). */
async function lockTable(table) {
  const c = new pgClient.Client({ connectionString: pg.url });
  await c.connect();
  await c.query('BEGIN');
  await c.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
  return {
    async release() {
      await c.query('ROLLBACK').catch(() => {});
      await c.end();
    },
  };
}

test('request_timeout: a request not answered in time gets 504 and lets go; a WebSocket query gets REQUEST_TIMEOUT and frees its session slot', { timeout: 60000 }, async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir(), requestTimeout: '1s', dbQueryTimeout: '4s', maxWsSessions: 1 });
  const u = await newUser(srv.port);
  const conv = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const h = await connect(srv.port, { token: u.token });
  const lock = await lockTable('conversations');
  try {
    for (const [method, p, body] of [
      ['GET', '/api/v1/conversations'],
      ['POST', `/api/v1/conversations/${conv.id}/messages`, { message: 'hi' }],
      ['POST', `/api/v1/conversations/${conv.id}/messages`, { message: 'hi', stream: true }],
    ]) {
      const t0 = Date.now();
      const r = await api(srv.port, method, p, { token: u.token, body, timeout: 10000 });
      const took = Date.now() - t0;
      checkErrorEnvelope(assert, r, 504, 'REQUEST_TIMEOUT');
      assert.ok(took >= 900 && took < 2500, `${method} ${p}: 504 after ${took} ms (request_timeout 1 s)`);
    }
    const sid = newSid('rt');
    const t0 = Date.now();
    h.send({ type: 'query', session_id: sid, question: 'stuck?', conversation_id: conv.id });
    const err = await h.waitFor((x) => x.of(sid).find((m) => m.type === 'error'), 5000, 'the error');
    assert.equal(err.error.code, 'REQUEST_TIMEOUT');
    assert.ok(Date.now() - t0 < 2500, `after ${Date.now() - t0} ms`);
  } finally {
    await lock.release();
  }
  // the slot (max_ws_sessions 1) is free again: a new query runs to the end
  const sid2 = newSid('rt2');
  h.send({ type: 'query', session_id: sid2, question: 'now?' });
  const end = await h.waitFor((x) => x.of(sid2).find((m) => m.type === 'complete' || m.type === 'error'), 10000, 'the second query');
  assert.equal(end.type, 'complete', JSON.stringify(end));
  h.terminate();
  await srv.stop();
  srv = null;
});

test('the query queue is bounded (db_queue_max): past it a request fails at once with 503', { timeout: 60000 }, async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir(), dbQueryTimeout: '3s', dbPoolSize: 1, dbQueueMax: 2 });
  const u = await newUser(srv.port);
  // the worker knows the user now: the requests below queue no lookup of it
  checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: u.token }));
  const lock = await lockTable('conversations');
  try {
    // one running (stuck on the lock), two queued behind it ...
    const stuck = [0, 1, 2].map(() => api(srv.port, 'GET', '/api/v1/conversations', { token: u.token, timeout: 10000 }));
    const tq = Date.now();
    const pool = await eventually(async () => {
      const p = (await health(srv)).body.db.pool;
      return p.busy === 1 && p.queued === 2 ? p : null;
    }, 2500, 'one query running and two queued');
    // ... and the next is refused without waiting
    const t0 = Date.now();
    const r = await api(srv.port, 'GET', '/api/v1/usage', { token: u.token });
    checkErrorEnvelope(assert, r, 503, 'DB_UNAVAILABLE');
    assert.match(r.j.message, /queue/, `queue seen after ${t0 - tq} ms: ${JSON.stringify(pool)}; answered after ${Date.now() - t0} ms`);
    assert.ok(Date.now() - t0 < 500, `refused after ${Date.now() - t0} ms`);
    for (const x of await Promise.all(stuck)) checkErrorEnvelope(assert, x, 503, 'DB_UNAVAILABLE');
  } finally {
    await lock.release();
  }
  await srv.stop();
  srv = null;
});

test('a database that stops answering (backends frozen with SIGSTOP): the client-side deadline gives the connection up', { timeout: 60000 }, async () => {
  srv = await startChat(mock, pg, { spoolDir: newSpoolDir(), dbQueryTimeout: '1s', dbPoolSize: 1 });
  const u = await newUser(srv.port);
  const backends = (await rows("SELECT pid FROM pg_stat_activity WHERE application_name = 'chatloop'")).map((x) => x.pid);
  assert.ok(backends.length >= 1, 'chatloop backends');
  for (const p of backends) process.kill(p, 'SIGSTOP');
  try {
    const t0 = Date.now();
    const r = await api(srv.port, 'GET', '/api/v1/conversations', { token: u.token, timeout: 10000 });
    const took = Date.now() - t0;
    checkErrorEnvelope(assert, r, 503, 'DB_UNAVAILABLE');
    assert.ok(took < 3500, `answered after ${took} ms (1 s + 1 s grace)`);
  } finally {
    for (const p of backends) {
      try {
        process.kill(p, 'SIGCONT');
      } catch {}
    }
  }
  // a new connection serves again
  await eventually(async () => (await api(srv.port, 'GET', '/api/v1/conversations', { token: u.token })).status === 200, 10000, 'served again');
  await srv.stop();
  srv = null;
});

test('U+0000 in the model output: stored as U+FFFD instead of cutting the rest of the answer off', async () => {
  const http = await import('node:http');
  const chunk = (delta, finish = null, usage) =>
    `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'nul-model', choices: usage ? [] : [{ index: 0, delta, finish_reason: finish }], ...(usage ? { usage } : {}) })}\n\n`;
  const upstream = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunk({ role: 'assistant', content: '' }));
      res.write(chunk({ content: 'before\u0000' }));
      res.write(chunk({ content: 'after' }));
      res.write(chunk({}, 'stop'));
      res.write(chunk(null, null, { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }));
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  const baseUrl = `http://127.0.0.1:${upstream.address().port}/v1`;
  try {
    srv = await startChat({ baseUrl }, pg, { spoolDir: newSpoolDir() });
    const u = await newUser(srv.port);
    const r = await api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: 'nul', message: 'say it' } });
    const d = checkOkEnvelope(assert, r);
    assert.equal(d.response, 'before\u0000after');
    const stored = await rows('SELECT content FROM messages WHERE id = $1', [d.message_id]);
    assert.deepEqual(stored, [{ content: 'before\uFFFDafter' }]);
    await srv.stop();
    srv = null;
  } finally {
    upstream.close();
  }
});
