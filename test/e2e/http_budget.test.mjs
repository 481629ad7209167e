// A stranger with sockets must not exhaust a worker's memory: bodies must
// arrive whole within body_total_timeout, and everything held for clients
// (bodies, partial WebSocket messages, queued output) stays within
// max_buffered_bytes — past it the greediest peer is refused or dropped,
// never the process. Every wait is bounded.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before } from 'node:test';
import { HOST, get, makeTest, sleep, startServer } from './lib/server.mjs';

let srv, slow;
const test = makeTest(() => [srv, slow]);
const BUDGET = 32 * 1024 * 1024;

before(async () => {
  // Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
  // default) and would show in RSS as if held: keep it small here.
  const asan = { ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=1'].filter(Boolean).join(':') };
  srv = await startServer({ workers: 1, maxBufferedBytes: '32MiB' }, { env: asan });
  slow = await startServer({ workers: 1, bodyTimeout: '1s', bodyTotalTimeout: '2s' });
});
after(async () => {
  await srv?.stop();
  await slow?.stop();
});

const rssOf = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const metric = async (s, name) => {
  const text = (await get(s.port, '/metrics')).text;
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : null;
};

/** Opens a socket, sends `head` and `bodyBytes` of body (of a longer declared one) and keeps it open. */
function holdOpen(port, head, bodyBytes) {
  return new Promise((resolve) => {
    const s = net.connect(port, HOST);
    s.answer = '';
    s.on('data', (d) => (s.answer += d));
    s.on('error', () => {});
    s.on('close', () => (s.closedAt = Date.now()));
    s.on('connect', () => {
      s.write(head);
      const chunk = Buffer.alloc(64 * 1024, 'x');
      let left = bodyBytes;
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, chunk.length);
          left -= n;
          if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            s.once('drain', pump);
            return;
          }
        }
        resolve(s);
      };
      pump();
    });
    setTimeout(() => resolve(s), 5000);
  });
}

test('300 unfinished 1 MiB bodies on a public route: the worker stays within max_buffered_bytes; the greediest get 503', { timeout: 60000 }, async () => {
  const pid = (await get(srv.port, '/health')).json().pid;
  const base = rssOf(pid);
  const len = 1024 * 1024 - 100;
  const head = `POST /api/v1/debug/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${len}\r\n\r\n`;
  const socks = [];
  for (let i = 0; i < 300; i += 30) {
    socks.push(...(await Promise.all(Array.from({ length: 30 }, () => holdOpen(srv.port, head, len - 100)))));
  }
  await sleep(500);
  const held = await metric(srv, 'chatloop_buffered_bytes');
  const rss = rssOf(pid);
  // refused with 503 (the newest, when it is the greediest) or dropped (an older, greedier one)
  const refused = socks.filter((s) => /^HTTP\/1\.1 503 /.test(s.answer) || s.closedAt).length;
  const answered503 = socks.filter((s) => /^HTTP\/1\.1 503 /.test(s.answer)).length;
  for (const s of socks) s.destroy();
  assert.ok(held <= BUDGET, `chatloop_buffered_bytes ${held} > ${BUDGET}`);
  assert.ok(rss - base < BUDGET + 24 * 1024 * 1024, `worker RSS grew by ${((rss - base) / 1048576).toFixed(1)} MiB (budget 32 MiB)`);
  assert.ok(refused >= 200, `refused or dropped: ${refused} of 300`);
  assert.ok(answered503 >= 1, 'a refused peer hears 503');
  const drops = await metric(srv, 'chatloop_buffer_budget_drops_total');
  assert.ok(drops >= refused, `budget drops ${drops}`);
  // the worker serves on, and gives the bytes back once the peers are gone
  await sleep(300);
  assert.equal((await get(srv.port, '/health')).status, 200);
  assert.equal(await metric(srv, 'chatloop_buffered_bytes'), 0);
});

test('body_total_timeout: a body trickling one byte at a time (each gap under body_timeout) is cut with 408', { timeout: 20000 }, async () => {
  const s = net.connect(slow.port, HOST);
  let answer = '';
  s.on('data', (d) => (answer += d));
  s.on('error', () => {});
  await new Promise((r) => s.on('connect', r));
  s.write('POST /api/v1/debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n');
  const t0 = Date.now();
  const timer = setInterval(() => s.write('x'), 400);
  await new Promise((r) => {
    const check = setInterval(() => {
      if (answer || Date.now() - t0 > 8000) {
        clearInterval(check);
        r();
      }
    }, 50);
  });
  clearInterval(timer);
  s.destroy();
  assert.match(answer, /^HTTP\/1\.1 408 /);
  assert.match(answer, /body_total_timeout/);
  const took = Date.now() - t0;
  assert.ok(took >= 1800 && took < 3500, `408 after ${took} ms (body_total_timeout 2 s)`);
});

/** A masked client frame (mask key 0: the payload goes as is). */
function wsFrame(opcode, fin, payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([opcode | (fin ? 0x80 : 0), 0x80 | n])
    : n < 65536 ? Buffer.from([opcode | (fin ? 0x80 : 0), 0x80 | 126, n >> 8, n & 255])
    : Buffer.concat([Buffer.from([opcode | (fin ? 0x80 : 0), 0x80 | 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
  return Buffer.concat([head, Buffer.alloc(4), payload]);
}

/** Upgrades a raw socket on /ws/chat and sends 15 fragments of 64 KiB of one text message, never the last. */
function holdWsMessage(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, HOST);
    s.answer = '';
    s.on('error', () => {});
    s.on('close', () => (s.closedAt = Date.now()));
    s.on('data', (d) => {
      const first = !s.answer;
      s.answer += d.toString('latin1');
      if (first && /^HTTP\/1\.1 101 /.test(s.answer)) {
        const part = Buffer.alloc(64 * 1024, 'a');
        for (let i = 0; i < 15; i++) s.write(wsFrame(i === 0 ? 1 : 0, false, part));
        setTimeout(() => resolve(s), 50);
      }
    });
    s.on('connect', () =>
      s.write(`GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`));
    setTimeout(() => resolve(s), 5000);
  });
}

test('300 WebSockets each holding an unfinished 960 KiB message: the worker stays within max_buffered_bytes', { timeout: 60000 }, async () => {
  const pid = (await get(srv.port, '/health')).json().pid;
  const base = rssOf(pid);
  const socks = [];
  for (let i = 0; i < 300; i += 30) socks.push(...(await Promise.all(Array.from({ length: 30 }, () => holdWsMessage(srv.port)))));
  await sleep(500);
  const held = await metric(srv, 'chatloop_buffered_bytes');
  const rss = rssOf(pid);
  const upgraded = socks.filter((s) => /^HTTP\/1\.1 101 /.test(s.answer)).length;
  const dropped = socks.filter((s) => s.closedAt).length;
  for (const s of socks) s.destroy();
  assert.ok(upgraded >= 290, `upgraded: ${upgraded}`);
  assert.ok(held <= BUDGET, `chatloop_buffered_bytes ${held} > ${BUDGET}`);
  assert.ok(rss - base < BUDGET + 48 * 1024 * 1024, `worker RSS grew by ${((rss - base) / 1048576).toFixed(1)} MiB (budget 32 MiB)`);
  assert.ok(dropped >= 200, `dropped: ${dropped} of 300`);
  await sleep(300);
  assert.equal((await get(srv.port, '/health')).status, 200);
  assert.equal(await metric(srv, 'chatloop_buffered_bytes'), 0);
});
