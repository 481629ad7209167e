// API keys as users hold them: created once with a JWT, then given to the
// official `openai` and `groq-sdk` clients (streaming and not) and to the
// native API; listed without secrets; revoked — and refused within 5 s on
// every worker. The key is stored only as its SHA-256; usage made with a key
// is recorded under its user and the key's id.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before } from 'node:test';
import Groq from 'groq-sdk';
import OpenAI from 'openai';
import { makeTest, metrics, request } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { API_KEY, checkOkEnvelope, checkOpenAIError, contentOf, drain, post, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, startChatServer, streamTurn } from './lib/chat.mjs';
import { connect, newSid } from './lib/ws.mjs';

const N = 5;
let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: N, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { workers: 2 });
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const KEY_RE = /^cl-[A-Za-z0-9_-]{43}$/;
const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const openai = (key) =>
  new OpenAI({ apiKey: key, baseURL: `http://127.0.0.1:${srv.port}/v1`, maxRetries: 0, timeout: 10000 });
const groq = (key) => new Groq({ apiKey: key, baseURL: `http://127.0.0.1:${srv.port}`, maxRetries: 0, timeout: 10000 });

async function newKey(user, name) {
  const r = await api(srv.port, 'POST', '/api/v1/keys', { token: user.token, body: name === undefined ? {} : { name } });
  return checkOkEnvelope(assert, r, 201);
}

/** A request on a fresh connection (so SO_REUSEPORT spreads them over the workers). */
const fresh = (key, path = '/api/v1/conversations') =>
  request(srv.port, { path, headers: { authorization: `Bearer ${key}` }, agent: false });

test('POST /api/v1/keys → 201 {id, name, key, prefix, created_at}; only the hash is stored', async () => {
  const u = await newUser(srv.port);
  const k = await newKey(u, 'laptop');
  assert.deepEqual(Object.keys(k).sort(), ['created_at', 'id', 'key', 'name', 'prefix']);
  assert.match(k.key, KEY_RE);
  assert.equal(k.prefix, k.key.slice(0, 12));
  assert.equal(k.name, 'laptop');
  assert.match(k.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  const rows = (await pg.query('SELECT user_id, key_hash, prefix FROM api_keys WHERE id = $1', [k.id])).rows;
  assert.equal(rows.length, 1);
  assert.equal(rows[0].user_id, u.userId);
  assert.equal(rows[0].key_hash, sha256(k.key));
  const all = JSON.stringify((await pg.query('SELECT * FROM api_keys')).rows);
  assert.ok(!all.includes(k.key.slice(3)), 'the secret itself is stored nowhere');
  // nameless is fine; two keys differ
  const k2 = await newKey(u);
  assert.equal(k2.name, null);
  assert.notEqual(k2.key, k.key);
});

test('bad input: a name that is not a string of 1..100 characters → 400 naming it; no token → 401', async () => {
  const u = await newUser(srv.port);
  for (const name of [5, '', 'x'.repeat(101), 'a\nb', ['x']]) {
    const r = await api(srv.port, 'POST', '/api/v1/keys', { token: u.token, body: { name } });
    assert.equal(r.status, 400, `${JSON.stringify(name)}: ${r.text}`);
    assert.equal(r.j.error.code, 'INVALID_REQUEST');
    assert.deepEqual(r.j.error.details, { field: 'name' });
  }
  const bad = await api(srv.port, 'POST', '/api/v1/keys', { token: u.token, body: '{"name":' });
  assert.equal(bad.status, 400, bad.text);
  const anon = await api(srv.port, 'POST', '/api/v1/keys', { body: {} });
  assert.equal(anon.status, 401, anon.text);
  assert.equal((await pg.query('SELECT count(*)::int AS n FROM api_keys WHERE user_id = $1', [u.userId])).rows[0].n, 0);
});

test('GET /api/v1/keys lists the caller\'s active keys, newest first, without secrets; last_used_at follows use', async () => {
  const u = await newUser(srv.port);
  const other = await newUser(srv.port);
  const a = await newKey(u, 'a');
  const b = await newKey(u, 'b');
  await newKey(other, 'not yours');
  const l = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/keys', { token: u.token }));
  assert.deepEqual(l.keys.map((k) => k.id), [b.id, a.id]);
  for (const k of l.keys) {
    assert.deepEqual(Object.keys(k).sort(), ['created_at', 'id', 'last_used_at', 'name', 'prefix']);
    assert.equal(k.last_used_at, null);
  }
  assert.ok(!JSON.stringify(l).includes(a.key) && !JSON.stringify(l).includes(b.key));
  const used = await fresh(a.key);
  assert.equal(used.status, 200, used.text);
  const l2 = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/keys', { token: a.key }));
  const seen = l2.keys.find((k) => k.id === a.id);
  assert.match(seen.last_used_at, /^\d{4}-\d\d-\d\dT/, 'stamped by the lookup');
  assert.equal(l2.keys.find((k) => k.id === b.id).last_used_at, null);
});

test('the openai client with a key: models, a completion and a stream; usage under the key\'s user and id', async () => {
  const u = await newUser(srv.port);
  const k = await newKey(u, 'sdk');
  const client = openai(k.key);
  const models = await client.models.list();
  assert.ok(models.data.length >= 1);
  const c = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(c.choices[0].message.content, mockText(N));
  const s = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hi' }], stream: true });
  const { chunks, error } = await drain(s);
  assert.equal(error, null);
  assert.equal(contentOf(chunks), mockText(N));
  const recs = (await mock.requests()).filter((r) => r.path === '/v1/chat/completions');
  assert.ok(recs.length >= 2);
  for (const r of recs.slice(-2)) assert.equal(r.headers.authorization, `Bearer ${API_KEY}`, 'the user\'s key never goes upstream');
  const rows = await eventually(async () => {
    const r = (await pg.query("SELECT user_id, api_key_id, completion_tokens FROM usage_events WHERE api_key_id = $1 AND source = 'openai'", [k.id])).rows;
    return r.length === 2 && r;
  }, 5000, 'two usage rows with the key');
  for (const r of rows) {
    assert.equal(r.user_id, u.userId);
    assert.equal(r.completion_tokens, N);
  }
});

test('the groq-sdk client with a key streams and completes', async () => {
  const u = await newUser(srv.port);
  const k = await newKey(u, 'groq');
  const client = groq(k.key);
  const c = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hello' }] });
  assert.equal(c.choices[0].message.content, mockText(N));
  const s = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hello' }], stream: true });
  let text = '';
  for await (const ch of s) text += ch.choices[0]?.delta?.content ?? '';
  assert.equal(text, mockText(N));
});

test('a key authenticates /api/v1 too: an SSE chat turn and a WebSocket query store usage with the key id', async () => {
  const u = await newUser(srv.port);
  const k = await newKey(u, 'native');
  const t = await streamTurn(srv.port, '/api/v1/chat', { session_id: newSid('key'), message: 'hi', stream: true }, { token: k.key });
  const done = t.events.find((e) => e.event === 'done');
  assert.ok(done, JSON.stringify(t.events));
  const ws = await connect(srv.port, { token: k.key });
  try {
    const sid = newSid('kws');
    ws.ws.send(JSON.stringify({ type: 'query', session_id: sid, question: 'hello' }));
    await ws.waitFor((h) => h.of(sid).find((m) => m.type === 'complete' || m.type === 'error'), 10000, 'complete');
    assert.ok(ws.of(sid).find((m) => m.type === 'complete'), JSON.stringify(ws.of(sid)));
  } finally {
    ws.ws.terminate();
  }
  const rows = await eventually(async () => {
    const r = (await pg.query("SELECT user_id FROM usage_events WHERE api_key_id = $1 AND source = 'chat'", [k.id])).rows;
    return r.length === 2 && r;
  }, 5000, 'usage of both turns under the key');
  for (const r of rows) assert.equal(r.user_id, u.userId);
  // and a JWT's usage names no key
  await streamTurn(srv.port, '/api/v1/chat', { session_id: newSid('jwt'), message: 'hi', stream: true }, { token: u.token });
  const jwtRows = await eventually(async () => {
    const r = (await pg.query("SELECT api_key_id FROM usage_events WHERE user_id = $1 AND api_key_id IS NULL", [u.userId])).rows;
    return r.length === 1 && r;
  }, 5000, 'the JWT turn\'s usage');
  assert.equal(jwtRows[0].api_key_id, null);
});

test('unknown keys: 401 in each protocol\'s shape (the SDK raises AuthenticationError), counted in /metrics', async () => {
  const before = (await metrics(srv.port)).chatloop_api_key_auth_failures_total ?? 0;
  const forged = 'cl-' + 'A'.repeat(43);
  const r = await api(srv.port, 'GET', '/api/v1/conversations', { token: forged });
  assert.equal(r.status, 401, r.text);
  assert.equal(r.j.error.code, 'UNAUTHORIZED');
  assert.match(r.j.message, /API key/);
  const o = await post(srv.port, { model: 'm', messages: [{ role: 'user', content: 'x' }] }, { headers: { authorization: `Bearer ${forged}` } });
  checkOpenAIError(assert, o, 401, { code: 'invalid_api_key' });
  await assert.rejects(openai(forged).models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  // a key of the wrong shape is read as a JWT, and refused as one
  const shapeless = await api(srv.port, 'GET', '/api/v1/conversations', { token: 'cl-short' });
  assert.equal(shapeless.status, 401);
  assert.match(shapeless.j.message, /invalid token/);
  const after = (await metrics(srv.port)).chatloop_api_key_auth_failures_total;
  assert.ok(after >= before + 3, `failures ${before} → ${after}`);
});

test('DELETE /api/v1/keys/{id} revokes: refused on every worker within 5 s; 404 for another user\'s, a revoked or a non-UUID id', async () => {
  const u = await newUser(srv.port);
  const other = await newUser(srv.port);
  const k = await newKey(u, 'to revoke');
  const keep = await newKey(u, 'kept');
  // warm both workers' caches with the key
  for (let i = 0; i < 20; i++) assert.equal((await fresh(k.key)).status, 200);
  const foreign = await api(srv.port, 'DELETE', `/api/v1/keys/${k.id}`, { token: other.token });
  assert.equal(foreign.status, 404, foreign.text);
  assert.equal((await api(srv.port, 'DELETE', '/api/v1/keys/not-a-uuid', { token: u.token })).status, 404);
  const t0 = Date.now();
  const del = await api(srv.port, 'DELETE', `/api/v1/keys/${k.id}`, { token: u.token });
  assert.deepEqual(checkOkEnvelope(assert, del), { id: k.id, revoked: true });
  // within 5 s, twenty fresh connections in a row (both workers) refuse it
  let run = 0;
  while (run < 20) {
    const r = await fresh(k.key);
    if (r.status === 401) run++;
    else {
      assert.equal(r.status, 200, r.text);
      run = 0;
    }
    assert.ok(Date.now() - t0 < 5000, `the revoked key still worked ${Date.now() - t0} ms after revocation`);
  }
  const o = await post(srv.port, { model: 'm', messages: [{ role: 'user', content: 'x' }] }, { headers: { authorization: `Bearer ${k.key}` } });
  checkOpenAIError(assert, o, 401, { code: 'invalid_api_key' });
  assert.equal((await api(srv.port, 'DELETE', `/api/v1/keys/${k.id}`, { token: u.token })).status, 404, 'already revoked');
  const l = checkOkEnvelope(assert, await api(srv.port, 'GET', '/api/v1/keys', { token: u.token }));
  assert.deepEqual(l.keys.map((x) => x.id), [keep.id], 'a revoked key leaves the list');
  assert.equal((await fresh(keep.key)).status, 200, 'the other key still works');
});

test('a WebSocket opened with a key stops taking queries within 5 s of the key\'s revocation, and closes 1008', async () => {
  const u = await newUser(srv.port);
  const k = await newKey(u, 'ws');
  const ws = await connect(srv.port, { token: k.key });
  let refusedSid;
  try {
    const t0 = Date.now();
    checkOkEnvelope(assert, await api(srv.port, 'DELETE', `/api/v1/keys/${k.id}`, { token: u.token }));
    for (;;) {
      const sid = newSid('revoked');
      ws.ws.send(JSON.stringify({ type: 'query', session_id: sid, question: 'still there?' }));
      const m = await ws.waitFor((h) => h.of(sid).find((x) => x.type === 'error' || x.type === 'complete'), 10000, 'an answer');
      if (m.type === 'error') {
        assert.equal(m.error.code, 'UNAUTHORIZED', JSON.stringify(m));
        refusedSid = sid;
        break;
      }
      assert.ok(Date.now() - t0 < 5000, `queries still answered ${Date.now() - t0} ms after revocation`);
      await new Promise((r) => setTimeout(r, 300));
    }
    assert.ok(Date.now() - t0 < 5000);
    await ws.waitFor((h) => h.closed, 5000, 'the close');
    assert.equal(ws.closed.code, 1008);
  } finally {
    ws.ws.terminate();
  }
  const n = (await pg.query('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1 AND session_key = $2', [u.userId, refusedSid])).rows[0].n;
  assert.equal(n, 0, 'nothing stored for the refused query');
});
