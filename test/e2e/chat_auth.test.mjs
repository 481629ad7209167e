// Accounts and session tokens against a real PostgreSQL: register, login,
// the token on protected routes; every way a token can be wrong answers 401
// UNAUTHORIZED (envelope) or an OpenAI-format 401 on the compatible routes;
// bad register/login input is a 400 naming the field.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { after, before } from 'node:test';
import { checkErrorEnvelope, makeTest } from './lib/server.mjs';
import { mockText, startMock } from './lib/mock.mjs';
import { checkOkEnvelope, checkOpenAIError, contentOf, drain, post, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { JWT_SECRET, api, b64url, eventually, newUser, signJwt, startChatServer, uniqueEmail } from './lib/chat.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 6, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg);
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const now = () => Math.floor(Date.now() / 1000);

test('register → 201 {user_id, email}; login → {access_token, token_type, expires_in, user_id}; the token works', async () => {
  const email = uniqueEmail('Reg');
  const reg = await api(srv.port, 'POST', '/api/v1/auth/register', { body: { email, password: 'a good password' } });
  const d = checkOkEnvelope(assert, reg, 201);
  assert.match(d.user_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(d.email, email);
  assert.ok(!('password' in d) && !('password_hash' in d), reg.text);

  const row = (await pg.query('SELECT email, password_hash FROM users WHERE id = $1', [d.user_id])).rows;
  assert.equal(row.length, 1);
  assert.equal(row[0].email, email);
  assert.ok(!row[0].password_hash.includes('a good password'), 'the password is not stored in clear');
  assert.match(row[0].password_hash, /^pbkdf2-sha256\$1000\$/, 'hashed with the configured iteration count');

  const log = await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email, password: 'a good password' } });
  const l = checkOkEnvelope(assert, log);
  assert.equal(l.token_type, 'bearer');
  assert.equal(l.user_id, d.user_id);
  assert.equal(l.expires_in, 24 * 3600, 'jwt_ttl default 24h');
  assert.match(l.access_token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
  const [h, p] = l.access_token.split('.').slice(0, 2).map((x) => JSON.parse(Buffer.from(x, 'base64url')));
  assert.equal(h.alg, 'HS256');
  assert.equal(p.sub, d.user_id);
  assert.ok(Math.abs(p.exp - (now() + 24 * 3600)) < 30, `exp ${p.exp}`);

  const list = await api(srv.port, 'GET', '/api/v1/conversations', { token: l.access_token });
  assert.deepEqual(checkOkEnvelope(assert, list), { conversations: [], next_before: null });
  // the email matches case-insensitively at login as well
  const upper = await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email: email.toUpperCase(), password: 'a good password' } });
  assert.equal(checkOkEnvelope(assert, upper).user_id, d.user_id);
});

test('duplicate email (same, or differing only in case) → 409 naming email; one row', async () => {
  const email = uniqueEmail('dup');
  const first = await api(srv.port, 'POST', '/api/v1/auth/register', { body: { email, password: 'password-one' } });
  checkOkEnvelope(assert, first, 201);
  for (const again of [email, email.toUpperCase(), email.replace(/^./, (c) => c.toUpperCase())]) {
    const r = await api(srv.port, 'POST', '/api/v1/auth/register', { body: { email: again, password: 'password-two' } });
    assert.equal(r.status, 409, `${again}: ${r.text}`);
    assert.equal(r.j.success, false);
    assert.equal(r.j.data, null);
    assert.equal(r.j.error.details.field, 'email', r.text);
    assert.match(r.j.message, /already/, r.text);
  }
  const n = (await pg.query('SELECT count(*)::int AS n FROM users WHERE lower(email) = lower($1)', [email])).rows[0].n;
  assert.equal(n, 1);
  // the first password still logs in; the second does not
  assert.equal((await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email, password: 'password-one' } })).status, 200);
  checkErrorEnvelope(assert, await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email, password: 'password-two' } }), 401, 'UNAUTHORIZED');
});

test('wrong password and unknown email → 401 UNAUTHORIZED, the same message', async () => {
  const u = await newUser(srv.port);
  const wrong = await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email: u.email, password: 'not the password' } });
  const a = checkErrorEnvelope(assert, wrong, 401, 'UNAUTHORIZED');
  const unknown = await api(srv.port, 'POST', '/api/v1/auth/login', { body: { email: uniqueEmail('nobody'), password: 'whatever123' } });
  const b = checkErrorEnvelope(assert, unknown, 401, 'UNAUTHORIZED');
  assert.equal(a.message, b.message, 'no hint whether the account exists');
  assert.ok(!('access_token' in wrong.j), wrong.text);
});

test('bad register/login input → 400 INVALID_REQUEST naming the field', async () => {
  const good = { email: uniqueEmail('bad'), password: 'long enough pw' };
  const cases = [
    [{ password: good.password }, 'email'],
    [{ email: 42, password: good.password }, 'email'],
    [{ email: null, password: good.password }, 'email'],
    [{ email: 'no-at-sign', password: good.password }, 'email'],
    [{ email: '@example.test', password: good.password }, 'email'],
    [{ email: 'user@', password: good.password }, 'email'],
    [{ email: 'sp ace@example.test', password: good.password }, 'email'],
    [{ email: `${'x'.repeat(250)}@e.io`, password: good.password }, 'email'],
    [{ email: good.email }, 'password'],
    [{ email: good.email, password: 12345678 }, 'password'],
    [{ email: good.email, password: '' }, 'password'],
    [{ email: good.email, password: 'x'.repeat(1025) }, 'password'],
  ];
  for (const path of ['/api/v1/auth/register', '/api/v1/auth/login']) {
    for (const [body, field] of cases) {
      const r = await api(srv.port, 'POST', path, { body });
      const j = checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
      assert.equal(j.error.details.field, field, `${path} ${JSON.stringify(body).slice(0, 80)}: ${r.text}`);
      assert.match(j.message, new RegExp(field), r.text);
    }
    // not JSON, or not an object
    for (const body of ['{"email": "a@b.c", ', 'not json', '[]', '"x"', '']) {
      const r = await api(srv.port, 'POST', path, { body });
      checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
    }
  }
  // register only: a short password (login accepts any non-empty one and says 401)
  const short = await api(srv.port, 'POST', '/api/v1/auth/register', { body: { email: good.email, password: 'short' } });
  assert.equal(checkErrorEnvelope(assert, short, 400, 'INVALID_REQUEST').error.details.field, 'password');
  const n = (await pg.query('SELECT count(*)::int AS n FROM users WHERE lower(email) = lower($1)', [good.email])).rows[0].n;
  assert.equal(n, 0, 'no account was made by a refused request');
});

test('every token failure → 401 UNAUTHORIZED envelope with WWW-Authenticate, on every protected route', async () => {
  const u = await newUser(srv.port);
  const conv = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/conversations', { token: u.token, body: {} }), 201);
  const [h64, p64, s64] = u.token.split('.');
  const claims = JSON.parse(Buffer.from(p64, 'base64url'));

  // Sanity for the crafting below: a token made here with the server's
  // secret and a future exp is accepted, so each refusal is for its one flaw.
  const crafted = signJwt({ sub: u.userId, iat: now(), exp: now() + 600 });
  assert.equal((await api(srv.port, 'GET', '/api/v1/conversations', { token: crafted })).status, 200, 'a well-made token works');

  const otherSecret = 'another-secret-entirely-0123456789';
  const bad = {
    'no Authorization header': null,
    'Basic scheme': 'Basic dXNlcjpwYXNz',
    'Bearer and nothing': 'Bearer ',
    'garbage token': 'Bearer garbage',
    'garbage with dots': 'Bearer a.b.c',
    'two parts': `Bearer ${h64}.${p64}`,
    'four parts': `Bearer ${u.token}.x`,
    expired: `Bearer ${signJwt({ sub: u.userId, iat: now() - 7200, exp: now() - 60 })}`,
    'expired this second': `Bearer ${signJwt({ sub: u.userId, iat: now() - 7200, exp: now() })}`,
    'not yet valid (nbf)': `Bearer ${signJwt({ sub: u.userId, exp: now() + 600, nbf: now() + 300 })}`,
    'issued in the future (iat)': `Bearer ${signJwt({ sub: u.userId, iat: now() + 300, exp: now() + 600 })}`,
    'nbf not an integer': `Bearer ${signJwt({ sub: u.userId, exp: now() + 600, nbf: now() + 0.5 })}`,
    'alg none, no signature': `Bearer ${b64url({ alg: 'none', typ: 'JWT' })}.${p64}.`,
    'alg none, original signature': `Bearer ${b64url({ alg: 'none', typ: 'JWT' })}.${p64}.${s64}`,
    'alg None': `Bearer ${b64url({ alg: 'None' })}.${p64}.`,
    'alg HS512': `Bearer ${signJwt(claims, JWT_SECRET, { alg: 'HS512', typ: 'JWT' })}`,
    'no alg': `Bearer ${signJwt(claims, JWT_SECRET, { typ: 'JWT' })}`,
    'wrong signature (another secret)': `Bearer ${signJwt(claims, otherSecret)}`,
    'payload changed, signature kept': `Bearer ${h64}.${b64url({ ...claims, exp: claims.exp + 3600 })}.${s64}`,
    'signature truncated': `Bearer ${u.token.slice(0, -4)}`,
    'no subject': `Bearer ${signJwt({ iat: now(), exp: now() + 600 })}`,
    'exp not a number': `Bearer ${signJwt({ sub: u.userId, exp: String(now() + 600) })}`,
    'subject not a uuid': `Bearer ${signJwt({ sub: 'admin', exp: now() + 600 })}`,
  };
  const routes = [
    ['GET', '/api/v1/conversations'],
    ['POST', '/api/v1/conversations', {}],
    ['GET', `/api/v1/conversations/${conv.id}`],
    ['DELETE', `/api/v1/conversations/${conv.id}`],
    ['POST', `/api/v1/conversations/${conv.id}/messages`, { message: 'hi' }],
    ['POST', '/api/v1/chat', { session_id: 's1', message: 'hi' }],
    ['GET', '/api/v1/usage'],
  ];
  const requestsBefore = (await mock.stats()).requests;
  for (const [what, auth] of Object.entries(bad)) {
    for (const [method, path, body] of routes) {
      const r = await api(srv.port, method, path, { body, headers: auth === null ? {} : { authorization: auth } });
      const j = checkErrorEnvelope(assert, r, 401, 'UNAUTHORIZED');
      assert.equal(r.headers['www-authenticate'], 'Bearer', `${what} ${method} ${path}`);
      assert.ok(j.message.length > 0);
    }
  }
  // The reasons are told apart in the message (not a secret: the client holds the token).
  const msg = async (auth) => (await api(srv.port, 'GET', '/api/v1/usage', { headers: { authorization: auth } })).j.message;
  assert.match(await msg(bad.expired), /expired/);
  assert.match(await msg(bad['not yet valid (nbf)']), /not valid yet/);
  assert.match(await msg(bad['issued in the future (iat)']), /issued in the future/);
  assert.match(await msg(bad['nbf not an integer']), /malformed/);
  assert.match(await msg(bad['alg none, no signature']), /algorithm/);
  assert.match(await msg(bad['wrong signature (another secret)']), /signature/);
  assert.match(await msg(bad['garbage token']), /malformed/);

  // Nothing went through: the conversation is intact, nothing was sent upstream.
  assert.equal((await mock.stats()).requests, requestsBefore, 'no refused turn reached the provider');
  const still = await api(srv.port, 'GET', `/api/v1/conversations/${conv.id}`, { token: u.token });
  assert.equal(checkOkEnvelope(assert, still).id, conv.id);
  // The scheme is case-insensitive; the real token still works.
  assert.equal((await api(srv.port, 'GET', '/api/v1/usage', { headers: { authorization: `bearer ${u.token}` } })).status, 200);
});

test('OpenAI-compatible routes: no or bad token → 401 in OpenAI format; the openai SDK works with the JWT', async () => {
  const u = await newUser(srv.port);
  const body = { messages: [{ role: 'user', content: 'hello' }] };
  for (const path of ['/v1/chat/completions', '/openai/v1/chat/completions']) {
    const none = await post(srv.port, body, { path });
    const e = checkOpenAIError(assert, none, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer');
    assert.ok(e.message.length > 0);
    for (const auth of ['Bearer garbage', `Bearer ${signJwt({ sub: u.userId, exp: now() - 5 })}`, `Bearer ${signJwt({ sub: u.userId, exp: now() + 60 }, 'wrong-secret-xyz')}`]) {
      checkOpenAIError(assert, await post(srv.port, body, { path, headers: { authorization: auth } }), 401);
    }
  }
  for (const path of ['/v1/models', '/openai/v1/models']) {
    checkOpenAIError(assert, await api(srv.port, 'GET', path), 401);
  }
  // the SDK with a wrong key sees an AuthenticationError
  const badClient = new OpenAI({ apiKey: 'not-a-jwt', baseURL: `http://127.0.0.1:${srv.port}/v1`, maxRetries: 0, timeout: 10000 });
  await assert.rejects(badClient.chat.completions.create({ model: 'm', ...body }), (err) => err.status === 401);

  const client = new OpenAI({ apiKey: u.token, baseURL: `http://127.0.0.1:${srv.port}/v1`, maxRetries: 0, timeout: 10000 });
  const c = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', ...body });
  assert.equal(c.choices[0].message.content, mockText(6));
  const stream = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', stream: true, ...body });
  const { chunks, error } = await drain(stream);
  assert.equal(error, null);
  assert.equal(contentOf(chunks), mockText(6));
  const models = await client.models.list();
  assert.ok(Array.isArray(models.data));
  // the pass-through records the caller's usage (source "openai"), once per request
  const rows = await eventually(async () => {
    const r = (await pg.query(`SELECT completion_tokens FROM usage_events WHERE user_id = $1 AND source = 'openai'`, [u.userId])).rows;
    return r.length >= 2 && r;
  }, 3000, 'two pass-through usage rows');
  assert.equal(rows.length, 2);
  for (const r of rows) assert.equal(r.completion_tokens, 6);
});
