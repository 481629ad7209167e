// CORS (cors_origins), the Origin rule of /ws/chat and the security headers
// of every response, against a real PostgreSQL and chatloop-mock upstream:
// an allowed Origin is echoed with Vary, a foreign one gets no CORS header,
// `*` means any; a preflight is answered 204 before any credentials are
// looked at, on guarded routes too; SSE streams and the OpenAI-compatible
// routes carry the same heads; a WebSocket upgrade from a foreign page is
// 403; nosniff, Referrer-Policy and X-Frame-Options are on 200s, 404s,
// 401s, static files and streams, no-store on the API.
// Every wait is bounded; everything listens on 127.0.0.1.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import WebSocket from 'ws';
import { HOST, makeTest, request } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { MODEL, post, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, newUser, startChatServer, streamTurn } from './lib/chat.mjs';

const APP = 'https://app.example.com';
const DEV = 'http://localhost:5173';
const EVIL = 'https://evil.example';

let pg, mock, srv, anySrv, noneSrv;
const test = makeTest(() => [srv, anySrv, noneSrv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 4, mockTokenInterval: 1, mockFirstToken: 0 });
  // one at a time: each runs the migrations on the same database
  srv = await startChatServer(mock, pg, { corsOrigins: ` ${APP} , ${DEV}` });
  anySrv = await startChatServer(mock, pg, { corsOrigins: '*' });
  noneSrv = await startChatServer(mock, pg);
});
after(async () => {
  try {
    await stopAll(srv, anySrv, noneSrv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const cors = (res) =>
  Object.fromEntries(Object.entries(res.headers).filter(([k]) => k.startsWith('access-control-')));

/** The values of header `name` as sent (duplicates kept apart). */
const raw = (res, name) =>
  (res.rawHeaders || res.res.rawHeaders).filter((v, i) => i % 2 === 0 && v.toLowerCase() === name).length;

function assertAllowed(res, origin, what) {
  assert.equal(res.headers['access-control-allow-origin'], origin, `${what}: ${JSON.stringify(res.headers)}`);
  assert.equal(res.headers.vary, 'Origin', what);
  assert.equal(res.headers['access-control-expose-headers'], 'Retry-After, X-Request-Id', what);
  assert.equal(res.headers['access-control-allow-credentials'], undefined, `${what}: never with credentials`);
}

function assertSecurity(res, what) {
  const h = res.headers;
  assert.equal(h['x-content-type-options'], 'nosniff', what);
  assert.equal(h['referrer-policy'], 'no-referrer', what);
  assert.equal(h['x-frame-options'], 'DENY', what);
  for (const name of ['x-content-type-options', 'referrer-policy', 'x-frame-options', 'cache-control', 'vary']) {
    const n = raw(res, name);
    assert.ok(n <= 1, `${what}: ${name} sent ${n} times`);
  }
}

// ---- CORS on ordinary answers -----------------------------------------------------

test('an allowed Origin is echoed with Vary: Origin and the exposed headers, on a 200, a 401 and a 404', async () => {
  for (const origin of [APP, DEV]) {
    const ok = await request(srv.port, { path: '/health', headers: { origin } });
    assert.equal(ok.status, 200);
    assertAllowed(ok, origin, `/health from ${origin}`);
  }
  const unauth = await api(srv.port, 'GET', '/api/v1/conversations', { headers: { origin: APP } });
  assert.equal(unauth.status, 401);
  assertAllowed(unauth, APP, '401');
  const missing = await api(srv.port, 'GET', '/api/v1/nowhere', { headers: { origin: APP } });
  assert.equal(missing.status, 404);
  assertAllowed(missing, APP, '404');
});

test('a foreign Origin gets no CORS header at all (but Vary: Origin); without cors_origins no CORS header and no Vary', async () => {
  for (const origin of [EVIL, 'https://app.example.com.evil.example', 'http://app.example.com', 'null']) {
    const res = await request(srv.port, { path: '/health', headers: { origin } });
    assert.equal(res.status, 200);
    assert.deepEqual(cors(res), {}, `${origin}: ${JSON.stringify(res.headers)}`);
    assert.equal(res.headers.vary, 'Origin', 'caches must know the answer depends on Origin');
  }
  const none = await request(noneSrv.port, { path: '/health', headers: { origin: APP } });
  assert.deepEqual(cors(none), {});
  assert.equal(none.headers.vary, undefined);
});

test('cors_origins = * allows any origin with Access-Control-Allow-Origin: * (and no credentials)', async () => {
  for (const headers of [{ origin: EVIL }, {}]) {
    const res = await request(anySrv.port, { path: '/health', headers });
    assert.equal(res.headers['access-control-allow-origin'], '*');
    assert.equal(res.headers['access-control-expose-headers'], 'Retry-After, X-Request-Id');
    assert.equal(res.headers['access-control-allow-credentials'], undefined);
  }
});

// ---- preflight -----------------------------------------------------------------------

const preflight = (port, path, origin, extra = {}) =>
  request(port, {
    method: 'OPTIONS',
    path,
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type, x-stainless-os',
      ...extra,
    },
  });

test('a preflight on a guarded route, without a token, is 204 with the methods, headers and max-age', async () => {
  for (const path of ['/api/v1/conversations', '/v1/chat/completions', '/api/v1/conversations/abc/messages']) {
    const res = await preflight(srv.port, path, APP);
    assert.equal(res.status, 204, `${path}: ${res.text}`);
    assert.equal(res.text, '');
    assert.equal(res.headers['content-length'], undefined, 'a 204 has no Content-Length');
    assertAllowed(res, APP, path);
    assert.equal(res.headers['access-control-allow-methods'], 'GET, POST, PATCH, DELETE, OPTIONS');
    const allowHeaders = res.headers['access-control-allow-headers'].split(/,\s*/).map((h) => h.toLowerCase());
    for (const h of ['authorization', 'content-type', 'idempotency-key', 'x-stainless-os', 'x-stainless-lang',
      'x-stainless-package-version', 'x-stainless-runtime', 'x-stainless-runtime-version', 'x-stainless-arch',
      'x-stainless-retry-count', 'x-stainless-timeout', 'openai-organization', 'openai-project'])
      assert.ok(allowHeaders.includes(h), `${h} allowed: ${allowHeaders}`);
    assert.equal(res.headers['access-control-max-age'], '600');
    assertSecurity(res, `preflight ${path}`);
  }
  const star = await preflight(anySrv.port, '/v1/models', EVIL);
  assert.equal(star.status, 204);
  assert.equal(star.headers['access-control-allow-origin'], '*');
});

test('a preflight from a foreign origin is 403 FORBIDDEN without any allow header; OPTIONS that is not a preflight stays 405', async () => {
  for (const port of [srv.port, noneSrv.port]) {
    const res = await preflight(port, '/api/v1/conversations', EVIL);
    assert.equal(res.status, 403, res.text);
    assert.equal(res.json().error.code, 'FORBIDDEN');
    assert.match(res.json().message, /evil\.example.*cors_origins/);
    assert.deepEqual(cors(res), {});
  }
  const plain = await request(srv.port, { method: 'OPTIONS', path: '/api/v1/conversations', headers: { origin: APP } });
  assert.equal(plain.status, 405);
});

// ---- streams and the OpenAI-compatible routes ---------------------------------------

test('an SSE turn and /v1/chat/completions (streamed and not) carry the CORS and security headers in their heads', async () => {
  const u = await newUser(srv.port);
  const conv = await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: { title: 'cors' } });
  assert.equal(conv.status, 201, conv.text);
  const s = await streamTurn(srv.port, `/api/v1/conversations/${conv.j.data.id}/messages`, { message: 'hi' },
    { token: u.token, headers: { origin: APP } });
  assert.equal(s.status, 200, s.raw);
  assert.ok(s.done, `the stream completed: ${s.raw.slice(0, 300)}`);
  assertAllowed(s, APP, 'SSE');
  assertSecurity(s, 'SSE');
  assert.equal(s.headers['cache-control'], 'no-store');

  const headers = { origin: DEV, authorization: `Bearer ${u.token}` };
  const body = { model: MODEL, messages: [{ role: 'user', content: 'hello' }] };
  const plain = await post(srv.port, body, { headers });
  assert.equal(plain.status, 200, plain.text);
  assertAllowed(plain, DEV, '/v1/chat/completions');
  assertSecurity(plain, '/v1/chat/completions');
  assert.equal(plain.headers['cache-control'], 'no-store');
  const streamed = await post(srv.port, { ...body, stream: true }, { headers });
  assert.equal(streamed.status, 200, streamed.text);
  assert.match(streamed.headers['content-type'], /^text\/event-stream/);
  assert.match(streamed.text, /data: \[DONE\]/);
  assertAllowed(streamed, DEV, '/v1/chat/completions stream');
  assertSecurity(streamed, '/v1/chat/completions stream');
  assert.equal(streamed.headers['cache-control'], 'no-store');
});

// ---- /ws/chat and Origin ----------------------------------------------------------------

/** Tries an upgrade; resolves with the status (101 on open) and, when refused, the body. */
function tryWs(port, token, origin) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${port}/ws/chat?token=${encodeURIComponent(token)}`, {
      perMessageDeflate: false,
      handshakeTimeout: 5000,
      ...(origin ? { origin } : {}),
    });
    ws.on('open', () => {
      ws.terminate();
      resolve({ status: 101 });
    });
    ws.on('unexpected-response', (req, res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, text }));
    });
    ws.on('error', (e) => reject(e));
  });
}

test('/ws/chat: a foreign Origin is refused 403 before the upgrade; its own, an allowed one and none are 101', async () => {
  const u = await newUser(srv.port);
  for (const origin of [EVIL, `http://evil.example:${srv.port}`, 'null', `ftp://${HOST}:${srv.port}`]) {
    const r = await tryWs(srv.port, u.token, origin);
    assert.equal(r.status, 403, `${origin}: ${JSON.stringify(r)}`);
    const j = JSON.parse(r.text);
    assert.equal(j.error.code, 'FORBIDDEN');
    assert.match(j.message, /may not open a WebSocket here/);
    assertSecurity(r, 'ws 403');
  }
  for (const origin of [`http://${HOST}:${srv.port}`, `https://${HOST}:${srv.port}`, APP, DEV, undefined]) {
    const r = await tryWs(srv.port, u.token, origin);
    assert.equal(r.status, 101, `${origin}: ${JSON.stringify(r)}`);
  }
  // without cors_origins only the server's own origin; with * any
  const n = await newUser(noneSrv.port);
  assert.equal((await tryWs(noneSrv.port, n.token, APP)).status, 403);
  assert.equal((await tryWs(noneSrv.port, n.token, `http://${HOST}:${noneSrv.port}`)).status, 101);
  const a = await newUser(anySrv.port);
  assert.equal((await tryWs(anySrv.port, a.token, EVIL)).status, 101);
});

// ---- security headers ------------------------------------------------------------------

test('security headers on a 200, a 404, a 401, a static file and the page; no-store on the API, static caching kept', async () => {
  const health = await request(noneSrv.port, { path: '/health' });
  assert.equal(health.status, 200);
  assertSecurity(health, '/health');
  assert.equal(health.headers['cache-control'], 'no-store');

  const missing = await request(noneSrv.port, { path: '/no/such/thing' });
  assert.equal(missing.status, 404);
  assertSecurity(missing, '404');

  const apiMissing = await api(noneSrv.port, 'GET', '/api/v1/nowhere');
  assert.equal(apiMissing.status, 404);
  assertSecurity(apiMissing, 'API 404');
  assert.equal(apiMissing.headers['cache-control'], 'no-store');

  const unauth = await api(noneSrv.port, 'GET', '/api/v1/conversations');
  assert.equal(unauth.status, 401);
  assertSecurity(unauth, '401');
  assert.equal(unauth.headers['cache-control'], 'no-store');

  const models = await request(noneSrv.port, { path: '/v1/models' });
  assertSecurity(models, '/v1/models');
  assert.equal(models.headers['cache-control'], 'no-store');

  const page = await request(noneSrv.port, { path: '/' });
  assert.equal(page.status, 200);
  assert.match(page.headers['content-type'], /^text\/html/);
  assertSecurity(page, 'index.html');
  assert.match(page.headers['content-security-policy'], /frame-ancestors 'none'/);
  assert.match(page.headers['content-security-policy'], /script-src 'self'/, "the page's own policy is kept");
  assert.equal(page.headers['cache-control'], 'no-cache', 'static files keep their revalidation');
  assert.equal(raw(page, 'content-security-policy'), 1);

  const asset = await request(noneSrv.port, { path: '/app.js' });
  assert.equal(asset.status, 200);
  assertSecurity(asset, 'app.js');
  assert.equal(asset.headers['cache-control'], 'no-cache');
  const again = await request(noneSrv.port, { path: '/app.js', headers: { 'if-none-match': asset.headers.etag } });
  assert.equal(again.status, 304);
  assertSecurity(again, '304');
});
