// Upstream faults through chatloop: statuses, retries honouring
// retry-after, broken and stalled streams, malformed chunks, in-band errors,
// slow first tokens, an upstream that refuses connections, and fallback
// models. The faults are chosen by model name ("mock-429", "mock-cut"...)
// since chatloop does not forward client headers; where a test needs the
// mock's X-Mock-* headers (fail only the first K requests), a small proxy in
// front of the mock adds them.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import OpenAI from 'openai';
import { freePort, makeTest } from './lib/server.mjs';
import { mockText } from './lib/mock.mjs';
import {
  MESSAGES,
  MODEL,
  checkOpenAIError,
  contentOf,
  drain,
  post,
  startHeaderProxy,
  startMock,
  startRelay,
  stopAll,
  streamRaw,
} from './lib/llm.mjs';

const N = 10;
const TIMEOUTS = { firstTokenTimeout: '1s', idleChunkTimeout: '1s', turnTimeout: '5s', connectTimeout: '1s' };
let mock, relay; // retries 1, no fallback
let extra = []; // servers and proxies a test started; stopped by the test
const test = makeTest(() => [relay, ...extra.filter((s) => s.logTail)]);

before(async () => {
  mock = await startMock({ mockTokens: N, mockTokenInterval: 0, mockFirstToken: 0 });
  relay = await startRelay(mock, { retries: 1, ...TIMEOUTS });
});
after(() => stopAll(relay, mock));

const client = (s) => new OpenAI({ apiKey: 'x', baseURL: `http://127.0.0.1:${s.port}/v1`, maxRetries: 0, timeout: 10000 });

/** Chat requests the mock has seen since `sinceId`, with the models asked. */
async function upstreamSince(sinceId) {
  const recs = await mock.requests(`?since=${sinceId}`);
  return recs.filter((r) => r.path === '/v1/chat/completions');
}
async function lastId() {
  const recs = await mock.requests('?limit=1');
  return recs.length ? recs[0].id : 0;
}

/** The last SSE event is an error; returns its error object. */
function streamError(assert, s) {
  assert.equal(s.status, 200, s.raw);
  assert.match(s.headers['content-type'], /^text\/event-stream/);
  const last = s.events.at(-1);
  assert.notEqual(last, '[DONE]', `no [DONE] after an error: ${s.raw}`);
  assert.ok(last && last.error, `the stream ends with an error event: ${s.raw.slice(-600)}`);
  for (const k of ['message', 'type', 'code']) assert.ok(k in last.error, `error.${k}: ${JSON.stringify(last)}`);
  assert.ok(!s.events.includes('[DONE]'));
  return last.error;
}

test('429: retried, then the upstream\'s own 429 body; the SDK raises RateLimitError; retry-after waited', async () => {
  const since = await lastId();
  const t0 = Date.now();
  const r = await post(relay.port, { model: 'mock-429', messages: MESSAGES });
  const elapsed = Date.now() - t0;
  checkOpenAIError(assert, r, 429, { relayed: true });
  const seen = await upstreamSince(since);
  assert.equal(seen.length, 2, 'one try + 1 retry (retries=1) reached the mock');
  assert.ok(seen.every((x) => x.body.model === 'mock-429'));
  const direct = await fetch(`${mock.baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mock-429', messages: MESSAGES }),
  });
  assert.equal(direct.status, 429);
  assert.equal(direct.headers.get('retry-after'), '1', 'the mock asks for 1 s');
  const directBody = await direct.json();
  assert.deepEqual(r.json(), directBody, 'the upstream\'s OpenAI error body is relayed as is');
  assert.ok(elapsed >= 1000, `the retry waited the upstream's retry-after (1 s): took ${elapsed} ms`);
  assert.ok(elapsed < 3000, `and not much more: ${elapsed} ms`);

  // the official client raises its RateLimitError, streaming or not
  await assert.rejects(client(relay).chat.completions.create({ model: 'mock-429', messages: MESSAGES }), (err) => {
    assert.ok(err instanceof OpenAI.RateLimitError, `RateLimitError, got ${err && err.constructor.name}: ${err}`);
    assert.equal(err.status, 429);
    return true;
  });
  await assert.rejects(
    client(relay).chat.completions.create({ model: 'mock-429', messages: MESSAGES, stream: true }),
    OpenAI.RateLimitError,
  );
  // a 429 carries Retry-After (SPEC §3), so the client's own backoff can honour it
  assert.equal(r.headers['retry-after'], '1', `Retry-After relayed with the 429; headers: ${JSON.stringify(r.headers)}`);
});

test('429 for the first K requests, then success: every retry waits retry-after, the client sees only the answer', async () => {
  let key = `k429-${Date.now()}`;
  let count = '2';
  const proxy = await startHeaderProxy(mock, () => ({
    'x-mock-fault': '429',
    'x-mock-fault-count': count,
    'x-mock-fault-key': key,
    'x-mock-retry-after': '0.3',
  }));
  extra.push(proxy);
  const s = await startRelay(proxy, { retries: 2, ...TIMEOUTS });
  extra.push(s);
  try {
    let since = await lastId();
    const t0 = Date.now();
    const r = await post(s.port, { messages: MESSAGES });
    const elapsed = Date.now() - t0;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json().choices[0].message.content, mockText(N));
    const seen = await upstreamSince(since);
    assert.equal(seen.length, 3, 'two 429s and the success reached the mock');
    assert.ok(elapsed >= 600, `two retries of retry-after 0.3 s: took ${elapsed} ms`);
    assert.ok(elapsed < 2500, `retry-after, not a long backoff: ${elapsed} ms`);
    const gaps = seen.slice(1).map((x, i) => (x.timestamp - seen[i].timestamp) * 1000);
    for (const g of gaps) assert.ok(g >= 290, `each retry waited retry-after (0.3 s): gaps ${gaps.map(Math.round)} ms`);

    // streaming: the same, and the stream itself is clean
    key += '-s';
    count = '1';
    since = await lastId();
    const t1 = Date.now();
    const st = await streamRaw(s.port, { messages: MESSAGES, stream_options: { include_usage: true } });
    assert.equal(st.status, 200, st.raw);
    assert.equal(st.events.at(-1), '[DONE]');
    assert.equal(contentOf(st.events), mockText(N));
    assert.ok(Date.now() - t1 >= 300);
    assert.equal((await upstreamSince(since)).length, 2);

    // more 429s than retries: the client gets the 429 after the last retry-after
    key += '-x';
    count = '5';
    since = await lastId();
    const t2 = Date.now();
    const r3 = await post(s.port, { messages: MESSAGES });
    checkOpenAIError(assert, r3, 429, { relayed: true });
    assert.ok(Date.now() - t2 >= 600);
    assert.equal((await upstreamSince(since)).length, 3, 'try + 2 retries');
  } finally {
    const mine = extra;
    extra = [];
    await stopAll(...mine.reverse());
  }
});

test('500: retried, then 502 with an OpenAI error (code LLM_ERROR); the SDK raises InternalServerError', async () => {
  const since = await lastId();
  const r = await post(relay.port, { model: 'mock-500', messages: MESSAGES });
  const e = checkOpenAIError(assert, r, 502, { code: 'LLM_ERROR' });
  assert.match(e.message, /500/, 'the message names the upstream status');
  assert.equal((await upstreamSince(since)).length, 2, 'one try + 1 retry');
  const st = await streamRaw(relay.port, { model: 'mock-503', messages: MESSAGES });
  checkOpenAIError(assert, st.res, 502, { code: 'LLM_ERROR' });
  await assert.rejects(client(relay).chat.completions.create({ model: 'mock-500', messages: MESSAGES }), OpenAI.InternalServerError);
});

test('upstream client errors (400, 404, 422) are relayed as they are, without retries', async () => {
  for (const st of [400, 404, 422]) {
    const since = await lastId();
    const r = await post(relay.port, { model: `mock-${st}`, messages: MESSAGES });
    checkOpenAIError(assert, r, st, { relayed: true });
    assert.equal((await upstreamSince(since)).length, 1, `${st} is not retried`);
  }
});

test("an upstream 401/403 is about chatloop's key, not the caller's: 502, not retried", async () => {
  for (const st of [401, 403]) {
    const since = await lastId();
    const r = await post(relay.port, { model: `mock-${st}`, messages: MESSAGES });
    const e = checkOpenAIError(assert, r, 502, { code: 'LLM_ERROR' });
    assert.match(e.message, new RegExp(`credentials.*${st}`));
    assert.equal((await upstreamSince(since)).length, 1, `${st} is not retried`);
  }
});

test('stream cut mid-way: the SSE stream ends with an error event (LLM_ERROR); the SDK raises', async () => {
  const s = await streamRaw(relay.port, { model: 'mock-cut', messages: MESSAGES });
  const e = streamError(assert, s);
  assert.equal(e.code, 'LLM_ERROR');
  assert.equal(contentOf(s.events.slice(0, -1)), mockText(N / 2), 'the half that streamed was relayed');
  const { chunks, error } = await drain(
    await client(relay).chat.completions.create({ model: 'mock-cut', messages: MESSAGES, stream: true }),
  );
  assert.ok(error instanceof OpenAI.APIError, `the SDK raises APIError, got ${error}`);
  assert.equal(contentOf(chunks), mockText(N / 2));

  // non-streamed: the mock closes without an answer; retried, then 502
  const r = await post(relay.port, { model: 'mock-cut', messages: MESSAGES });
  checkOpenAIError(assert, r, 502, { code: 'LLM_ERROR' });
});

test('stall: idle_chunk_timeout ends the stream with an LLM_TIMEOUT error event', async () => {
  const t0 = Date.now();
  const s = await streamRaw(relay.port, { model: 'mock-stall', messages: MESSAGES });
  const elapsed = Date.now() - t0;
  const e = streamError(assert, s);
  assert.equal(e.code, 'LLM_TIMEOUT');
  assert.match(e.message, /idle_chunk_timeout/);
  assert.equal(contentOf(s.events.slice(0, -1)), mockText(3));
  assert.ok(elapsed >= 950 && elapsed < 2500, `about idle_chunk_timeout (1 s): ${elapsed} ms`);
  // the upstream socket was closed: the mock's stalled stream is gone
  await mock.waitStats((x) => x.streams_open === 0, 2000, 'the stalled upstream stream closed');

  // non-streamed: no answer at all → 504 after first_token_timeout
  const t1 = Date.now();
  const r = await post(relay.port, { model: 'mock-stall', messages: MESSAGES });
  checkOpenAIError(assert, r, 504, { code: 'LLM_TIMEOUT' });
  const el2 = Date.now() - t1;
  assert.ok(el2 >= 950 && el2 < 2500, `about first_token_timeout (1 s): ${el2} ms`);
  await mock.waitStats((x) => x.completions_open === 0, 2000, 'the stalled upstream request closed');
});

test('idle_chunk_timeout counts from the last chunk even when first_token_timeout is longer', async () => {
  // tokens 1-3 at once, then a stall; idle 1 s must cut it at about 1 s,
  // not when the (longer) first-token timer happens to fire.
  const s = await startRelay(mock, { retries: 0, firstTokenTimeout: '4s', idleChunkTimeout: '1s', turnTimeout: '10s' });
  extra.push(s);
  try {
    const t0 = Date.now();
    const st = await streamRaw(s.port, { model: 'mock-stall', messages: MESSAGES });
    const elapsed = Date.now() - t0;
    const e = streamError(assert, st);
    assert.equal(e.code, 'LLM_TIMEOUT');
    assert.ok(elapsed >= 950 && elapsed < 2000, `cut about idle_chunk_timeout (1 s) after the last chunk: took ${elapsed} ms`);
  } finally {
    extra = [];
    await s.stop();
  }
});

test('malformed chunk → LLM_ERROR error event; malformed completion → 502', async () => {
  const s = await streamRaw(relay.port, { model: 'mock-malformed', messages: MESSAGES });
  const e = streamError(assert, s);
  assert.equal(e.code, 'LLM_ERROR');
  assert.equal(contentOf(s.events.slice(0, -1)), mockText(3));
  const r = await post(relay.port, { model: 'mock-malformed', messages: MESSAGES });
  checkOpenAIError(assert, r, 502, { code: 'LLM_ERROR' });
});

test('x_groq.error and OpenAI error chunks inside a 200 stream → LLM_ERROR error event', async () => {
  for (const model of ['mock-groq-error', 'mock-error-chunk']) {
    const s = await streamRaw(relay.port, { model, messages: MESSAGES });
    const e = streamError(assert, s);
    assert.equal(e.code, 'LLM_ERROR', model);
    assert.match(e.message, /mock upstream failure|upstream/i, model);
    assert.equal(contentOf(s.events.slice(0, -1)), mockText(3), model);
    const { error } = await drain(await client(relay).chat.completions.create({ model, messages: MESSAGES, stream: true }));
    assert.ok(error instanceof OpenAI.APIError, `${model}: the SDK raises APIError, got ${error}`);
  }
});

test('slow first token beyond first_token_timeout → 504 LLM_TIMEOUT (non-stream) / LLM_TIMEOUT error (stream)', async () => {
  // mock-slow-first: first token after 2 s; first_token_timeout is 1 s
  const t0 = Date.now();
  const r = await post(relay.port, { model: 'mock-slow-first', messages: MESSAGES });
  const elapsed = Date.now() - t0;
  checkOpenAIError(assert, r, 504, { code: 'LLM_TIMEOUT' });
  assert.ok(elapsed >= 950 && elapsed < 1900, `cut at first_token_timeout (1 s), before the 2 s token: ${elapsed} ms`);
  await assert.rejects(
    client(relay).chat.completions.create({ model: 'mock-slow-first', messages: MESSAGES }),
    (err) => err instanceof OpenAI.APIError && err.status === 504,
  );

  const s = await streamRaw(relay.port, { model: 'mock-slow-first', messages: MESSAGES });
  if (s.events.length === 0) {
    checkOpenAIError(assert, s.res, 504, { code: 'LLM_TIMEOUT' });
  } else {
    const e = streamError(assert, s);
    assert.equal(e.code, 'LLM_TIMEOUT');
    assert.equal(contentOf(s.events.slice(0, -1)), '', 'no token came');
  }
});

test('a role-only first chunk does not end the first-token wait: first_token_timeout, not idle_chunk_timeout, applies', async () => {
  // first token at 2 s (mock-slow-first); first_token_timeout 3 s; idle 1 s.
  // The mock sends the role chunk at once; the answer must still come.
  const s = await startRelay(mock, { retries: 0, firstTokenTimeout: '3s', idleChunkTimeout: '1s', turnTimeout: '5s' });
  extra.push(s);
  try {
    const st = await streamRaw(s.port, { model: 'mock-slow-first', messages: MESSAGES });
    assert.equal(st.events.at(-1), '[DONE]', `the stream completes: ${st.raw.slice(-400)}`);
    assert.equal(contentOf(st.events), mockText(N));
  } finally {
    extra = [];
    await s.stop();
  }
});

test('connection refused upstream → 502 after retries, fast', async () => {
  const port = await freePort(); // nobody listens there
  const s = await startRelay({ baseUrl: `http://127.0.0.1:${port}/v1` }, { retries: 2, ...TIMEOUTS });
  extra.push(s);
  try {
    const t0 = Date.now();
    const r = await post(s.port, { messages: MESSAGES });
    const elapsed = Date.now() - t0;
    const e = checkOpenAIError(assert, r, 502, { code: 'LLM_ERROR' });
    assert.match(e.message, /connect/i);
    assert.ok(elapsed < 2000, `two backoffs, no connect timeout: ${elapsed} ms`);
    const st = await streamRaw(s.port, { messages: MESSAGES });
    checkOpenAIError(assert, st.res, 502, { code: 'LLM_ERROR' });
    await assert.rejects(client(s).chat.completions.create({ model: MODEL, messages: MESSAGES }), (err) => err.status === 502);
  } finally {
    extra = [];
    await s.stop();
  }
});

test('fallback: the primary model fails, the fallback model answers (and the mock saw both)', async () => {
  const s = await startRelay(mock, { retries: 1, fallbackModels: `${MODEL},llama-3.1-8b-instant`, ...TIMEOUTS });
  extra.push(s);
  try {
    let since = await lastId();
    const r = await post(s.port, { model: 'mock-500', messages: MESSAGES });
    assert.equal(r.status, 200, r.text);
    const j = r.json();
    assert.equal(j.choices[0].message.content, mockText(N));
    assert.equal(j.model, MODEL, 'answered by the fallback model');
    let models = (await upstreamSince(since)).map((x) => x.body.model);
    assert.deepEqual(models, ['mock-500', 'mock-500', MODEL], 'try + retry on the primary, then the first fallback');

    since = await lastId();
    const st = await streamRaw(s.port, { model: 'mock-502', messages: MESSAGES, stream_options: { include_usage: true } });
    assert.equal(st.events.at(-1), '[DONE]', st.raw);
    assert.equal(contentOf(st.events), mockText(N));
    assert.ok(st.events.slice(0, -1).every((e) => e.model === MODEL));
    models = (await upstreamSince(since)).map((x) => x.body.model);
    assert.deepEqual(models, ['mock-502', 'mock-502', MODEL]);

    // every model fails → the last error, after trying each
    const s3 = await startRelay(mock, { retries: 0, fallbackModels: 'mock-503,mock-504', ...TIMEOUTS });
    extra.push(s3);
    since = await lastId();
    const r3 = await post(s3.port, { model: 'mock-500', messages: MESSAGES });
    checkOpenAIError(assert, r3, 502, { code: 'LLM_ERROR' });
    models = (await upstreamSince(since)).map((x) => x.body.model);
    assert.deepEqual(models, ['mock-500', 'mock-503', 'mock-504']);
  } finally {
    const mine = extra;
    extra = [];
    await stopAll(...mine.reverse());
  }
});
