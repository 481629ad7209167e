// /metrics as an operator reads it: turns by transport and outcome, tokens
// relayed, TTFT and turn-duration histograms, upstream errors by cause, the
// database pool's figures and errors — summed over two workers, with
// bounded label sets (never a user or conversation id).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import OpenAI from 'openai';
import { makeTest, metrics } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, openStream, startChatServer, streamTurn } from './lib/chat.mjs';
import { connect, newSid } from './lib/ws.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);
const TOKENS = 8;

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: TOKENS, mockTokenInterval: 1, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { workers: 2, retries: 0 });
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const turns = (m, transport, outcome) => m[`chatloop_turns_total{transport="${transport}",outcome="${outcome}"}`];
const tokens = (m, transport) => m[`chatloop_tokens_relayed_total{transport="${transport}"}`];
const ttftCount = (m, transport) => m[`chatloop_ttft_seconds_count{transport="${transport}"}`];
const durCount = (m, transport) => m[`chatloop_turn_duration_seconds_count{transport="${transport}"}`];
const active = (m, transport) => m[`chatloop_turns_active{transport="${transport}"}`];

/** Waits until the summed metrics satisfy `pred` (each worker answers for all). */
const metricsUntil = (pred, what) =>
  eventually(async () => {
    const m = await metrics(srv.port);
    return pred(m) ? m : null;
  }, 5000, what);

test('every series is present from the start, with bounded labels only', async () => {
  const m = await metrics(srv.port);
  for (const t of ['rest', 'sse', 'websocket', 'openai']) {
    for (const o of ['completed', 'failed', 'cancelled']) assert.equal(typeof turns(m, t, o), 'number', `turns ${t} ${o}`);
    assert.equal(typeof tokens(m, t), 'number');
    assert.equal(typeof active(m, t), 'number');
    assert.equal(typeof m[`chatloop_ttft_seconds_bucket{transport="${t}",le="+Inf"}`], 'number');
    assert.equal(typeof m[`chatloop_turn_duration_seconds_bucket{transport="${t}",le="300"}`], 'number');
  }
  for (const c of ['429', '4xx', '5xx', 'timeout', 'transport', 'stream'])
    assert.equal(typeof m[`chatloop_upstream_errors_total{code="${c}"}`], 'number', `upstream ${c}`);
  for (const k of ['unavailable', 'refused']) assert.equal(typeof m[`chatloop_db_errors_total{kind="${k}"}`], 'number');
  for (const g of ['chatloop_db_pool_size', 'chatloop_db_connections_up', 'chatloop_db_connections_busy',
    'chatloop_db_queue_depth', 'chatloop_db_pending_writes', 'chatloop_db_spooled_writes', 'chatloop_db_query_timeouts_total'])
    assert.equal(typeof m[g], 'number', g);
  const allowed = new Set(['class', 'le', 'transport', 'outcome', 'code', 'kind']);
  for (const series of Object.keys(m)) {
    const labels = /\{(.*)\}/.exec(series)?.[1];
    if (!labels) continue;
    for (const pair of labels.split(/,(?=[a-z_]+=)/)) {
      const [k, v] = pair.split('=');
      assert.ok(allowed.has(k), `label ${k} in ${series} is one of the bounded set`);
      assert.doesNotMatch(v, /[0-9a-f]{8}-[0-9a-f]{4}-/, `no ids as label values: ${series}`);
    }
  }
  // two workers, each with db_pool_size connections
  const pool = await metricsUntil((x) => x.chatloop_db_connections_up >= 1, 'a database connection up');
  assert.ok(pool.chatloop_db_pool_size >= 2, `pool size summed over two workers: ${pool.chatloop_db_pool_size}`);
});

test('a turn on each transport counts as completed, with its tokens, TTFT and duration', async () => {
  const u = await newUser(srv.port);
  const m0 = await metrics(srv.port);

  const rest = checkOkEnvelope(assert, await api(srv.port, 'POST', '/api/v1/chat', { token: u.token, body: { session_id: newSid(), message: 'hi' } }));
  assert.ok(rest.response.length > 0);
  const sse = await streamTurn(srv.port, '/api/v1/chat', { session_id: newSid(), message: 'hi' }, { token: u.token });
  assert.ok(sse.done, `done event: ${sse.raw}`);

  const ws = await connect(srv.port, { token: u.token });
  const sid = newSid();
  ws.send({ type: 'query', session_id: sid, question: 'hi' });
  await ws.waitFor((h) => h.msgs.find((x) => x.type === 'complete' && x.session_id === sid), 10000, 'complete');
  ws.terminate();

  const client = new OpenAI({ apiKey: u.token, baseURL: `http://127.0.0.1:${srv.port}/v1`, maxRetries: 0 });
  const stream = await client.chat.completions.create({ model: 'llama-3.3-70b-versatile', messages: [{ role: 'user', content: 'hi' }], stream: true });
  for await (const _ of stream); // eslint-disable-line no-unused-vars

  const m = await metricsUntil(
    (x) => ['rest', 'sse', 'websocket', 'openai'].every((t) => turns(x, t, 'completed') === turns(m0, t, 'completed') + 1),
    'one completed turn per transport');
  for (const t of ['rest', 'sse', 'websocket', 'openai']) {
    assert.equal(tokens(m, t) - tokens(m0, t), TOKENS, `${t}: every delta relayed is counted`);
    assert.equal(ttftCount(m, t) - ttftCount(m0, t), 1, `${t}: one TTFT observation`);
    assert.equal(durCount(m, t) - durCount(m0, t), 1, `${t}: one duration observation`);
    assert.equal(turns(m, t, 'failed'), turns(m0, t, 'failed'), `${t}: nothing failed`);
    assert.equal(active(m, t), 0, `${t}: nothing left active`);
  }
  // cumulative buckets: a 1 ms-per-token local answer starts well under 5 s
  assert.ok(m['chatloop_ttft_seconds_bucket{transport="sse",le="5"}'] >= 1);
});

test('a turn running is active; a client that leaves is counted as cancelled', async () => {
  const u = await newUser(srv.port);
  const m0 = await metrics(srv.port);
  // mock-stall: a few tokens, then silence (idle_timeout is far away)
  const s = openStream(srv.port, '/api/v1/chat', { session_id: newSid(), message: 'long', model: 'mock-stall' }, { token: u.token });
  await s.waitFor((h) => h.tokens().length >= 1, 5000, 'a token');
  const during = await metricsUntil((x) => active(x, 'sse') === active(m0, 'sse') + 1, 'the turn is active');
  assert.equal(active(during, 'sse'), 1);
  s.destroy();
  const m = await metricsUntil(
    (x) => turns(x, 'sse', 'cancelled') === turns(m0, 'sse', 'cancelled') + 1 && active(x, 'sse') === 0,
    'the turn counted as cancelled');
  assert.equal(turns(m, 'sse', 'completed'), turns(m0, 'sse', 'completed'));
  assert.ok(tokens(m, 'sse') > tokens(m0, 'sse'), 'what streamed before the stall was counted');
});

test('upstream failures count as failed turns and by cause', async () => {
  const u = await newUser(srv.port);
  const m0 = await metrics(srv.port);
  const r = await streamTurn(srv.port, '/api/v1/chat', { session_id: newSid(), message: 'x', model: 'mock-500' }, { token: u.token });
  assert.ok(r.error || r.status >= 500, `the turn failed: ${r.raw}`);
  const cut = await streamTurn(srv.port, '/api/v1/chat', { session_id: newSid(), message: 'x', model: 'mock-cut' }, { token: u.token });
  assert.ok(cut.error, `the cut turn failed: ${cut.raw}`);
  const m = await metricsUntil((x) => turns(x, 'sse', 'failed') === turns(m0, 'sse', 'failed') + 2, 'two failed turns');
  assert.equal(m['chatloop_upstream_errors_total{code="5xx"}'] - m0['chatloop_upstream_errors_total{code="5xx"}'], 1);
  assert.equal(m['chatloop_upstream_errors_total{code="stream"}'] - m0['chatloop_upstream_errors_total{code="stream"}'], 1);
});

test('database errors are counted while it is down, and the pool gauges follow it', async () => {
  const u = await newUser(srv.port);
  const m0 = await metricsUntil((x) => x.chatloop_db_connections_up >= 2, 'both workers connected');
  await pg.halt();
  try {
    for (let i = 0; i < 4; i++) {
      const r = await api(srv.port, 'GET', '/api/v1/conversations', { token: u.token });
      assert.equal(r.status, 503, `conversations while down: ${r.text}`);
    }
    const m = await metricsUntil(
      (x) => x['chatloop_db_errors_total{kind="unavailable"}'] >= m0['chatloop_db_errors_total{kind="unavailable"}'] + 1 &&
        x.chatloop_db_connections_up < m0.chatloop_db_connections_up,
      'unavailable errors counted and connections down');
    assert.ok(m.chatloop_db_connections_up < m0.chatloop_db_connections_up);
  } finally {
    await pg.restart();
  }
  await metricsUntil((x) => x.chatloop_db_connections_up >= 1, 'reconnected');
});
