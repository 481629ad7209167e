// The OpenAI-compatible relay as users call it: the official `openai` and
// `groq-sdk` clients pointed at chatloop, chatloop pointed at chatloop-mock
// (or answering with its built-in mock provider). Answers must be exact, and
// the upstream must receive what the client sent plus what chatloop adds.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import Groq from 'groq-sdk';
import OpenAI from 'openai';
import { get, makeTest } from './lib/server.mjs';
import { mockPromptTokens, mockText } from './lib/mock.mjs';
import {
  API_KEY,
  MESSAGES,
  MODEL,
  contentOf,
  drain,
  startBuiltin,
  startHeaderProxy,
  startMock,
  startRelay,
  stopAll,
  streamRaw,
} from './lib/llm.mjs';

const N = 12; // tokens per answer from chatloop-mock
const NB = 7; // tokens per answer from the built-in mock provider
let mock, relay, builtin;
const test = makeTest(() => [relay, builtin]);

before(async () => {
  mock = await startMock({ mockTokens: N, mockTokenInterval: 0, mockFirstToken: 0 });
  relay = await startRelay(mock);
  builtin = await startBuiltin({ mockTokens: NB, mockTokenInterval: 0, mockFirstToken: 0 });
});
after(() => stopAll(relay, builtin, mock));

const openai = (s, prefix = '/v1') =>
  new OpenAI({ apiKey: 'x', baseURL: `http://127.0.0.1:${s.port}${prefix}`, maxRetries: 0, timeout: 10000 });
const groq = (s) => new Groq({ apiKey: 'x', baseURL: `http://127.0.0.1:${s.port}`, maxRetries: 0, timeout: 10000 });

function checkUsage(u, prompt, completion) {
  assert.equal(u.prompt_tokens, prompt, `prompt_tokens in ${JSON.stringify(u)}`);
  assert.equal(u.completion_tokens, completion, `completion_tokens in ${JSON.stringify(u)}`);
  assert.equal(u.total_tokens, prompt + completion);
}

/** Non-streamed and streamed (with include_usage) through a client; exact text, usage, model. */
async function roundTrip(client, n, { model = MODEL } = {}) {
  const c = await client.chat.completions.create({ model, messages: MESSAGES });
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.choices[0].message.role, 'assistant');
  assert.equal(c.choices[0].message.content, mockText(n));
  assert.equal(c.choices[0].finish_reason, 'stop');
  assert.equal(c.model, model);
  checkUsage(c.usage, mockPromptTokens(MESSAGES), n);

  const stream = await client.chat.completions.create({
    model,
    messages: MESSAGES,
    stream: true,
    stream_options: { include_usage: true },
  });
  const { chunks, error } = await drain(stream);
  assert.equal(error, null, `stream raised ${error}`);
  assert.equal(contentOf(chunks), mockText(n));
  for (const ch of chunks) {
    assert.equal(ch.object, 'chat.completion.chunk');
    assert.equal(ch.model, model);
  }
  assert.equal(chunks.filter((ch) => ch.choices.length && ch.choices[0].finish_reason).at(-1).choices[0].finish_reason, 'stop');
  const usageChunks = chunks.filter((ch) => ch.usage);
  assert.equal(usageChunks.length, 1, 'exactly one chunk carries usage');
  assert.deepEqual(usageChunks[0].choices, [], 'the usage chunk has no choices');
  assert.equal(chunks.at(-1), usageChunks[0], 'usage comes last');
  checkUsage(usageChunks[0].usage, mockPromptTokens(MESSAGES), n);
}

test('openai SDK at /v1: non-streamed and streamed answers are exact, with usage and the model', async () => {
  await roundTrip(openai(relay), N);
});

test('openai SDK at /openai/v1 works the same', async () => {
  await roundTrip(openai(relay, '/openai/v1'), N);
  // another model name is echoed as given
  await roundTrip(openai(relay, '/openai/v1'), N, { model: 'llama-3.1-8b-instant' });
});

test('groq-sdk (baseURL = chatloop root, paths /openai/v1/...) works the same', async () => {
  await roundTrip(groq(relay), N);
});

test('built-in mock provider (no api key): same exact text, usage and model, both SDKs', async () => {
  await roundTrip(openai(builtin), NB);
  await roundTrip(groq(builtin), NB, { model: 'mock-small' });
});

test('SDK model lists through chatloop', async () => {
  const direct = await (await fetch(`${mock.baseUrl}/models`)).json();
  const ids = (await openai(relay).models.list()).data.map((m) => m.id);
  assert.deepEqual(ids, direct.data.map((m) => m.id));
  const gids = (await groq(relay).models.list()).data.map((m) => m.id);
  assert.deepEqual(gids, ids);
  const bids = (await openai(builtin).models.list()).data.map((m) => m.id);
  assert.ok(bids.includes(MODEL), `built-in list ${bids} includes the configured model`);
});

test('the upstream receives the history, our key, include_usage on streams, and the default model', async () => {
  await mock.clearRequests();
  const client = openai(relay);
  // model omitted: chatloop fills in its configured model (not the SDK)
  const body = { messages: MESSAGES, temperature: 0.25, max_tokens: 50, top_p: 0.5 };
  const c = await client.chat.completions.create(body);
  assert.equal(c.choices[0].message.content, mockText(N));
  assert.equal(c.model, MODEL);
  const s = await client.chat.completions.create({ ...body, model: 'qwen-test', stream: true });
  const { chunks, error } = await drain(s);
  assert.equal(error, null);
  assert.equal(contentOf(chunks), mockText(N));

  const recs = (await mock.requests()).filter((r) => r.path === '/v1/chat/completions');
  assert.equal(recs.length, 2, JSON.stringify(recs));
  const [a, b] = recs;
  for (const r of recs) {
    assert.equal(r.method, 'POST');
    assert.equal(r.headers.authorization, `Bearer ${API_KEY}`, 'chatloop sends its own key, not the client\'s');
    assert.deepEqual(r.body.messages, MESSAGES, 'history goes upstream in order, unchanged');
    assert.equal(r.body.temperature, 0.25);
    assert.equal(r.body.max_tokens, 50);
    assert.equal(r.body.top_p, 0.5);
  }
  assert.equal(a.body.model, MODEL, 'default model filled in');
  assert.ok(!a.body.stream, 'non-streamed request is not streamed upstream');
  assert.equal(a.body.stream_options, undefined, 'no stream_options on a non-streamed request');
  assert.equal(b.body.model, 'qwen-test');
  assert.equal(b.body.stream, true);
  assert.equal(b.body.stream_options?.include_usage, true, 'streams always ask for usage');
});

test('the usage-only chunk reaches the client only when it asked include_usage (raw SSE)', async () => {
  for (const s of [relay, builtin]) {
    const n = s === relay ? N : NB;
    const plain = await streamRaw(s.port, { messages: MESSAGES });
    assert.equal(plain.status, 200, plain.raw);
    assert.match(plain.headers['content-type'], /^text\/event-stream/);
    assert.equal(plain.headers['x-accel-buffering'], 'no');
    assert.equal(plain.events.at(-1), '[DONE]');
    assert.equal(contentOf(plain.events), mockText(n));
    const chunks = plain.events.slice(0, -1);
    assert.ok(chunks.every((e) => e.choices.length > 0), `no choices:[] chunk without include_usage: ${plain.raw}`);
    assert.ok(chunks.every((e) => e.usage === undefined || e.usage === null), 'no top-level usage without include_usage');

    const withUsage = await streamRaw(s.port, { messages: MESSAGES, stream_options: { include_usage: true } });
    assert.equal(withUsage.status, 200);
    assert.equal(withUsage.events.at(-1), '[DONE]');
    assert.equal(contentOf(withUsage.events), mockText(n));
    const u = withUsage.events.filter((e) => e !== '[DONE]' && e.choices.length === 0);
    assert.equal(u.length, 1, `one usage-only chunk: ${withUsage.raw}`);
    checkUsage(u[0].usage, mockPromptTokens(MESSAGES), n);
    assert.equal(withUsage.events.at(-2), u[0], 'the usage chunk is the last before [DONE]');

    const explicitFalse = await streamRaw(s.port, { messages: MESSAGES, stream_options: { include_usage: false } });
    assert.ok(explicitFalse.events.slice(0, -1).every((e) => e.choices.length > 0), 'include_usage false: no usage chunk');
  }
});

test('an upstream event whose data spans several data: lines goes out as several data: lines', async () => {
  // chatloop-mock writes each chunk's members on their own data: lines
  const proxy = await startHeaderProxy(mock, { 'x-mock-multiline-data': '1' });
  let ml;
  try {
    ml = await startRelay(proxy);
    for (const body of [{ messages: MESSAGES }, { messages: MESSAGES, stream_options: { include_usage: true } }]) {
      const r = await streamRaw(ml.port, body);
      assert.equal(r.status, 200, r.raw);
      // SSE framing: every line is a field (here only data:) or the blank line ending an event
      const stray = r.raw.split('\n').filter((l) => l !== '' && !l.startsWith('data: '));
      assert.deepEqual(stray, [], `lines without a field name: ${JSON.stringify(r.raw.slice(0, 600))}`);
      const blocks = r.raw.split('\n\n').filter((b) => b);
      assert.ok(blocks.filter((b) => b.split('\n').length > 1).length >= N, `multi-line events kept: ${r.raw.slice(0, 600)}`);
      assert.equal(r.events.at(-1), '[DONE]');
      assert.equal(contentOf(r.events), mockText(N));
      const usageOnly = r.events.filter((e) => e !== '[DONE]' && e.choices.length === 0);
      assert.equal(usageOnly.length, body.stream_options ? 1 : 0, 'the usage-only chunk only when asked');
    }
    // and the official client reads the same answer
    const s = await openai(ml).chat.completions.create({ model: MODEL, messages: MESSAGES, stream: true });
    const { chunks, error } = await drain(s);
    assert.equal(error, null);
    assert.equal(contentOf(chunks), mockText(N));
  } finally {
    await stopAll(ml);
    await proxy.stop();
  }
});

test('/health names the provider and model', async () => {
  const h = (await get(relay.port, '/health')).json();
  assert.equal(h.provider.name, 'groq');
  assert.equal(h.provider.model, MODEL);
  const hb = (await get(builtin.port, '/health')).json();
  assert.equal(hb.provider.name, 'mock');
});
