// Helpers for the persistence tests (chat_*.test.mjs): chatloop with a real
// PostgreSQL and auth required, accounts and tokens, the native API with a
// bearer token, JWTs crafted by hand, and chat turns read as SSE events —
// whole, or incrementally for a client that leaves mid-stream.
// Every wait is bounded.
import { createHmac } from 'node:crypto';
import http from 'node:http';
import { HOST, request, sleep } from './server.mjs';
import { startRelay } from './llm.mjs';

export const JWT_SECRET = 'test-secret-chat-0123456789abcdef';

/**
 * chatloop pointed at `mock` with `pg` (a startPg() cluster, or {url}), auth
 * required. Resolves once every worker's pool is connected (each /health
 * answers from one worker: new connections until all of them said so), so a
 * test's first request does not meet a pool still connecting — unless the
 * database is down on purpose (opts.awaitDb false, or it never comes up:
 * then after 5 s as it is).
 */
export async function startChatServer(mock, pg, opts = {}, rest = {}) {
  const { awaitDb = true, ...o } = opts;
  const s = await startRelay(
    mock,
    { auth: 'required', jwtSecret: JWT_SECRET, kdfIterations: 1000, databaseUrl: pg.url, ...o },
    rest,
  );
  const workers = Number(o.workers ?? 1);
  if (awaitDb && Number.isInteger(workers) && workers > 0) {
    const ok = new Set();
    const deadline = Date.now() + 5000;
    while (ok.size < workers && Date.now() < deadline) {
      try {
        const r = await request(s.port, { path: '/health', agent: false, timeout: 1000 });
        const h = JSON.parse(r.text);
        if (h.db?.status === 'ok') ok.add(h.worker);
        else await sleep(20);
      } catch {
        await sleep(20);
      }
    }
  }
  return s;
}

/**
 * One request to the native API: `body` an object (JSON) or a string (sent
 * as is); `token` adds Authorization: Bearer. Returns request()'s result
 * with `j` = the parsed body (or null when it is not JSON).
 */
export async function api(port, method, path, { token, body, headers = {}, timeout = 10000 } = {}) {
  const h = { ...headers };
  let data;
  if (body !== undefined) {
    data = typeof body === 'string' ? body : JSON.stringify(body);
    h['content-type'] ??= 'application/json';
    h['content-length'] = Buffer.byteLength(data);
  }
  if (token) h.authorization = `Bearer ${token}`;
  const res = await request(port, { method, path, headers: h, body: data, timeout });
  try {
    res.j = JSON.parse(res.text);
  } catch {
    res.j = null;
  }
  return res;
}

let seq = 0;
/** A unique email for this process. */
export const uniqueEmail = (tag = 'u') => `${tag}${process.pid}.${Date.now()}.${++seq}@example.test`;

/** Registers and logs in a new user: {email, password, userId, token}. */
export async function newUser(port, { email = uniqueEmail(), password = 'correct horse battery' } = {}) {
  const reg = await api(port, 'POST', '/api/v1/auth/register', { body: { email, password } });
  if (reg.status !== 201) throw new Error(`register ${email}: ${reg.status} ${reg.text}`);
  const log = await api(port, 'POST', '/api/v1/auth/login', { body: { email, password } });
  if (log.status !== 200) throw new Error(`login ${email}: ${log.status} ${log.text}`);
  return { email, password, userId: reg.j.data.user_id, token: log.j.data.access_token };
}

// ---- JWTs by hand -------------------------------------------------------------

export const b64url = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

/** header.payload signed with HS256 under `secret` (header and payload are objects). */
export function signJwt(payload, secret = JWT_SECRET, header = { alg: 'HS256', typ: 'JWT' }) {
  const input = `${b64url(header)}.${b64url(payload)}`;
  const sig = createHmac('sha256', secret).update(input).digest('base64url');
  return `${input}.${sig}`;
}

// ---- SSE ------------------------------------------------------------------------

/**
 * Parses an SSE body into [{event, data}] (data parsed as JSON when it is),
 * plus `comments` (": ping" lines). Throws on a block that is neither.
 */
export function parseSse(text) {
  const events = [];
  const comments = [];
  for (const block of text.split('\n\n')) {
    if (!block) continue;
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line);
      else if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      else if (line) throw new Error(`unexpected SSE line ${JSON.stringify(line)} in ${JSON.stringify(block)}`);
    }
    if (!data.length) continue;
    const raw = data.join('\n');
    let parsed;
    try {
      parsed = JSON.parse(raw);
    } catch {
      parsed = raw;
    }
    events.push({ event, data: parsed });
  }
  return { events, comments };
}

/**
 * A streamed turn (POST `path` with stream: true unless the body says
 * otherwise), read to the end. Returns {status, headers, text, events,
 * start, tokens, text: concatenated tokens, done, error}.
 */
export async function streamTurn(port, path, body, { token, timeout = 20000, headers = {} } = {}) {
  const res = await api(port, 'POST', path, { token, body: { stream: true, ...body }, headers, timeout });
  const out = { status: res.status, headers: res.headers, raw: res.text, res };
  if (!/^text\/event-stream/.test(res.headers['content-type'] || '')) return out;
  const { events } = parseSse(res.text);
  out.events = events;
  out.start = events.find((e) => e.event === 'start')?.data;
  out.tokens = events.filter((e) => e.event === 'token').map((e) => e.data.token);
  out.answer = out.tokens.join('');
  out.done = events.find((e) => e.event === 'done')?.data;
  out.error = events.find((e) => e.event === 'error')?.data;
  return out;
}

/**
 * A streamed turn read incrementally: resolves at once with a handle
 * {events, tokens(), waitFor(pred, ms, what), destroy(), finished, status}
 * where `finished` resolves when the response ends (or the socket closes).
 */
export function openStream(port, path, body, { token, headers = {} } = {}) {
  const data = JSON.stringify({ stream: true, ...body });
  const h = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  const handle = {
    status: null,
    buf: '',
    events: [],
    ended: false,
    error: null,
    waiters: new Set(),
    tokens() {
      return this.events.filter((e) => e.event === 'token').map((e) => e.data.token);
    },
    notify() {
      for (const w of [...this.waiters]) w();
    },
    waitFor(pred, ms, what) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (pred(this)) {
            clearTimeout(timer);
            this.waiters.delete(check);
            resolve();
          } else if (this.ended) {
            clearTimeout(timer);
            this.waiters.delete(check);
            reject(new Error(`stream ended before ${what}; status ${this.status}; received ${JSON.stringify(this.buf.slice(0, 400))}`));
          }
        };
        const timer = setTimeout(() => {
          this.waiters.delete(check);
          reject(new Error(`timed out after ${ms} ms waiting for ${what}; ${this.events.length} events so far`));
        }, ms);
        this.waiters.add(check);
        check();
      });
    },
  };
  const req = http.request({ host: HOST, port, method: 'POST', path, headers: h, agent: false });
  handle.req = req;
  handle.finished = new Promise((resolve) => {
    const end = (err) => {
      if (handle.ended) return;
      handle.ended = true;
      handle.error ??= err || null;
      handle.notify();
      resolve(handle);
    };
    req.on('response', (res) => {
      handle.status = res.statusCode;
      handle.headers = res.headers;
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        handle.buf += chunk;
        let i;
        while ((i = handle.buf.indexOf('\n\n')) >= 0) {
          const block = handle.buf.slice(0, i + 2);
          handle.buf = handle.buf.slice(i + 2);
          handle.events.push(...parseSse(block).events);
        }
        handle.notify();
      });
      res.on('end', () => end(null));
      res.on('error', end);
      res.on('close', () => end(null));
    });
    req.on('error', end);
    req.on('close', () => end(null));
  });
  handle.destroy = () => req.destroy();
  req.end(data);
  return handle;
}

/** Polls `fn` (async) until it returns a truthy value; throws with `what` and the last value after `ms`. */
export async function eventually(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    }
    await sleep(50);
  }
}

/** Asserts `obj` has every key of `keys` (more may follow: fields are added over time). */
export function assertKeys(assert, obj, keys, what = 'object') {
  const missing = keys.filter((k) => !(k in obj));
  assert.deepEqual(missing, [], `${what} lacks ${missing.join(', ')}: ${JSON.stringify(obj).slice(0, 300)}`);
}
