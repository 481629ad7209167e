// /metrics, and 1,000 concurrent connections on a two-worker server.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { RawConn, expectServing, get, makeTest, metrics, request, sleep, startServer, withTimeout } from './lib/server.mjs';

let srv;
const test = makeTest(() => [srv]);

before(async () => {
  srv = await startServer({ workers: 2 });
});
after(async () => {
  if (!srv) return; // startup failed: reported by before()
  assert.deepEqual(await srv.stop(), { code: 0, signal: null });
});

const CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'].map((c) => `chatloop_http_requests_total{class="${c}"}`);
const classSum = (m) => CLASSES.reduce((a, k) => a + m[k], 0);

test('/metrics: Prometheus text with the core series', async () => {
  const r = await get(srv.port, '/metrics');
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  for (const name of [
    'chatloop_connections_open',
    'chatloop_http_requests_total',
    'chatloop_http_request_duration_seconds',
    'chatloop_worker_restarts_total',
  ]) {
    assert.match(r.text, new RegExp(`^# TYPE ${name} (counter|gauge|histogram)$`, 'm'), `${name} has a TYPE line`);
    assert.match(r.text, new RegExp(`^# HELP ${name} .+$`, 'm'), `${name} has a HELP line`);
  }
  assert.ok(r.text.endsWith('\n'));
});

test('/metrics: counters grow with requests; histogram is consistent', async () => {
  const m0 = await metrics(srv.port);
  for (const k of CLASSES) assert.equal(typeof m0[k], 'number', k);
  for (let i = 0; i < 5; i++) assert.equal((await get(srv.port, '/health')).status, 200);
  for (let i = 0; i < 3; i++) assert.equal((await get(srv.port, '/no-such')).status, 404);
  assert.equal((await request(srv.port, { method: 'POST', path: '/health' })).status, 405);
  const m1 = await metrics(srv.port);
  // +5 health, +1 for the first /metrics (counted once its answer is queued)
  assert.equal(m1['chatloop_http_requests_total{class="2xx"}'] - m0['chatloop_http_requests_total{class="2xx"}'], 6);
  assert.equal(m1['chatloop_http_requests_total{class="4xx"}'] - m0['chatloop_http_requests_total{class="4xx"}'], 4);
  assert.ok(m1['chatloop_connections_total'] - m0['chatloop_connections_total'] >= 10);
  assert.ok(m1['chatloop_connections_open'] >= 1, 'this /metrics connection is open');

  // histogram: buckets cumulative and non-decreasing, +Inf == _count == sum of classes
  const buckets = Object.entries(m1)
    .filter(([k]) => k.startsWith('chatloop_http_request_duration_seconds_bucket{'))
    .map(([k, v]) => [/le="([^"]+)"/.exec(k)[1], v]);
  assert.ok(buckets.length >= 5, 'several buckets');
  const les = buckets.map(([le]) => (le === '+Inf' ? Infinity : Number(le)));
  for (let i = 1; i < buckets.length; i++) {
    assert.ok(les[i] > les[i - 1], 'bucket bounds ascend');
    assert.ok(buckets[i][1] >= buckets[i - 1][1], 'bucket counts are cumulative');
  }
  assert.equal(les.at(-1), Infinity);
  const count = m1['chatloop_http_request_duration_seconds_count'];
  assert.equal(buckets.at(-1)[1], count, '+Inf bucket == _count');
  assert.equal(count, classSum(m1), '_count == sum over classes');
  assert.ok(count - m0['chatloop_http_request_duration_seconds_count'] >= 10);
  assert.ok(m1['chatloop_http_request_duration_seconds_sum'] >= m0['chatloop_http_request_duration_seconds_sum']);
  assert.ok(m1['chatloop_http_request_duration_seconds_sum'] > 0);
  assert.equal(m1['chatloop_worker_restarts_total'], 0);
});

/** Runs fn over items with at most `limit` in flight. */
async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i], i);
      }
    }),
  );
  return out;
}

test('1,000 concurrent connections each get their answer', { timeout: 40000 }, async () => {
  const N = 1000;
  const t0 = Date.now();
  const conns = [];
  try {
    await withTimeout(
      pool([...Array(N).keys()], 100, async () => {
        conns.push(await RawConn.open(srv.port, { timeout: 10000 }));
      }),
      15000,
      `opening ${N} connections`,
    );
    assert.equal(conns.length, N);

    // the server holds them all at once
    let open = 0;
    for (let deadline = Date.now() + 5000; Date.now() < deadline; await sleep(100)) {
      open = (await metrics(srv.port))['chatloop_connections_open'];
      if (open >= N) break;
    }
    assert.ok(open >= N, `server reports ${open} open connections, want >= ${N}`);

    const results = await withTimeout(
      Promise.all(
        conns.map(async (c, i) => {
          await c.write(`GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: c-${i}\r\n\r\n`);
          const r = await c.readResponse({ timeout: 15000 });
          return r.status === 200 && r.headers['x-request-id'] === `c-${i}` ? 'ok' : `status ${r.status} id ${r.headers['x-request-id']}`;
        }),
      ),
      20000,
      `${N} requests`,
    );
    const bad = results.filter((x) => x !== 'ok');
    assert.equal(bad.length, 0, `failed: ${bad.slice(0, 5).join('; ')}`);
    assert.equal(conns.filter((c) => c.gone).length, 0, 'all still open (keep-alive)');
    assert.ok(Date.now() - t0 < 30000, `took ${Date.now() - t0} ms`);
  } finally {
    for (const c of conns) c.destroy();
  }
  // and the server notices them going away
  let open;
  for (let deadline = Date.now() + 5000; Date.now() < deadline; await sleep(100)) {
    open = (await metrics(srv.port))['chatloop_connections_open'];
    if (open <= 2) break;
  }
  assert.ok(open <= 2, `connections_open back to ${open}`);
  await expectServing(srv.port);
});
