// Paced WebSocket streams (issue 5's closing numbers): N sockets, each asks
// one question; the upstream (chatloop-mock) sends T tokens at a fixed
// interval. Measures, per token, the gap between consecutive tokens at the
// client minus the upstream's interval — the delay chatloop adds — and
// prints p50/p90/p99/max, plus chatloop's CPU share (utime+stime of the
// worker PIDs given, over the run).
// usage: node test/bench/ws_paced.mjs PORT N INTERVAL_MS TOKENS PID...
// (it finds `ws` in test/node_modules)
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const [port, n, interval, tokens, ...pids] = process.argv.slice(2).map(Number);
const ticks = () => pids.reduce((t, p) => {
  const f = readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
  return t + Number(f[11]) + Number(f[12]);
}, 0);
const gaps = [];
let done = 0, failed = 0;
const t0 = process.hrtime.bigint();
const c0 = ticks();
await new Promise((resolve) => {
  for (let i = 0; i < n; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/chat`);
    let last = 0n;
    ws.on('message', (m) => {
      const j = JSON.parse(m);
      if (j.type === 'connected') ws.send(JSON.stringify({ type: 'query', session_id: `b${i}`, question: 'hi' }));
      else if (j.type === 'token') {
        const now = process.hrtime.bigint();
        if (last) gaps.push(Number(now - last) / 1e6 - interval);
        last = now;
      } else if (j.type === 'complete' || j.type === 'error') {
        if (j.type === 'error') failed++;
        done++;
        ws.close();
        if (done === n) resolve();
      }
    });
    ws.on('error', () => { failed++; done++; if (done === n) resolve(); });
  }
});
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = (ticks() - c0) / 100;
gaps.sort((a, b) => a - b);
const q = (p) => gaps[Math.min(gaps.length - 1, Math.floor(p * gaps.length))].toFixed(2);
console.log(`${n} sockets x ${tokens} tokens at ${interval} ms: ${done - failed} complete, ${failed} failed, ${secs.toFixed(1)} s`);
console.log(`added delay between tokens (ms): p50 ${q(0.5)} p90 ${q(0.9)} p99 ${q(0.99)} max ${gaps[gaps.length - 1].toFixed(2)}`);
console.log(`chatloop CPU: ${cpu.toFixed(2)} s over ${secs.toFixed(1)} s = ${(100 * cpu / secs).toFixed(1)}% of one core`);
process.exit(0);
