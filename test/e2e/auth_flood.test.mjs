// Logins are expensive on purpose (PBKDF2 on the threadpool); a flood of them
// must neither starve the event loop nor queue without bound. kdf_queue_max
// caps the register/login operations per worker that hold a KDF place (from
// admission, before the database, until their KDF job ends); past it they
// answer 503 SERVICE_UNAVAILABLE with Retry-After at once. The pool's
// threads run at nice 10, so /health stays fast while they compute.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before } from 'node:test';
import pg from 'pg';
import { HOST, checkErrorEnvelope, get, makeTest, sleep } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { stopAll, until } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, newUser, startChatServer } from './lib/chat.mjs';

let pgc, mock;
const servers = [];
const test = makeTest(() => servers);

before(async () => {
  pgc = await startPg();
  mock = await startMock({});
});
after(async () => {
  try {
    await stopAll(...servers, mock);
  } finally {
    if (pgc) await pgc.stop();
  }
});

async function server(opts) {
  const s = await startChatServer(mock, pgc, opts);
  servers.push(s);
  return s;
}

/**
 * POST /api/v1/auth/login that the test can abandon: {done, abort}. `done`
 * resolves with {status, ms, retryAfter, j} or {aborted: true}.
 */
function login(port, email, password) {
  const body = JSON.stringify({ email, password });
  const t0 = Date.now();
  let req;
  const done = new Promise((resolve) => {
    req = http.request(
      { host: HOST, port, method: 'POST', path: '/api/v1/auth/login', agent: false,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          let j = null;
          try {
            j = JSON.parse(text);
          } catch {}
          resolve({ status: res.statusCode, ms: Date.now() - t0, retryAfter: res.headers['retry-after'], j });
        });
        res.on('error', () => resolve({ aborted: true }));
      },
    );
    req.on('error', () => resolve({ aborted: true }));
    req.end(body);
  });
  return { done, abort: () => req.destroy() };
}

/** Latency of `n` sequential GET /health on new connections, `gap` ms apart, sorted. */
async function healthLatencies(port, n, gap) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    const r = await get(port, '/health', { timeout: 5000 });
    out.push(Number(process.hrtime.bigint() - t) / 1e6);
    assert.equal(r.status, 200);
    await sleep(gap);
  }
  return out.sort((a, b) => a - b);
}

const count = (results, status) => results.filter((r) => r.status === status).length;

test('100 wrong-password logins in flight (200k iterations): /health answers within 50 ms; logins past kdf_queue_max get 503 + Retry-After at once; abandoned logins free the queue', { timeout: 120000 }, async () => {
  const s = await server({ kdfIterations: 200000, kdfQueueMax: 100 });
  const u = await newUser(s.port);

  // 120 at once: 100 are admitted (4 on the pool's threads, the rest
  // queued), 20 are refused. They all arrive well within one KDF run
  // (hundreds of ms), so no place frees up in between.
  const flood = [];
  for (let i = 0; i < 120; i++) flood.push(login(s.port, u.email, 'not the password'));
  const settled = new Set();
  flood.forEach((l, i) => l.done.then((r) => settled.add(i) && r));
  await until(async () => settled.size >= 20, 5000, 'the refused logins');
  const refused = (await Promise.all([...settled].map((i) => flood[i].done)));
  assert.equal(count(refused, 503), refused.length, JSON.stringify(refused.map((r) => r.status)));
  for (const r of refused) {
    assert.equal(r.j?.error?.code, 'SERVICE_UNAVAILABLE', JSON.stringify(r.j));
    assert.equal(r.retryAfter, '1');
    assert.ok(r.ms < 1000, `a refused login answered after ${r.ms} ms`);
  }
  assert.equal(refused.length, 20, 'exactly the logins past kdf_queue_max were refused');

  // p90 of 20 probes, not the max: the machine has two cores shared with
  // PostgreSQL, this test's client and possibly other tests, so one probe
  // may lose its core to something outside chatloop; the max is bounded
  // loosely. (The KDF threads themselves run at nice 10.)
  const lat = await healthLatencies(s.port, 20, 50);
  const p90 = lat[Math.floor(lat.length * 0.9) - 1];
  assert.ok(p90 < 50, `/health p90 ${p90.toFixed(1)} ms during the flood (all: ${lat.map((x) => x.toFixed(1)).join(' ')})`);
  assert.ok(lat[lat.length - 1] < 250, `/health max ${lat[lat.length - 1].toFixed(1)} ms`);
  assert.ok(settled.size < 120, 'the flood was still in flight while /health was probed');

  // Clients that give up take their queued KDF runs with them: a valid
  // login soon gets through instead of waiting behind the abandoned ones.
  for (const l of flood) l.abort();
  const t0 = Date.now();
  const ok = await until(async () => {
    const r = await login(s.port, u.email, u.password).done;
    return r.status === 200 ? r : null;
  }, 10000, 'a valid login after the flood was abandoned');
  assert.ok(Date.now() - t0 < 5000, `the valid login got through ${Date.now() - t0} ms after the flood left`);
  assert.ok(ok.j.data.access_token);
});

test('the bound counts logins still waiting for the database: refused ones never reach it; register is refused too; places come back', { timeout: 60000 }, async () => {
  const s = await server({ kdfQueueMax: 4 });
  const u = await newUser(s.port);
  // Hold a lock on users: an admitted login waits in its SELECT, holding its place.
  const locker = new pg.Client({ connectionString: pgc.url });
  await locker.connect();
  const blocked = [];
  try {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
    for (let i = 0; i < 4; i++) blocked.push(login(s.port, u.email, 'wrong password'));
    await sleep(200);
    const t0 = Date.now();
    const more = [];
    for (let i = 0; i < 6; i++) more.push(login(s.port, u.email, u.password).done);
    let reg;
    more.push(api(s.port, 'POST', '/api/v1/auth/register', { body: { email: `x${Date.now()}@example.test`, password: 'a long enough password' } })
      .then((r) => ((reg = r), { status: r.status, j: r.j, retryAfter: r.headers['retry-after'] })));
    // Were these to query the locked table, they would hang until the lock goes.
    const res = await Promise.all(more);
    assert.ok(Date.now() - t0 < 1000, `refused within ${Date.now() - t0} ms, with the database blocked`);
    for (const r of res) {
      assert.equal(r.status, 503, JSON.stringify(r));
      assert.equal(r.j.error.code, 'SERVICE_UNAVAILABLE');
      assert.equal(r.retryAfter, '1');
    }
    checkErrorEnvelope(assert, reg, 503, 'SERVICE_UNAVAILABLE');
  } finally {
    await locker.query('ROLLBACK').catch(() => {});
    await locker.end();
  }
  const first = await Promise.all(blocked.map((l) => l.done));
  assert.deepEqual(first.map((r) => r.status), [401, 401, 401, 401]);
  // Every place came back: the queue admits a full round again.
  const again = await Promise.all([0, 1, 2, 3].map(() => login(s.port, u.email, u.password).done));
  assert.deepEqual(again.map((r) => r.status), [200, 200, 200, 200]);
});
