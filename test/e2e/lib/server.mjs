// Shared helpers for the end-to-end tests: start/stop a chatloop server on a
// free port, raw-socket HTTP/1.1 clients that see the exact bytes, and small
// parsers for responses and Prometheus text. Node built-ins only.
//
// Every wait here is bounded: a misbehaving server makes a test fail with a
// message, never hang.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.CHATLOOP_BIN || path.resolve(here, '../../../build/chatloop');
export const HOST = '127.0.0.1';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects with `what` if `p` has not settled within `ms`. */
export function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A TCP port that was free a moment ago (bind 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * The environment a server or CLI run gets: ours minus every CHATLOOP_*
 * variable (the server refuses unknown ones, and CHATLOOP_BIN is ours) and
 * the conventional GROQ_API_KEY / DATABASE_URL, plus `extra`. A value of
 * undefined in `extra` leaves the variable out.
 */
export function serverEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('CHATLOOP_') || k === 'GROQ_API_KEY' || k === 'DATABASE_URL') continue;
    env[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

// ---- process bookkeeping: no server outlives the test file -----------------

const live = new Set(); // Server objects whose supervisor has not exited

function killGroup(pid, sig) {
  try {
    process.kill(-pid, sig); // the server runs in its own process group
    return true;
  } catch {
    return false;
  }
}

process.on('exit', () => {
  for (const s of live) killGroup(s.pid, 'SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    for (const s of live) killGroup(s.pid, 'SIGKILL');
    process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
  });
}

/** Turns {workers: 2, headerTimeout: '1s'} into ['--workers', '2', '--header-timeout', '1s']. */
function optsToArgs(opts) {
  const args = [];
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || v === null) continue;
    args.push('--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), String(v));
  }
  return args;
}

const RESTARTED = /worker \d+ \(pid \d+\) .*restarting/;
const PROBLEMS = [/ERROR: AddressSanitizer/, /ERROR: LeakSanitizer/, /runtime error:/, RESTARTED];

export class Server {
  constructor() {
    this.stderr = '';
    this.stdout = '';
    this.exited = null; // {code, signal} once the supervisor exited
    this.allowRestarts = false; // set by a test that kills workers on purpose
    this.tmp = mkdtempSync(path.join(tmpdir(), 'chatloop-e2e-'));
  }

  /** The last `n` characters of the server's output, for failure messages. */
  logTail(n = 3000) {
    const all = this.stderr + (this.stdout ? '\n[stdout]\n' + this.stdout : '');
    return all.length > n ? '...' + all.slice(-n) : all;
  }

  /** Resolves with {code, signal} when the supervisor exits (or at once). */
  waitExit(ms, what = 'server exit') {
    return withTimeout(this.exitPromise, ms, what);
  }

  /**
   * SIGTERM, wait for the exit, SIGKILL the whole group if it takes longer
   * than `ms`. Returns {code, signal}; throws (after cleaning up) if the
   * server had to be killed or left processes behind.
   */
  async stop(ms = 10000) {
    try {
      if (!this.exited) {
        try {
          process.kill(this.pid, 'SIGTERM');
        } catch {}
        try {
          await this.waitExit(ms, `server pid ${this.pid} exit after SIGTERM`);
        } catch (e) {
          killGroup(this.pid, 'SIGKILL');
          await this.waitExit(5000, 'server exit after SIGKILL').catch(() => {});
          throw new Error(`${e.message}; killed it\n--- server output ---\n${this.logTail()}`);
        }
      }
      // The supervisor reaps its workers before it exits: nothing may be left.
      await sleep(20);
      if (killGroup(this.pid, 0)) {
        killGroup(this.pid, 'SIGKILL');
        throw new Error(`processes of server group ${this.pid} outlived the supervisor (killed them)`);
      }
      // A worker that crashed and was quietly restarted, or a sanitizer
      // report, fails the file even if every request looked fine.
      const problem = PROBLEMS.find((re) => re.test(this.stderr));
      if (problem && !(this.allowRestarts && problem === RESTARTED)) {
        throw new Error(`server output matches ${problem}:\n${this.logTail()}`);
      }
      return this.exited;
    } finally {
      rmSync(this.tmp, { recursive: true, force: true });
    }
  }
}

/**
 * Starts chatloop with an empty config file (so conf/chatloop.conf does not
 * matter), on a free 127.0.0.1 port, and waits until GET /health answers.
 * `opts` are config keys as flags (camelCase or dashed), e.g.
 * {workers: 2, headerTimeout: '1s'}. With `readyLog` (a RegExp) it waits for
 * that on stderr instead, without connecting at all.
 */
export async function startServer(opts = {}, { env = {}, readyMs = 10000, config = '', readyLog } = {}) {
  const s = new Server();
  s.port = await freePort();
  s.config = path.join(s.tmp, 'chatloop.conf');
  writeFileSync(s.config, config);
  // auth and limits off unless a test asks: most tests are about other
  // things (and register many users from one address); the auth tests pass
  // {auth: 'required', jwtSecret: ...}, the limit tests their limits.
  const all = {
    workers: 1, debugRoutes: 'on', logLevel: 'warn', auth: 'off',
    rateLimitPerMinute: 0, authRateLimitPerMinute: 0, maxTurnsPerUser: 0, ...opts,
  };
  s.args = ['--config', s.config, '--listen', `${HOST}:${s.port}`, ...optsToArgs(all)];
  const child = spawn(BIN, s.args, {
    cwd: s.tmp,
    env: serverEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group: a SIGKILL cleanup reaches the workers
  });
  s.child = child;
  s.pid = child.pid;
  live.add(s);
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => (s.stdout += d));
  child.stderr.on('data', (d) => (s.stderr += d));
  s.exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      s.exited = { code, signal };
      live.delete(s);
      resolve(s.exited);
    });
    child.on('error', (err) => {
      s.stderr += `\nspawn error: ${err.message}`;
      s.exited = { code: -1, signal: null, error: err };
      live.delete(s);
      resolve(s.exited);
    });
  });
  const deadline = Date.now() + readyMs;
  for (;;) {
    if (s.exited) {
      throw new Error(`chatloop exited during startup (${JSON.stringify(s.exited)}): ${s.args.join(' ')}\n${s.logTail()}`);
    }
    if (readyLog) {
      if (readyLog.test(s.stderr)) break;
    } else {
      try {
        const r = await get(s.port, '/health', { timeout: 1000 });
        if (r.status === 200) break;
      } catch {}
    }
    if (Date.now() > deadline) {
      await s.stop(2000).catch(() => {});
      const what = readyLog ? `write ${readyLog} to stderr` : 'answer /health';
      throw new Error(`chatloop did not ${what} within ${readyMs} ms\n${s.logTail()}`);
    }
    await sleep(50);
  }
  return s;
}

/**
 * `test()` that appends the servers' output to a failing test's error, so
 * the TAP report shows what the server said. `servers` returns the Server
 * objects current at call time.
 */
export function makeTest(servers) {
  return (name, opts, fn) => {
    if (typeof opts === 'function') [fn, opts] = [opts, {}];
    return test(name, { timeout: 30000, ...opts }, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        const logs = servers()
          .filter(Boolean)
          .map((s) => `--- chatloop :${s.port} output (tail) ---\n${s.logTail(1500) || '(empty)'}`)
          .join('\n');
        if (e && typeof e === 'object') {
          try {
            // reporters print the stack (which embeds the message) or the message
            if (typeof e.stack === 'string') e.stack = `${e.stack}\n${logs}`;
            e.message = `${e.message}\n${logs}`;
          } catch {}
        }
        throw e;
      }
    });
  };
}

// ---- HTTP through node:http (new connection each time) ---------------------

/** GET/any request with node:http and no agent (a fresh connection). */
export function request(port, { method = 'GET', path: p = '/', headers = {}, body, timeout = 5000, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, method, path: p, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const buf = Buffer.concat(chunks);
        resolve({
          status: res.statusCode,
          headers: res.headers,
          rawHeaders: res.rawHeaders, // names as sent, duplicates apart
          body: buf,
          text: buf.toString('utf8'),
          json() {
            return JSON.parse(buf.toString('utf8'));
          },
          socket: req.socket,
          reusedSocket: req.reusedSocket,
        });
      });
      res.on('error', reject);
    });
    req.setTimeout(timeout, () => req.destroy(new Error(`${method} ${p}: no answer within ${timeout} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export const get = (port, p, o = {}) => request(port, { ...o, path: p });

/** Asserts (by throwing) that a normal request on a new connection works. */
export async function expectServing(port, what = 'server still serves a new connection') {
  let r;
  try {
    r = await get(port, '/health', { timeout: 3000 });
  } catch (e) {
    throw new Error(`${what}: GET /health failed: ${e.message}`);
  }
  if (r.status !== 200) throw new Error(`${what}: GET /health answered ${r.status}: ${r.text}`);
  const j = r.json();
  if (j.status !== 'ok') throw new Error(`${what}: /health body ${r.text}`);
  return j;
}

// ---- raw sockets: exact bytes in, parsed responses out ----------------------

/**
 * Parses one HTTP/1.1 response at the start of `buf`. Returns
 * {res, used} or null if it is not complete yet. `headOnly` (answer to HEAD)
 * means no body; 1xx/204/304 have none either. A response without
 * Content-Length or chunked framing runs to the close, so it is complete only
 * when `closed`.
 */
export function parseResponse(buf, { headOnly = false, closed = false } = {}) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const rawHead = buf.subarray(0, end).toString('latin1');
  const lines = rawHead.split('\r\n');
  const m = /^HTTP\/(\d)\.(\d) (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!m) throw new Error(`bad status line: ${JSON.stringify(lines[0])} in ${JSON.stringify(rawHead.slice(0, 200))}`);
  const status = Number(m[3]);
  const headers = {};
  const headerList = [];
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) throw new Error(`bad header line: ${JSON.stringify(line)}`);
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    headerList.push([name, value]);
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  let pos = end + 4;
  let body;
  const noBody = headOnly || (status >= 100 && status < 200) || status === 204 || status === 304;
  if (noBody) {
    body = Buffer.alloc(0);
  } else if ('transfer-encoding' in headers && /chunked/i.test(headers['transfer-encoding'])) {
    const parts = [];
    for (;;) {
      const le = buf.indexOf('\r\n', pos);
      if (le < 0) return null;
      const size = parseInt(buf.subarray(pos, le).toString('latin1').split(';')[0], 16);
      if (Number.isNaN(size)) throw new Error('bad chunk size');
      pos = le + 2;
      if (size === 0) {
        // trailers until an empty line
        for (;;) {
          const te = buf.indexOf('\r\n', pos);
          if (te < 0) return null;
          const empty = te === pos;
          pos = te + 2;
          if (empty) break;
        }
        break;
      }
      if (buf.length < pos + size + 2) return null;
      parts.push(buf.subarray(pos, pos + size));
      pos += size + 2;
    }
    body = Buffer.concat(parts);
  } else if ('content-length' in headers) {
    const n = Number(headers['content-length']);
    if (!Number.isInteger(n) || n < 0) throw new Error(`bad Content-Length ${headers['content-length']}`);
    if (buf.length < pos + n) return null;
    body = buf.subarray(pos, pos + n);
    pos += n;
  } else {
    if (!closed) return null;
    body = buf.subarray(pos);
    pos = buf.length;
  }
  const res = {
    version: `${m[1]}.${m[2]}`,
    status,
    reason: m[4] || '',
    headers,
    headerList,
    rawHead,
    body: Buffer.from(body),
    get text() {
      return this.body.toString('utf8');
    },
    json() {
      return JSON.parse(this.body.toString('utf8'));
    },
  };
  return { res, used: pos };
}

/** A raw TCP client: write exact bytes, read parsed responses, see the close. */
export class RawConn {
  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.ended = false; // the server sent FIN
    this.closed = false; // the socket is fully closed
    this.error = null; // first socket error (ECONNRESET, EPIPE...)
    this.endedAt = null;
    this.waiters = new Set();
    sock.on('data', (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.notify();
    });
    sock.on('end', () => {
      this.ended = true;
      this.endedAt ??= Date.now();
      this.notify();
    });
    sock.on('error', (e) => {
      this.error ??= e;
      this.notify();
    });
    sock.on('close', () => {
      this.closed = true;
      this.endedAt ??= Date.now();
      this.notify();
    });
  }

  static open(port, { timeout = 5000 } = {}) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: HOST, port });
      sock.setNoDelay(true);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connect to ${HOST}:${port} timed out after ${timeout} ms`));
      }, timeout);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeListener('error', reject);
        resolve(new RawConn(sock));
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  notify() {
    for (const w of [...this.waiters]) w();
  }

  /** True once the server has closed its side (FIN, reset or full close). */
  get gone() {
    return this.ended || this.closed || !!this.error;
  }

  /** Writes; resolves when handed to the kernel. Errors reject. */
  write(data) {
    return new Promise((resolve, reject) => {
      this.sock.write(data, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Writes, swallowing EPIPE/ECONNRESET-style errors (the server may have closed). */
  async writeQuiet(data) {
    try {
      await this.write(data);
      return true;
    } catch {
      return false;
    }
  }

  /** Waits until pred() is true; rejects after `ms` with a description. */
  waitFor(pred, ms, what) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        let ok = false;
        try {
          ok = pred();
        } catch (e) {
          done();
          reject(e);
          return;
        }
        if (ok) {
          done();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; received so far: ${JSON.stringify(this.buf.toString('latin1').slice(0, 600))}, ended=${this.ended}, error=${this.error && this.error.code}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }

  /** Reads and consumes the next complete response. */
  async readResponse({ timeout = 5000, headOnly = false } = {}) {
    let parsed = null;
    await this.waitFor(
      () => {
        parsed = parseResponse(this.buf, { headOnly, closed: this.gone });
        if (parsed) return true;
        if (this.gone) {
          throw new Error(`connection ${this.error ? 'failed (' + this.error.code + ')' : 'closed'} before a complete response; received: ${JSON.stringify(this.buf.toString('latin1').slice(0, 600))}`);
        }
        return false;
      },
      timeout,
      'a complete response',
    );
    this.buf = this.buf.subarray(parsed.used);
    return parsed.res;
  }

  /** Reads `n` responses in order. */
  async readResponses(n, opts) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.readResponse(opts));
    return out;
  }

  /** Resolves when the server closed the connection; rejects after `ms`. */
  waitClosed(ms = 5000) {
    return this.waitFor(() => this.gone, ms, 'the server to close the connection');
  }

  destroy() {
    this.sock.destroy();
  }
}

/** One request on a fresh raw connection; returns the first response. */
export async function rawExchange(port, bytes, { timeout = 5000, headOnly = false } = {}) {
  const c = await RawConn.open(port);
  try {
    await c.writeQuiet(bytes);
    const res = await c.readResponse({ timeout, headOnly });
    return { res, conn: c };
  } catch (e) {
    c.destroy();
    throw e;
  }
}

// ---- envelope and metrics ---------------------------------------------------

/** Checks the error envelope shape; returns the parsed body. */
export function checkErrorEnvelope(assert, res, status, code) {
  assert.equal(res.status, status, `status (body: ${res.text})`);
  assert.match(res.headers['content-type'] || '', /^application\/json/);
  const j = res.json();
  assert.equal(j.success, false);
  assert.equal(typeof j.message, 'string');
  assert.ok(j.message.length > 0, 'message is not empty');
  assert.equal(j.data, null);
  assert.equal(j.error.code, code);
  assert.equal(typeof j.error.details, 'object');
  assert.notEqual(j.error.details, null);
  assert.equal(typeof j.metadata.processing_ms, 'number');
  assert.equal(j.metadata.request_id, res.headers['x-request-id'], 'request_id in body == X-Request-Id header');
  return j;
}

/** Parses Prometheus text into {'name{labels}': number}. */
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!m) throw new Error(`bad metrics line: ${JSON.stringify(line)}`);
    out[m[1]] = Number(m[2]);
  }
  return out;
}

export async function metrics(port) {
  const r = await get(port, '/metrics');
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return parseMetrics(r.text);
}

// ---- running the binary as a command -----------------------------------------

/** Runs chatloop with `args`; resolves {code, signal, stdout, stderr}. Killed after `timeout`. */
export function runCli(args, { env = {}, cwd, timeout = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const dir = cwd || mkdtempSync(path.join(tmpdir(), 'chatloop-cli-'));
    const child = spawn(BIN, args, { cwd: dir, env: serverEnv(env), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGKILL');
    }, timeout);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      killGroup(child.pid, 'SIGKILL'); // a started server's workers, if any
      if (!cwd) rmSync(dir, { recursive: true, force: true });
      if (timedOut) reject(new Error(`chatloop ${args.join(' ')} did not exit within ${timeout} ms; stderr: ${stderr}`));
      else resolve({ code, signal, stdout, stderr });
    });
  });
}
