// Streams under stress: a client that vanishes mid-stream must take its
// upstream transfer with it at once, and 500 concurrent paced streams must
// all arrive complete and exact.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { RawConn, expectServing, makeTest, request } from './lib/server.mjs';
import { mockText, sseData } from './lib/mock.mjs';
import { MESSAGES, contentOf, startMock, startRelay, stopAll, until } from './lib/llm.mjs';

let slowMock, fastMock, relay, loadRelay, fresh;
const test = makeTest(() => [relay, loadRelay, fresh]);

before(async () => {
  // 100 tokens, 50 ms apart: a 5 s stream
  slowMock = await startMock({ mockTokens: 100, mockTokenInterval: 50, mockFirstToken: 0 });
  relay = await startRelay(slowMock);
  fastMock = await startMock({ mockTokens: 20, mockTokenInterval: 10, mockFirstToken: 0 });
  loadRelay = await startRelay(fastMock);
});
after(() => stopAll(relay, loadRelay, slowMock, fastMock));

function rawPost(body, path = '/v1/chat/completions') {
  const b = Buffer.from(JSON.stringify(body));
  return Buffer.concat([
    Buffer.from(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n`),
    b,
  ]);
}

test('client gone mid-stream: chatloop closes its upstream stream within a second', async () => {
  const before = await slowMock.stats();
  const c = await RawConn.open(relay.port);
  await c.write(rawPost({ messages: MESSAGES, stream: true }));
  // a few content chunks arrive: the stream is live at both ends
  await c.waitFor(() => (c.buf.toString('latin1').match(/tok\d+/g) || []).length >= 3, 3000, 'three tokens');
  let s = await slowMock.stats();
  assert.equal(s.streams_open, before.streams_open + 1, `one upstream stream open: ${JSON.stringify(s)}`);
  const t0 = Date.now();
  c.destroy();
  s = await slowMock.waitStats(
    (x) => x.streams_aborted === before.streams_aborted + 1 && x.streams_open === 0,
    1000,
    'the upstream stream aborted (streams_aborted +1, streams_open 0)',
  );
  const took = Date.now() - t0;
  assert.equal(s.streams_completed, before.streams_completed, 'the stream did not run to its end');
  assert.ok(took < 1000, `upstream closed ${took} ms after the client left`);
  await expectServing(relay.port);
});

test('client gone while a non-streamed answer is pending: the upstream request is aborted too', async () => {
  const before = await slowMock.stats();
  const c = await RawConn.open(relay.port);
  await c.write(rawPost({ messages: MESSAGES }));
  await slowMock.waitStats((x) => x.completions_open === before.completions_open + 1, 2000, 'the completion started upstream');
  c.destroy();
  const s = await slowMock.waitStats(
    (x) => x.completions_aborted === before.completions_aborted + 1 && x.completions_open === 0,
    1000,
    'the upstream completion aborted',
  );
  assert.equal(s.completions_completed, before.completions_completed);
});

test('many clients leave mid-stream: every upstream stream closes', async () => {
  const before = await slowMock.stats();
  const conns = [];
  for (let i = 0; i < 50; i++) {
    const c = await RawConn.open(relay.port);
    await c.write(rawPost({ messages: MESSAGES, stream: true }));
    conns.push(c);
  }
  // each client leaves as soon as it has seen tok2
  await Promise.all(
    conns.map((c) => c.waitFor(() => /tok2/.test(c.buf.toString('latin1')), 10000, 'tok2').then(() => c.destroy())),
  );
  await slowMock.waitStats(
    (x) => x.streams_aborted === before.streams_aborted + 50 && x.streams_open === 0,
    2000,
    '50 upstream streams aborted',
  );
  await expectServing(relay.port);
});

test('concurrent streams start together: none waits for another stream\'s upstream connection', { timeout: 40000 }, async () => {
  // A fresh chatloop (no pooled upstream connections), 50 requests written
  // at the same moment, 100 tokens 50 ms apart upstream: every client must
  // see its first token at once, not after another 5 s stream has ended.
  const s = (fresh = await startRelay(slowMock));
  try {
    for (let round = 1; round <= 2; round++) {
      const conns = [];
      for (let i = 0; i < 50; i++) conns.push(await RawConn.open(s.port));
      const t0 = Date.now();
      await Promise.all(conns.map((c) => c.write(rawPost({ messages: MESSAGES, stream: true }))));
      const ttft = await Promise.all(
        conns.map((c) =>
          c.waitFor(() => /tok1\b/.test(c.buf.toString('latin1')), 10000, 'tok1').then(
            () => Date.now() - t0,
            () => Infinity,
          ),
        ),
      );
      for (const c of conns) c.destroy();
      const late = ttft.filter((t) => t > 1500);
      assert.equal(late.length, 0, `round ${round}: ${late.length} of 50 streams got their first token late: ${late.join(', ')} ms`);
      await slowMock.waitStats((x) => x.streams_open === 0, 2000, 'upstream streams closed');
    }
  } finally {
    await s.stop();
  }
});

test('500 concurrent streams (20 tokens, 10 ms apart) all complete, exact', { timeout: 45000 }, async () => {
  const N = 500;
  const before = await fastMock.stats();
  const body = JSON.stringify({ messages: MESSAGES, stream: true });
  const t0 = Date.now();
  const results = await Promise.all(
    Array.from({ length: N }, () =>
      request(loadRelay.port, {
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        body,
        timeout: 30000,
      }).then(
        (r) => r,
        (e) => ({ error: e }),
      ),
    ),
  );
  const took = Date.now() - t0;
  const bad = [];
  for (const r of results) {
    if (r.error) {
      bad.push(`error: ${r.error.message}`);
      continue;
    }
    if (r.status !== 200) {
      bad.push(`status ${r.status}: ${r.text.slice(0, 200)}`);
      continue;
    }
    const ev = sseData(r.text);
    if (ev.at(-1) !== '[DONE]') {
      bad.push(`no [DONE]: ${r.text.slice(-200)}`);
      continue;
    }
    const text = contentOf(ev.slice(0, -1).map((d) => JSON.parse(d)));
    if (text !== mockText(20)) bad.push(`text ${JSON.stringify(text.slice(0, 80))}`);
  }
  assert.equal(bad.length, 0, `${bad.length} of ${N} streams failed; first: ${bad.slice(0, 3).join(' | ')}`);
  assert.ok(took < 30000, `took ${took} ms`);
  const s = await until(
    async () => {
      const x = await fastMock.stats();
      return x.streams_open === 0 ? x : null;
    },
    2000,
    'mock streams_open back to 0',
  );
  assert.equal(s.streams_completed - before.streams_completed, N, 'each stream reached the mock once and completed');
  await expectServing(loadRelay.port);
});
