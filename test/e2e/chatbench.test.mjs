// chatbench, the load generator (src/bench/), run as users run it: against
// chatloop-mock directly (OpenAI-compatible streaming, every answer checked
// against "tok1 tok2 ... tokN", the mock's faults reported under their error
// codes), against chatloop with PostgreSQL in its three protocols (WebSocket,
// SSE, OpenAI) and idle WebSockets, split over processes (--procs), and its
// command line (--help documents every flag, usage errors exit 2).
// `--json` reports are parsed from stdout; the exit status is 0 only when
// every connection and turn succeeded. Every run is bounded (killed after a
// few seconds), every process is stopped in after(), only 127.0.0.1.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HOST, freePort, makeTest, serverEnv } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { startPg } from './lib/pg.mjs';
import { newUser, startChatServer } from './lib/chat.mjs';
import { stopAll } from './lib/llm.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
// test/run.sh exports CHATLOOP_BIN for the build under test (build/ or
// build-asan/): chatbench is built next to it.
const BENCH_BIN =
  process.env.CHATBENCH_BIN ||
  (process.env.CHATLOOP_BIN
    ? path.join(path.dirname(process.env.CHATLOOP_BIN), 'chatbench')
    : path.resolve(here, '../../build/chatbench'));
const BENCH_MAIN = path.resolve(here, '../../src/bench/main.c');

const MOCK_TOKENS = 50; // the mock's answers are capped by max_tokens (-t)
let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  mock = await startMock({ mockTokens: MOCK_TOKENS, mockTokenInterval: 0, mockFirstToken: 0 });
  pg = await startPg();
  srv = await startChatServer(mock, pg, { auth: 'off', retries: 0 });
});
after(async () => {
  killBenches();
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

// ---- running chatbench -------------------------------------------------------------

const benches = new Set(); // chatbench process groups still running
const SANITIZER = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

function killBenches() {
  for (const pid of benches) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {}
  }
  benches.clear();
}
process.on('exit', killBenches);

/**
 * Runs chatbench with `args`; resolves {code, signal, stdout, stderr, ms,
 * report} (report = the parsed --json report, or null when there is none).
 * It runs in its own process group (--procs forks), which is SIGKILLed after
 * `timeout` ms: a run that does not end fails the test instead of hanging it.
 */
function bench(args, { timeout = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(BENCH_BIN, args, { env: serverEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    benches.add(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, timeout);
    child.on('error', (e) => {
      clearTimeout(timer);
      benches.delete(child.pid);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      // --procs children, should any outlive the parent
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
      benches.delete(child.pid);
      if (timedOut) {
        reject(new Error(`chatbench ${args.join(' ')} did not exit within ${timeout} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
        return;
      }
      // under `make asan` a sanitizer report may exit 1, like a failed run
      if (SANITIZER.test(stderr)) {
        reject(new Error(`chatbench ${args.join(' ')}: sanitizer report\n${stderr}`));
        return;
      }
      let report = null;
      if (args.includes('--json') && stdout.startsWith('{')) {
        try {
          report = JSON.parse(stdout);
        } catch (e) {
          reject(new Error(`chatbench --json printed something that is not JSON (${e.message}): ${stdout}\nstderr: ${stderr}`));
          return;
        }
      }
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0, report });
    });
  });
}

/** Runs chatbench --json and checks its exit status; returns the report. */
async function benchJson(args, wantCode, opts) {
  const r = await bench(['--json', ...args], opts);
  const what = `chatbench ${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.signal, null, `killed by a signal: ${what}`);
  assert.equal(r.code, wantCode, `exit status: ${what}`);
  assert.ok(r.report, `a JSON report: ${what}`);
  assertReportShape(r.report, what);
  return r.report;
}

const HISTS = ['connect', 'ttft', 'gap', 'turn'];

/** The report's fields and their types; counters add up. */
function assertReportShape(j, what) {
  for (const k of ['mode', 'url'])
    assert.equal(typeof j[k], 'string', `${k}: ${what}`);
  for (const k of ['sessions', 'tokens_per_answer', 'rate', 'procs', 'elapsed_s', 'connections_ready',
    'connections_failed', 'connections_lost', 'turns_ok', 'turns_failed', 'tokens', 'bytes_in', 'late_starts',
    'turns_per_s', 'tokens_per_s'])
    assert.equal(typeof j[k], 'number', `${k}: ${what}`);
  assert.equal(typeof j.idle, 'boolean');
  for (const h of HISTS) {
    const x = j.latency_ms[h];
    assert.ok(x, `latency_ms.${h}: ${what}`);
    for (const k of ['count', 'p50', 'p90', 'p99', 'max', 'mean', 'min'])
      assert.equal(typeof x[k], 'number', `latency_ms.${h}.${k}: ${what}`);
    if (x.count > 0) {
      assert.ok(x.min <= x.p50 && x.p50 <= x.p90 && x.p90 <= x.p99 && x.p99 <= x.max,
        `latency_ms.${h}: min <= p50 <= p90 <= p99 <= max: ${JSON.stringify(x)}`);
      assert.ok(x.mean >= x.min - 0.001 && x.mean <= x.max + 0.001, `latency_ms.${h}.mean within [min, max]`);
    }
  }
  assert.equal(typeof j.errors, 'object');
  let errs = 0;
  for (const [code, e] of Object.entries(j.errors)) {
    assert.ok(e.count > 0, `errors.${code}.count`);
    assert.ok(e.example.startsWith(`${code}: `), `errors.${code}.example starts with its code: ${e.example}`);
    errs += e.count;
  }
  // every failed turn and failed connection is counted under one code
  assert.equal(errs, j.turns_failed + j.connections_failed, `errors add up: ${what}`);
}

const mockUrl = () => `http://${HOST}:${mock.port}/v1/chat/completions`;
const errorCodes = (j) => Object.keys(j.errors).sort();

// ---- the command line -----------------------------------------------------------------

test('--help exits 0 and documents every flag; each flag is accepted', async () => {
  const r = await bench(['--help']);
  assert.equal(r.code, 0, r.stderr);
  const help = r.stdout;
  assert.match(help, /^usage: chatbench \[options\] URL/);
  const flags = ['-m', '--mode', '-c', '--sessions', '--connections', '-d', '--duration', '-n', '--turns', '-r',
    '--ramp-up', '-R', '--rate', '--think', '-t', '--tokens', '--conversation-turns', '-q', '--question', '--model',
    '--token', '-H', '--header', '-s', '--source', '--idle', '--timeout', '-p', '--procs', '--json', '-v',
    '--verbose', '-V', '--version', '-h', '--help'];
  // and whatever flag the parser knows that this list does not
  if (existsSync(BENCH_MAIN)) {
    for (const m of readFileSync(BENCH_MAIN, 'utf8').matchAll(/"(--?[a-zA-Z][a-zA-Z-]*)"/g))
      if (!flags.includes(m[1])) flags.push(m[1]);
  }
  for (const f of flags) {
    const re = new RegExp(`(^|[\\s,])${f.replace(/-/g, '\\-')}([\\s,=]|$)`, 'm');
    assert.match(help, re, `--help mentions ${f}`);
  }
  assert.equal((await bench(['-h'])).code, 0);
  const v = await bench(['--version']);
  assert.equal(v.code, 0);
  assert.match(v.stdout, /^chatbench \d+\.\d+\.\d+/);

  // every documented flag parses (the parser stops at --help, exit 0)
  const values = {
    '-m': 'ws', '--mode': 'sse', '-c': '3', '--sessions': '3', '--connections': '3', '-d': '500ms', '--duration': '2s',
    '-n': '5', '--turns': '5', '-r': '1s', '--ramp-up': '0', '-R': '10', '--rate': '0.5', '--think': '10ms', '-t': '7',
    '--tokens': '7', '--conversation-turns': '2', '-q': 'hi', '--question': 'hi', '--model': 'm', '--token': 'jwt',
    '-H': 'X-A: 1', '--header': 'X-B: 2', '-s': '127.0.0.1', '--source': '127.0.0.1-127.0.0.2', '--timeout': '2s',
    '-p': '2', '--procs': '2', '--token-file': tokenFile(['jwt']),
  };
  for (const [f, val] of Object.entries(values)) {
    const x = await bench([f, val, '--help']);
    assert.equal(x.code, 0, `${f} ${val} is accepted: ${x.stderr}`);
  }
  for (const f of ['--idle', '--json', '-v', '--verbose']) {
    const x = await bench([f, '--help']);
    assert.equal(x.code, 0, `${f} is accepted: ${x.stderr}`);
  }
  const eq = await bench(['--sessions=3', '--duration=1s', '--help']);
  assert.equal(eq.code, 0, `--flag=value: ${eq.stderr}`);
});

test('usage errors exit 2 with a message on stderr and nothing run', async () => {
  const url = mockUrl();
  const cases = [
    ['--no-such-flag', url],
    ['-x', url],
    [], // no URL
    [url, url], // two URLs
    ['-c', '0', url],
    ['-c', 'many', url],
    ['-n', '0', url],
    ['-t', '0', url],
    ['-d', '10 parsecs', url],
    ['--timeout', '0', url],
    ['-m', 'grpc', url],
    ['-p', '65', url],
    ['-H', 'no colon', url],
    ['-s', 'not-an-ip', url],
    ['--idle', url], // --idle is for ws only
    ['-c'], // a flag without its value
    ['https://127.0.0.1:1/v1/chat/completions'],
    ['ws://example.com/ws/chat'], // not an IPv4 host
  ];
  const before0 = (await mock.stats()).requests;
  for (const args of cases) {
    const r = await bench(args);
    assert.equal(r.code, 2, `chatbench ${args.join(' ')} exits 2; stderr: ${r.stderr}`);
    assert.match(r.stderr, /^chatbench: /, `a message for ${args.join(' ')}`);
    assert.equal(r.stdout, '', `no report for ${args.join(' ')}`);
  }
  const r = await bench(['--bogus', url]);
  assert.match(r.stderr, /--bogus: unknown option/);
  assert.equal((await mock.stats()).requests, before0, 'no request reached the mock');
});

// ---- straight against chatloop-mock (openai mode) ----------------------------------------

test('mock: -c 4 -n 40 -t 20: 40 checked answers, exit 0', async () => {
  const s0 = await mock.stats();
  const j = await benchJson(['-c', '4', '-n', '40', '-t', '20', mockUrl()], 0);
  assert.equal(j.mode, 'openai');
  assert.equal(j.url, mockUrl());
  assert.equal(j.sessions, 4);
  assert.equal(j.procs, 1);
  assert.equal(j.idle, false);
  assert.equal(j.tokens_per_answer, 20);
  assert.equal(j.turns_ok, 40);
  assert.equal(j.turns_failed, 0);
  assert.equal(j.tokens, 800);
  assert.equal(j.connections_ready, 4, 'one keep-alive connection per session');
  assert.equal(j.connections_failed, 0);
  assert.equal(j.connections_lost, 0);
  assert.deepEqual(j.errors, {});
  assert.equal(j.latency_ms.ttft.count, 40);
  assert.equal(j.latency_ms.turn.count, 40);
  assert.equal(j.latency_ms.gap.count, 40 * 19);
  assert.equal(j.latency_ms.connect.count, 4);
  assert.ok(j.latency_ms.ttft.p50 > 0, 'a time to first token was measured');
  assert.ok(j.latency_ms.turn.max >= j.latency_ms.ttft.min);
  assert.ok(j.bytes_in > 800 * 10, `bytes_in ${j.bytes_in}`);
  assert.ok(j.elapsed_s > 0 && j.turns_per_s > 0 && j.tokens_per_s > 0);
  const s1 = await mock.waitStats((s) => s.streams_completed - s0.streams_completed >= 40, 3000, '40 completed streams');
  assert.equal(s1.streams_completed - s0.streams_completed, 40, 'the mock streamed exactly 40 answers');
  assert.equal(s1.streams_started - s0.streams_started, 40);
  // what chatbench asked for
  const reqs = await mock.requests('?limit=1');
  const last = reqs.at(-1);
  assert.equal(last.path, '/v1/chat/completions');
  assert.equal(last.body.stream, true);
  assert.equal(last.body.max_tokens, 20);
  assert.equal(last.body.model, 'llama-3.3-70b-versatile');
  assert.deepEqual(last.body.messages, [{ role: 'user', content: 'hello' }]);
});

test('mock: the table report (no --json) says the same', async () => {
  const r = await bench(['-c', '2', '-n', '6', '-t', '5', mockUrl()]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^chatbench: openai http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions, 2 sessions \(turns\), 5 tokens per answer$/m);
  assert.match(r.stdout, /^connections: 2 ready, 0 failed/m);
  assert.match(r.stdout, /^turns: 6 ok, 0 failed in /m);
  assert.match(r.stdout, /^ {2}ms +p50 +p90 +p99 +max +mean +count$/m);
  assert.match(r.stdout, /^ {2}ttft .* 6$/m);
  assert.match(r.stdout, /^errors: none$/m);
});

test('mock: a short answer (X-Mock-Tokens: 10, -t 20) is TRUNCATED, exit 1', async () => {
  const j = await benchJson(['-c', '2', '-n', '6', '-t', '20', '-H', 'X-Mock-Tokens: 10', mockUrl()], 1);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 6);
  assert.deepEqual(errorCodes(j), ['TRUNCATED']);
  assert.equal(j.errors.TRUNCATED.count, 6);
  assert.equal(j.tokens, 60, 'the ten tokens of each answer were received');
  assert.equal(j.latency_ms.ttft.count, 6);
  assert.equal(j.latency_ms.turn.count, 0, 'failed turns have no turn time');
});

test('mock: a corrupted answer (X-Mock-Fault: corrupt) is CORRUPT, exit 1', async () => {
  const j = await benchJson(['-c', '2', '-n', '4', '-t', '20', '-H', 'X-Mock-Fault: corrupt', mockUrl()], 1);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 4);
  assert.deepEqual(errorCodes(j), ['CORRUPT']);
  assert.equal(j.errors.CORRUPT.count, 4);
  assert.equal(j.tokens, 80, 'the answer was complete, only wrong');
});

test('mock: an answer longer than asked (-t 5, X-Mock-Tokens: 6) is CORRUPT', async () => {
  const j = await benchJson(['-c', '1', '-n', '2', '-t', '5', '-H', 'X-Mock-Tokens: 6', mockUrl()], 1);
  assert.deepEqual(errorCodes(j), ['CORRUPT']);
  assert.equal(j.errors.CORRUPT.count, 2);
});

test('mock: a connection cut mid-stream (X-Mock-Fault: cut) is CLOSED, exit 1', async () => {
  const j = await benchJson(['-c', '2', '-n', '4', '-t', '20', '-H', 'X-Mock-Fault: cut', mockUrl()], 1);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 4);
  assert.deepEqual(errorCodes(j), ['CLOSED']);
  assert.equal(j.errors.CLOSED.count, 4);
  assert.equal(j.tokens, 40, 'half of each answer came before the cut');
  assert.equal(j.connections_ready, 4, 'each turn after a cut opens a new connection');
});

test('mock: a malformed chunk (X-Mock-Fault: malformed) is PROTOCOL, exit 1', async () => {
  const j = await benchJson(['-c', '2', '-n', '4', '-t', '20', '-H', 'X-Mock-Fault: malformed', mockUrl()], 1);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 4);
  assert.deepEqual(errorCodes(j), ['PROTOCOL']);
  assert.equal(j.errors.PROTOCOL.count, 4);
});

test('mock: an upstream error status (X-Mock-Fault: 429) is HTTP_429..., exit 1', async () => {
  const j = await benchJson(['-c', '2', '-n', '4', '-t', '20', '-H', 'X-Mock-Fault: 429', mockUrl()], 1);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 4);
  assert.equal(j.tokens, 0);
  const codes = errorCodes(j);
  assert.equal(codes.length, 1, JSON.stringify(j.errors));
  assert.ok(codes[0].startsWith('HTTP_429'), codes[0]);
  assert.equal(j.errors[codes[0]].count, 4);
  assert.match(j.errors[codes[0]].example, /HTTP 429/);
  assert.equal(j.connections_ready, 2, 'an error answer keeps the connection');
});

test('mock: some failures among successes: counted apart, exit 1', async () => {
  // only the first 2 requests of this key fail (500); the other 4 succeed
  const key = `cb-${process.pid}-${Date.now()}`;
  const j = await benchJson(['-c', '1', '-n', '6', '-t', '10', '-H', 'X-Mock-Fault: 500', '-H', 'X-Mock-Fault-Count: 2',
    '-H', `X-Mock-Fault-Key: ${key}`, mockUrl()], 1);
  assert.equal(j.turns_ok, 4);
  assert.equal(j.turns_failed, 2);
  assert.equal(j.tokens, 40);
  const codes = errorCodes(j);
  assert.equal(codes.length, 1, JSON.stringify(j.errors));
  assert.ok(codes[0].startsWith('HTTP_500'), codes[0]);
  assert.equal(j.errors[codes[0]].count, 2);
});

test('mock: a stalled stream past --timeout 1s is TIMEOUT, exit 1', async () => {
  const r = await bench(['--json', '-c', '2', '-n', '2', '-t', '20', '--timeout', '1s', '-H', 'X-Mock-Fault: stall', mockUrl()]);
  assert.equal(r.code, 1, r.stderr);
  const j = r.report;
  assertReportShape(j, r.stdout);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 2);
  assert.deepEqual(errorCodes(j), ['TIMEOUT']);
  assert.equal(j.errors.TIMEOUT.count, 2);
  assert.equal(j.tokens, 6, 'three tokens each before the stall');
  assert.ok(r.ms >= 950, `waited for the timeout (${r.ms} ms)`);
  assert.ok(r.ms < 5000, `and not much longer (${r.ms} ms)`);
  // chatbench left: the mock sees no stream open any more
  await mock.waitStats((s) => s.streams_open === 0, 3000, 'the stalled streams to be closed');
});

test('nothing listening: CONNECT errors, exit 1, and the run still ends (-n and -d)', async () => {
  const port = await freePort();
  const url = `http://${HOST}:${port}/v1/chat/completions`;
  // with --turns: each failed attempt uses up a turn, so the run ends
  let j = await benchJson(['-c', '2', '-n', '4', url], 1, { timeout: 10000 });
  assert.equal(j.connections_ready, 0);
  assert.ok(j.connections_failed > 0, `connections_failed ${j.connections_failed}`);
  assert.equal(j.connections_failed, 4);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 0);
  assert.deepEqual(errorCodes(j), ['CONNECT']);
  assert.equal(j.errors.CONNECT.count, j.connections_failed);
  assert.match(j.errors.CONNECT.example, /refused/);
  // with --duration: retried until the end
  j = await benchJson(['-c', '2', '-d', '500ms', url], 1, { timeout: 10000 });
  assert.ok(j.connections_failed >= 2, `connections_failed ${j.connections_failed}`);
  assert.deepEqual(errorCodes(j), ['CONNECT']);
  // ws, idle: each session tries once
  j = await benchJson(['--idle', '-c', '3', '-d', '500ms', `ws://${HOST}:${port}/ws/chat`], 1, { timeout: 10000 });
  assert.equal(j.connections_ready, 0);
  assert.equal(j.connections_failed, 3);
  assert.deepEqual(errorCodes(j), ['CONNECT']);
});

test('a WebSocket upgrade refused (the mock has no /ws/chat) is HANDSHAKE, exit 1', async () => {
  const j = await benchJson(['-c', '1', '-n', '2', `ws://${HOST}:${mock.port}/ws/chat`], 1, { timeout: 10000 });
  assert.equal(j.mode, 'ws');
  assert.equal(j.connections_ready, 0);
  assert.equal(j.connections_failed, 2);
  assert.deepEqual(errorCodes(j), ['HANDSHAKE']);
  assert.match(j.errors.HANDSHAKE.example, /HTTP 404/);
});

test('--procs 2 -c 4 -n 40: the processes share the turns, the report merges them', async () => {
  const j = await benchJson(['--procs', '2', '-c', '4', '-n', '40', '-t', '20', mockUrl()], 0);
  assert.equal(j.procs, 2);
  assert.equal(j.sessions, 4);
  assert.equal(j.turns_ok, 40);
  assert.equal(j.turns_failed, 0);
  assert.equal(j.tokens, 800);
  assert.equal(j.connections_ready, 4);
  assert.equal(j.latency_ms.ttft.count, 40);
  assert.equal(j.latency_ms.turn.count, 40);
  assert.deepEqual(j.errors, {});
  // an odd split (14 + 14 + 13) adds up too
  const k = await benchJson(['--procs', '3', '-c', '3', '-n', '41', '-t', '5', mockUrl()], 0);
  assert.equal(k.turns_ok, 41);
  assert.equal(k.tokens, 41 * 5);
});

test('--procs 2 with failures: error codes and examples merged intact', async () => {
  const j = await benchJson(['--procs', '2', '-c', '2', '-n', '4', '-t', '20', '-H', 'X-Mock-Fault: 429', mockUrl()], 1);
  assert.equal(j.turns_failed, 4);
  const codes = errorCodes(j);
  assert.equal(codes.length, 1, JSON.stringify(j.errors));
  assert.ok(codes[0].startsWith('HTTP_429'), codes[0]);
  assert.equal(j.errors[codes[0]].count, 4);
  // the example is "<code>: <message>", once
  assert.match(j.errors[codes[0]].example, new RegExp(`^${codes[0]}: HTTP 429 `));
});

// ---- against chatloop (PostgreSQL, chatloop-mock upstream, auth off) ----------------------

test('chatloop: --mode ws -c 5 -n 20 -t 20: 20 checked turns, exit 0', async () => {
  const j = await benchJson(['--mode', 'ws', '-c', '5', '-n', '20', '-t', '20', `ws://${HOST}:${srv.port}/ws/chat`], 0);
  assert.equal(j.mode, 'ws');
  assert.equal(j.turns_ok, 20);
  assert.equal(j.turns_failed, 0);
  assert.equal(j.tokens, 400);
  assert.equal(j.connections_ready, 5);
  assert.equal(j.connections_lost, 0);
  assert.equal(j.latency_ms.ttft.count, 20);
  assert.deepEqual(j.errors, {});
});

test('chatloop: --mode sse -c 5 -n 20 -t 20 on /api/v1/chat: 20 checked turns, exit 0', async () => {
  const j = await benchJson(['--mode', 'sse', '-c', '5', '-n', '20', '-t', '20', `http://${HOST}:${srv.port}/api/v1/chat`], 0);
  assert.equal(j.mode, 'sse');
  assert.equal(j.turns_ok, 20);
  assert.equal(j.turns_failed, 0);
  assert.equal(j.tokens, 400);
  assert.equal(j.latency_ms.ttft.count, 20);
  assert.deepEqual(j.errors, {});
});

test('chatloop: openai mode on /v1/chat/completions: 20 checked turns, exit 0', async () => {
  const url = `http://${HOST}:${srv.port}/v1/chat/completions`;
  const j = await benchJson(['-c', '5', '-n', '20', '-t', '20', url], 0);
  assert.equal(j.mode, 'openai', 'the mode follows the path');
  assert.equal(j.turns_ok, 20);
  assert.equal(j.turns_failed, 0);
  assert.equal(j.tokens, 400);
  assert.deepEqual(j.errors, {});
});

test('chatloop: a bare http://HOST:PORT with --mode takes the mode\'s path', async () => {
  const j = await benchJson(['--mode', 'sse', '-c', '2', '-n', '4', '-t', '5', `http://${HOST}:${srv.port}`], 0);
  assert.equal(j.turns_ok, 4);
  const w = await benchJson(['--mode', 'ws', '-c', '2', '-n', '4', '-t', '5', `http://${HOST}:${srv.port}`], 0);
  assert.equal(w.mode, 'ws');
  assert.equal(w.turns_ok, 4);
});

test('chatloop: conversations of several turns (--conversation-turns 3), ws and sse', async () => {
  for (const [mode, url] of [['ws', `ws://${HOST}:${srv.port}/ws/chat`], ['sse', `http://${HOST}:${srv.port}/api/v1/chat`]]) {
    const j = await benchJson(['--mode', mode, '-c', '2', '-n', '12', '-t', '10', '--conversation-turns', '3', url], 0);
    assert.equal(j.turns_ok, 12, mode);
    assert.deepEqual(j.errors, {}, mode);
  }
});

test('chatloop: --idle -c 50 -d 1s holds 50 WebSockets, exit 0', async () => {
  const r = await bench(['--json', '--mode', 'ws', '--idle', '-c', '50', '-d', '1s', `ws://${HOST}:${srv.port}/ws/chat`]);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const j = r.report;
  assertReportShape(j, r.stdout);
  assert.equal(j.idle, true);
  assert.equal(j.connections_ready, 50);
  assert.equal(j.connections_failed, 0);
  assert.equal(j.connections_lost, 0);
  assert.equal(j.turns_ok, 0);
  assert.equal(j.turns_failed, 0);
  assert.equal(j.latency_ms.connect.count, 50);
  assert.deepEqual(j.errors, {});
  assert.ok(r.ms >= 950, `held for the duration (${r.ms} ms)`);
  assert.ok(j.elapsed_s >= 0.95 && j.elapsed_s < 5, `elapsed_s ${j.elapsed_s}`);
});

// ---- against chatloop with auth = required ---------------------------------------------

test('auth required: no token → HANDSHAKE 401 with a hint; --login registers, logs in and runs; a wrong password exits 1', async () => {
  const authed = await startChatServer(mock, pg, { retries: 0 });
  try {
    const ws = `ws://${HOST}:${authed.port}/ws/chat`;
    const none = await bench(['--json', '--mode', 'ws', '-c', '1', '-n', '1', ws]);
    assert.equal(none.code, 1);
    assert.equal(none.report.turns_ok, 0);
    assert.ok(none.report.errors.HANDSHAKE, JSON.stringify(none.report.errors));
    assert.match(none.report.errors.HANDSHAKE.example, /401.*--login/);
    // no retrying for the whole duration: a 401 without a token ends the run at once
    for (const [mode, url] of [['ws', ws], ['sse', `http://${HOST}:${authed.port}/api/v1/chat`]]) {
      const r = await bench(['--json', '--mode', mode, '-c', '4', '-d', '20s', url]);
      assert.equal(r.code, 1, mode);
      assert.ok(r.ms < 5000, `${mode}: ended at once (${r.ms} ms)`);
      assert.match(r.stderr, /wants a token \(HTTP 401\): pass --token JWT or --login/, mode);
      assert.equal(r.report.turns_ok, 0, mode);
    }

    const login = ['--login', 'bench@example.com:correct horse battery'];
    const j = await benchJson([...login, '--mode', 'ws', '-c', '3', '-n', '9', '-t', '10', ws], 0);
    assert.equal(j.turns_ok, 9);
    // the user exists now: --login logs in again (register answers 409)
    const s = await benchJson([...login, '--mode', 'sse', '-c', '3', '-n', '9', '-t', '10', `http://${HOST}:${authed.port}/api/v1/chat`], 0);
    assert.equal(s.turns_ok, 9);

    const bad = await bench(['--json', '--login', 'bench@example.com:not the password', '-c', '1', '-n', '1', ws]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--login: logging in answered HTTP 401/);
  } finally {
    await stopAll(authed);
  }
});

/** A file of bearer tokens, one per line, removed with the test's directory. */
function tokenFile(lines) {
  const dir = mkdtempSync(path.join(tmpdir(), 'chatbench-tokens-'));
  tokenDirs.push(dir);
  const f = path.join(dir, 'tokens');
  writeFileSync(f, lines.join('\n') + '\n');
  return f;
}
const tokenDirs = [];
after(() => {
  for (const d of tokenDirs) rmSync(d, { recursive: true, force: true });
});

test('--token-file: the sessions take turns as the users of its lines (session i, line i mod n); a missing or empty file is a usage error', async () => {
  const authed = await startChatServer(mock, pg, { retries: 0 });
  try {
    const users = [];
    for (let i = 0; i < 3; i++) users.push(await newUser(authed.port));
    const file = tokenFile(['', ...users.map((u) => u.token), '']);
    const ws = `ws://${HOST}:${authed.port}/ws/chat`;
    const j = await benchJson(['--token-file', file, '--mode', 'ws', '-c', '6', '-n', '12', '-t', '10', ws], 0);
    assert.equal(j.turns_ok, 12);
    const per = await pg.query(
      `SELECT user_id::text AS u, count(*)::int AS n FROM messages WHERE role = 'user' AND user_id = ANY($1::uuid[]) GROUP BY 1`,
      [users.map((u) => u.userId)]);
    assert.equal(per.rows.length, 3, 'every user had turns');
    assert.equal(per.rows.reduce((a, r) => a + r.n, 0), 12);
    const sse = await benchJson(['--token-file', file, '--mode', 'sse', '-c', '3', '-n', '6', '-t', '10', `http://${HOST}:${authed.port}/api/v1/chat`], 0);
    assert.equal(sse.turns_ok, 6);

    const missing = await bench(['--token-file', path.join(tmpdir(), 'no-such-chatbench-tokens'), '-n', '1', ws]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--token-file .*no-such-chatbench-tokens/);
    const empty = await bench(['--token-file', tokenFile(['', '']), '-n', '1', ws]);
    assert.equal(empty.code, 2);
    assert.match(empty.stderr, /no tokens/);
  } finally {
    await stopAll(authed);
  }
});
