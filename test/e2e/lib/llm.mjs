// Helpers for the provider-layer tests (llm_*.test.mjs): chatloop pointed at
// chatloop-mock, the official clients pointed at chatloop, OpenAI-format
// requests and SSE answers, and a header-adding proxy for the mock's
// X-Mock-* headers (chatloop does not forward client headers upstream).
// Every wait is bounded.
import http from 'node:http';
import { HOST, request, sleep, startServer } from './server.mjs';
import { sseData, startMock } from './mock.mjs';

export const API_KEY = 'gsk_fake_test';
export const MODEL = 'llama-3.3-70b-versatile'; // chatloop's default model
export const MESSAGES = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'hello there' },
  { role: 'assistant', content: 'hi, how can I help?' },
  { role: 'user', content: 'tell me something deterministic' },
];

/**
 * Starts chatloop with an API key and base_url pointing at `upstream` (a
 * Mock, or any {baseUrl}), plus `opts` as flags.
 */
export function startRelay(upstream, opts = {}, { env = {}, ...rest } = {}) {
  return startServer(
    { baseUrl: upstream.baseUrl, ...opts },
    { env: { GROQ_API_KEY: API_KEY, ...env }, ...rest },
  );
}

/** Starts chatloop without an API key: the built-in mock provider answers. */
export function startBuiltin(opts = {}, rest = {}) {
  return startServer(opts, rest);
}

/** Stops servers and mocks (in that order), reporting the first failure after all stopped. */
export async function stopAll(...procs) {
  let first = null;
  for (const p of procs) {
    if (!p) continue;
    try {
      await p.stop();
    } catch (e) {
      first ??= e;
    }
  }
  if (first) throw first;
}

/** POST a JSON body (object, or a string sent as is) to chatloop; returns request()'s result. */
export function post(port, body, { path = '/v1/chat/completions', headers = {}, timeout = 10000 } = {}) {
  const data = typeof body === 'string' ? body : JSON.stringify(body);
  return request(port, {
    method: 'POST',
    path,
    headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers },
    body: data,
    timeout,
  });
}

/** A streamed completion through chatloop: {status, headers, raw, events}. Events are parsed JSON or '[DONE]'. */
export async function streamRaw(port, body, opts = {}) {
  const res = await post(port, { stream: true, ...body }, opts);
  const raw = res.text;
  let events = [];
  if (/^text\/event-stream/.test(res.headers['content-type'] || '')) {
    events = sseData(raw).map((d) => (d === '[DONE]' ? d : JSON.parse(d)));
  }
  return { status: res.status, headers: res.headers, raw, events, res };
}

/** The text of choice 0 across streamed chunks (parsed objects or SDK chunks). */
export function contentOf(chunks) {
  return chunks
    .filter((e) => e !== '[DONE]' && Array.isArray(e.choices) && e.choices.length)
    .map((e) => e.choices[0].delta?.content ?? '')
    .join('');
}

/**
 * Checks an OpenAI-format error body: {"error":{message,type,param,code}}
 * (chatloop's own errors carry all four; an upstream's body relayed as is,
 * `relayed: true`, needs only message, type and code). Returns the error.
 */
export function checkOpenAIError(assert, res, status, { param, code, relayed = false } = {}) {
  assert.equal(res.status, status, `status (body: ${res.text})`);
  assert.match(res.headers['content-type'] || '', /^application\/json/);
  const j = res.json();
  assert.deepEqual(Object.keys(j), ['error'], `only "error" at the top: ${res.text}`);
  const e = j.error;
  for (const k of relayed ? ['message', 'type', 'code'] : ['message', 'type', 'param', 'code'])
    assert.ok(k in e, `error.${k} present: ${res.text}`);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  if (param !== undefined) assert.equal(e.param, param, `error.param: ${res.text}`);
  if (code !== undefined) assert.equal(e.code, code, `error.code: ${res.text}`);
  return e;
}

/** Checks a success envelope; returns its data. */
export function checkOkEnvelope(assert, res, status = 200) {
  assert.equal(res.status, status, `status (body: ${res.text})`);
  assert.match(res.headers['content-type'] || '', /^application\/json/);
  const j = res.json();
  assert.equal(j.success, true, res.text);
  assert.equal(typeof j.message, 'string');
  assert.equal(typeof j.metadata.processing_ms, 'number');
  assert.equal(j.metadata.request_id, res.headers['x-request-id']);
  assert.equal(j.error, undefined);
  return j.data;
}

/** Consumes an SDK stream: {chunks, error} (error is whatever the iteration threw). */
export async function drain(stream, ms = 10000) {
  const chunks = [];
  let error = null;
  const timer = setTimeout(() => stream.controller?.abort(), ms);
  try {
    for await (const c of stream) chunks.push(c);
  } catch (e) {
    error = e;
  } finally {
    clearTimeout(timer);
  }
  return { chunks, error };
}

/** Polls `fn` until it returns a truthy value; throws with `what` after `ms`. */
export async function until(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * A tiny HTTP proxy in front of the mock that adds `headers` (an object, or
 * a function of the incoming request returning one) to every request it
 * forwards, streaming the answer back as it comes. Lets a test use the
 * mock's X-Mock-* headers through chatloop. {port, baseUrl, stop()}.
 */
export async function startHeaderProxy(mock, headers) {
  const agent = new http.Agent({ keepAlive: true });
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const extra = typeof headers === 'function' ? headers(req) : headers;
    const up = http.request(
      { host: HOST, port: mock.port, method: req.method, path: req.url, headers: { ...req.headers, ...extra }, agent },
      (ur) => {
        res.writeHead(ur.statusCode, ur.headers);
        ur.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, resolve);
  });
  const port = server.address().port;
  return {
    port,
    baseUrl: `http://${HOST}:${port}/v1`,
    async stop() {
      for (const s of sockets) s.destroy();
      agent.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

export { startMock };
