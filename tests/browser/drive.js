// Drive JupyterLab's nbdeploy sidebar in headless Chromium (Playwright, no browser download).
// Env: LAB_URL (http://127.0.0.1:PORT/), LAB_TOKEN, BUNDLE_TAG, SHOT_DIR, CHROMIUM (default /usr/bin/chromium).
// Prints one JSON line {ok, steps, console_errors, ...}; exits non-zero on failure.
const { chromium } = require('playwright-core');
const path = require('path');

const LAB_URL = process.env.LAB_URL;
const TOKEN = process.env.LAB_TOKEN;
const TAG = process.env.BUNDLE_TAG;
const SHOT_DIR = process.env.SHOT_DIR || 'test-output';
const steps = [];
const consoleErrors = [];

function step(name) {
  steps.push({ name, t: Date.now() });
  console.error(`[drive] ${name}`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage']
  });
  let page;
  try {
    // JupyterLab registers a service worker; requests it handles would bypass page.route()
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, serviceWorkers: 'block' });
    page = await context.newPage();
    page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', e => consoleErrors.push(String(e)));
    page.setDefaultTimeout(60000);

    step('open JupyterLab');
    await page.goto(`${LAB_URL}lab?token=${TOKEN}`, { waitUntil: 'domcontentloaded' });
    const tab = page.locator('.jp-SideBar [data-id="nbdeploy-sidebar"]');
    await tab.waitFor({ state: 'visible', timeout: 120000 });

    step('open the nbdeploy panel');
    const panel = page.locator('#nbdeploy-sidebar');
    if (!(await panel.isVisible())) await tab.click();
    await panel.waitFor({ state: 'visible' });

    step('see the bundle');
    const bundle = panel.locator(`.nbdeploy-bundle[data-tag="${TAG}"]`);
    await bundle.waitFor({ state: 'visible' });

    step('open its report');
    await bundle.locator('[data-action="details"]').click();
    const report = panel.locator(`.nbdeploy-report[data-tag="${TAG}"]`);
    await report.waitFor({ state: 'visible' });
    const reportText = await report.innerText();
    if (!/Verification/.test(reportText) || !/passed/.test(reportText)) {
      throw new Error(`report does not show verification: ${reportText.slice(0, 300)}`);
    }

    if (process.env.EXPECT_PLOT) {
      step('see its plot');
      const img = report.locator(`img.nbdeploy-plot[alt="${process.env.EXPECT_PLOT}"]`);
      await img.waitFor({ state: 'visible' });
      await page.waitForFunction(
        sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; },
        `.nbdeploy-report img.nbdeploy-plot[alt="${process.env.EXPECT_PLOT}"]`);
      await img.scrollIntoViewIfNeeded();
      await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-report.png') });
      await panel.locator('[data-action="refresh"]').scrollIntoViewIfNeeded();
    }

    step('serve it');
    await bundle.locator('[data-action="serve"]').click();
    const ready = panel.locator(`.nbdeploy-server[data-tag="${TAG}"][data-health="ready"]`);
    await ready.waitFor({ state: 'visible', timeout: 150000 });
    const serverUrl = await ready.locator('.nbdeploy-url').innerText();
    const message = await panel.locator('.nbdeploy-message').innerText();

    step('read its log');
    await ready.locator('[data-action="logs"]').click();
    const logs = panel.locator('.nbdeploy-logbox pre.nbdeploy-logs');
    await logs.waitFor({ state: 'visible' });
    await page.waitForFunction(() => {
      const pre = document.querySelector('.nbdeploy-logbox pre.nbdeploy-logs');
      return pre && pre.textContent.trim().length > 0;
    });
    await panel.locator('.nbdeploy-logbox [data-action="close"]').click();

    step('screenshot while serving');
    await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-serving.png') });

    step('stop it');
    await ready.locator('[data-action="stop"]').click();
    await panel.locator(`.nbdeploy-server[data-tag="${TAG}"]`).waitFor({ state: 'detached', timeout: 90000 });
    await panel.locator('.nbdeploy-servers .nbdeploy-empty').waitFor({ state: 'visible' });
    await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-stopped.png') });

    step('a failing action shows its message, as text');
    const serveUrl = u => /\/nbdeploy\/bundles\/[^/]+\/serve$/.test(u.pathname);
    await page.route(serveUrl, route => route.fulfill({
      status: 400, contentType: 'application/json',
      body: JSON.stringify({ error: 'InvalidInputError', message: '<img src=x class=injected> boom', hint: 'a hint' })
    }));
    await bundle.locator('[data-action="serve"]').click();
    const msg = panel.locator('.nbdeploy-message.nbdeploy-error');
    await msg.waitFor({ state: 'visible' });
    const failText = await msg.innerText();
    if (!failText.includes('boom') || !failText.includes('a hint')) throw new Error(`failure message: ${failText}`);
    if (await panel.locator('img.injected').count()) throw new Error('server text was rendered as HTML');
    await page.unroute(serveUrl);

    step('a missing server extension is explained');
    const anyNbdeploy = u => u.pathname.includes('/nbdeploy/');
    await page.route(anyNbdeploy, route => route.fulfill({ status: 404, contentType: 'text/html', body: 'Not Found' }));
    await panel.locator('[data-action="refresh"]').click();
    const missing = panel.locator('.nbdeploy-message.nbdeploy-missing');
    await missing.waitFor({ state: 'visible' });
    const missingText = await missing.innerText();
    if (!/server extension is not running/.test(missingText)) throw new Error(`missing message: ${missingText}`);
    await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-missing-extension.png') });
    await page.unroute(anyNbdeploy);
    await panel.locator('[data-action="refresh"]').click();
    await bundle.waitFor({ state: 'visible' });
    step('done');
    console.log(JSON.stringify({ ok: true, steps, server_url: serverUrl, message, console_errors: consoleErrors }));
  } catch (err) {
    try {
      if (page) await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-failure.png') });
    } catch { /* ignore */ }
    console.log(JSON.stringify({ ok: false, error: String(err && err.stack || err), steps, console_errors: consoleErrors }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
