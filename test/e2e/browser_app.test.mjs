// The browser client's conversation list, agent picker and API keys page
// (issue 11 item 10) in headless Chromium, against the real chatloop with
// auth required, a throwaway PostgreSQL and chatloop-mock upstream (whose
// record of requests shows what reached the model). What the page shows is
// checked against what the API says; no console errors allowed (beyond the
// ones a refused request makes the browser log itself).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { makeTest } from './lib/server.mjs';
import { startMock, mockText } from './lib/mock.mjs';
import { stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, eventually, newUser, startChatServer } from './lib/chat.mjs';
import { launchChromium, openPage, waitConnected } from './lib/browser.mjs';

const TOKENS = 5;
const ANSWER = mockText(TOKENS);

let pg, mock, srv, limited, browser;
const test = makeTest(() => [srv, limited].filter(Boolean));

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: TOKENS, mockTokenInterval: '5ms', mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { retries: 0 });
  browser = await launchChromium();
});
after(async () => {
  try {
    if (browser) await browser.close();
    await stopAll(srv, limited, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

let seq = 0;
const unique = (tag) => `${tag}-${process.pid}-${Date.now()}-${++seq}`;

const call = async (port, u, method, path, body) => {
  const r = await api(port, method, path, { token: u.token, body });
  return r;
};
const ok = async (port, u, method, path, body, status = 200) => {
  const r = await call(port, u, method, path, body);
  assert.equal(r.status, status, `${method} ${path}: ${r.text}`);
  return r.j.data;
};

/** A page logged in as `u` through the login form, connected. */
async function loggedIn(port, u) {
  const p = await openPage(browser, port);
  await p.page.waitForSelector('#login-panel', { state: 'visible' });
  await p.page.fill('#email', u.email);
  await p.page.fill('#password', u.password);
  await p.page.click('#login');
  await waitConnected(p.page);
  return p;
}

/** Sends `question` and waits for its answer bubble to leave "streaming": [state, text, meta]. */
async function ask(page, question) {
  const n = await page.locator('#messages .answer').count();
  await page.fill('#question', question);
  await page.click('#send');
  await page.waitForFunction((k) => {
    const all = document.querySelectorAll('#messages .answer');
    return all.length === k + 1 && all[k].dataset.state !== 'streaming';
  }, n);
  const b = page.locator('#messages .answer').last();
  return b.evaluate((x) => [x.dataset.state, x.querySelector('.text').textContent, x.querySelector('.meta').textContent,
    x.dataset.conversationId]);
}

const sidebarIds = (page) => page.$$eval('#conversations li', (lis) => lis.map((li) => li.dataset.id));

/** The one upstream request whose last message is `text`. */
async function upstreamFor(text) {
  const reqs = await eventually(async () => {
    const all = (await mock.requests()).filter((r) => r.path.endsWith('/chat/completions')
      && r.body?.messages?.at(-1)?.content === text);
    return all.length && all;
  }, 3000, `the upstream request for ${text}`);
  assert.equal(reqs.length, 1);
  return reqs[0].body;
}

test('conversation list: newest first with Load more, reopen one (history, then a question lands in it), delete', { timeout: 90000 }, async () => {
  const u = await newUser(srv.port);
  // 21 conversations: one page of 20 and one more; the first gets a turn
  const ids = [];
  for (let i = 1; i <= 21; i++) ids.push((await ok(srv.port, u, 'POST', '/api/v1/conversations', { title: `chat ${i} <b>&amp;</b>` }, 201)).id);
  const hist = ids[0];
  const first = unique('history question');
  await ok(srv.port, u, 'POST', `/api/v1/conversations/${hist}/messages`, { message: first });
  const all = [];
  for (let before = null; ;) {
    const d = await ok(srv.port, u, 'GET', `/api/v1/conversations?limit=100${before ? `&before=${before}` : ''}`);
    all.push(...d.conversations);
    if (!(before = d.next_before)) break;
  }
  assert.equal(all.length, 21);

  const { context, page, problems } = await loggedIn(srv.port, u);
  try {
    await page.waitForFunction(() => document.querySelectorAll('#conversations li').length === 20);
    assert.deepEqual(await sidebarIds(page), all.slice(0, 20).map((c) => c.id), 'the first page, newest first');
    assert.equal(all[0].id, hist, 'the conversation with a turn is the newest');
    // titles are text, not markup
    assert.equal(await page.textContent(`#conversations li[data-id="${ids[4]}"] .title`), 'chat 5 <b>&amp;</b>');
    assert.equal(await page.isVisible('#load-more'), true);
    await page.click('#load-more');
    await page.waitForFunction(() => document.querySelectorAll('#conversations li').length === 21);
    assert.deepEqual(await sidebarIds(page), all.map((c) => c.id));
    assert.equal(await page.isVisible('#load-more'), false, 'no more pages');

    // reopen: the history in order
    await page.click(`#conversations li[data-id="${hist}"] .open`);
    await page.waitForFunction(() => document.querySelectorAll('#messages .answer').length === 1);
    assert.deepEqual(await page.$$eval('#messages > *', (els) => els.map((e) => [e.className, e.querySelector('.text')?.textContent ?? e.textContent])),
      [['question', first], ['answer', ANSWER]]);
    assert.equal(await page.getAttribute(`#conversations li[data-id="${hist}"]`, 'aria-current'), 'true');

    // a new question continues THAT conversation
    const next = unique('follow-up');
    const [state, text, , conv] = await ask(page, next);
    assert.equal(state, 'complete');
    assert.equal(text, ANSWER);
    assert.equal(conv, hist);
    const c = await ok(srv.port, u, 'GET', `/api/v1/conversations/${hist}`);
    assert.deepEqual(c.messages.map((m) => [m.role, m.role === 'user' ? m.content : m.status]),
      [['user', first], ['assistant', 'complete'], ['user', next], ['assistant', 'complete']]);
    const up = await upstreamFor(next);
    assert.deepEqual(up.messages.map((m) => m.content), [first, ANSWER, next], 'the history went upstream');
    assert.equal(await ok(srv.port, u, 'GET', '/api/v1/conversations').then((d) => d.conversations.length), 20, 'no new conversation');

    // after a turn the list is reloaded (one page, hist still first)
    await page.waitForFunction(() => document.querySelectorAll('#conversations li').length === 20);
    assert.equal((await sidebarIds(page))[0], hist);

    // New conversation: an empty view; its first question makes a new one that joins the list at the top
    await page.click('#new-conversation');
    assert.equal(await page.locator('#messages > *').count(), 0);
    const [, , , fresh] = await ask(page, unique('fresh'));
    assert.ok(fresh && !ids.includes(fresh), 'a new conversation');
    await page.waitForFunction((id) => document.querySelector('#conversations li')?.dataset.id === id, fresh);
    assert.equal(await page.getAttribute(`#conversations li[data-id="${fresh}"]`, 'aria-current'), 'true');

    // delete: dismissing the confirm keeps it; accepting deletes it (and clears the view)
    await page.click(`#conversations li[data-id="${hist}"] .open`);
    await page.waitForFunction(() => document.querySelectorAll('#messages .answer').length === 2);
    let asked = '';
    page.once('dialog', (d) => {
      asked = d.message();
      d.dismiss();
    });
    await page.click(`#conversations li[data-id="${hist}"] .delete`);
    assert.match(asked, /^Delete the conversation "chat 1 <b>&amp;<\/b>"/);
    assert.equal((await call(srv.port, u, 'GET', `/api/v1/conversations/${hist}`)).status, 200, 'kept');
    page.once('dialog', (d) => d.accept());
    await page.click(`#conversations li[data-id="${hist}"] .delete`);
    await page.waitForFunction((id) => !document.querySelector(`#conversations li[data-id="${id}"]`), hist);
    assert.equal((await call(srv.port, u, 'GET', `/api/v1/conversations/${hist}`)).status, 404, 'deleted');
    assert.equal(await page.locator('#messages > *').count(), 0, 'the deleted conversation left the view');
    assert.equal(await page.getAttribute(`#conversations li[data-id="${ids[20]}"] .delete`, 'aria-label'),
      'Delete conversation chat 21 <b>&amp;</b>', 'an accessible name, as text');

    // logging out leaves nothing of this account in the page
    await page.click('#logout');
    await page.waitForSelector('#login-panel', { state: 'visible' });
    assert.equal(await page.evaluate(() => document.querySelectorAll('#conversations li, #messages > *').length), 0);
    assert.deepEqual(problems, [], 'no console errors');
  } finally {
    await context.close();
  }
});

test("agent picker: the chosen agent's system prompt goes upstream and the new conversation keeps it; the create form shows a refusal", { timeout: 90000 }, async () => {
  const u = await newUser(srv.port);
  const prompt = `Talk like a pirate. <i>${unique('p')}</i>`;
  const a = await ok(srv.port, u, 'POST', '/api/v1/agents', { name: 'pirate', system_prompt: prompt }, 201);
  const { context, page, problems } = await loggedIn(srv.port, u);
  try {
    await page.waitForFunction(() => document.querySelectorAll('#agent option').length === 2);
    assert.deepEqual(await page.$$eval('#agent option', (os) => os.map((o) => [o.value, o.textContent])),
      [['', 'no agent'], [a.id, 'pirate']]);
    assert.equal(await page.inputValue('#agent'), '', 'no agent by default');
    await page.selectOption('#agent', a.id);
    const q = unique('ahoy');
    const [state, , , conv] = await ask(page, q);
    assert.equal(state, 'complete');
    const up = await upstreamFor(q);
    assert.deepEqual(up.messages[0], { role: 'system', content: prompt }, "the agent's system prompt first");
    assert.equal((await ok(srv.port, u, 'GET', `/api/v1/conversations/${conv}`)).agent_id, a.id);

    // "no agent" for a new conversation: no system prompt
    await page.click('#new-conversation');
    await page.selectOption('#agent', '');
    const q2 = unique('plain');
    await ask(page, q2);
    assert.equal((await upstreamFor(q2)).messages[0].role, 'user');

    // reopening the agent's conversation selects its agent again
    await page.click(`#conversations li[data-id="${conv}"] .open`);
    await page.waitForFunction((id) => document.getElementById('agent').value === id, a.id);

    // the form: a duplicate name is refused with the server's own message
    const dup = await call(srv.port, u, 'POST', '/api/v1/agents', { name: 'pirate' });
    assert.equal(dup.status, 409);
    await page.click('#agent-create summary');
    await page.fill('#agent-name', 'pirate');
    await page.fill('#agent-prompt', 'whatever');
    await page.click('#agent-save');
    await page.waitForFunction(() => document.getElementById('agent-error').textContent.length > 0);
    assert.equal(await page.textContent('#agent-error'), dup.j.message);
    assert.equal(await page.isVisible('#agent-form'), true, 'the form stays open');
    // a bad field: the 400's message
    const bad = await call(srv.port, u, 'POST', '/api/v1/agents', { name: '' });
    assert.equal(bad.status, 400);
    await page.fill('#agent-name', '');
    await page.click('#agent-save');
    await page.waitForFunction((m) => document.getElementById('agent-error').textContent === m, bad.j.message);

    // a good one: created, listed and selected
    await page.fill('#agent-name', 'parrot');
    await page.fill('#agent-prompt', 'Repeat everything.');
    await page.fill('#agent-model', 'parrot-model');
    await page.click('#agent-save');
    await page.waitForFunction(() => document.querySelectorAll('#agent option').length === 3);
    assert.equal(await page.textContent('#agent-error'), '');
    const parrot = (await ok(srv.port, u, 'GET', '/api/v1/agents')).agents.find((x) => x.name === 'parrot');
    assert.deepEqual([parrot.system_prompt, parrot.model], ['Repeat everything.', 'parrot-model']);
    assert.equal(await page.inputValue('#agent'), parrot.id, 'the new agent is selected');
    assert.equal(await page.isVisible('#agent-form'), false, 'the form closed');
    const q3 = unique('polly');
    await ask(page, q3);
    const up3 = await upstreamFor(q3);
    assert.deepEqual([up3.messages[0].content, up3.model], ['Repeat everything.', 'parrot-model']);
    // the browser itself logs the refused POSTs (409, 400); nothing else
    assert.deepEqual(problems.filter((p) => !/status of 40[09]/.test(p)), [], 'no other console errors');
  } finally {
    await context.close();
  }
});

test('API keys page: create (shown once, works), listed by prefix, revoke with a confirm → 401 within 5 s', { timeout: 90000 }, async () => {
  const u = await newUser(srv.port);
  const { context, page, problems } = await loggedIn(srv.port, u);
  try {
    await page.click('#show-keys');
    await page.waitForSelector('#keys-panel', { state: 'visible' });
    assert.equal(await page.isVisible('#chat'), false);
    await page.waitForSelector('#keys-empty', { state: 'visible' }); // no keys yet
    await page.fill('#key-name', 'laptop <script>');
    await page.click('#key-create');
    await page.waitForSelector('#key-new', { state: 'visible' });
    const key = await page.textContent('#key-value');
    assert.match(key, /^cl-[\w-]{43}$/);
    assert.match(await page.textContent('#key-new .warning'), /will not be shown again/);
    assert.equal(await page.getAttribute('#key-copy', 'type'), 'button');

    // the key works from outside the browser
    const models = await api(srv.port, 'GET', '/v1/models', { token: key });
    assert.equal(models.status, 200, models.text);
    assert.ok(Array.isArray(models.j.data));

    // listed by prefix, without the secret
    await page.waitForFunction(() => document.querySelectorAll('#keys tr').length === 1);
    const [listed] = (await ok(srv.port, u, 'GET', '/api/v1/keys')).keys;
    assert.deepEqual(await page.$$eval('#keys tr td', (tds) => tds.slice(0, 2).map((t) => t.textContent)),
      ['laptop <script>', listed.prefix]);
    assert.equal(listed.prefix, key.slice(0, 12));
    assert.equal(await page.isVisible('#keys-empty'), false);

    // the key is in no storage; after Done it is nowhere in the page
    const stored = await page.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }]));
    assert.ok(!stored.includes(key), 'not stored');
    await page.click('#key-done');
    assert.equal(await page.isVisible('#key-new'), false);
    assert.ok(!(await page.content()).includes(key), 'shown only once');

    // revoke: dismissed keeps it; accepted removes it
    page.once('dialog', (d) => d.dismiss());
    await page.click('#keys .revoke');
    assert.equal((await ok(srv.port, u, 'GET', '/api/v1/keys')).keys.length, 1);
    page.once('dialog', (d) => d.accept());
    await page.click('#keys .revoke');
    await page.waitForFunction(() => document.querySelectorAll('#keys tr').length === 0);
    assert.equal(await page.isVisible('#keys-empty'), true);
    assert.equal((await ok(srv.port, u, 'GET', '/api/v1/keys')).keys.length, 0);
    const t0 = Date.now();
    await eventually(async () => (await api(srv.port, 'GET', '/v1/models', { token: key })).status === 401, 5000,
      'the revoked key refused');
    assert.ok(Date.now() - t0 <= 5000);

    // back to the chat
    await page.click('#show-chat');
    assert.equal(await page.isVisible('#chat'), true);
    assert.equal(await page.isVisible('#keys-panel'), false);
    assert.deepEqual(problems, [], 'no console errors');
  } finally {
    await context.close();
  }
});

test('a rate-limited question says when to retry', { timeout: 60000 }, async () => {
  limited = await startChatServer(mock, pg, { retries: 0, rateLimitPerMinute: 1 });
  const u = await newUser(limited.port);
  const { context, page, problems } = await loggedIn(limited.port, u);
  try {
    const [s1] = await ask(page, unique('one'));
    assert.equal(s1, 'complete');
    const [s2, , meta] = await ask(page, unique('two'));
    assert.equal(s2, 'error');
    assert.match(meta, /^RATE_LIMITED: .+ — retry in \d+ s$/, meta);
    const n = Number(/retry in (\d+) s/.exec(meta)[1]);
    assert.ok(n >= 1 && n <= 60, `retry in ${n} s`);
    assert.deepEqual(problems, [], 'no console errors');
  } finally {
    await context.close();
  }
});
