// Rate limits as SPEC §8 promises them, kept in PostgreSQL: a token bucket
// of rate_limit_per_minute chat turns per user shared by every transport
// (REST, SSE, WebSocket, the OpenAI-compatible routes) and by every instance
// on the database; max_turns_per_user running at once; and
// auth_rate_limit_per_minute sign-ins per client address. Each refusal is a
// 429 in its protocol's own shape with the seconds to wait, stores nothing,
// and is counted in /metrics.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import OpenAI from 'openai';
import { makeTest, metrics, sleep } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import pgLib from 'pg';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, openStream, startChatServer, streamTurn, uniqueEmail } from './lib/chat.mjs';
import { connect, newSid } from './lib/ws.mjs';

let pg, fast, slow;
const servers = [];
const test = makeTest(() => servers);

before(async () => {
  pg = await startPg();
  fast = await startMock({ mockTokens: 3, mockTokenInterval: 0, mockFirstToken: 0 });
  slow = await startMock({ mockTokens: 40, mockTokenInterval: 100, mockFirstToken: 0 });
});
after(async () => {
  try {
    await stopAll(...servers, fast, slow);
  } finally {
    if (pg) await pg.stop();
  }
});

async function server(mock, opts) {
  const s = await startChatServer(mock, pg, opts);
  servers.push(s);
  return s;
}
async function stop(s) {
  await stopAll(s);
  servers.splice(servers.indexOf(s), 1);
}

const chat = (s, u, extra = {}) =>
  api(s.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: newSid('rl'), message: 'hi', ...extra } });
const openai = (s, u) => new OpenAI({ apiKey: u.token, baseURL: `http://127.0.0.1:${s.port}/v1`, maxRetries: 0, timeout: 10000 });
const completion = (s, u) =>
  openai(s, u).chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hi' }] });
const limited = async (s, kind) => (await metrics(s.port))[`chatloop_rate_limited_total{kind="${kind}"}`];

function check429(r, kind, limit) {
  assert.equal(r.status, 429, r.text);
  assert.equal(r.j.success, false);
  assert.equal(r.j.error.code, 'RATE_LIMITED');
  assert.equal(r.j.error.details.kind, kind);
  assert.equal(r.j.error.details.limit, limit);
  const ra = Number(r.headers['retry-after']);
  assert.ok(Number.isInteger(ra) && ra >= 1, `Retry-After ${r.headers['retry-after']}`);
  assert.equal(r.j.error.details.retry_after, ra);
  return ra;
}

async function messagesOf(userId) {
  return (await pg.query('SELECT count(*)::int AS n FROM messages WHERE user_id = $1', [userId])).rows[0].n;
}

test('rate_limit_per_minute is one bucket for every transport: REST, SSE, WebSocket and the openai client; the next is 429 in each shape', async () => {
  const s = await server(fast, { rateLimitPerMinute: 4 });
  const u = await newUser(s.port);
  checkOkEnvelope(assert, await chat(s, u));
  const sse = await streamTurn(s.port, '/api/v1/chat', { session_id: newSid('sse'), message: 'hi' }, { token: u.token });
  assert.ok(sse.done, sse.raw);
  const ws = await connect(s.port, { token: u.token });
  try {
    const a = newSid('ws');
    ws.ws.send(JSON.stringify({ type: 'query', session_id: a, question: 'hi' }));
    await ws.waitFor((h) => h.of(a).find((m) => m.type === 'complete'), 10000, 'complete');
    const c = await completion(s, u);
    assert.ok(c.choices[0].message.content.length > 0);
    const stored = await messagesOf(u.userId);
    const before = await limited(s, 'turn_rate');

    // the bucket is empty: every transport refuses, in its own shape
    const rest = await chat(s, u);
    const ra = check429(rest, 'turn_rate', 4);
    assert.ok(ra <= 15, `one turn refills in 15 s: ${ra}`);
    assert.match(rest.j.message, /4 chat turns per minute/);
    const sse2 = await streamTurn(s.port, '/api/v1/chat', { session_id: newSid('sse'), message: 'hi' }, { token: u.token });
    assert.equal(sse2.status, 429, sse2.raw);
    assert.equal(JSON.parse(sse2.raw).error.code, 'RATE_LIMITED');
    const b = newSid('ws');
    ws.ws.send(JSON.stringify({ type: 'query', session_id: b, question: 'hi' }));
    const e = await ws.waitFor((h) => h.of(b).find((m) => m.type === 'error'), 10000, 'the refusal');
    assert.equal(e.error.code, 'RATE_LIMITED');
    assert.ok(Number.isInteger(e.retry_after) && e.retry_after >= 1, JSON.stringify(e));
    assert.equal(e.error.details.kind, 'turn_rate');
    await assert.rejects(completion(s, u), (err) => {
      assert.ok(err instanceof OpenAI.RateLimitError, `${err.constructor.name}: ${err.message}`);
      assert.equal(err.status, 429);
      assert.equal(err.error?.type, 'rate_limit_exceeded');
      assert.ok(Number(err.headers?.get?.('retry-after') ?? err.headers?.['retry-after']) >= 1);
      return true;
    });
    assert.equal(await messagesOf(u.userId), stored, 'a refused turn stores nothing');
    assert.equal(await limited(s, 'turn_rate'), before + 4, 'each refusal counted');
  } finally {
    ws.ws.terminate();
  }
  // another user has a bucket of their own
  checkOkEnvelope(assert, await chat(s, await newUser(s.port)));
  await stop(s);
});

test('the bucket refills evenly: after Retry-After seconds one more turn goes through', async () => {
  const s = await server(fast, { rateLimitPerMinute: 30 }); // one turn per 2 s
  const u = await newUser(s.port);
  for (let i = 0; i < 30; i++) checkOkEnvelope(assert, await chat(s, u));
  const r = await chat(s, u);
  const ra = check429(r, 'turn_rate', 30);
  assert.ok(ra <= 2, `Retry-After ${ra}`);
  await sleep(ra * 1000 + 100);
  checkOkEnvelope(assert, await chat(s, u));
  check429(await chat(s, u), 'turn_rate', 30);
  await stop(s);
});

test('two instances on one database allow rate_limit_per_minute in total, not twice that', async () => {
  const a = await server(fast, { rateLimitPerMinute: 6, workers: 2 });
  const b = await server(fast, { rateLimitPerMinute: 6, workers: 2 });
  const u = await newUser(a.port);
  let ok = 0, refused = 0;
  for (let i = 0; i < 16; i++) {
    const r = await chat(i % 2 ? b : a, u);
    if (r.status === 200) ok++;
    else {
      check429(r, 'turn_rate', 6);
      refused++;
    }
  }
  assert.equal(ok, 6, `${ok} allowed, ${refused} refused`);
  // and at once, in parallel from both
  const v = await newUser(a.port);
  const all = await Promise.all(Array.from({ length: 14 }, (_, i) => chat(i % 2 ? b : a, v)));
  assert.equal(all.filter((r) => r.status === 200).length, 6, all.map((r) => r.status).join(','));
  await stop(a);
  await stop(b);
});

test('max_turns_per_user: the third running turn is refused (kind concurrent); a finished or abandoned one gives its place back', async () => {
  const s = await server(slow, { maxTurnsPerUser: 2 });
  const u = await newUser(s.port);
  const one = openStream(s.port, '/api/v1/chat', { session_id: newSid('c1'), message: 'long' }, { token: u.token });
  const two = openStream(s.port, '/api/v1/chat', { session_id: newSid('c2'), message: 'long' }, { token: u.token });
  await one.waitFor((h) => h.tokens().length > 0, 10000, 'turn one streaming');
  await two.waitFor((h) => h.tokens().length > 0, 10000, 'turn two streaming');
  const third = await chat(s, u);
  check429(third, 'concurrent', 2);
  assert.match(third.j.message, /at most 2 per user/);
  await assert.rejects(completion(s, u), (e) => e instanceof OpenAI.RateLimitError);
  assert.ok((await limited(s, 'concurrent')) >= 2);
  // the client of turn one leaves: its place comes back (stored as cancelled)
  one.destroy();
  const three = await eventually(async () => {
    const h = openStream(s.port, '/api/v1/chat', { session_id: newSid('c3'), message: 'long' }, { token: u.token });
    const got = await Promise.race([h.waitFor((x) => x.tokens().length > 0 || x.status === 429, 10000, 'answer').then(() => h), h.finished.then(() => h)]);
    if (got.status === 429) {
      h.destroy();
      return null;
    }
    return h;
  }, 5000, 'a place after the client left');
  assert.equal(three.status, 200);
  // another user is not affected
  checkOkEnvelope(assert, await chat(s, await newUser(s.port)));
  two.destroy();
  three.destroy();
  await stop(s);
});

test('max_turns_per_user = 1: turns and completions one after another each give their place back', async () => {
  const s = await server(fast, { maxTurnsPerUser: 1 });
  const u = await newUser(s.port);
  for (let i = 0; i < 4; i++) {
    const c = await completion(s, u);
    assert.ok(c.choices[0].message.content.length > 0);
    const st = openai(s, u).chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hi' }], stream: true });
    for await (const ch of await st) void ch;
    checkOkEnvelope(assert, await chat(s, u));
    const sse = await streamTurn(s.port, '/api/v1/chat', { session_id: newSid('one'), message: 'hi' }, { token: u.token });
    assert.ok(sse.done, sse.raw);
  }
  // a conversation that does not exist takes no place for good either
  const missing = await api(s.port, 'POST', '/api/v1/conversations/00000000-0000-4000-8000-00000000abcd/messages',
    { token: u.token, body: { message: 'hi' } });
  assert.equal(missing.status, 404, missing.text);
  await eventually(async () => (await chat(s, u)).status === 200, 3000, 'a place after the 404');
  const held = (await pg.query('SELECT count(*)::int AS n FROM turn_slots WHERE user_id = $1 AND lease IS NOT NULL AND lapses_at > now()', [u.userId])).rows[0].n;
  assert.equal(held, 0, 'no place left held');
  await stop(s);
});

test('auth_rate_limit_per_minute: register and login per client address; the next is 429 auth_ip before any hashing', async () => {
  const s = await server(fast, { authRateLimitPerMinute: 3 });
  const email = uniqueEmail('ip');
  const reg = await api(s.port, 'POST', '/api/v1/auth/register', { body: { email, password: 'correct horse battery' } });
  checkOkEnvelope(assert, reg, 201);
  checkOkEnvelope(assert, await api(s.port, 'POST', '/api/v1/auth/login', { body: { email, password: 'correct horse battery' } }));
  const wrong = await api(s.port, 'POST', '/api/v1/auth/login', { body: { email, password: 'wrong password here' } });
  assert.equal(wrong.status, 401);
  const t0 = Date.now();
  const r = await api(s.port, 'POST', '/api/v1/auth/login', { body: { email, password: 'correct horse battery' } });
  check429(r, 'auth_ip', 3);
  assert.match(r.j.message, /sign-in attempts from this address/);
  const r2 = await api(s.port, 'POST', '/api/v1/auth/register', { body: { email: uniqueEmail('ip'), password: 'correct horse battery' } });
  check429(r2, 'auth_ip', 3);
  assert.ok(Date.now() - t0 < 1000, 'refused at once');
  assert.equal(await limited(s, 'auth_ip'), 2);
  await stop(s);
});

test('limits off (0) check nothing; a refused turn over WebSocket leaves the socket usable', async () => {
  const s = await server(fast, { rateLimitPerMinute: 1 });
  const u = await newUser(s.port);
  const ws = await connect(s.port, { token: u.token });
  try {
    const a = newSid('w1');
    ws.ws.send(JSON.stringify({ type: 'query', session_id: a, question: 'hi' }));
    await ws.waitFor((h) => h.of(a).find((m) => m.type === 'complete'), 10000, 'complete');
    const b = newSid('w2');
    ws.ws.send(JSON.stringify({ type: 'query', session_id: b, question: 'hi' }));
    const e = await ws.waitFor((h) => h.of(b).find((m) => m.type === 'error'), 10000, 'refusal');
    assert.equal(e.error.code, 'RATE_LIMITED');
    ws.ws.send(JSON.stringify({ type: 'ping' }));
    await ws.waitFor((h) => h.msgs.find((m) => m.type === 'pong'), 5000, 'pong');
  } finally {
    ws.ws.terminate();
  }
  await stop(s);
  const off = await server(fast, { rateLimitPerMinute: 0, maxTurnsPerUser: 0 });
  const v = await newUser(off.port);
  for (let i = 0; i < 5; i++) checkOkEnvelope(assert, await chat(off, v));
  const rows = (await pg.query('SELECT (SELECT count(*) FROM user_limits WHERE user_id = $1) + (SELECT count(*) FROM turn_slots WHERE user_id = $1) AS n', [v.userId])).rows;
  rows[0].n = Number(rows[0].n);
  assert.equal(rows[0].n, 0, 'no limit state without limits');
  await stop(off);
});

test('the SQL functions themselves: a sharded bucket (high rates) admits exactly its size; leases cap concurrency and are given back', async () => {
  const s = await server(fast, {});
  const u = await newUser(s.port);
  // one statement: now() is fixed, so nothing refills while it runs
  const rate = 12000; // a minute's worth: 16 shards of 750
  const interval = Math.floor(60e6 / rate);
  const q = await pg.query(
    `SELECT count(*) FILTER (WHERE t.allowed)::int AS ok, count(*) FILTER (WHERE NOT t.allowed)::int AS refused,
            min(t.retry_after_ms) FILTER (WHERE NOT t.allowed) AS wait
       FROM generate_series(1, $2::int) g, LATERAL chatloop_take_turn($1::uuid, $3::int, $4::int, 0, 'x' || g, 0) t`,
    [u.userId, rate + 100, interval, interval * rate]);
  assert.equal(q.rows[0].ok, rate);
  assert.equal(q.rows[0].refused, 100);
  assert.ok(q.rows[0].wait > 0 && q.rows[0].wait <= 5 * 16, `wait ${q.rows[0].wait}`);
  const shards = (await pg.query('SELECT count(*)::int AS n FROM user_limits WHERE user_id = $1', [u.userId])).rows[0].n;
  assert.equal(shards, 16);

  const v = await newUser(s.port);
  let seq = 0;
  const take = async () => {
    const lease = `lease-${++seq}`;
    const r = (await pg.query(`SELECT * FROM chatloop_take_turn($1::uuid, 0, 0, 3, $2, 300)`, [v.userId, lease])).rows[0];
    return { ...r, lease };
  };
  const got = [];
  for (let i = 0; i < 5; i++) got.push(await take());
  assert.deepEqual(got.map((r) => r.allowed), [true, true, true, false, false]);
  assert.equal(got[3].which, 'concurrent');
  assert.deepEqual(got.slice(0, 3).map((r) => r.holder).sort(), ['0', '1', '2'], 'the places, numbered below the cap');
  await pg.query(`SELECT chatloop_end_turn($1::uuid, $2, 'not-the-lease')`, [v.userId, got[1].holder]);
  assert.equal((await take()).allowed, false, 'only the lease holder gives a place back');
  await pg.query(`SELECT chatloop_end_turn($1::uuid, $2, $3)`, [v.userId, got[1].holder, got[1].lease]);
  const back = await take();
  assert.equal(back.allowed, true, 'a place given back is taken again');
  assert.equal(back.holder, got[1].holder);
  assert.equal((await take()).allowed, false);
  // a place whose lease lapsed (a dead instance's) is free again
  await pg.query(`UPDATE turn_slots SET lapses_at = now() - interval '1 s' WHERE user_id = $1 AND slot = 2`, [v.userId]);
  const lapsed = await take();
  assert.equal(lapsed.allowed, true);
  assert.equal(lapsed.holder, '2');
  assert.equal((await pg.query('SELECT count(*)::int AS n FROM turn_slots WHERE user_id = $1', [v.userId])).rows[0].n, 3, 'never more places than the cap');
  await stop(s);
});

test('a busy user\'s turns never wait for each other in the database: a shard or place another turn holds is passed over', async () => {
  const s = await server(fast, {});
  const u = await newUser(s.port);
  const interval = Math.floor(60e6 / 12000); // 16 shards
  const burst = interval * 12000;
  const take = `SELECT * FROM chatloop_take_turn($1::uuid, $2::int, $3::int, 100, $4, 300)`;
  const open = async () => {
    const c = new pgLib.Client({ connectionString: pg.url });
    await c.connect();
    return c;
  };
  const a = await open();
  const b = await open();
  try {
    await a.query(take, [u.userId, interval, burst, 'warm']); // the shards exist
    await a.query('BEGIN');
    const held = (await a.query(take, [u.userId, interval, burst, 'held'])).rows[0];
    assert.equal(held.allowed, true);
    // a wait for `a` would hit the timeout: each turn starts at a random shard
    await b.query(`SET statement_timeout = '500ms'`);
    for (let i = 0; i < 80; i++) {
      const r = (await b.query(take, [u.userId, interval, burst, `b${i}`])).rows[0];
      assert.equal(r.allowed, true);
      assert.notEqual(r.holder, held.holder, 'the held place is passed over');
      await b.query(`SELECT chatloop_end_turn($1::uuid, $2, $3)`, [u.userId, r.holder, `b${i}`]);
    }
  } finally {
    await a.query('ROLLBACK').catch(() => {});
    await a.end();
    await b.end();
  }
  await stop(s);
});

test('one shard (an ordinary rate): a second turn of the same user waits for the first, then is judged on what it left', async () => {
  const s = await server(fast, {});
  const u = await newUser(s.port);
  const interval = 1e6; // 60 a minute: one shard, a bucket of 2
  const take = `SELECT * FROM chatloop_take_turn($1::uuid, $2::int, $3::int, 0, $4, 300)`;
  const a = new pgLib.Client({ connectionString: pg.url });
  const b = new pgLib.Client({ connectionString: pg.url });
  await a.connect();
  await b.connect();
  try {
    await a.query('BEGIN');
    assert.equal((await a.query(take, [u.userId, interval, 2e6, 'a1'])).rows[0].allowed, true); // makes the shard
    let settled = false;
    const second = b.query(take, [u.userId, interval, 2e6, 'b1']).then((r) => { settled = true; return r.rows[0]; });
    await sleep(200);
    assert.equal(settled, false, 'waits for the turn that holds the shard');
    assert.equal((await a.query(take, [u.userId, interval, 2e6, 'a2'])).rows[0].allowed, true);
    await a.query('COMMIT');
    const r = await second;
    assert.equal(r.allowed, false, 'the bucket of 2 was spent by the first transaction');
    assert.equal(r.which, 'turn_rate');
    assert.ok(r.retry_after_ms > 0 && r.retry_after_ms <= 1000, `retry ${r.retry_after_ms}`);
  } finally {
    await a.query('ROLLBACK').catch(() => {});
    await a.end();
    await b.end();
  }
  await stop(s);
});

test('a turn the rate refuses gives back the place it took in the same statement: nothing of it is left', async () => {
  const s = await server(fast, {});
  const u = await newUser(s.port);
  const take = (lease) =>
    pg.query(`SELECT * FROM chatloop_take_turn($1::uuid, 1000000, 1000000, 3, $2, 300)`, [u.userId, lease]).then((r) => r.rows[0]);
  const first = await take('first');
  assert.equal(first.allowed, true);
  for (let i = 0; i < 3; i++) {
    const r = await take(`refused-${i}`);
    assert.equal(r.allowed, false);
    assert.equal(r.which, 'turn_rate');
    assert.equal(r.holder, null);
  }
  const held = await pg.query('SELECT slot, lease FROM turn_slots WHERE user_id = $1 AND lease IS NOT NULL', [u.userId]);
  assert.deepEqual(held.rows, [{ slot: Number(first.holder), lease: 'first' }], 'only the allowed turn holds a place');
  await stop(s);
});
