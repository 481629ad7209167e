// HTTP/1.1 basics: keep-alive, pipelining, chunked bodies, 100-continue,
// Connection: close, HTTP/1.0, the envelope and request ids, HEAD and 405.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before } from 'node:test';
import {
  RawConn,
  checkErrorEnvelope,
  expectServing,
  get,
  makeTest,
  rawExchange,
  request,
  sleep,
  startServer,
} from './lib/server.mjs';

let srv;
const test = makeTest(() => [srv]);

before(async () => {
  srv = await startServer({ workers: 2 });
});
after(async () => {
  if (!srv) return; // startup failed: reported by before()
  const r = await srv.stop();
  assert.deepEqual(r, { code: 0, signal: null }, 'server exits 0 after SIGTERM');
});

const ID_RE = /^[A-Za-z0-9._-]{1,32}$/;

test('keep-alive: several requests on one raw connection', async () => {
  const c = await RawConn.open(srv.port);
  try {
    let pid;
    for (let i = 0; i < 5; i++) {
      await c.write(`GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: ka-${i}\r\n\r\n`);
      const r = await c.readResponse();
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-request-id'], `ka-${i}`);
      assert.equal(r.headers.connection, undefined, 'no Connection: close on a kept-alive HTTP/1.1 answer');
      const j = r.json();
      pid ??= j.pid;
      assert.equal(j.pid, pid, 'the same worker (same connection) answers every request');
    }
    assert.equal(c.gone, false, 'connection still open');
  } finally {
    c.destroy();
  }
});

test('keep-alive: http.Agent reuses its socket', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const reused = [];
    for (let i = 0; i < 4; i++) {
      const r = await request(srv.port, { path: '/health', agent });
      assert.equal(r.status, 200);
      reused.push(r.reusedSocket);
      await sleep(5); // let the socket go back to the agent's pool
    }
    assert.deepEqual(reused, [false, true, true, true]);
  } finally {
    agent.destroy();
  }
});

test('100 pipelined requests in one write are answered in order', async () => {
  const c = await RawConn.open(srv.port);
  try {
    let batch = '';
    for (let i = 0; i < 100; i++) {
      const p = i % 2 === 0 ? '/health' : `/api/v1/x-${i}`;
      batch += `GET ${p} HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-${String(i).padStart(3, '0')}\r\n\r\n`;
    }
    await c.write(batch);
    const rs = await c.readResponses(100, { timeout: 10000 });
    rs.forEach((r, i) => {
      const id = `pipe-${String(i).padStart(3, '0')}`;
      assert.equal(r.headers['x-request-id'], id, `response ${i} is in order`);
      if (i % 2 === 0) {
        assert.equal(r.status, 200, `response ${i}`);
        assert.equal(r.json().status, 'ok');
      } else {
        assert.equal(r.status, 404, `response ${i}`);
        const j = checkErrorEnvelope(assert, r, 404, 'NOT_FOUND');
        assert.equal(j.metadata.request_id, id);
        assert.equal(j.error.details.path, `/api/v1/x-${i}`);
      }
    });
    assert.equal(c.buf.length, 0, 'nothing after the 100th response');
    // still usable afterwards
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
    assert.equal((await c.readResponse()).status, 200);
  } finally {
    c.destroy();
  }
});

test('pipelined POST bodies and GETs mixed, split at odd places', async () => {
  const c = await RawConn.open(srv.port);
  try {
    const reqs =
      'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc' +
      'GET /health HTTP/1.1\r\nHost: t\r\n\r\n' +
      'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n' +
      'GET /nope HTTP/1.1\r\nHost: t\r\n\r\n';
    // write byte ranges that cut through request lines, headers and bodies
    const cuts = [0, 7, 40, 63, 64, 90, 130, 131, 170, reqs.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      await c.write(reqs.slice(cuts[i], cuts[i + 1]));
      await sleep(10);
    }
    const rs = await c.readResponses(4);
    assert.deepEqual(rs.map((r) => r.status), [200, 200, 200, 404]);
    assert.equal(rs[0].json().data.body, 'abc');
    assert.equal(rs[2].json().data.body, 'xy');
    assert.equal(rs[2].json().data.chunked, true);
  } finally {
    c.destroy();
  }
});

test('chunked request body in separate writes is echoed whole', async () => {
  const c = await RawConn.open(srv.port);
  try {
    const pieces = ['hello, ', 'chunked ', 'w', 'orld ', 'h\u00e9llo ', 'x'.repeat(5000)];
    await c.write(
      'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n',
    );
    for (const [i, p] of pieces.entries()) {
      const b = Buffer.from(p, 'utf8');
      const ext = i === 2 ? ';name=value' : ''; // a chunk extension is allowed
      const frame = Buffer.concat([Buffer.from(b.length.toString(16) + ext + '\r\n'), b, Buffer.from('\r\n')]);
      if (i === 3) {
        // split one chunk's size line and data across writes
        await c.write(frame.subarray(0, 1));
        await sleep(20);
        await c.write(frame.subarray(1, 5));
        await sleep(20);
        await c.write(frame.subarray(5));
      } else {
        await c.write(frame);
      }
      await sleep(20);
    }
    await sleep(20);
    assert.equal(c.buf.length, 0, 'no answer before the last chunk');
    await c.write('0\r\n\r\n');
    const r = await c.readResponse();
    assert.equal(r.status, 200, r.text);
    const j = r.json();
    assert.equal(j.success, true);
    const want = pieces.join('');
    assert.equal(j.data.body, want);
    assert.equal(j.data.length, Buffer.byteLength(want));
    assert.equal(j.data.chunked, true);
    assert.equal(j.data.content_type, 'text/plain');
    assert.equal(j.metadata.request_id, r.headers['x-request-id']);
  } finally {
    c.destroy();
  }
});

test('Content-Length body (not chunked), binary-safe, and an empty body', async () => {
  const body = Buffer.from('line1\nline2\t"quoted"\\ \u00fc');
  let r = await request(srv.port, {
    method: 'POST',
    path: '/api/v1/debug/echo',
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length },
    body,
  });
  assert.equal(r.status, 200);
  let j = r.json();
  assert.equal(j.data.body, body.toString('utf8'));
  assert.equal(j.data.length, body.length);
  assert.equal(j.data.chunked, false);
  r = await request(srv.port, { method: 'POST', path: '/api/v1/debug/echo', headers: { 'Content-Length': 0 } });
  j = r.json();
  assert.equal(r.status, 200);
  assert.equal(j.data.length, 0);
  assert.equal(j.data.body, '');
  assert.equal(j.data.content_type, null);
});

test('Expect: 100-continue: 100 first, then the body, then 200', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write(
      'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n',
    );
    await c.waitFor(() => c.buf.length >= 25, 3000, '100 Continue');
    assert.equal(c.buf.subarray(0, 25).toString('latin1'), 'HTTP/1.1 100 Continue\r\n\r\n');
    const cont = await c.readResponse();
    assert.equal(cont.status, 100);
    await sleep(50);
    assert.equal(c.buf.length, 0, 'no final answer before the body');
    await c.write('hello world');
    const r = await c.readResponse();
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json().data.body, 'hello world');
    assert.equal(r.headers.connection, undefined, 'connection stays open');
    // and the connection is still good for another request
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
    assert.equal((await c.readResponse()).status, 200);
  } finally {
    c.destroy();
  }
});

test('Expect with an unknown expectation → 417', async () => {
  const { res, conn } = await rawExchange(
    srv.port,
    'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: teapot\r\n\r\nhi',
  );
  conn.destroy();
  assert.equal(res.status, 417);
  assert.equal(res.json().success, false);
  await expectServing(srv.port);
});

test('Connection: close is honoured', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
    const r = await c.readResponse();
    assert.equal(r.status, 200);
    assert.match(r.headers.connection || '', /close/i);
    await c.waitClosed(3000);
    assert.equal(c.buf.length, 0);
  } finally {
    c.destroy();
  }
});

test('HTTP/1.0 without keep-alive is closed; with keep-alive stays open', async () => {
  let c = await RawConn.open(srv.port);
  try {
    await c.write('GET /health HTTP/1.0\r\n\r\n');
    const r = await c.readResponse();
    assert.equal(r.status, 200);
    assert.equal(r.json().status, 'ok');
    await c.waitClosed(3000);
  } finally {
    c.destroy();
  }
  c = await RawConn.open(srv.port);
  try {
    for (let i = 0; i < 2; i++) {
      await c.write('GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
      const r = await c.readResponse();
      assert.equal(r.status, 200);
      assert.match(r.headers.connection || '', /keep-alive/i);
    }
    await sleep(100);
    assert.equal(c.gone, false, 'HTTP/1.0 keep-alive connection stays open');
  } finally {
    c.destroy();
  }
});

test('HEAD /health: headers with Content-Length, no body', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write('HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n');
    const r = await c.readResponse({ headOnly: true });
    assert.equal(r.status, 200);
    assert.ok(Number(r.headers['content-length']) > 0, 'Content-Length of the GET body');
    // If a body had been sent it would now sit in the buffer in front of
    // the next answer; the next response must start right away.
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
    const r2 = await c.readResponse();
    assert.equal(r2.status, 200);
    assert.equal(r2.json().status, 'ok');
  } finally {
    c.destroy();
  }
});

test('POST /health → 405 with Allow: GET, HEAD', async () => {
  const r = await request(srv.port, { method: 'POST', path: '/health', body: 'x' });
  assert.equal(r.headers.allow, 'GET, HEAD');
  const j = checkErrorEnvelope(assert, { ...r, text: r.text, json: r.json }, 405, 'METHOD_NOT_ALLOWED');
  assert.equal(j.error.details.allow, 'GET, HEAD');
});

test('404 envelope, request ids and X-Request-Id echo', async () => {
  let r = await get(srv.port, '/api/v1/does-not-exist?q=1');
  const j = checkErrorEnvelope(assert, r, 404, 'NOT_FOUND');
  assert.deepEqual(Object.keys(j).sort(), ['data', 'error', 'message', 'metadata', 'success']);
  assert.equal(j.error.details.path, '/api/v1/does-not-exist');
  assert.match(r.headers['x-request-id'], ID_RE);
  assert.ok(j.metadata.processing_ms >= 0);

  // two requests get different generated ids
  const r2 = await get(srv.port, '/nope');
  assert.notEqual(r2.headers['x-request-id'], r.headers['x-request-id']);

  // a valid client id is echoed, in the header and the body
  for (const id of ['abc-123_X.y', 'a', 'Z'.repeat(32)]) {
    r = await get(srv.port, '/nope', { headers: { 'X-Request-Id': id } });
    assert.equal(r.headers['x-request-id'], id);
    assert.equal(r.json().metadata.request_id, id);
  }
  // success envelope carries it too
  r = await request(srv.port, {
    method: 'POST',
    path: '/api/v1/debug/echo',
    headers: { 'X-Request-Id': 'mine-1' },
    body: 'z',
  });
  assert.equal(r.status, 200);
  const ok = r.json();
  assert.deepEqual(Object.keys(ok).sort(), ['data', 'message', 'metadata', 'success']);
  assert.equal(ok.success, true);
  assert.equal(typeof ok.message, 'string');
  assert.equal(ok.metadata.request_id, 'mine-1');
  assert.equal(typeof ok.metadata.processing_ms, 'number');
  // /health answers carry an id too
  r = await get(srv.port, '/health', { headers: { 'X-Request-Id': 'h-1' } });
  assert.equal(r.headers['x-request-id'], 'h-1');
});

test('invalid client X-Request-Id values are replaced', async () => {
  for (const bad of ['has space', 'Z'.repeat(33), 'semi;colon', 'slash/x', 'quote"x', '\u00e9t\u00e9']) {
    const c = await RawConn.open(srv.port);
    try {
      await c.write(Buffer.concat([Buffer.from('GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: '), Buffer.from(bad, 'utf8'), Buffer.from('\r\n\r\n')]));
      const r = await c.readResponse();
      assert.equal(r.status, 404);
      const id = r.headers['x-request-id'];
      assert.notEqual(id, bad, `id ${JSON.stringify(bad)} must not be echoed`);
      assert.match(id, ID_RE);
      assert.equal(r.json().metadata.request_id, id);
    } finally {
      c.destroy();
    }
  }
  // an empty value too
  const { res, conn } = await rawExchange(srv.port, 'GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id:\r\n\r\n');
  conn.destroy();
  assert.match(res.headers['x-request-id'], ID_RE);
});

test('every response has the common headers', async () => {
  const { res, conn } = await rawExchange(srv.port, 'GET /health HTTP/1.1\r\nHost: t\r\n\r\n');
  conn.destroy();
  assert.match(res.headers.server || '', /^chatloop\//);
  assert.ok(res.headers.date, 'Date');
  assert.equal(res.headers['x-content-type-options'], 'nosniff');
  assert.match(res.headers['content-type'], /^application\/json/);
  const j = res.json();
  assert.equal(j.status, 'ok');
  assert.equal(typeof j.version, 'string');
  assert.equal(typeof j.uptime_s, 'number');
  assert.equal(typeof j.worker, 'number');
  assert.equal(typeof j.pid, 'number');
});
