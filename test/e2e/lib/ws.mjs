// A WebSocket client for the end-to-end tests (the `ws` package, as users
// call us): it records every message, the close and a refused upgrade;
// every wait is bounded.
import WebSocket from 'ws';
import { HOST, withTimeout } from './server.mjs';

// ---- a WebSocket client that records everything ---------------------------------

let sidSeq = 0;
export const newSid = (tag = 's') => `${tag}-${process.pid}-${Date.now()}-${++sidSeq}`;

/**
 * Opens ws://127.0.0.1:port/ws/chat (token in ?token= unless `bearer`).
 * The handle records every message (parsed JSON, or {raw} if not JSON), the
 * close {code, reason}, a refused upgrade {status, body} and errors;
 * waitFor(pred, ms, what) is bounded.
 */
export function openWs(port, { token, bearer = false, path = '/ws/chat', autoPong = true } = {}) {
  const q = token && !bearer ? `?token=${encodeURIComponent(token)}` : '';
  const headers = token && bearer ? { authorization: `Bearer ${token}` } : {};
  const ws = new WebSocket(`ws://${HOST}:${port}${path}${q}`, {
    headers,
    perMessageDeflate: false,
    handshakeTimeout: 10000,
    autoPong,
  });
  const h = {
    ws,
    msgs: [],
    open: false,
    closed: null, // {code, reason, at}
    refused: null, // {status, headers, body}
    error: null,
    waiters: new Set(),
    notify() {
      for (const w of [...this.waiters]) w();
    },
    of(sid) {
      return this.msgs.filter((m) => m.session_id === sid);
    },
    tokens(sid) {
      return this.of(sid).filter((m) => m.type === 'token').map((m) => m.token);
    },
    send(obj) {
      ws.send(typeof obj === 'string' || Buffer.isBuffer(obj) ? obj : JSON.stringify(obj));
    },
    waitFor(pred, ms, what) {
      return new Promise((resolve, reject) => {
        const check = () => {
          let v;
          try {
            v = pred(this);
          } catch (e) {
            v = false;
          }
          if (v) {
            clearTimeout(timer);
            this.waiters.delete(check);
            resolve(v);
          } else if (this.closed || this.refused || (this.error && !this.open)) {
            // one last chance: the predicate may be about the close itself
            clearTimeout(timer);
            this.waiters.delete(check);
            reject(new Error(`socket ended before ${what}: closed ${JSON.stringify(this.closed)} refused ${JSON.stringify(this.refused)} error ${this.error?.message}; last messages ${JSON.stringify(this.msgs.slice(-5)).slice(0, 800)}`));
          }
        };
        const timer = setTimeout(() => {
          this.waiters.delete(check);
          reject(new Error(`timed out after ${ms} ms waiting for ${what}; ${this.msgs.length} messages, last ${JSON.stringify(this.msgs.slice(-3)).slice(0, 600)}; closed ${JSON.stringify(this.closed)}`));
        }, ms);
        this.waiters.add(check);
        check();
      });
    },
    /** Waits for the close (any code); resolves {code, reason}. */
    waitClose(ms, what = 'the close') {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => {
            if (this.closed || this.refused) {
              this.waiters.delete(check);
              resolve(this.closed);
            }
          };
          this.waiters.add(check);
          check();
        }),
        ms,
        `${what}; messages ${JSON.stringify(this.msgs.slice(-3)).slice(0, 400)}`,
      );
    },
    terminate() {
      try {
        ws.terminate();
      } catch {}
    },
  };
  ws.on('open', () => {
    h.open = true;
    h.notify();
  });
  ws.on('message', (data, isBinary) => {
    const text = data.toString('utf8');
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      m = { raw: text, isBinary };
    }
    h.msgs.push(m);
    h.notify();
  });
  h.pings = 0;
  ws.on('ping', () => h.pings++);
  ws.on('close', (code, reason) => {
    h.closed = { code, reason: reason.toString(), at: Date.now() };
    h.notify();
  });
  ws.on('error', (e) => {
    h.error ??= e;
    h.notify();
  });
  ws.on('unexpected-response', (req, res) => {
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    const done = () => {
      if (h.refused) return;
      h.refused = { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') };
      h.notify();
      req.destroy();
    };
    res.on('end', done);
    res.on('close', done);
    res.on('error', done);
  });
  return h;
}

/** Opens a socket and waits for `connected`. */
export async function connect(port, opts = {}, ms = 5000) {
  const h = openWs(port, opts);
  await h.waitFor((x) => x.msgs.find((m) => m.type === 'connected'), ms, 'connected');
  return h;
}

