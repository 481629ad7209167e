// Tokens past their owner or their time: a token for a user that no longer
// exists is 401 everywhere (and never reaches the upstream); the token of a
// route that needs one is checked before its body is read; a WebSocket
// closes with 1008 when its token expires unless it sends a fresh one.
// Every wait is bounded.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before } from 'node:test';
import { HOST, checkErrorEnvelope, get, makeTest, sleep } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { checkOkEnvelope, checkOpenAIError, post, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, signJwt, startChatServer } from './lib/chat.mjs';
import { connect, newSid, openWs } from './lib/ws.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);
const now = () => Math.floor(Date.now() / 1000);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 5, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg);
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

test('a token whose user was deleted: 401 on the native, OpenAI-compatible and WebSocket routes; the upstream is never called', async () => {
  const u = await newUser(srv.port);
  // seen by the worker once, so the cache knows it ...
  checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/conversations', { token: u.token }));
  await pg.query('DELETE FROM users WHERE id = $1', [u.userId]);
  // ... and forgets it within 5 s
  await eventually(async () => (await api(srv.port, 'GET', '/api/v1/conversations', { token: u.token })).status === 401, 7000, '401 after the delete');
  await mock.clearRequests();
  for (const [method, path, body] of [
    ['GET', '/api/v1/conversations'],
    ['POST', '/api/v1/conversations', {}],
    ['POST', '/api/v1/chat', { session_id: 'gone', message: 'hi' }],
    ['POST', '/api/v1/chat', { session_id: 'gone', message: 'hi', stream: true }],
    ['GET', '/api/v1/usage'],
  ]) {
    const r = await api(srv.port, method, path, { token: u.token, body });
    checkErrorEnvelope(assert, r, 401, 'UNAUTHORIZED');
    assert.match(r.j.message, /no longer exists/, `${method} ${path}`);
  }
  const o = await post(srv.port, { model: 'm', messages: [{ role: 'user', content: 'hi' }] }, { headers: { authorization: `Bearer ${u.token}` } });
  checkOpenAIError(assert, o, 401);
  const w = openWs(srv.port, { token: u.token });
  await w.waitFor((x) => x.refused, 5000, 'the refused upgrade');
  assert.equal(w.refused.status, 401);
  const calls = await mock.requests();
  assert.equal(Array.isArray(calls) ? calls.length : calls.requests.length, 0, 'no upstream call for a deleted user');
  // a token of a user never seen by this worker is refused at once
  const ghost = signJwt({ sub: '00000000-0000-4000-8000-00000000dead', exp: now() + 600 });
  checkErrorEnvelope(assert, await api(srv.port, 'GET', '/api/v1/usage', { token: ghost }), 401, 'UNAUTHORIZED');
});

/** Sends a request head announcing a body of `len` bytes, then nothing; resolves with what came back. */
function headOnly(port, head, ms = 3000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, HOST);
    let data = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ data, timedOut: true });
    }, ms);
    s.on('connect', () => s.write(head));
    s.on('data', (d) => (data += d));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ data, timedOut: false });
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      if (data) resolve({ data, timedOut: false });
      else reject(e);
    });
  });
}

test('a route that needs a token checks it before the body: 401 at once, nothing buffered; a good token gets 100 Continue', async () => {
  const len = 1024 * 1024 - 100;
  for (const path of ['/api/v1/chat', '/api/v1/conversations', '/v1/chat/completions']) {
    const t0 = Date.now();
    const r = await headOnly(srv.port, `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${len}\r\n\r\n`);
    assert.ok(!r.timedOut, `${path}: no answer before the body (${JSON.stringify(r.data.slice(0, 200))})`);
    assert.match(r.data, /^HTTP\/1\.1 401 /, path);
    assert.ok(Date.now() - t0 < 1500, `${path}: answered after ${Date.now() - t0} ms`);
  }
  const bad = await headOnly(srv.port, `POST /api/v1/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nExpect: 100-continue\r\nContent-Length: ${len}\r\n\r\n`);
  assert.match(bad.data, /^HTTP\/1\.1 401 /);
  assert.ok(!bad.data.includes('100 Continue'), 'no 100 Continue for a refused token');
  const u = await newUser(srv.port);
  const good = await headOnly(srv.port, `POST /api/v1/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${u.token}\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n`, 1000);
  assert.match(good.data, /^HTTP\/1\.1 100 Continue/);
});

test('300 unauthenticated 1 MiB uploads to protected routes leave the worker where it was', { timeout: 60000 }, async () => {
  const pid = (await get(srv.port, '/health')).json().pid;
  const rss = () => {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return Number(m[1]) * 1024;
  };
  const base = rss();
  const chunk = Buffer.alloc(64 * 1024, 'a');
  const socks = await Promise.all(
    Array.from({ length: 300 }, () =>
      new Promise((resolve) => {
        const s = net.connect(srv.port, HOST, () => {
          s.write(`POST /api/v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: ${1024 * 1024 - 100}\r\n\r\n`);
          for (let i = 0; i < 15; i++) s.write(chunk);
          resolve(s);
        });
        s.on('error', () => {});
      }),
    ),
  );
  await sleep(1000);
  const grown = rss() - base;
  for (const s of socks) s.destroy();
  assert.ok(grown < 16 * 1024 * 1024, `worker RSS grew by ${(grown / 1048576).toFixed(1)} MiB for 300 refused uploads`);
});

test('a WebSocket whose token expires: error UNAUTHORIZED and close 1008; a fresh {"type":"auth"} keeps it open', { timeout: 30000 }, async () => {
  const u = await newUser(srv.port);
  const short = signJwt({ sub: u.userId, iat: now(), exp: now() + 2 });
  const h = await connect(srv.port, { token: short });
  const t0 = Date.now();
  const closed = await h.waitClose(6000, 'the close at expiry');
  assert.equal(closed.code, 1008);
  assert.ok(Date.now() - t0 < 4500, `closed ${Date.now() - t0} ms after connecting (token valid 2 s)`);
  const err = h.msgs.find((m) => m.type === 'error');
  assert.equal(err?.error?.code, 'UNAUTHORIZED', JSON.stringify(h.msgs));

  // the same, refreshed in time
  const h2 = await connect(srv.port, { token: signJwt({ sub: u.userId, iat: now(), exp: now() + 2 }) });
  h2.send({ type: 'auth', token: signJwt({ sub: u.userId, iat: now(), exp: now() + 600 }) });
  const ok = await h2.waitFor((x) => x.msgs.find((m) => m.type === 'authenticated'), 3000, 'authenticated');
  assert.equal(ok.user_id, u.userId);
  assert.ok(ok.expires_at > now() + 500);
  await sleep(3000);
  assert.equal(h2.closed, null, 'still open past the first token');
  const sid = newSid('fresh');
  h2.send({ type: 'query', session_id: sid, question: 'still here?' });
  const end = await h2.waitFor((x) => x.of(sid).find((m) => m.type === 'complete' || m.type === 'error'), 10000, 'the query');
  assert.equal(end.type, 'complete', JSON.stringify(end));
  // another user's token is refused, the socket stays
  const other = await newUser(srv.port);
  h2.send({ type: 'auth', token: other.token });
  const forb = await h2.waitFor((x) => x.msgs.find((m) => m.type === 'error' && m.error.code === 'FORBIDDEN'), 3000, 'FORBIDDEN');
  assert.ok(forb);
  h2.send({ type: 'auth', token: 'garbage' });
  await h2.waitFor((x) => x.msgs.find((m) => m.type === 'error' && m.error.code === 'UNAUTHORIZED'), 3000, 'UNAUTHORIZED for garbage');
  assert.equal(h2.closed, null);
  h2.terminate();
});
