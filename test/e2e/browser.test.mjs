// The browser client at GET / in headless Chromium (Debian's package, driven
// by playwright-core): the page and its strict CSP, then a user's session —
// type a question, see the answer stream in token by token, finish, cancel
// one while it streams — with auth off, and with auth required (register
// and log in through the form). Against the real chatloop with its built-in
// mock provider and a throwaway PostgreSQL. No console errors allowed.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { launchChromium, openPage as openPageAt, WAIT } from './lib/browser.mjs';
import { get, makeTest, sleep, startServer, withTimeout } from './lib/server.mjs';
import { startPg } from './lib/pg.mjs';

// at least 32 bytes: chatloop refuses a shorter jwt_secret with auth = required
const JWT_SECRET = 'browser-test-secret-0123456789abcdef';

const SCREENSHOT = '/tmp/chatloop-browser.png';
const CSP =
  "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; " +
  "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
const N = 30;
const FULL = Array.from({ length: N }, (_, i) => `tok${i + 1}`).join(' ');
const STREAM = { provider: 'mock', mockTokens: N, mockTokenInterval: '40ms', mockFirstToken: '0ms' };

let pg, browser;
let servers = [];
const test = makeTest(() => servers);

before(async () => {
  pg = await startPg();
  browser = await launchChromium();
});

after(async () => {
  const errors = [];
  if (browser) await withTimeout(browser.close(), 10000, 'browser close').catch((e) => errors.push(e));
  for (const s of servers) await s.stop().catch((e) => errors.push(e));
  if (pg) await pg.stop().catch((e) => errors.push(e));
  if (errors.length) throw errors[0];
});

async function server(opts) {
  const db = await pg.freshDatabase();
  const s = await startServer({ ...STREAM, databaseUrl: db.url, ...opts });
  servers.push(s);
  s.db = db;
  return s;
}

const openPage = (s) => openPageAt(browser, s.port, { viewport: { width: 900, height: 700 } });

const lastAnswer = (page) => page.locator('#messages .answer').last();

/** [data-state, text] of an answer bubble. */
const answerState = (loc) => loc.evaluate((b) => [b.dataset.state, b.querySelector('.text').textContent]);

/**
 * Sends `question` with the Send button (or Enter) and follows the new
 * answer: returns the distinct text lengths seen while it streamed.
 */
async function ask(page, question, { enter = false } = {}) {
  const before = await page.locator('#messages .answer').count();
  await page.fill('#question', question);
  if (enter) await page.press('#question', 'Enter');
  else await page.click('#send');
  await page.waitForFunction((n) => document.querySelectorAll('#messages .answer').length === n + 1, before);
  const bubble = lastAnswer(page);
  assert.equal(await page.inputValue('#question'), '', 'the composer is cleared after sending');
  return bubble;
}

/** Samples the bubble until it leaves "streaming"; returns {state, text, partials}. */
async function follow(bubble, ms = 15000) {
  const partials = new Set();
  const deadline = Date.now() + ms;
  for (;;) {
    const [state, text] = await answerState(bubble);
    if (state !== 'streaming') return { state, text, partials: [...partials] };
    if (text.length) partials.add(text);
    if (Date.now() > deadline) throw new Error(`the answer still streams after ${ms} ms: ${JSON.stringify(text)}`);
    await sleep(15);
  }
}

test('GET / serves the client: strict CSP and security headers, no inline code, ETag → 304', async () => {
  const s = await startServer({ provider: 'mock' });
  servers.push(s);
  const r = await get(s.port, '/');
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
  assert.equal(r.headers['content-security-policy'], CSP);
  assert.equal(r.headers['x-frame-options'], 'DENY');
  assert.equal(r.headers['referrer-policy'], 'no-referrer');
  assert.equal(r.headers['cache-control'], 'no-cache');
  assert.equal(r.headers['x-content-type-options'], 'nosniff');
  assert.match(r.headers.etag, /^"[0-9a-f]{16}"$/);
  const html = r.text;
  assert.match(html, /<html lang="en" data-auth="off">/, 'auth = off is announced to the page');
  assert.match(html, /<script src="\/app\.js" defer><\/script>/);
  assert.match(html, /<link rel="stylesheet" href="\/app\.css">/);
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline script');
  assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, 'no inline style or handlers');
  for (const id of ['email', 'password', 'login', 'register', 'question', 'send', 'cancel', 'messages', 'status']) {
    assert.match(html, new RegExp(`id="${id}"`), `#${id}`);
  }

  for (const [p, type] of [['/app.js', 'text/javascript; charset=utf-8'], ['/app.css', 'text/css; charset=utf-8']]) {
    const a = await get(s.port, p);
    assert.equal(a.status, 200, p);
    assert.equal(a.headers['content-type'], type, p);
    assert.equal(a.headers['content-security-policy'], CSP, p);
    assert.doesNotMatch(a.text, /https?:\/\//, `${p} loads nothing from elsewhere`);
    assert.doesNotMatch(a.text, /innerHTML|eval\(|new Function/, `${p} builds no code or markup from text`);
  }

  // Conditional GET: the same ETag → 304 with no body; HEAD has the headers.
  const again = await get(s.port, '/', { headers: { 'if-none-match': `"nope", W/${r.headers.etag}` } });
  assert.equal(again.status, 304);
  assert.equal(again.body.length, 0);
  assert.equal(again.headers.etag, r.headers.etag);
  assert.equal((await get(s.port, '/', { headers: { 'if-none-match': '"other"' } })).status, 200);
  const head = await get(s.port, '/', { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], String(Buffer.byteLength(html)));
  assert.equal(head.body.length, 0);
  assert.equal((await get(s.port, '/nothing.js')).status, 404);

  // With auth required the page says so (it shows the login form at once).
  const s2 = await startServer({ provider: 'mock', auth: 'required', jwtSecret: JWT_SECRET });
  servers.push(s2);
  const r2 = await get(s2.port, '/');
  assert.match(r2.text, /<html lang="en" data-auth="required">/);
  assert.notEqual(r2.headers.etag, r.headers.etag, 'each variant has its own ETag');
  await s.stop();
  await s2.stop();
  servers = servers.filter((x) => x !== s && x !== s2);
});

test('auth off: the answer streams in, completes, and a second one is cancelled mid-stream', { timeout: 90000 }, async () => {
  const s = await server({});
  const { context, page, problems } = await openPage(s);
  try {
    await page.waitForFunction(() => /connected/.test(document.getElementById('status').textContent));
    assert.equal(await page.isVisible('#login-panel'), false, 'no login form with auth off');
    assert.equal(await page.isDisabled('#cancel'), true, 'Cancel is disabled while nothing streams');

    // Shift+Enter is a new line, not a send.
    await page.fill('#question', 'line one');
    await page.press('#question', 'Shift+Enter');
    await page.type('#question', 'line two');
    assert.equal(await page.inputValue('#question'), 'line one\nline two');
    assert.equal(await page.locator('#messages .answer').count(), 0);

    // 1. a whole answer, streamed: text grows through several lengths
    const b1 = await ask(page, 'Say thirty tokens, please.');
    await page.waitForFunction(() => !document.getElementById('cancel').disabled);
    const r1 = await follow(b1);
    assert.equal(r1.state, 'complete', `final state; text ${JSON.stringify(r1.text)}`);
    assert.equal(r1.text, FULL);
    const partial = r1.partials.filter((t) => t.length < FULL.length);
    assert.ok(new Set(partial.map((t) => t.length)).size >= 2, `saw at least two partial lengths: ${JSON.stringify(partial)}`);
    for (const p of partial) assert.ok(FULL.startsWith(p), `each partial is a prefix: ${JSON.stringify(p)}`);
    const meta = await b1.locator('.meta').textContent();
    assert.match(meta, /first token \d+ ms · total \d+ ms/, meta);
    assert.equal(await page.textContent('#messages .question'), 'Say thirty tokens, please.');
    assert.equal(await page.isDisabled('#cancel'), true, 'Cancel is disabled again');
    assert.equal(await page.isEnabled('#send'), true);
    const conv1 = await b1.getAttribute('data-conversation-id');
    assert.match(conv1 || '', /^[0-9a-f-]{36}$/, 'stream_start named the conversation');

    // 2. cancel while it streams (sent with Enter this time)
    const b2 = await ask(page, 'And now stop halfway.', { enter: true });
    await page.waitForFunction(() => {
      const b = [...document.querySelectorAll('#messages .answer')].pop();
      return b.querySelector('.text').textContent.length >= 20;
    });
    await page.click('#cancel');
    await page.waitForFunction(() => [...document.querySelectorAll('#messages .answer')].pop().dataset.state !== 'streaming');
    const [state2, text2] = await answerState(b2);
    assert.equal(state2, 'cancelled', `state after cancel; text ${JSON.stringify(text2)}`);
    assert.ok(text2.length > 0 && text2.length < FULL.length && FULL.startsWith(text2), `a partial answer: ${JSON.stringify(text2)}`);
    await sleep(200); // nothing more arrives for a cancelled turn
    assert.equal((await answerState(b2))[1], text2);
    assert.equal(await page.isDisabled('#cancel'), true);
    assert.equal(await page.isEnabled('#send'), true);
    // what the page showed is what was stored, marked cancelled
    const conv2 = await b2.getAttribute('data-conversation-id');
    assert.equal(conv2, conv1, 'the same conversation (session_id) as the first question');
    let rows = [];
    for (const deadline = Date.now() + WAIT; Date.now() < deadline; await sleep(50)) {
      rows = (await s.db.query(
        "SELECT content, status FROM messages WHERE conversation_id = $1 AND role = 'assistant' ORDER BY created_at",
        [conv1],
      )).rows;
      if (rows.length === 2) break;
    }
    assert.deepEqual(rows, [{ content: FULL, status: 'complete' }, { content: text2, status: 'cancelled' }]);

    // 3. a new conversation gets a conversation of its own
    await page.click('#new-conversation');
    const b3 = await ask(page, 'A fresh start.');
    const r3 = await follow(b3);
    assert.equal(r3.state, 'complete');
    assert.equal(r3.text, FULL);
    const conv3 = await b3.getAttribute('data-conversation-id');
    assert.ok(conv3 && conv3 !== conv1, `a new conversation: ${conv1} then ${conv3}`);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    assert.deepEqual(problems, [], 'no console errors');
  } finally {
    await context.close();
  }
});

test('auth required: register and log in through the form, then a question streams', { timeout: 90000 }, async () => {
  const s = await server({ auth: 'required', jwtSecret: JWT_SECRET, kdfIterations: 1000 });
  const { context, page, problems, url } = await openPage(s);
  try {
    await page.waitForSelector('#login-panel', { state: 'visible' });
    assert.equal(await page.isVisible('#chat'), false, 'no chat before logging in');
    assert.equal(await page.textContent('#status'), 'not logged in');
    const email = `browser${process.pid}.${Date.now()}@example.test`;
    await page.fill('#email', email);
    await page.fill('#password', 'a good password');
    await page.click('#register');
    await page.waitForFunction(() => /connected/.test(document.getElementById('status').textContent));
    assert.equal(await page.isVisible('#login-panel'), false);
    const stored = await page.evaluate(() => sessionStorage.getItem('chatloop.token'));
    assert.match(stored || '', /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the token is kept in sessionStorage');

    const b = await ask(page, 'Hello as a registered user.');
    const r = await follow(b);
    assert.equal(r.state, 'complete');
    assert.equal(r.text, FULL);
    assert.ok(r.partials.length >= 2, 'streamed');

    // A reload reuses the token: no form.
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForFunction(() => /connected/.test(document.getElementById('status').textContent));
    assert.equal(await page.isVisible('#login-panel'), false);

    // Log out, log in again with the Log in button (Enter in the form).
    await page.click('#logout');
    await page.waitForSelector('#login-panel', { state: 'visible' });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('chatloop.token')), null);
    await page.fill('#email', email);
    await page.fill('#password', 'a good password');
    await page.press('#password', 'Enter');
    await page.waitForFunction(() => /connected/.test(document.getElementById('status').textContent));
    const r2 = await follow(await ask(page, 'Once more.'));
    assert.equal(r2.state, 'complete');
    assert.equal(r2.text, FULL);
    assert.deepEqual(problems, [], 'no console errors');

    // A wrong password says why (the browser logs the 401 itself).
    await page.click('#logout');
    await page.fill('#email', email);
    await page.fill('#password', 'not the password');
    await page.click('#login');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0);
    assert.equal(await page.isVisible('#login-panel'), true);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('chatloop.token')), null);
  } finally {
    await context.close();
  }
});
