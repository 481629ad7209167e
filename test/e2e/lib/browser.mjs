// Chromium for the browser-client tests (browser*.test.mjs): Debian's
// chromium driven by playwright-core, one fresh context per page, and the
// page's console errors collected so a test can insist there were none.
// Every wait in a page is bounded by WAIT.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { withTimeout } from './server.mjs';

export const CHROMIUM = process.env.CHATLOOP_CHROMIUM || '/usr/bin/chromium';
export const WAIT = 10000;

export async function launchChromium() {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/deps.sh installs Debian's chromium`);
  return withTimeout(
    chromium.launch({
      executablePath: CHROMIUM,
      timeout: 30000,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic',
      ],
    }),
    40000,
    'chromium launch',
  );
}

/**
 * A new page on chatloop at `port` in its own context: {context, page,
 * problems, url}; `problems` collects console errors and page errors.
 */
export async function openPage(browser, port, { viewport = { width: 1000, height: 750 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.setDefaultNavigationTimeout(WAIT);
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console.error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  const url = `http://127.0.0.1:${port}/`;
  await page.goto(url, { waitUntil: 'load' });
  return { context, page, problems, url };
}

/** Waits until the status line says the WebSocket is connected. */
export const waitConnected = (page) =>
  page.waitForFunction(() => /^connected/.test(document.getElementById('status').textContent));
