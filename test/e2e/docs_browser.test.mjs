// /docs in headless Chromium (Debian's package, driven by playwright-core,
// as in browser.test.mjs): Swagger UI, served by chatloop from docs_dir,
// renders /openapi.json — the operations list shows the chat routes —
// with no console errors. The files come from scripts/docs-assets.sh
// (`make docs`; `make test` fetches them).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { launchChromium } from './lib/browser.mjs';
import { makeTest, startServer, withTimeout } from './lib/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const DOCS_DIR = process.env.CHATLOOP_DOCS_DIR || path.resolve(here, '../../var/docs');
const WAIT = 15000;

let browser;
let servers = [];
const test = makeTest(() => servers);

before(async () => {
  assert.ok(
    existsSync(path.join(DOCS_DIR, 'swagger-ui-bundle.js')),
    `Swagger UI is missing from ${DOCS_DIR}: run make docs (scripts/docs-assets.sh)`,
  );
  browser = await launchChromium();
});

after(async () => {
  const errors = [];
  if (browser) await withTimeout(browser.close(), 10000, 'browser close').catch((e) => errors.push(e));
  for (const s of servers) await s.stop().catch((e) => errors.push(e));
  if (errors.length) throw errors[0];
});

test('/docs renders the document in Swagger UI: the operations are listed, no console errors', { timeout: 60000 }, async () => {
  const s = await startServer({ docsDir: DOCS_DIR, auth: 'required', jwtSecret: 'docs-browser-secret-0123456789abcdef' });
  servers.push(s);
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    const problems = [];
    const offsite = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console.error: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('request', (req) => {
      if (!req.url().startsWith(`http://127.0.0.1:${s.port}/`) && !req.url().startsWith('data:')) offsite.push(req.url());
    });
    await page.goto(`http://127.0.0.1:${s.port}/docs`, { waitUntil: 'load' });
    const chat = page.locator('.opblock', { has: page.locator('[data-path="/api/v1/chat"]') });
    await chat.first().waitFor({ state: 'visible' });
    assert.ok((await chat.count()) >= 1, 'POST /api/v1/chat is listed');
    assert.equal(await page.locator('.opblock-post [data-path="/v1/chat/completions"]').count(), 1);
    assert.match(await page.locator('.info .title').first().textContent(), /chatloop/);
    assert.ok((await page.locator('.opblock').count()) > 30, 'every operation is listed');
    // the operation opens with its request body schema
    await chat.first().locator('.opblock-summary').first().click();
    await page.locator('.opblock.is-open .opblock-body').first().waitFor({ state: 'visible' });
    assert.deepEqual(problems, []);
    assert.deepEqual(offsite, [], 'the page asks no other host');
  } finally {
    await context.close();
  }
});
