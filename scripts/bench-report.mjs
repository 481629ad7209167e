// bench-report.mjs ROWS.jsonl OUT.json CORES SECONDS — the table of `make bench`
// (scripts/bench.sh): one row per chatbench run plus the four answers SPEC §9
// asks for, printed and written as JSON.
import { readFileSync, writeFileSync } from 'node:fs';

const [rowsFile, outFile, cores, seconds] = process.argv.slice(2);
const rows = readFileSync(rowsFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const byId = Object.fromEntries(rows.map((r) => [r.id, r]));

const f = (v, d = 1) => (v === undefined || v === null || Number.isNaN(v) ? '-' : Number(v).toFixed(d));
const errorsOf = (cb) => Object.entries(cb.errors || {}).map(([k, v]) => `${k}:${v.count}`).join(' ') || '0';
const cpuPer1k = (r) => (r.cpu_s > 0 && r.chatbench.turns_ok > 0 ? (r.cpu_s * 1000) / r.chatbench.turns_ok : null);
const dbPer1k = (r) => (r.db_cpu_s !== undefined && r.chatbench.turns_ok > 0 ? (r.db_cpu_s * 1000) / r.chatbench.turns_ok : null);

const head = ['scenario', 'turns/s', 'tokens/s', 'TTFT p50/p99 ms', 'gap p50/p99 ms', 'errors', 'CPU s/1k turns', 'DB CPU s/1k', 'peak RSS MB'];
const table = rows.map((r) => {
  const cb = r.chatbench;
  const L = cb.latency_ms;
  const idle = cb.idle;
  return [
    `(${r.id}) ${r.name}`,
    idle ? `${cb.connections_ready} open` : f(cb.turns_per_s, 0),
    idle ? '' : f(cb.tokens_per_s, 0),
    idle ? '' : `${f(L.ttft.p50, 2)} / ${f(L.ttft.p99, 2)}`,
    idle ? '' : `${f(L.gap.p50, 2)} / ${f(L.gap.p99, 2)}`,
    `${errorsOf(cb)}${cb.connections_failed ? ` conn:${cb.connections_failed}` : ''}`,
    cpuPer1k(r) === null ? '' : f(cpuPer1k(r), 3),
    dbPer1k(r) === null ? '' : f(dbPer1k(r), 3),
    r.peak_rss_kb ? f(r.peak_rss_kb / 1024, 1) : '',
  ];
});
const widths = head.map((h, i) => Math.max(h.length, ...table.map((t) => String(t[i]).length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');

const summary = {};
const s1 = byId['1'], s1b = byId['1b'], s1c = byId['1c'];
if (s1 && s1c && cpuPer1k(s1c)) {
  summary.relay_cpu_vs_nginx = cpuPer1k(s1) / cpuPer1k(s1c);
  if (s1b) summary.passthrough_cpu_vs_nginx = cpuPer1k(s1b) / cpuPer1k(s1c);
}
const s2 = byId['2'], s2d = byId['2d'];
if (s2) {
  const pace = s2.pace_ms;
  summary.paced_streams = s2.chatbench.sessions;
  summary.paced_added_gap_ms = { p50: s2.chatbench.latency_ms.gap.p50 - pace, p99: s2.chatbench.latency_ms.gap.p99 - pace };
  if (s2d) summary.paced_baseline_added_gap_ms = { p50: s2d.chatbench.latency_ms.gap.p50 - pace, p99: s2d.chatbench.latency_ms.gap.p99 - pace };
  if (s2.cpu_s) summary.paced_cpu_share_of_one_core = s2.cpu_s / s2.chatbench.elapsed_s;
}
const s3 = byId['3'];
if (s3 && s3.open_at_sample > 0) {
  summary.idle_connections = s3.open_at_sample;
  summary.idle_rss_bytes_per_connection = ((s3.held_rss_kb - s3.baseline_rss_kb) * 1024) / s3.open_at_sample;
}
const s4 = byId['4'], s4b = byId['4b'], s4d = byId['4d'];
if (s4d) {
  const d = s4d.chatbench.latency_ms.ttft;
  if (s4) summary.ttft_added_ms_ws = { p50: s4.chatbench.latency_ms.ttft.p50 - d.p50, p99: s4.chatbench.latency_ms.ttft.p99 - d.p99 };
  if (s4b) summary.ttft_added_ms_passthrough = { p50: s4b.chatbench.latency_ms.ttft.p50 - d.p50, p99: s4b.chatbench.latency_ms.ttft.p99 - d.p99 };
  const added = (r) => r && { p50: r.chatbench.latency_ms.ttft.p50 - d.p50, p99: r.chatbench.latency_ms.ttft.p99 - d.p99 };
  if (byId['4k']) summary.ttft_added_ms_ws_api_key = added(byId['4k']);
  if (byId['4bk']) summary.ttft_added_ms_passthrough_api_key = added(byId['4bk']);
  if (byId['4u']) summary.ttft_added_ms_ws_many_users = added(byId['4u']);
}

const date = new Date().toISOString();
console.log(`chatloop make bench — ${date.slice(0, 10)}, ${cores} cores, ${seconds} s`);
console.log(line(head));
for (const t of table) console.log(line(t));
console.log('');
const pp = (o) => (o ? `p50 ${f(o.p50, 2)} ms, p99 ${f(o.p99, 2)} ms` : '-');
if (summary.relay_cpu_vs_nginx !== undefined)
  console.log(`(1) CPU per turn vs nginx: chat turns ${f(summary.relay_cpu_vs_nginx, 2)}x, pass-through ${f(summary.passthrough_cpu_vs_nginx, 2)}x (goal: within 2x)`);
if (summary.paced_added_gap_ms)
  console.log(`(2) added gap between tokens at ${summary.paced_streams} streams: ${pp(summary.paced_added_gap_ms)} (goal p99 <= 5 ms); straight to the mock: ${pp(summary.paced_baseline_added_gap_ms)}; chatloop used ${f(100 * (summary.paced_cpu_share_of_one_core || 0), 0)}% of one core`);
if (summary.idle_rss_bytes_per_connection !== undefined)
  console.log(`(3) RSS per idle WebSocket at ${summary.idle_connections} connections: ${f(summary.idle_rss_bytes_per_connection, 0)} bytes (goal <= 1024)`);
if (summary.ttft_added_ms_ws)
  console.log(`(4) added time to first token: WebSocket turns ${pp(summary.ttft_added_ms_ws)}; pass-through ${pp(summary.ttft_added_ms_passthrough)} (goal p99 <= 0.5 ms)`);
if (summary.ttft_added_ms_ws_api_key)
  console.log(`(4k) the same with an API key: WebSocket turns ${pp(summary.ttft_added_ms_ws_api_key)}; pass-through ${pp(summary.ttft_added_ms_passthrough_api_key)}`);
if (summary.ttft_added_ms_ws_many_users)
  console.log(`(4u) the same spread over many users: WebSocket turns ${pp(summary.ttft_added_ms_ws_many_users)}`);
writeFileSync(outFile, JSON.stringify({ date, cores: Number(cores), seconds: Number(seconds), rows, summary }, null, 2) + '\n');
console.log(`\nwritten: ${outFile}`);
