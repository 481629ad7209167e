// Malformed requests and size limits: 400, 413, 414, 431. After each one a
// normal request on a new connection must still work.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import {
  RawConn,
  checkErrorEnvelope,
  expectServing,
  makeTest,
  metrics,
  rawExchange,
  sleep,
  startServer,
} from './lib/server.mjs';

let srv; // defaults: max_header_bytes 16KiB, max_headers 100, max_request_line 8KiB, max_body_bytes 1MiB
let small; // max_body_bytes 64KiB
const test = makeTest(() => [srv, small]);

before(async () => {
  srv = await startServer({ workers: 1 });
  small = await startServer({ workers: 1, maxBodyBytes: '64KiB' });
});
after(async () => {
  const rs = await Promise.allSettled([srv, small].filter(Boolean).map((s) => s.stop()));
  for (const r of rs) {
    if (r.status === 'rejected') throw r.reason;
    assert.deepEqual(r.value, { code: 0, signal: null }, 'server exits 0 after SIGTERM');
  }
});

/** Sends `bytes` on a new connection; expects an error envelope and a close. */
async function expectRefused(port, bytes, status, code, { mustClose = true } = {}) {
  const c = await RawConn.open(port);
  try {
    c.writeQuiet(bytes); // a large write may not finish: the server answers early
    const r = await c.readResponse({ timeout: 5000 });
    const j = checkErrorEnvelope(assert, r, status, code);
    if (mustClose) {
      assert.match(r.headers.connection || '', /close/i, 'Connection: close after a framing error');
      await c.waitClosed(4000);
    }
    return { r, j };
  } finally {
    c.destroy();
  }
}

test('garbage bytes → 400 INVALID_REQUEST and close', async () => {
  const { j } = await expectRefused(srv.port, Buffer.from('\x00\x01\x02garbage \xff\xfe\r\n\r\n', 'latin1'), 400, 'INVALID_REQUEST');
  assert.match(j.message, /malformed|invalid/i);
  await expectServing(srv.port);
});

test('a bad request line and a bad header line → 400', async () => {
  await expectRefused(srv.port, 'GET\r\n\r\n', 400, 'INVALID_REQUEST');
  await expectRefused(srv.port, 'GET /health HTTP/1.1\r\nHost t\r\n\r\n', 400, 'INVALID_REQUEST');
  await expectRefused(srv.port, 'GET /health HTTP/1.1\r\nContent-Length : 0\r\n\r\n', 400, 'INVALID_REQUEST');
  await expectRefused(srv.port, 'GET /health HTTP/1.1\nHost: t\n\n', 400, 'INVALID_REQUEST');
  await expectServing(srv.port);
});

test(
  'whitespace in or after a header name → 400 (RFC 9110 5.1, RFC 9112 5.1 MUST)',
  async () => {
    await expectRefused(srv.port, 'GET /health HTTP/1.1\r\nHost: t\r\nX-Sp : x\r\n\r\n', 400, 'INVALID_REQUEST');
    await expectRefused(srv.port, 'GET /health HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n', 400, 'INVALID_REQUEST');
  },
);

test('HTTP versions: any major version but 1 → 505 HTTP Version Not Supported; 1.x is read as 1.1', async () => {
  for (const v of ['2.0', '3.0', '9.9', '0.1']) {
    const { r } = await expectRefused(srv.port, `GET /health HTTP/${v}\r\nHost: t\r\n\r\n`, 505, 'INVALID_REQUEST');
    assert.equal(r.reason, 'HTTP Version Not Supported');
  }
  await expectRefused(srv.port, 'GET /health HTTP/1.x\r\nHost: t\r\n\r\n', 400, 'INVALID_REQUEST');
  const { res, conn } = await rawExchange(srv.port, 'GET /health HTTP/1.2\r\nHost: t\r\n\r\n');
  conn.destroy();
  assert.equal(res.status, 200, 'RFC 9110 2.5: a higher minor version is read as the highest we speak');
  await expectServing(srv.port);
});

test('an HTTP/1.1 request without Host, or with two, → 400 and close; HTTP/1.0 needs none', async () => {
  const { j } = await expectRefused(srv.port, 'GET /health HTTP/1.1\r\n\r\n', 400, 'INVALID_REQUEST');
  assert.match(j.message, /Host/);
  const two = await expectRefused(srv.port, 'GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400, 'INVALID_REQUEST');
  assert.match(two.j.message, /more than one Host/);
  const { res, conn } = await rawExchange(srv.port, 'GET /health HTTP/1.0\r\n\r\n');
  conn.destroy();
  assert.equal(res.status, 200);
  await expectServing(srv.port);
});

test('an HTTP/0.9 request line (no version) → a prompt 400 and close, not a wait for the header timeout', async () => {
  const t0 = Date.now();
  const { j } = await expectRefused(srv.port, 'GET /\r\n', 400, 'INVALID_REQUEST');
  assert.match(j.message, /HTTP\/0\.9/);
  assert.ok(Date.now() - t0 < 2000, `answered after ${Date.now() - t0} ms (header_timeout is 10 s)`);
  await expectServing(srv.port);
});

test('an absolute-form target (RFC 9112 3.2.2) is routed on its path', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write(`GET http://127.0.0.1:${srv.port}/health HTTP/1.1\r\nHost: 127.0.0.1:${srv.port}\r\n\r\n`);
    const r = await c.readResponse();
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json().status, 'ok');
    await c.write('POST HTTP://example.com/api/v1/debug/echo?q=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi');
    const e = await c.readResponse();
    assert.equal(e.status, 200, e.text);
    assert.equal(e.json().data.body, 'hi');
    await c.write('GET http://example.com/nope HTTP/1.1\r\nHost: example.com\r\n\r\n');
    const n = await c.readResponse();
    assert.equal(n.status, 404);
    assert.equal(n.json().error.details.path, '/nope');
  } finally {
    c.destroy();
  }
});

test('a chunk size past max_body_bytes (ffffffffffffffff) → 413 at the chunk header, before any of its bytes', async () => {
  const t0 = Date.now();
  const { j } = await expectRefused(
    small.port,
    'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n',
    413,
    'PAYLOAD_TOO_LARGE',
  );
  assert.match(j.message, /max_body_bytes/);
  assert.ok(Date.now() - t0 < 2000, `refused after ${Date.now() - t0} ms`);
  // Also when earlier chunks fit: 60 KiB, then a chunk of 8 KiB against 64 KiB.
  await expectRefused(
    small.port,
    `POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nf000\r\n${'a'.repeat(0xf000)}\r\n2000\r\n`,
    413,
    'PAYLOAD_TOO_LARGE',
  );
  await expectServing(small.port);
});

test('Transfer-Encoding other than chunked → 400', async () => {
  await expectRefused(srv.port, 'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\nabc', 400, 'INVALID_REQUEST');
  await expectRefused(
    srv.port,
    'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    400,
    'INVALID_REQUEST',
  );
  await expectServing(srv.port);
});

test('garbage after a good request on the same connection: 200 then 400 then close', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write('GET /health HTTP/1.1\r\nHost: t\r\n\r\n\x01\x02 nonsense\r\n\r\n');
    const r1 = await c.readResponse();
    assert.equal(r1.status, 200);
    const r2 = await c.readResponse();
    checkErrorEnvelope(assert, r2, 400, 'INVALID_REQUEST');
    await c.waitClosed(4000);
  } finally {
    c.destroy();
  }
  await expectServing(srv.port);
});

test('Content-Length together with Transfer-Encoding → 400', async () => {
  await expectRefused(
    srv.port,
    'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    400,
    'INVALID_REQUEST',
  );
  await expectServing(srv.port);
});

test('bad Content-Length values → 400', async () => {
  await expectRefused(srv.port, 'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n', 400, 'INVALID_REQUEST');
  await expectRefused(srv.port, 'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n', 400, 'INVALID_REQUEST');
  await expectRefused(
    srv.port,
    'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd',
    400,
    'INVALID_REQUEST',
  );
  await expectServing(srv.port);
});

test('bad chunked framing → 400', async () => {
  await expectRefused(
    srv.port,
    'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n',
    400,
    'INVALID_REQUEST',
  );
  await expectServing(srv.port);
});

test('64 KiB header → 431 HEADERS_TOO_LARGE', async () => {
  const req = `GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`;
  const { j } = await expectRefused(srv.port, req, 431, 'HEADERS_TOO_LARGE');
  assert.match(j.message, /max_header_bytes/);
  await expectServing(srv.port);
});

test('many medium headers adding up past 16 KiB → 431', async () => {
  let h = '';
  for (let i = 0; i < 40; i++) h += `X-H${i}: ${'b'.repeat(500)}\r\n`;
  await expectRefused(srv.port, `GET /health HTTP/1.1\r\nHost: t\r\n${h}\r\n`, 431, 'HEADERS_TOO_LARGE');
  await expectServing(srv.port);
});

test('a 15,000-byte header is under the limit → 200', async () => {
  const { res, conn } = await rawExchange(srv.port, `GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ${'a'.repeat(15000)}\r\n\r\n`);
  conn.destroy();
  assert.equal(res.status, 200);
});

test('100 headers are allowed, 101 → 431', async () => {
  const headers = (n) => {
    let h = 'Host: t\r\n';
    for (let i = 1; i < n; i++) h += `X-N${i}: v\r\n`;
    return h;
  };
  const { res, conn } = await rawExchange(srv.port, `GET /health HTTP/1.1\r\n${headers(100)}\r\n`);
  conn.destroy();
  assert.equal(res.status, 200, '100 headers (max_headers) are fine');
  const { j } = await expectRefused(srv.port, `GET /health HTTP/1.1\r\n${headers(101)}\r\n`, 431, 'HEADERS_TOO_LARGE');
  assert.match(j.message, /max_headers/);
  await expectRefused(srv.port, `GET /health HTTP/1.1\r\n${headers(500)}\r\n`, 431, 'HEADERS_TOO_LARGE');
  await expectServing(srv.port);
});

test('9 KiB request target → 414 URI_TOO_LONG; 8,000 bytes is fine', async () => {
  const { j } = await expectRefused(srv.port, `GET /${'u'.repeat(9 * 1024)} HTTP/1.1\r\nHost: t\r\n\r\n`, 414, 'URI_TOO_LONG');
  assert.match(j.message, /max_request_line/);
  // a long query string counts too
  await expectRefused(srv.port, `GET /health?q=${'q'.repeat(9 * 1024)} HTTP/1.1\r\nHost: t\r\n\r\n`, 414, 'URI_TOO_LONG');
  const { res, conn } = await rawExchange(srv.port, `GET /${'u'.repeat(8000)} HTTP/1.1\r\nHost: t\r\n\r\n`);
  conn.destroy();
  assert.equal(res.status, 404, 'an 8,000-byte path is under max_request_line');
  await expectServing(srv.port);
});

/**
 * Opens a connection, sends `head`, then streams `total` body bytes in the
 * background (stopping quietly when the server closes) while reading the
 * first response. Returns it with timing.
 */
async function streamBody(port, head, total, { chunked = false, chunk = 64 * 1024 } = {}) {
  const c = await RawConn.open(port);
  const started = Date.now();
  let sent = 0;
  let stop = false;
  const writer = (async () => {
    if (!(await c.writeQuiet(head))) return;
    const block = Buffer.alloc(chunk, 0x61);
    while (sent < total && !stop && !c.gone) {
      const n = Math.min(chunk, total - sent);
      let frame = block.subarray(0, n);
      if (chunked) frame = Buffer.concat([Buffer.from(n.toString(16) + '\r\n'), frame, Buffer.from('\r\n')]);
      if (!(await c.writeQuiet(frame))) return; // EPIPE / ECONNRESET: the server is done with us
      sent += n;
    }
    if (chunked && !stop && !c.gone) await c.writeQuiet('0\r\n\r\n');
  })();
  try {
    const r = await c.readResponse({ timeout: 10000 });
    const ms = Date.now() - started;
    stop = true;
    await c.waitClosed(5000);
    await Promise.race([writer, sleep(1000)]);
    return { r, ms, sent };
  } finally {
    stop = true;
    c.destroy();
  }
}

test('10 MiB body with Content-Length → 413 PAYLOAD_TOO_LARGE, sent before the body is read', async () => {
  const total = 10 * 1024 * 1024;
  const head = `POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${total}\r\n\r\n`;
  const { r, ms } = await streamBody(srv.port, head, total);
  const j = checkErrorEnvelope(assert, r, 413, 'PAYLOAD_TOO_LARGE');
  assert.match(j.message, /max_body_bytes/);
  assert.match(r.headers.connection || '', /close/i);
  assert.ok(ms < 3000, `413 arrived after ${ms} ms`);
  await expectServing(srv.port);
});

test('Content-Length just over 1 MiB → 413 without sending any body', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write(`POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${1024 * 1024 + 1}\r\n\r\n`);
    const r = await c.readResponse({ timeout: 3000 });
    checkErrorEnvelope(assert, r, 413, 'PAYLOAD_TOO_LARGE');
    await c.waitClosed(4000);
  } finally {
    c.destroy();
  }
  await expectServing(srv.port);
});

test('exactly max_body_bytes (1 MiB) is accepted', async () => {
  const total = 1024 * 1024;
  const c = await RawConn.open(srv.port);
  try {
    await c.write(`POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${total}\r\n\r\n`);
    await c.write(Buffer.alloc(total, 0x62));
    const r = await c.readResponse({ timeout: 10000 });
    assert.equal(r.status, 200);
    const j = r.json();
    assert.equal(j.data.length, total);
    assert.equal(j.data.body.length, total);
  } finally {
    c.destroy();
  }
});

test('Expect: 100-continue with a too-large Content-Length → 413 instead of 100', async () => {
  const c = await RawConn.open(srv.port);
  try {
    await c.write(
      `POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${10 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n`,
    );
    const r = await c.readResponse({ timeout: 3000 });
    assert.notEqual(r.status, 100, 'no 100 Continue for a body that will be refused');
    checkErrorEnvelope(assert, r, 413, 'PAYLOAD_TOO_LARGE');
    assert.match(r.headers.connection || '', /close/i);
    await c.waitClosed(4000);
    assert.equal(c.buf.length, 0, 'nothing after the 413');
  } finally {
    c.destroy();
  }
  await expectServing(srv.port);
});

test('chunked body past max_body_bytes (64 KiB) → 413', async () => {
  const head = 'POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n';
  const { r, ms } = await streamBody(small.port, head, 1024 * 1024, { chunked: true, chunk: 16 * 1024 });
  checkErrorEnvelope(assert, r, 413, 'PAYLOAD_TOO_LARGE');
  assert.match(r.headers.connection || '', /close/i);
  assert.ok(ms < 3000, `413 arrived after ${ms} ms`);
  await expectServing(small.port);
});

test('chunked body under the 64 KiB limit is accepted; Content-Length over it is 413', async () => {
  const c = await RawConn.open(small.port);
  try {
    await c.write('POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n');
    for (let i = 0; i < 3; i++) await c.write(`4000\r\n${'c'.repeat(0x4000)}\r\n`);
    await c.write('0\r\n\r\n');
    const r = await c.readResponse();
    assert.equal(r.status, 200);
    assert.equal(r.json().data.length, 3 * 0x4000);
  } finally {
    c.destroy();
  }
  const total = 64 * 1024 + 1;
  const { r } = await streamBody(small.port, `POST /api/v1/debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${total}\r\n\r\n`, total);
  checkErrorEnvelope(assert, r, 413, 'PAYLOAD_TOO_LARGE');
  await expectServing(small.port);
});

test('refusals are counted in /metrics', async () => {
  const m = await metrics(srv.port);
  assert.ok(m['chatloop_http_parse_errors_total'] >= 10, `parse errors ${m['chatloop_http_parse_errors_total']}`);
  assert.ok(m['chatloop_http_requests_total{class="4xx"}'] >= 10);
  // lingering 413 connections close within ~2 s
  await sleep(100);
});

test('the text access log escapes quotes, backslashes and control bytes of the path (no forged fields or lines)', async () => {
  const s = await startServer({ workers: 1, logLevel: 'info', accessLog: 'on', logFormat: 'text' });
  try {
    // what llhttp lets through in a target: '"', '\\', tab and bytes >= 0x80
    const path = '/x"\\y\t\xff?q="z"';
    const c = await RawConn.open(s.port);
    try {
      await c.write(Buffer.from(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`, 'latin1'));
      const r = await c.readResponse();
      assert.equal(r.status, 404);
    } finally {
      c.destroy();
    }
    let line;
    for (let i = 0; i < 100 && !line; i++) {
      line = s.stderr.split('\n').find((l) => l.includes('"GET /x'));
      if (!line) await sleep(20);
    }
    assert.ok(line, `an access log line in ${s.logTail()}`);
    assert.ok(line.includes('"GET /x\\"\\\\y\\x09\\xff HTTP/1.1" 404 '), line);
    assert.ok(!/[\x00-\x1f\x7f]/.test(line), `no raw control bytes: ${JSON.stringify(line)}`);
  } finally {
    assert.deepEqual(await s.stop(), { code: 0, signal: null });
  }
});
