// Timeouts against slow or idle peers: header_timeout (slowloris and silent
// clients), body_timeout, keepalive_timeout.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { RawConn, checkErrorEnvelope, expectServing, makeTest, metrics, sleep, startServer } from './lib/server.mjs';

let srv;
const test = makeTest(() => [srv]);

before(async () => {
  srv = await startServer({ workers: 1, headerTimeout: '1s', bodyTimeout: '1s', keepaliveTimeout: '1s' });
});
after(async () => {
  if (!srv) return; // startup failed: reported by before()
  assert.deepEqual(await srv.stop(), { code: 0, signal: null });
});

test('slowloris: one head byte every 200 ms → 408 REQUEST_TIMEOUT and close at ~1 s; others unaffected', async () => {
  const c = await RawConn.open(srv.port);
  const t0 = Date.now();
  let stop = false;
  const head = 'GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ' + 'a'.repeat(100);
  const dripper = (async () => {
    for (let i = 0; i < head.length && !stop && !c.gone; i++) {
      if (!(await c.writeQuiet(head[i]))) return;
      await sleep(200);
    }
  })();
  try {
    // meanwhile a normal client is served at once, several times
    await sleep(300);
    for (let i = 0; i < 3; i++) {
      const s0 = Date.now();
      await expectServing(srv.port, 'a normal request during a slowloris');
      assert.ok(Date.now() - s0 < 500, 'normal request is not delayed');
      await sleep(100);
    }
    const r = await c.readResponse({ timeout: 3000 });
    const at = Date.now() - t0;
    const j = checkErrorEnvelope(assert, r, 408, 'REQUEST_TIMEOUT');
    assert.match(j.message, /header_timeout/);
    assert.match(r.headers.connection || '', /close/i);
    await c.waitClosed(2500);
    const closedAt = c.endedAt - t0;
    assert.ok(at >= 900 && at <= 2500, `408 after ${at} ms (header_timeout 1s)`);
    assert.ok(closedAt <= 2500, `closed after ${closedAt} ms`);
  } finally {
    stop = true;
    c.destroy();
    await dripper;
  }
  await expectServing(srv.port);
});

test('a client that sends nothing is closed silently at ~1 s', async () => {
  const c = await RawConn.open(srv.port);
  const t0 = Date.now();
  try {
    await c.waitClosed(3000);
    const ms = c.endedAt - t0;
    assert.ok(ms >= 900 && ms <= 2500, `closed after ${ms} ms`);
    assert.equal(c.buf.length, 0, 'no bytes are sent to a silent client');
  } finally {
    c.destroy();
  }
});

test('a head that starts but never ends gets 408 even without further bytes', async () => {
  const c = await RawConn.open(srv.port);
  const t0 = Date.now();
  try {
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n');
    const r = await c.readResponse({ timeout: 3000 });
    checkErrorEnvelope(assert, r, 408, 'REQUEST_TIMEOUT');
    const ms = Date.now() - t0;
    assert.ok(ms >= 900 && ms <= 2500, `408 after ${ms} ms`);
    await c.waitClosed(2500);
  } finally {
    c.destroy();
  }
});

test('body_timeout: a body that stops arriving → 408 and close', async () => {
  const c = await RawConn.open(srv.port);
  const t0 = Date.now();
  try {
    await c.write('POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc');
    const r = await c.readResponse({ timeout: 3000 });
    const j = checkErrorEnvelope(assert, r, 408, 'REQUEST_TIMEOUT');
    assert.match(j.message, /body_timeout/);
    const ms = Date.now() - t0;
    assert.ok(ms >= 900 && ms <= 2500, `408 after ${ms} ms`);
    await c.waitClosed(2500);
  } finally {
    c.destroy();
  }
  await expectServing(srv.port);
});

test('a body that keeps trickling in (gaps < body_timeout) is accepted', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write('POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n');
    for (const ch of 'abcdef') {
      await sleep(400);
      if (c.gone) break; // the answer below says why
      await c.writeQuiet(ch);
    }
    const r = await c.readResponse({ timeout: 3000 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json().data.body, 'abcdef');
  } finally {
    c.destroy();
  }
});

test('keepalive_timeout: an idle kept-alive connection is closed at ~1 s; activity resets the clock', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
    assert.equal((await c.readResponse()).status, 200);
    // idle less than the timeout: still open, and still serves
    await sleep(600);
    assert.equal(c.gone, false, 'open after 600 ms idle');
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
    const r = await c.readResponse();
    assert.equal(r.status, 200);
    const t0 = Date.now();
    await c.waitClosed(3000);
    const ms = c.endedAt - t0;
    assert.ok(ms >= 800 && ms <= 2500, `closed ${ms} ms after the last response`);
    assert.equal(c.buf.length, 0, 'closed without sending anything');
  } finally {
    c.destroy();
  }
  await expectServing(srv.port);
});

test('timeouts are counted', async () => {
  const m = await metrics(srv.port);
  assert.ok(m['chatloop_http_header_timeouts_total'] >= 3, `header timeouts ${m['chatloop_http_header_timeouts_total']}`);
});
