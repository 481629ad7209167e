// Request validation on the OpenAI-compatible endpoint, and the native
// provider endpoints: /v1/models, /api/v1/models (cached), /api/v1/llm/test,
// /api/v1/llm/verify-key (the key is never logged).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { checkErrorEnvelope, freePort, get, makeTest } from './lib/server.mjs';
import { mockText } from './lib/mock.mjs';
import {
  API_KEY,
  MESSAGES,
  MODEL,
  checkOkEnvelope,
  checkOpenAIError,
  post,
  startBuiltin,
  startMock,
  startRelay,
  stopAll,
} from './lib/llm.mjs';

let mock, relay, builtin, dead;
const test = makeTest(() => [relay, builtin, dead]);

before(async () => {
  mock = await startMock({ mockTokens: 8, mockTokenInterval: 0, mockFirstToken: 0 });
  // debug logging: the most the server ever writes, for the key-leak check
  relay = await startRelay(mock, { logLevel: 'debug', accessLog: 'on' });
  builtin = await startBuiltin({ mockTokens: 5, mockTokenInterval: 0, mockFirstToken: 0 });
  const closed = await freePort();
  dead = await startRelay({ baseUrl: `http://127.0.0.1:${closed}/v1` }, { retries: 0, connectTimeout: '1s' });
});
after(() => stopAll(relay, builtin, dead, mock));

const chatCount = async () => (await mock.requests()).filter((r) => r.path.endsWith('/chat/completions')).length;

test('validation: bad JSON → 400 naming line and column', async () => {
  const n0 = await chatCount();
  for (const path of ['/v1/chat/completions', '/openai/v1/chat/completions']) {
    const r = await post(relay.port, '{\n  "messages": [\n    {"role": "user",, "content": "hi"}\n  ]\n}', { path });
    const e = checkOpenAIError(assert, r, 400, { param: null });
    assert.equal(e.type, 'invalid_request_error');
    assert.match(e.message, /line 3\b/, e.message);
    assert.match(e.message, /column \d+/, e.message);
  }
  const empty = await post(relay.port, '');
  checkOpenAIError(assert, empty, 400);
  const trailing = await post(relay.port, '{"messages":[{"role":"user","content":"x"}]} junk');
  checkOpenAIError(assert, trailing, 400);
  assert.equal(await chatCount(), n0, 'nothing went upstream');
});

test('validation: each bad field is named in error.param', async () => {
  const n0 = await chatCount();
  const cases = [
    [{ model: MODEL }, 'messages', /messages/],
    [{ messages: 'hello' }, 'messages', /array/],
    [{ messages: {} }, 'messages', /array/],
    [{ messages: [] }, 'messages', /non-empty|empty/],
    [{ messages: [{ role: 'user', content: 'a' }, { role: 'wizard', content: 'b' }] }, 'messages[1]', /role/],
    [{ messages: [{ content: 'no role' }] }, 'messages[0]', /role/],
    [{ messages: ['just a string'] }, 'messages[0]', /object/],
    [{ messages: [{ role: 5, content: 'x' }] }, 'messages[0]', /role/],
    [{ messages: [{ role: 'user', content: 42 }] }, 'messages[0]', /content/],
    [{ messages: MESSAGES, model: 7 }, 'model', /string/],
    [{ messages: MESSAGES, model: ['a'] }, 'model', /string/],
    [{ messages: MESSAGES, stream: 'yes' }, 'stream', /boolean/],
    [{ messages: MESSAGES, stream: 1 }, 'stream', /boolean/],
  ];
  for (const [body, param, re] of cases) {
    const r = await post(relay.port, body);
    const e = checkOpenAIError(assert, r, 400, { param });
    assert.equal(e.type, 'invalid_request_error', JSON.stringify(body));
    assert.match(e.message, re, `${JSON.stringify(body)} → ${e.message}`);
  }
  for (const body of ['[1,2]', '"text"', '42', 'null']) {
    const r = await post(relay.port, body);
    checkOpenAIError(assert, r, 400);
  }
  assert.equal(await chatCount(), n0, 'nothing went upstream');
  // still fine afterwards
  const ok = await post(relay.port, { messages: MESSAGES, stream: null });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json().choices[0].message.content, mockText(8));
});

test('GET /v1/models and /openai/v1/models relay the upstream list exactly', async () => {
  const direct = await (await fetch(`${mock.baseUrl}/models`)).json();
  for (const path of ['/v1/models', '/openai/v1/models']) {
    const r = await get(relay.port, path);
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.deepEqual(r.json(), direct);
  }
  const recs = (await mock.requests()).filter((x) => x.path === '/v1/models');
  assert.ok(recs.length >= 2);
  assert.equal(recs.at(-1).headers.authorization, `Bearer ${API_KEY}`);
  // built-in provider: its own list, in OpenAI's shape
  const b = await get(builtin.port, '/v1/models');
  assert.equal(b.status, 200);
  const bj = b.json();
  assert.equal(bj.object, 'list');
  assert.ok(bj.data.some((m) => m.id === MODEL && m.object === 'model'));
  // upstream down → 502 in OpenAI's error format
  const d = await get(dead.port, '/v1/models');
  checkOpenAIError(assert, d, 502);
});

test('GET /api/v1/models: envelope, fetched once then cached for 60 s', async () => {
  const n0 = (await mock.requests()).filter((x) => x.path === '/v1/models').length;
  const a = checkOkEnvelope(assert, await get(relay.port, '/api/v1/models'));
  assert.equal(a.provider, 'groq');
  assert.equal(a.cached, false);
  const direct = await (await fetch(`${mock.baseUrl}/models`)).json();
  assert.deepEqual(a.models.map((m) => m.id), direct.data.map((m) => m.id));
  for (const m of a.models) assert.equal(typeof m.owned_by, 'string');
  const b = checkOkEnvelope(assert, await get(relay.port, '/api/v1/models'));
  assert.equal(b.cached, true);
  assert.deepEqual(b.models, a.models);
  // concurrent requests while cached: still one upstream fetch in all
  await Promise.all(Array.from({ length: 20 }, () => get(relay.port, '/api/v1/models')));
  const n1 = (await mock.requests()).filter((x) => x.path === '/v1/models').length;
  assert.equal(n1 - n0, 2, 'one fetch by chatloop (plus the direct one above)');

  const bi = checkOkEnvelope(assert, await get(builtin.port, '/api/v1/models'));
  assert.equal(bi.provider, 'mock');
  assert.ok(bi.models.some((m) => m.id === MODEL));

  const d = await get(dead.port, '/api/v1/models');
  const j = checkErrorEnvelope(assert, d, 502, 'LLM_ERROR');
  assert.equal(j.error.details.upstream_status, 0);
});

test('GET /api/v1/llm/test: a round trip with its latency', async () => {
  const n0 = await chatCount();
  const a = checkOkEnvelope(assert, await get(relay.port, '/api/v1/llm/test'));
  assert.equal(a.ok, true);
  assert.equal(a.provider, 'groq');
  assert.equal(a.model, MODEL);
  assert.equal(typeof a.latency_ms, 'number');
  assert.ok(a.latency_ms > 0 && a.latency_ms < 5000, `latency ${a.latency_ms}`);
  assert.equal(a.reply, mockText(4), 'max_tokens 4 → four tokens');
  assert.equal(a.usage.completion_tokens, 4);
  assert.equal((await chatCount()) - n0, 1);

  const b = checkOkEnvelope(assert, await get(builtin.port, '/api/v1/llm/test'));
  assert.equal(b.ok, true);
  assert.equal(b.provider, 'mock');
  assert.equal(b.reply, mockText(4));
  assert.equal(typeof b.latency_ms, 'number');

  const d = await get(dead.port, '/api/v1/llm/test');
  const j = checkErrorEnvelope(assert, d, 502, 'LLM_ERROR');
  assert.equal(typeof j.error.details.latency_ms, 'number');
});

test('POST /api/v1/llm/verify-key: valid / invalid / missing; the key never reaches the log', async () => {
  const good = 'gsk_e2e_secret_GOOD_5f1c2a9e';
  const badKey = 'bad_e2e_secret_NOPE_77aa31';
  const v = (key, s = relay) =>
    post(s.port, key === undefined ? {} : { api_key: key }, { path: '/api/v1/llm/verify-key' });

  const a = checkOkEnvelope(assert, await v(good));
  assert.deepEqual(a, { valid: true });
  const recs = (await mock.requests()).filter((x) => x.path === '/v1/models');
  assert.equal(recs.at(-1).headers.authorization, `Bearer ${good}`, 'the key checked is the one given');
  const b = checkOkEnvelope(assert, await v(badKey));
  assert.deepEqual(b, { valid: false });

  checkErrorEnvelope(assert, await v(undefined), 400, 'INVALID_REQUEST');
  checkErrorEnvelope(assert, await v(''), 400, 'INVALID_REQUEST');
  checkErrorEnvelope(assert, await v(12345), 400, 'INVALID_REQUEST');
  const badJson = await post(relay.port, '{"api_key": ', { path: '/api/v1/llm/verify-key' });
  checkErrorEnvelope(assert, badJson, 400, 'INVALID_REQUEST');

  // the built-in mock has no upstream to ask
  checkErrorEnvelope(assert, await v(good, builtin), 400, 'INVALID_REQUEST');
  // an upstream that does not answer: an error, not a verdict
  checkErrorEnvelope(assert, await v(good, dead), 502, 'LLM_ERROR');

  // the configured key still serves chat afterwards (the check did not replace it)
  await mock.clearRequests();
  const c = await post(relay.port, { messages: MESSAGES });
  assert.equal(c.status, 200);
  assert.equal((await mock.requests()).at(-1).headers.authorization, `Bearer ${API_KEY}`);

  for (const s of [relay, builtin, dead]) {
    for (const secret of [good, badKey, API_KEY]) {
      assert.ok(!s.stderr.includes(secret) && !s.stdout.includes(secret), `${secret} appears in the log of :${s.port}`);
    }
  }
  assert.ok(relay.stderr.includes('verify-key'), 'the debug/access log did record the requests');
});
