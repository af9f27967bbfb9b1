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
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
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

    step('serve it');
    await bundle.locator('[data-action="serve"]').click();
    const ready = panel.locator(`.nbdeploy-server[data-tag="${TAG}"][data-health="ready"]`);
    await ready.waitFor({ state: 'visible', timeout: 150000 });
    const serverUrl = await ready.locator('.nbdeploy-url').innerText();
    const message = await panel.locator('.nbdeploy-message').innerText();

    step('screenshot while serving');
    await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-serving.png') });

    step('stop it');
    await ready.locator('[data-action="stop"]').click();
    await panel.locator(`.nbdeploy-server[data-tag="${TAG}"]`).waitFor({ state: 'detached', timeout: 90000 });
    await panel.locator('.nbdeploy-servers .nbdeploy-empty').waitFor({ state: 'visible' });
    await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-stopped.png') });
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
