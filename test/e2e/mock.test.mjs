// chatloop-mock: the fake OpenAI/Groq upstream the other tests and the
// benchmarks stand on. Its answers must be exact (tests compute the expected
// text from the token count), its faults must happen as asked, and it must
// hold a thousand paced streams on one loop.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { MOCK_BIN, mockPromptTokens, mockText, mockTokens, sseData, startMock } from './lib/mock.mjs';

let mock;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  mock = await startMock({ mockTokens: 6, mockTokenInterval: 0, mockFirstToken: 0 });
});
after(async () => {
  if (!mock) return;
  assert.deepEqual(await mock.stop(), { code: 0, signal: null });
});

const MESSAGES = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'hello there, mock' },
];

function chat(extra = {}, headers = {}, path = '/v1/chat/completions') {
  return fetch(`${mock.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'llama-3.3-70b-versatile', messages: MESSAGES, ...extra }),
  });
}

/** Streams a request and returns {res, events (parsed JSON or '[DONE]'), raw}. */
async function streamChat(extra = {}, headers = {}, path) {
  const res = await chat({ stream: true, ...extra }, headers, path);
  const raw = await res.text();
  const events = sseData(raw).map((d) => (d === '[DONE]' ? d : JSON.parse(d)));
  return { res, events, raw };
}

const contentOf = (events) =>
  events
    .filter((e) => e !== '[DONE]' && e.choices.length)
    .map((e) => e.choices[0].delta.content ?? '')
    .join('');

/** A raw HTTP/1.1 client: sees exact bytes, the FIN, and can vanish mid-answer. */
class Raw {
  static open(port) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: '127.0.0.1', port }, () => resolve(new Raw(sock)));
      sock.once('error', reject);
    });
  }
  constructor(sock) {
    this.sock = sock;
    this.data = '';
    this.ended = false;
    sock.setEncoding('latin1');
    sock.on('data', (d) => (this.data += d));
    sock.on('end', () => (this.ended = true));
    sock.on('error', () => (this.ended = true));
    sock.on('close', () => (this.ended = true));
  }
  post(path, body, headers = {}) {
    const b = Buffer.from(JSON.stringify(body));
    let head = `POST ${path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    this.sock.write(Buffer.concat([Buffer.from(head + '\r\n'), b]));
  }
  async waitFor(pred, ms, what) {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(this.data.slice(-400))}, ended=${this.ended}`);
      await sleep(5);
    }
  }
  destroy() {
    this.sock.destroy();
  }
}

// ---- answers -----------------------------------------------------------------

test('streaming: exact text for N tokens, Groq chunk shapes, [DONE] last', async () => {
  const { res, events } = await streamChat({}, { 'X-Mock-Tokens': '7' });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  assert.equal(res.headers.get('x-accel-buffering'), 'no');
  assert.equal(events.at(-1), '[DONE]');
  const chunks = events.slice(0, -1);
  const first = chunks[0];
  assert.match(first.id, /^chatcmpl-mock-\d+$/);
  assert.equal(first.object, 'chat.completion.chunk');
  assert.equal(first.model, 'llama-3.3-70b-versatile');
  assert.equal(first.system_fingerprint, 'fp_mock');
  assert.equal(typeof first.created, 'number');
  assert.deepEqual(first.choices, [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
  assert.equal(first.x_groq.id, first.id.replace('chatcmpl-mock-', 'req_mock_'));
  for (const c of chunks) assert.equal(c.id, first.id, 'one id per stream');
  const tokens = chunks.slice(1, -1).map((c) => c.choices[0].delta.content);
  assert.deepEqual(tokens, mockTokens(7));
  assert.equal(contentOf(events), mockText(7));
  assert.equal(mockText(3), 'tok1 tok2 tok3');
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }]);
  const u = last.x_groq.usage;
  const p = mockPromptTokens(MESSAGES);
  assert.equal(u.prompt_tokens, p);
  assert.equal(u.completion_tokens, 7);
  assert.equal(u.total_tokens, p + 7);
  for (const k of ['queue_time', 'prompt_time', 'completion_time', 'total_time']) assert.equal(typeof u[k], 'number', k);
  // without stream_options.include_usage there is no usage-only chunk
  assert.ok(!chunks.some((c) => c.choices.length === 0), 'no usage-only chunk unless asked');
});

test('streaming: include_usage adds one usage-only chunk before [DONE]', async () => {
  const { events } = await streamChat({ stream_options: { include_usage: true } }, { 'X-Mock-Tokens': '3' });
  assert.equal(events.at(-1), '[DONE]');
  const usageChunk = events.at(-2);
  assert.deepEqual(usageChunk.choices, []);
  const p = mockPromptTokens(MESSAGES);
  assert.deepEqual(usageChunk.usage, { prompt_tokens: p, completion_tokens: 3, total_tokens: p + 3 });
  assert.equal(events.filter((e) => e !== '[DONE]' && e.choices.length === 0).length, 1);
  assert.equal(contentOf(events), mockText(3));
});

test('token count: --mock-tokens by default, capped by max_tokens ("length"), header wins', async () => {
  let r = await streamChat();
  assert.equal(contentOf(r.events), mockText(6));
  r = await streamChat({ max_tokens: 4 });
  assert.equal(contentOf(r.events), mockText(4));
  assert.equal(r.events.at(-2).choices[0].finish_reason, 'length');
  r = await streamChat({ max_tokens: 400 });
  assert.equal(contentOf(r.events), mockText(6));
  assert.equal(r.events.at(-2).choices[0].finish_reason, 'stop');
  r = await streamChat({ max_tokens: 2 }, { 'X-Mock-Tokens': '9' });
  assert.equal(contentOf(r.events), mockText(9));
  r = await streamChat({}, { 'X-Mock-Tokens': '0' });
  assert.equal(contentOf(r.events), '');
  assert.equal(r.events.at(-1), '[DONE]');
  r = await streamChat({}, { 'X-Mock-Tokens': '2000' });
  assert.equal(contentOf(r.events), mockText(2000));
});

test('streaming: the same answer under /openai/v1 and at the root', async () => {
  for (const path of ['/openai/v1/chat/completions', '/chat/completions']) {
    const { res, events } = await streamChat({}, { 'X-Mock-Tokens': '2' }, path);
    assert.equal(res.status, 200, path);
    assert.equal(contentOf(events), mockText(2), path);
  }
});

test('pacing: first token after X-Mock-First-Token-Ms, then one per X-Mock-Interval-Ms', async () => {
  const t0 = Date.now();
  const res = await chat({ stream: true }, { 'X-Mock-Tokens': '5', 'X-Mock-First-Token-Ms': '150', 'X-Mock-Interval-Ms': '40' });
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  const seen = {}; // token number -> ms since start
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
    for (let k = 1; k <= 5; k++) if (!(k in seen) && text.includes(`tok${k}"`)) seen[k] = Date.now() - t0;
  }
  assert.equal(contentOf(sseData(text).map((d) => (d === '[DONE]' ? d : JSON.parse(d)))), mockText(5));
  assert.ok(seen[1] >= 140, `first token at ${seen[1]} ms, expected >= 150`);
  assert.ok(seen[5] - seen[1] >= 4 * 40 - 15, `tokens 1..5 spread over ${seen[5] - seen[1]} ms, expected ~160`);
  assert.ok(seen[5] < 2000, `whole stream took ${seen[5]} ms`);
});

test('non-streaming: a chat.completion with message, usage and x_groq', async () => {
  const res = await chat({}, { 'X-Mock-Tokens': '5' });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^application\/json/);
  const j = await res.json();
  assert.match(j.id, /^chatcmpl-mock-\d+$/);
  assert.equal(j.object, 'chat.completion');
  assert.equal(j.model, 'llama-3.3-70b-versatile');
  assert.equal(j.choices.length, 1);
  assert.deepEqual(j.choices[0].message, { role: 'assistant', content: mockText(5) });
  assert.equal(j.choices[0].finish_reason, 'stop');
  const p = mockPromptTokens(MESSAGES);
  assert.equal(j.usage.prompt_tokens, p);
  assert.equal(j.usage.completion_tokens, 5);
  assert.equal(j.usage.total_tokens, p + 5);
  assert.equal(j.x_groq.id, j.id.replace('chatcmpl-mock-', 'req_mock_'));
});

test('non-streaming answers arrive when the last token would have', async () => {
  const t0 = Date.now();
  const res = await chat({}, { 'X-Mock-Tokens': '4', 'X-Mock-First-Token-Ms': '100', 'X-Mock-Interval-Ms': '50' });
  const j = await res.json();
  const ms = Date.now() - t0;
  assert.equal(j.choices[0].message.content, mockText(4));
  assert.ok(ms >= 240, `answered after ${ms} ms, expected >= 250`);
});

test('bad requests: invalid JSON, empty body, no messages -> 400 OpenAI error bodies', async () => {
  let res = await fetch(`${mock.baseUrl}/chat/completions`, { method: 'POST', body: '{"model": "x", messages' });
  assert.equal(res.status, 400);
  let j = await res.json();
  assert.equal(j.error.type, 'invalid_request_error');
  assert.equal(j.error.code, 'invalid_json');
  assert.match(j.error.message, /line 1, column \d+/);
  res = await fetch(`${mock.baseUrl}/chat/completions`, { method: 'POST' });
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.code, 'invalid_json');
  res = await fetch(`${mock.baseUrl}/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'x', messages: [] }) });
  assert.equal(res.status, 400);
  j = await res.json();
  assert.equal(j.error.type, 'invalid_request_error');
  assert.match(j.error.message, /messages/);
  res = await chat({}, { 'X-Mock-Fault': 'bogus' });
  assert.equal(res.status, 400);
  res = await chat({}, { 'X-Mock-Tokens': 'many' });
  assert.equal(res.status, 400);
});

test('models: list under /v1 and /openai/v1; a "bad..." key gets 401', async () => {
  for (const p of ['/v1/models', '/openai/v1/models']) {
    const res = await fetch(`${mock.url}${p}`, { headers: { Authorization: 'Bearer sk-good' } });
    assert.equal(res.status, 200, p);
    const j = await res.json();
    assert.equal(j.object, 'list');
    const ids = j.data.map((m) => m.id);
    assert.ok(ids.includes('llama-3.3-70b-versatile'));
    assert.ok(ids.includes('llama-3.1-8b-instant'));
    for (const m of j.data) {
      assert.equal(m.object, 'model');
      assert.equal(m.owned_by, 'mock');
      assert.equal(typeof m.created, 'number');
    }
  }
  let res = await fetch(`${mock.baseUrl}/models`, { headers: { Authorization: 'Bearer bad-key' } });
  assert.equal(res.status, 401);
  let j = await res.json();
  assert.equal(j.error.code, 'invalid_api_key');
  assert.equal(j.error.type, 'invalid_request_error');
  res = await chat({}, { Authorization: 'Bearer bad' });
  assert.equal(res.status, 401);
  res = await fetch(`${mock.baseUrl}/models/llama-3.1-8b-instant`);
  assert.equal((await res.json()).id, 'llama-3.1-8b-instant');
  res = await fetch(`${mock.baseUrl}/models/mock-404`);
  assert.equal(res.status, 404);
  j = await res.json();
  assert.equal(j.error.code, 'model_not_found');
});

// ---- faults -------------------------------------------------------------------

test('fault 429: retry-after 1 by default, X-Mock-Retry-After overrides; by model or header', async () => {
  let res = await chat({ model: 'mock-429', stream: true });
  assert.equal(res.status, 429);
  assert.equal(res.headers.get('retry-after'), '1');
  const j = await res.json();
  assert.equal(j.error.code, 'rate_limit_exceeded');
  assert.equal(typeof j.error.message, 'string');
  res = await chat({}, { 'X-Mock-Fault': '429', 'X-Mock-Retry-After': '0.2' });
  assert.equal(res.status, 429);
  assert.equal(res.headers.get('retry-after'), '0.2');
  await res.arrayBuffer();
});

test('fault 500 (and any 4xx/5xx status): an OpenAI error body', async () => {
  let res = await chat({ model: 'mock-500' });
  assert.equal(res.status, 500);
  assert.equal((await res.json()).error.type, 'internal_server_error');
  res = await chat({ stream: true }, { 'X-Mock-Fault': '503', 'X-Mock-Retry-After': '2' });
  assert.equal(res.status, 503);
  assert.equal(res.headers.get('retry-after'), '2');
  assert.equal(typeof (await res.json()).error.message, 'string');
  res = await chat({}, { 'X-Mock-Fault': '498' });
  assert.equal(res.status, 498);
  await res.arrayBuffer();
});

test('fault cut: half the tokens, then the connection closes without the last chunk or [DONE]', async () => {
  const s0 = await mock.stats();
  const c = await Raw.open(mock.port);
  c.post('/v1/chat/completions', { model: 'mock-cut', messages: MESSAGES, stream: true }, { 'X-Mock-Tokens': '10' });
  await c.waitFor(() => c.ended, 5000, 'the cut');
  c.destroy();
  assert.match(c.data, /^HTTP\/1\.1 200 /);
  assert.match(c.data, /transfer-encoding: chunked/i);
  for (let k = 1; k <= 5; k++) assert.ok(c.data.includes(`tok${k}"`), `token ${k} arrived`);
  assert.ok(!c.data.includes('tok6"'), 'nothing after half the tokens');
  assert.ok(!c.data.includes('[DONE]'));
  assert.ok(!c.data.endsWith('0\r\n\r\n'), 'no terminating chunk');
  // and with fetch: the body errors instead of ending
  const res = await chat({ stream: true }, { 'X-Mock-Fault': 'cut', 'X-Mock-Tokens': '4', 'X-Mock-Interval-Ms': '10' });
  await assert.rejects(res.text());
  const s1 = await mock.waitStats((s) => s.streams_cut >= s0.streams_cut + 2 && s.streams_open === 0, 3000, 'cut streams counted');
  assert.equal(s1.streams_aborted, s0.streams_aborted);
});

test('fault stall: a few tokens, then silence until the client leaves (counted as aborted)', async () => {
  const s0 = await mock.stats();
  const c = await Raw.open(mock.port);
  c.post('/v1/chat/completions', { model: 'llama-3.1-8b-instant', messages: MESSAGES, stream: true }, { 'X-Mock-Fault': 'stall', 'X-Mock-Tokens': '10' });
  await c.waitFor(() => c.data.includes('tok3"'), 3000, 'three tokens');
  const len = c.data.length;
  await sleep(400);
  assert.equal(c.data.length, len, 'nothing more was sent');
  assert.ok(!c.ended, 'the connection stays open');
  let s = await mock.stats();
  assert.equal(s.streams_open, 1);
  c.destroy();
  s = await mock.waitStats((x) => x.streams_aborted === s0.streams_aborted + 1 && x.streams_open === 0, 3000, 'the stalled stream aborted');
  assert.equal(s.streams_completed, s0.streams_completed);
  // by model name too
  const c2 = await Raw.open(mock.port);
  c2.post('/v1/chat/completions', { model: 'mock-stall', messages: MESSAGES, stream: true });
  await c2.waitFor(() => c2.data.includes('tok3"'), 3000, 'three tokens');
  c2.destroy();
  await mock.waitStats((x) => x.streams_aborted === s0.streams_aborted + 2 && x.streams_open === 0, 3000, 'second stall aborted');
});

test('fault malformed: a `data: {not json` chunk after a few tokens, then the end', async () => {
  const { res, raw } = await (async () => {
    const r = await chat({ stream: true }, { 'X-Mock-Fault': 'malformed', 'X-Mock-Tokens': '10' });
    return { res: r, raw: await r.text() };
  })();
  assert.equal(res.status, 200);
  const data = sseData(raw);
  assert.equal(data.at(-1), '{not json');
  assert.equal(data.length, 1 + 3 + 1, 'role chunk, 3 tokens, the bad chunk');
  assert.ok(!raw.includes('[DONE]'));
  const r2 = await chat({ model: 'mock-malformed', stream: true }, { 'X-Mock-Fault-After': '1' });
  assert.deepEqual(sseData(await r2.text()).slice(1).map((d) => (d.startsWith('{not') ? d : JSON.parse(d).choices[0].delta.content)), ['tok1', '{not json']);
});

test('fault groq_error: x_groq.error inside the 200 stream after a few tokens', async () => {
  for (const how of [{ headers: { 'X-Mock-Fault': 'groq_error' } }, { extra: { model: 'mock-groq-error' } }]) {
    const { res, events } = await streamChat(how.extra || {}, { 'X-Mock-Tokens': '8', ...(how.headers || {}) });
    assert.equal(res.status, 200);
    const last = events.at(-1);
    assert.notEqual(last, '[DONE]');
    assert.equal(typeof last.x_groq.error, 'string');
    assert.match(last.x_groq.error, /mock upstream failure/);
    assert.deepEqual(last.choices, []);
    assert.equal(contentOf(events.slice(0, -1)), mockText(3));
  }
});

test('fault error_chunk: OpenAI-style {"error":{..}} chunk after a few tokens', async () => {
  const { res, events } = await streamChat({ model: 'mock-error-chunk' }, { 'X-Mock-Tokens': '8', 'X-Mock-Fault-After': '2' });
  assert.equal(res.status, 200);
  const last = events.at(-1);
  assert.deepEqual(last, { error: { message: 'mock upstream failure', type: 'internal_server_error', code: 'internal_server_error' } });
  assert.equal(contentOf(events.slice(0, -1)), mockText(2));
});

test('fault slow_first: the first token after 2 s, or after X-Mock-First-Token-Ms', async () => {
  let t0 = Date.now();
  let r = await streamChat({}, { 'X-Mock-Fault': 'slow_first', 'X-Mock-First-Token-Ms': '300', 'X-Mock-Tokens': '2' });
  let ms = Date.now() - t0;
  assert.equal(contentOf(r.events), mockText(2));
  assert.ok(ms >= 290 && ms < 1800, `took ${ms} ms`);
  t0 = Date.now();
  r = await streamChat({ model: 'mock-slow-first' }, { 'X-Mock-Tokens': '1' });
  ms = Date.now() - t0;
  assert.equal(contentOf(r.events), mockText(1));
  assert.ok(ms >= 1950, `took ${ms} ms, expected >= 2000`);
});

test('X-Mock-Fault-Count: only the first K requests of a key fail', async () => {
  const key = `retry-${process.pid}-${Date.now()}`;
  const statuses = [];
  for (let i = 0; i < 4; i++) {
    const res = await chat({ stream: true }, { 'X-Mock-Fault': '429', 'X-Mock-Fault-Count': '2', 'X-Mock-Fault-Key': key, 'X-Mock-Tokens': '2', 'X-Mock-Retry-After': '0.1' });
    statuses.push(res.status);
    const text = await res.text();
    if (res.status === 200) assert.equal(contentOf(sseData(text).map((d) => (d === '[DONE]' ? d : JSON.parse(d)))), mockText(2));
  }
  assert.deepEqual(statuses, [429, 429, 200, 200]);
  // another key has its own count; the model-name fault counts too
  const other = `${key}-b`;
  const s2 = [];
  for (let i = 0; i < 2; i++) {
    const res = await chat({ model: 'mock-500' }, { 'X-Mock-Fault-Count': '1', 'X-Mock-Fault-Key': other });
    s2.push(res.status);
    await res.arrayBuffer();
  }
  assert.deepEqual(s2, [500, 200]);
  // DELETE /_mock/faults starts the counts over
  await fetch(`${mock.url}/_mock/faults`, { method: 'DELETE' });
  const res = await chat({ model: 'mock-500' }, { 'X-Mock-Fault-Count': '1', 'X-Mock-Fault-Key': other });
  assert.equal(res.status, 500);
  await res.arrayBuffer();
});

// ---- recording and stats -------------------------------------------------------------

test('recording: method, path, lower-case headers (authorization too), JSON body; clear', async () => {
  await mock.clearRequests();
  assert.deepEqual(await mock.requests(), []);
  const res = await chat({ temperature: 0.5 }, { Authorization: 'Bearer sk-test-123', 'X-Custom-Thing': 'A' });
  await res.arrayBuffer();
  await (await fetch(`${mock.baseUrl}/chat/completions?x=1`, { method: 'POST', body: 'not json at all' })).arrayBuffer();
  await (await fetch(`${mock.url}/openai/v1/models`)).arrayBuffer();
  const recs = await mock.requests();
  assert.equal(recs.length, 3);
  const [a, b, c] = recs;
  assert.equal(a.method, 'POST');
  assert.equal(a.path, '/v1/chat/completions');
  assert.equal(a.query, null);
  assert.equal(a.headers.authorization, 'Bearer sk-test-123');
  assert.equal(a.headers['x-custom-thing'], 'A');
  assert.equal(a.headers['content-type'], 'application/json');
  assert.deepEqual(a.body, { model: 'llama-3.3-70b-versatile', messages: MESSAGES, temperature: 0.5 });
  assert.equal(typeof a.timestamp, 'number');
  assert.ok(Math.abs(a.timestamp * 1000 - Date.now()) < 60000);
  assert.ok(b.id > a.id && c.id > b.id, 'ids grow');
  assert.equal(b.body, 'not json at all');
  assert.equal(b.query, 'x=1');
  assert.equal(c.method, 'GET');
  assert.equal(c.path, '/openai/v1/models');
  assert.equal(c.body, null);
  assert.deepEqual((await mock.requests(`?since=${a.id}`)).map((r) => r.id), [b.id, c.id]);
  assert.deepEqual((await mock.requests('?limit=1')).map((r) => r.id), [c.id]);
  const del = await fetch(`${mock.url}/_mock/requests`, { method: 'DELETE' });
  assert.equal(del.status, 200);
  assert.deepEqual(await mock.requests(), []);
});

test('recording keeps only the last 1000 requests', async () => {
  await mock.clearRequests();
  const batch = 50;
  for (let i = 0; i < 1010; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, 1010 - i) }, async () => (await fetch(`${mock.baseUrl}/models`)).arrayBuffer()),
    );
  }
  const recs = await mock.requests();
  assert.equal(recs.length, 1000);
  for (let i = 1; i < recs.length; i++) assert.equal(recs[i].id, recs[i - 1].id + 1);
  await mock.clearRequests();
});

test('stats: a client that leaves mid-stream counts as aborted and closes the stream', async () => {
  const s0 = await mock.stats();
  for (const k of ['requests', 'streams_started', 'streams_completed', 'streams_aborted', 'streams_open']) assert.equal(typeof s0[k], 'number', k);
  const c = await Raw.open(mock.port);
  c.post('/v1/chat/completions', { model: 'm', messages: MESSAGES, stream: true }, { 'X-Mock-Tokens': '100', 'X-Mock-Interval-Ms': '20' });
  await c.waitFor(() => c.data.includes('tok2"'), 3000, 'two tokens');
  const mid = await mock.stats();
  assert.equal(mid.streams_open, 1);
  assert.equal(mid.streams_started, s0.streams_started + 1);
  c.destroy();
  const s1 = await mock.waitStats((s) => s.streams_aborted === s0.streams_aborted + 1, 3000, 'the abort');
  assert.equal(s1.streams_open, 0);
  assert.equal(s1.streams_completed, s0.streams_completed);
  assert.equal(s1.requests, s0.requests + 1);
  // a finished stream counts as completed
  await streamChat({}, { 'X-Mock-Tokens': '2' });
  const s2 = await mock.stats();
  assert.equal(s2.streams_completed, s0.streams_completed + 1);
  assert.equal(s2.streams_open, 0);
  // and a non-streamed answer abandoned before it comes counts too
  const c2 = await Raw.open(mock.port);
  c2.post('/v1/chat/completions', { model: 'm', messages: MESSAGES }, { 'X-Mock-First-Token-Ms': '5000' });
  await mock.waitStats((s) => s.completions_open === 1, 3000, 'the pending completion');
  c2.destroy();
  await mock.waitStats((s) => s.completions_open === 0 && s.completions_aborted === s0.completions_aborted + 1, 3000, 'completion aborted');
});

// ---- tools ---------------------------------------------------------------------------

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'add_task',
      description: 'Add a task',
      parameters: { type: 'object', properties: { due: { type: 'string' }, title: { type: 'string' } }, required: ['title'] },
    },
  },
  { type: 'function', function: { name: 'list_tasks', parameters: { type: 'object', properties: { done: { type: 'boolean' } } } } },
  { type: 'function', function: { name: 'set_priority', parameters: { type: 'object', properties: { level: { enum: ['high', 'low'] } }, required: ['level'] } } },
  { type: 'function', function: { name: 'ping' } },
];

function toolCallsOf(events) {
  const calls = [];
  for (const e of events) {
    if (e === '[DONE]' || !e.choices.length) continue;
    for (const d of e.choices[0].delta.tool_calls || []) {
      calls[d.index] ??= { id: null, type: null, name: '', arguments: '', deltas: 0 };
      const c = calls[d.index];
      c.deltas++;
      if (d.id) c.id = d.id;
      if (d.type) c.type = d.type;
      if (d.function?.name) c.name += d.function.name;
      if (d.function?.arguments) c.arguments += d.function.arguments;
    }
  }
  return calls;
}

test('tools: "tool" in the user message streams a call to the first tool over several deltas', async () => {
  const messages = [{ role: 'user', content: 'Please use a Tool to add "buy milk"' }];
  const { events } = await streamChat({ messages, tools: TOOLS, stream_options: { include_usage: true } });
  assert.equal(events.at(-1), '[DONE]');
  const calls = toolCallsOf(events);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].id, 'call_mock_1');
  assert.equal(calls[0].type, 'function');
  assert.equal(calls[0].name, 'add_task');
  assert.deepEqual(JSON.parse(calls[0].arguments), { title: 'mock' });
  assert.ok(calls[0].deltas >= 3, `arguments split over deltas (${calls[0].deltas})`);
  const opening = events.find((e) => e !== '[DONE]' && e.choices[0]?.delta.tool_calls);
  assert.deepEqual(opening.choices[0].delta.tool_calls[0], { index: 0, id: 'call_mock_1', type: 'function', function: { name: 'add_task', arguments: '' } });
  assert.equal(contentOf(events), '');
  const fin = events.filter((e) => e !== '[DONE]' && e.choices.length).at(-1);
  assert.equal(fin.choices[0].finish_reason, 'tool_calls');
  assert.equal(events.at(-2).usage.completion_tokens, calls[0].deltas);
});

test('tools: after a tool result the answer is text; no trigger or tool_choice none: text', async () => {
  const messages = [
    { role: 'user', content: 'use the tool' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_mock_1', type: 'function', function: { name: 'add_task', arguments: '{"title":"mock"}' } }] },
    { role: 'tool', tool_call_id: 'call_mock_1', content: '{"ok":true}' },
  ];
  let r = await streamChat({ messages, tools: TOOLS }, { 'X-Mock-Tokens': '3' });
  assert.equal(toolCallsOf(r.events).length, 0);
  assert.equal(contentOf(r.events), mockText(3));
  assert.equal(r.events.at(-2).choices[0].finish_reason, 'stop');
  r = await streamChat({ tools: TOOLS }, { 'X-Mock-Tokens': '2' });
  assert.equal(toolCallsOf(r.events).length, 0, 'no "tool" in the message: text');
  r = await streamChat({ messages: [{ role: 'user', content: 'tool please' }], tools: TOOLS, tool_choice: 'none' }, { 'X-Mock-Tokens': '2' });
  assert.equal(toolCallsOf(r.events).length, 0, 'tool_choice none');
  r = await streamChat({ messages: [{ role: 'user', content: 'tool please' }] }, { 'X-Mock-Tokens': '2' });
  assert.equal(contentOf(r.events), mockText(2), 'no tools offered');
});

test('tools: X-Mock-Tool-Call and a named tool_choice; non-streamed tool calls', async () => {
  let r = await streamChat({ tools: TOOLS }, { 'X-Mock-Tool-Call': '1' });
  assert.equal(toolCallsOf(r.events)[0].name, 'add_task');
  r = await streamChat({ tools: TOOLS, tool_choice: { type: 'function', function: { name: 'list_tasks' } } });
  const call = toolCallsOf(r.events)[0];
  assert.equal(call.name, 'list_tasks');
  assert.deepEqual(JSON.parse(call.arguments), { done: true });
  const named = async (name) => toolCallsOf((await streamChat({ tools: TOOLS, tool_choice: { type: 'function', function: { name } } })).events)[0];
  assert.deepEqual(JSON.parse((await named('set_priority')).arguments), { level: 'high' }, 'first enum value');
  assert.deepEqual(JSON.parse((await named('ping')).arguments), {}, 'no schema: {}');
  const res = await chat({ tools: TOOLS, messages: [{ role: 'user', content: 'add it with a tool' }] });
  const j = await res.json();
  assert.equal(j.choices[0].finish_reason, 'tool_calls');
  assert.equal(j.choices[0].message.content, null);
  assert.equal(j.choices[0].message.tool_calls[0].id, 'call_mock_1');
  assert.equal(j.choices[0].message.tool_calls[0].function.name, 'add_task');
  assert.deepEqual(JSON.parse(j.choices[0].message.tool_calls[0].function.arguments), { title: 'mock' });
});

// ---- scale and process ---------------------------------------------------------------

test('1000 concurrent paced streams (20 tokens at 10 ms) all complete with the right text', { timeout: 60000 }, async () => {
  const N = 1000;
  const s0 = await mock.stats();
  const t0 = Date.now();
  const results = await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      const start = Date.now();
      const res = await chat({ stream: true }, { 'X-Mock-Tokens': '20', 'X-Mock-Interval-Ms': '10', 'X-Mock-First-Token-Ms': '10', 'X-Request-Id': `many-${i}` });
      const text = await res.text();
      return { status: res.status, text, ms: Date.now() - start };
    }),
  );
  const total = Date.now() - t0;
  const expected = mockText(20);
  let bad = 0;
  for (const r of results) {
    const events = sseData(r.text).map((d) => (d === '[DONE]' ? d : JSON.parse(d)));
    if (r.status !== 200 || contentOf(events) !== expected || events.at(-1) !== '[DONE]') bad++;
  }
  assert.equal(bad, 0, `${bad} of ${N} streams were wrong`);
  const fastest = Math.min(...results.map((r) => r.ms));
  assert.ok(fastest >= 190, `paced: the fastest stream took ${fastest} ms, expected >= 200`);
  assert.ok(total < 20000, `all ${N} streams took ${total} ms`);
  const s1 = await mock.waitStats((s) => s.streams_open === 0, 5000, 'all streams closed');
  assert.equal(s1.streams_completed - s0.streams_completed, N);
});

test('bytes a client pushes during a long answer are not buffered without bound', async () => {
  // Its own mock: the flooding client's stream cannot be noticed leaving once
  // the mock stops reading, so it would stay open in the shared one.
  const m = await startMock();
  try {
    const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${m.pid}/status`, 'utf8'))[1]);
    const before = rssKiB();
    const c = await Raw.open(m.port);
    c.post('/v1/chat/completions', { model: 'mock-stall', messages: MESSAGES, stream: true });
    await c.waitFor(() => c.data.includes('tok3"'), 3000, 'the stalled stream');
    // Push up to 256 MiB; once the mock stops reading, the kernel buffers
    // fill and writes stop draining, which ends the push early.
    const junk = Buffer.alloc(1 << 20, 'a');
    const deadline = Date.now() + 2000;
    let pushed = 0;
    while (pushed < 256 && Date.now() < deadline) {
      if (!c.sock.write(junk)) {
        const drained = await Promise.race([new Promise((r) => c.sock.once('drain', () => r(true))), sleep(300).then(() => false)]);
        if (!drained) break;
      }
      pushed++;
    }
    const grown = rssKiB() - before;
    c.destroy();
    assert.ok(pushed < 256, `the mock kept reading: ${pushed} MiB accepted`);
    assert.ok(grown < 32 * 1024, `mock RSS grew by ${grown} KiB`);
    const res = await fetch(`${m.baseUrl}/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'm', messages: MESSAGES }), headers: { 'X-Mock-Tokens': '1', 'X-Mock-First-Token-Ms': '0' } });
    assert.equal((await res.json()).choices[0].message.content, mockText(1), 'still serving');
    // A small pipelined request during a stream is held, and the client
    // leaving is still noticed.
    const c2 = await Raw.open(m.port);
    c2.post('/v1/chat/completions', { model: 'mock-stall', messages: MESSAGES, stream: true });
    await c2.waitFor(() => c2.data.includes('tok3"'), 3000, 'the second stalled stream');
    c2.sock.write('GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n');
    await sleep(50);
    const s0 = await m.stats();
    c2.destroy();
    await m.waitStats((s) => s.streams_aborted === s0.streams_aborted + 1, 3000, 'the abort after a pipelined request');
  } finally {
    assert.deepEqual(await m.stop(), { code: 0, signal: null });
  }
});

test('a pipelined request behind a large answer to a slow reader is answered, in order', async () => {
  const c = await Raw.open(mock.port);
  c.sock.pause(); // read nothing yet: the big answer stays queued in the mock
  c.post('/v1/chat/completions', { model: 'm', messages: MESSAGES }, { 'X-Mock-Tokens': '100000', 'X-Mock-First-Token-Ms': '50' });
  c.sock.write('GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n');
  await sleep(400);
  c.sock.resume();
  await c.waitFor(() => c.data.includes('"object":"list"'), 5000, 'the pipelined answer');
  const first = c.data.indexOf('HTTP/1.1 200'), second = c.data.indexOf('HTTP/1.1 200', first + 1);
  assert.ok(second > c.data.indexOf('tok100000'), 'the completion comes first, whole');
  c.destroy();
});

test('--help documents every flag and header; a bad flag is refused', () => {
  const h = spawnSync(MOCK_BIN, ['--help'], { encoding: 'utf8', timeout: 5000 });
  assert.equal(h.status, 0);
  for (const s of ['--listen', '--mock-tokens', '--mock-token-interval', '--mock-first-token', '--record', '--KEY',
    'X-Mock-Tokens', 'X-Mock-First-Token-Ms', 'X-Mock-Interval-Ms', 'X-Mock-Fault', 'X-Mock-Fault-Count',
    'X-Mock-Fault-Key', 'X-Mock-Retry-After', 'X-Mock-Tool-Call', 'X-Mock-Fault-After',
    '/_mock/requests', '/_mock/stats', 'cut', 'stall', 'malformed', 'groq_error', 'error_chunk', 'slow_first', 'tok1 tok2']) {
    assert.ok(h.stdout.includes(s), `--help mentions ${s}`);
  }
  const bad = spawnSync(MOCK_BIN, ['--no-such-key', '1'], { encoding: 'utf8', timeout: 5000 });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /no.such.key/);
  const badInterval = spawnSync(MOCK_BIN, ['--mock-token-interval', 'soon'], { encoding: 'utf8', timeout: 5000 });
  assert.equal(badInterval.status, 1);
});

test('SIGTERM with streams in flight: exits 0 at once', async () => {
  const m = await startMock();
  try {
    const c = await Raw.open(m.port);
    c.post('/v1/chat/completions', { model: 'mock-stall', messages: MESSAGES, stream: true });
    const c2 = await Raw.open(m.port);
    c2.post('/v1/chat/completions', { model: 'm', messages: MESSAGES, stream: true }, { 'X-Mock-Interval-Ms': '1000' });
    await c.waitFor(() => c.data.includes('tok3"'), 3000, 'stalled stream started');
    await c2.waitFor(() => c2.data.includes('tok1"'), 3000, 'slow stream started');
    const t0 = Date.now();
    assert.deepEqual(await m.stop(3000), { code: 0, signal: null });
    assert.ok(Date.now() - t0 < 1500, `stopped in ${Date.now() - t0} ms`);
    await c.waitFor(() => c.ended, 2000, 'the stream to be cut');
    c.destroy();
    c2.destroy();
  } finally {
    await m.stop().catch(() => {});
  }
});
