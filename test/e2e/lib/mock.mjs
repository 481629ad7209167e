// Starting and talking to chatloop-mock (the fake OpenAI/Groq upstream) from
// end-to-end tests: a free port, spawn, wait until /health answers, stop
// with SIGTERM (SIGKILL if it hangs), plus helpers for its SSE answers.
// Node built-ins only; every wait is bounded.
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const MOCK_BIN = process.env.CHATLOOP_MOCK_BIN || path.resolve(here, '../../../build/chatloop-mock');
const HOST = '127.0.0.1';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The text of an answer of n tokens (see include/chatloop/mock_text.h). */
export function mockText(n) {
  return Array.from({ length: n }, (_, i) => `tok${i + 1}`).join(' ');
}

/** The tokens themselves, as streamed: "tok1", " tok2", ... */
export function mockTokens(n) {
  return Array.from({ length: n }, (_, i) => (i ? ' ' : '') + `tok${i + 1}`);
}

/** prompt_tokens the mock reports: bytes of message text / 4 + 1. */
export function mockPromptTokens(messages) {
  let bytes = 0;
  for (const m of messages) {
    if (typeof m.content === 'string') bytes += Buffer.byteLength(m.content);
    else if (Array.isArray(m.content))
      for (const p of m.content) if (typeof p.text === 'string') bytes += Buffer.byteLength(p.text);
  }
  return Math.floor(bytes / 4) + 1;
}

/** Splits an SSE body into its `data:` payloads (strings), in order. */
export function sseData(text) {
  const out = [];
  for (const block of text.split('\n\n')) {
    const lines = block.split('\n').filter((l) => l.startsWith('data:'));
    if (lines.length) out.push(lines.map((l) => l.slice(5).replace(/^ /, '')).join('\n'));
  }
  return out;
}

function freePort() {
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

const live = new Set();
process.on('exit', () => {
  for (const m of live) {
    try {
      process.kill(m.pid, 'SIGKILL');
    } catch {}
  }
});

export class Mock {
  constructor() {
    this.stderr = '';
    this.stdout = '';
    this.exited = null;
  }

  get url() {
    return `http://${HOST}:${this.port}`;
  }

  /** The base URL an OpenAI client (or chatloop's base_url) uses. */
  get baseUrl() {
    return `${this.url}/v1`;
  }

  logTail(n = 3000) {
    const all = this.stderr + (this.stdout ? '\n[stdout]\n' + this.stdout : '');
    return all.length > n ? '...' + all.slice(-n) : all;
  }

  async stats() {
    const r = await fetch(`${this.url}/_mock/stats`);
    if (r.status !== 200) throw new Error(`/_mock/stats answered ${r.status}`);
    return r.json();
  }

  async requests(query = '') {
    const r = await fetch(`${this.url}/_mock/requests${query}`);
    if (r.status !== 200) throw new Error(`/_mock/requests answered ${r.status}`);
    return r.json();
  }

  async clearRequests() {
    await fetch(`${this.url}/_mock/requests`, { method: 'DELETE' });
  }

  /** Polls /_mock/stats until pred(stats) holds; throws after `ms`. */
  async waitStats(pred, ms = 5000, what = 'mock stats') {
    const deadline = Date.now() + ms;
    let s;
    for (;;) {
      s = await this.stats();
      if (pred(s)) return s;
      if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${JSON.stringify(s)}`);
      await sleep(20);
    }
  }

  /** SIGTERM, then SIGKILL after `ms`. Resolves {code, signal}; throws if it had to be killed. */
  async stop(ms = 5000) {
    if (this.exited) return this.exited;
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {}
    let timer;
    const killed = await Promise.race([
      this.exitPromise.then(() => false),
      new Promise((r) => {
        timer = setTimeout(() => r(true), ms);
      }),
    ]);
    clearTimeout(timer);
    if (killed) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {}
      await this.exitPromise;
      throw new Error(`chatloop-mock did not exit within ${ms} ms of SIGTERM; killed it\n${this.logTail()}`);
    }
    return this.exited;
  }
}

/**
 * Starts chatloop-mock on a free port and waits for GET /health.
 * `opts` are flags, camelCase or dashed: {mockTokens: 5, mockTokenInterval: 0}.
 */
export async function startMock(opts = {}, { readyMs = 10000, env = {} } = {}) {
  const m = new Mock();
  m.port = await freePort();
  const args = ['--listen', `${HOST}:${m.port}`, '--log-level', 'warn'];
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || v === null) continue;
    args.push('--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), String(v));
  }
  m.args = args;
  const child = spawn(MOCK_BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  m.child = child;
  m.pid = child.pid;
  live.add(m);
  child.stdout.setEncoding('utf8').on('data', (d) => (m.stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (m.stderr += d));
  m.exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      m.exited = { code, signal };
      live.delete(m);
      resolve(m.exited);
    });
    child.on('error', (err) => {
      m.stderr += `\nspawn error: ${err.message}`;
      m.exited = { code: -1, signal: null, error: err };
      live.delete(m);
      resolve(m.exited);
    });
  });
  const deadline = Date.now() + readyMs;
  for (;;) {
    if (m.exited) throw new Error(`chatloop-mock exited during startup (${JSON.stringify(m.exited)}): ${args.join(' ')}\n${m.logTail()}`);
    try {
      const r = await fetch(`${m.url}/health`, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch {}
    if (Date.now() > deadline) {
      await m.stop(2000).catch(() => {});
      throw new Error(`chatloop-mock did not answer /health within ${readyMs} ms\n${m.logTail()}`);
    }
    await sleep(30);
  }
  return m;
}
