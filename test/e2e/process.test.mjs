// Process model: SIGTERM drains in-flight requests and exits 0 (bounded by
// drain_timeout); the supervisor restarts a killed worker.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after } from 'node:test';
import { HOST, RawConn, expectServing, get, makeTest, metrics, sleep, startServer, withTimeout } from './lib/server.mjs';

const servers = [];
const test = makeTest(() => servers);
after(async () => {
  // servers a failed test left running; stop() throws if one must be killed
  const errs = [];
  for (const s of servers) if (!s.exited) await s.stop().catch((e) => errs.push(e));
  if (errs.length) throw errs[0];
});

async function start(opts) {
  const s = await startServer(opts);
  servers.push(s);
  return s;
}

/** Tries a new connection + request: 'refused', 'closed' (no answer), or 'answered <status>'. */
function probeNewConnection(port, timeout = 2000) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: HOST, port });
    let buf = '';
    const done = (what) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(what);
    };
    const timer = setTimeout(() => done(`no answer and no close within ${timeout} ms`), timeout);
    sock.on('connect', () => sock.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n'));
    sock.on('data', (d) => {
      buf += d;
      const m = /^HTTP\/1\.1 (\d{3})/.exec(buf);
      if (m) done(`answered ${m[1]}`);
    });
    sock.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : 'closed'));
    sock.on('end', () => done('closed'));
  });
}

test('SIGTERM: the in-flight request is answered, idle connections close, new ones are refused, exit 0', async () => {
  const s = await start({ workers: 1, drainTimeout: '5s' });
  // A: a request whose body is half sent
  const a = await RawConn.open(s.port);
  // B: an idle keep-alive connection
  const b = await RawConn.open(s.port);
  // C: connected, nothing sent
  const c = await RawConn.open(s.port);
  try {
    await b.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
    assert.equal((await b.readResponse()).status, 200);
    await a.write('POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello');
    await sleep(100);

    const t0 = Date.now();
    process.kill(s.pid, 'SIGTERM');
    await sleep(200);
    assert.equal(a.gone, false, 'the in-flight request is not cut');
    const probe = await probeNewConnection(s.port);
    assert.match(probe, /^(refused|closed)$/, `a new connection after SIGTERM: ${probe}`);

    await a.write('world');
    const r = await a.readResponse({ timeout: 3000 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json().data.body, 'helloworld');
    assert.match(r.headers.connection || '', /close/i, 'draining: Connection: close');
    await a.waitClosed(3000);

    await b.waitClosed(1000);
    await c.waitClosed(1000);
    assert.ok(b.endedAt - t0 < 1000, `idle keep-alive closed ${b.endedAt - t0} ms after SIGTERM`);

    const ex = await s.waitExit(4000, 'exit after the drain');
    assert.deepEqual(ex, { code: 0, signal: null });
    assert.ok(Date.now() - t0 < 3000, `exited ${Date.now() - t0} ms after SIGTERM (drain_timeout 5s, nothing left in flight)`);
  } finally {
    a.destroy();
    b.destroy();
    c.destroy();
  }
  assert.deepEqual(await s.stop(), { code: 0, signal: null }); // no stragglers in its process group
});

test('SIGTERM with an idle server exits 0 at once (2 workers)', async () => {
  const s = await start({ workers: 2, drainTimeout: '5s' });
  const t0 = Date.now();
  assert.deepEqual(await s.stop(4000), { code: 0, signal: null });
  assert.ok(Date.now() - t0 < 2000, `stopped in ${Date.now() - t0} ms`);
});

test('SIGTERM: a request that never completes is cut at drain_timeout; exit 0', async () => {
  const s = await start({ workers: 1, drainTimeout: '1s', headerTimeout: '30s', bodyTimeout: '30s' });
  const a = await RawConn.open(s.port);
  try {
    await a.write('POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhel');
    await sleep(100);
    const t0 = Date.now();
    process.kill(s.pid, 'SIGTERM');
    const ex = await s.waitExit(5000, 'exit at drain_timeout');
    const ms = Date.now() - t0;
    assert.deepEqual(ex, { code: 0, signal: null });
    assert.ok(ms >= 800 && ms < 3500, `exited ${ms} ms after SIGTERM (drain_timeout 1s)`);
    await a.waitClosed(2000);
  } finally {
    a.destroy();
  }
  await s.stop();
});

/** Distinct worker pids seen by /health on new connections, until `want` or `ms`. */
async function workerPids(port, want, ms) {
  const pids = new Set();
  const deadline = Date.now() + ms;
  while (pids.size < want && Date.now() < deadline) {
    try {
      pids.add((await get(port, '/health', { timeout: 1000 })).json().pid);
    } catch {}
  }
  return pids;
}

test('a worker killed with SIGKILL is restarted; serving never stops', async () => {
  const s = await start({ workers: 2 });
  s.allowRestarts = true;
  const before = await workerPids(s.port, 2, 5000);
  assert.equal(before.size, 2, `found worker pids ${[...before]}`);
  const [victim, survivor] = [...before];

  // a background client hammering /health during the kill
  let stop = false;
  const failures = [];
  let served = 0;
  const killedAt = { t: 0 };
  const hammer = (async () => {
    while (!stop) {
      const t = Date.now();
      try {
        const r = await get(s.port, '/health', { timeout: 2000 });
        if (r.status === 200) served++;
        else failures.push(`status ${r.status}`);
      } catch (e) {
        failures.push(`${e.code || e.message} at +${t - killedAt.t} ms`);
      }
      await sleep(5);
    }
  })();
  try {
    await sleep(100);
    killedAt.t = Date.now();
    process.kill(victim, 'SIGKILL');

    let now = new Set();
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      now = await workerPids(s.port, 2, 1000);
      if (now.size === 2 && !now.has(victim)) break;
      await sleep(50);
    }
    assert.equal(now.size, 2, `two workers answer again: ${[...now]}`);
    assert.ok(!now.has(victim), 'the killed pid is gone');
    assert.ok(now.has(survivor), 'the other worker was not disturbed');

    const m = await metrics(s.port);
    assert.ok(m['chatloop_worker_restarts_total'] >= 1, `restarts ${m['chatloop_worker_restarts_total']}`);
    assert.equal(m['chatloop_workers'], 2);
  } finally {
    stop = true;
    await withTimeout(hammer, 5000, 'background client');
  }
  assert.ok(served > 10, `served ${served} during the test`);
  // Only connections already queued on the dying worker's socket may fail.
  assert.ok(failures.length <= 2, `failed requests: ${failures.join(', ')}`);
  await expectServing(s.port);
  assert.deepEqual(await s.stop(), { code: 0, signal: null });
});

/** The pid of the one worker answering /health, once it differs from `old`. */
async function nextWorkerPid(port, old, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const pid = (await get(port, '/health', { timeout: 1000 })).json().pid;
      if (pid !== old) return pid;
    } catch {}
    await sleep(20);
  }
  throw new Error(`no new worker answered /health within ${ms} ms (last pid ${old})`);
}

test('workers = 1: a crash-looping worker is restarted with backoff, forever; SIGTERM then exits 0', async () => {
  const s = await start({ workers: 1 });
  s.allowRestarts = true;
  let pid = (await get(s.port, '/health')).json().pid;
  // Three quick deaths in a row: each replacement lives well under the 5 s
  // that counts as stable, so the backoff grows (200, 400, 800 ms).
  for (let k = 0; k < 3; k++) {
    process.kill(pid, 'SIGKILL');
    pid = await nextWorkerPid(s.port, pid, 8000);
    assert.equal(s.exited, null, `the supervisor is still running after kill ${k + 1}`);
  }
  await expectServing(s.port);
  const restarts = (s.stderr.match(/worker 0 \(pid \d+\) killed by signal 9; restarting in (\d+)ms/g) || [])
    .map((l) => Number(/in (\d+)ms/.exec(l)[1]));
  assert.equal(restarts.length, 3, s.stderr);
  assert.ok(restarts[0] > 0 && restarts[1] > restarts[0] && restarts[2] > restarts[1] && restarts[2] <= 5000,
    `growing, capped backoff: ${restarts}`);
  assert.doesNotMatch(s.stderr, /chatloop stopped/);
  assert.deepEqual(await s.stop(), { code: 0, signal: null });
});

/** Binds `port` without SO_REUSEPORT (so a worker's bind fails), or null if it is taken. */
function tryBind(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(null));
    srv.listen({ host: HOST, port, exclusive: true }, () => resolve(srv));
  });
}

test('a restarted worker that cannot bind its port stops the supervisor with a non-zero exit', async () => {
  const s = await start({ workers: 1 });
  s.allowRestarts = true;
  let pid = (await get(s.port, '/health')).json().pid;
  let blocker = null;
  try {
    // Take the port in the backoff between the kill and the restart; if the
    // replacement wins the race, kill it too (the next backoff is longer).
    for (let k = 0; k < 5 && !blocker; k++) {
      process.kill(pid, 'SIGKILL');
      const deadline = Date.now() + 150;
      while (!blocker && Date.now() < deadline) {
        blocker = await tryBind(s.port);
        if (!blocker) await sleep(2);
      }
      if (!blocker) pid = await nextWorkerPid(s.port, pid, 8000);
    }
    assert.ok(blocker, 'took the port while the worker was down');
    const ex = await s.waitExit(5000, 'the supervisor gives up on a worker that cannot start');
    assert.equal(ex.code, 1, s.stderr);
    assert.match(s.stderr, /worker 0 could not start; stopping/);
    assert.match(s.stderr, /in use|bind/i);
  } finally {
    if (blocker) await new Promise((r) => blocker.close(r));
  }
  assert.deepEqual(await s.stop(), { code: 1, signal: null });
});

test('the supervisor killed with SIGKILL: its workers drain and exit on their own (no orphans serving the port)', async () => {
  const s = await start({ workers: 2, drainTimeout: '2s' });
  const pids = new Set();
  for (let i = 0; i < 20 && pids.size < 2; i++) pids.add((await get(s.port, '/health')).json().pid);
  assert.equal(pids.size, 2, 'both workers answered');
  process.kill(s.pid, 'SIGKILL');
  await s.waitExit(5000, 'supervisor exit');
  const alive = (pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const t0 = Date.now();
  while ([...pids].some(alive) && Date.now() - t0 < 5000) await sleep(50);
  assert.deepEqual([...pids].filter(alive), [], `workers still running ${Date.now() - t0} ms after the supervisor died`);
  await assert.rejects(get(s.port, '/health', { timeout: 1000 }), 'nothing serves the port any more');
});

// Worker logs are buffered and written once per loop iteration. A line logged
// while the loop has nothing else to do must not wait for unrelated I/O.
test('the workers\' "listening" lines reach stderr before any connection is made', async () => {
  const both = /worker 0 listening on [\s\S]*worker 1 listening on |worker 1 listening on [\s\S]*worker 0 listening on /;
  // readyLog: no /health polling, so nothing else wakes the workers' loops
  const s = await startServer({ workers: 2, logLevel: 'info' }, { readyLog: both, readyMs: 5000 });
  servers.push(s);
  assert.match(s.stderr, both);
  assert.doesNotMatch(s.stderr, /"GET /, 'no request was made before the lines appeared');
  await expectServing(s.port);
  assert.deepEqual(await s.stop(), { code: 0, signal: null });
});

test('a line logged from a timer (a WebSocket idle close) appears without further traffic', async () => {
  const s = await start({ workers: 1, logLevel: 'debug', wsIdleTimeout: '1s', wsPingInterval: '600ms' });
  const c = await RawConn.open(s.port);
  try {
    await c.write('GET /ws/chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    await c.waitFor(() => c.buf.includes('\r\n\r\n'), 3000, 'the 101');
    assert.match(c.buf.toString('latin1'), /^HTTP\/1\.1 101 /);
    // from here the client sends nothing; the timer closes it at ~1.2 s
    const t0 = Date.now();
    await withTimeout(
      (async () => {
        while (!/ws \S+: closing: (idle|no answer to ping)/.test(s.stderr)) await sleep(20);
      })(),
      3000,
      'the idle-close line on stderr',
    );
    assert.ok(Date.now() - t0 < 2500, `the line came ${Date.now() - t0} ms after the upgrade`);
  } finally {
    c.destroy();
  }
  await s.stop();
});
