// What every browser script here shares: Debian's Chromium through playwright-core (no browser
// download), a page that records console errors, JupyterLab opened with its token, the nbdeploy
// panel, a step log, and one JSON result line at the end (exit code 1 on failure).
// Env: LAB_URL (http://127.0.0.1:PORT/), LAB_TOKEN, SHOT_DIR (default test-output), CHROMIUM.
const { chromium } = require('playwright-core');
const path = require('path');

const LAB_URL = process.env.LAB_URL;
const TOKEN = process.env.LAB_TOKEN;
const SHOT_DIR = process.env.SHOT_DIR || 'test-output';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

/**
 * Run ``body`` in a fresh Chromium page and print its result as one JSON line.
 * opts: {name: the log prefix, viewport, failureShot: file name of the screenshot taken on failure}.
 * body({page, context, step, result, shot}) fills ``result`` (kept even when it fails) and may
 * return more fields.  The page may use the clipboard (read and write), as a user who allowed it.
 */
async function run(opts, body) {
  const steps = [];
  const consoleErrors = [];
  const result = {};
  const step = name => { steps.push({ name, t: Date.now() }); console.error(`[${opts.name}] ${name}`); };
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROMIUM_ARGS });
  let page;
  try {
    // JupyterLab registers a service worker; requests it handles would bypass page.route()
    const context = await browser.newContext({ viewport: opts.viewport || { width: 1400, height: 900 }, serviceWorkers: 'block' });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(LAB_URL).origin });
    page = await context.newPage();
    page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', e => consoleErrors.push(String(e)));
    page.setDefaultTimeout(60000);
    const shot = (name, locator) => (locator || page).screenshot({ path: path.join(SHOT_DIR, name) });
    const more = await body({ page, context, step, result, shot });
    step('done');
    console.log(JSON.stringify({ ok: true, steps, ...result, ...(more || {}), console_errors: consoleErrors }));
  } catch (err) {
    try {
      if (page && opts.failureShot) await page.screenshot({ path: path.join(SHOT_DIR, opts.failureShot) });
    } catch { /* ignore */ }
    console.log(JSON.stringify({ ok: false, error: String(err && err.stack || err), steps, ...result, console_errors: consoleErrors }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

/** Open JupyterLab (``where``: 'lab' or 'lab/tree/NOTEBOOK'), logged in with the token. */
async function openLab(page, where = 'lab') {
  await page.goto(`${LAB_URL}${where}?token=${TOKEN}`, { waitUntil: 'domcontentloaded' });
}

/** The nbdeploy sidebar, opened (JupyterLab must be loading or loaded). */
async function openPanel(page) {
  const sideTab = page.locator('.jp-SideBar [data-id="nbdeploy-sidebar"]');
  await sideTab.waitFor({ state: 'visible', timeout: 120000 });
  const panel = page.locator('#nbdeploy-sidebar');
  if (!(await panel.isVisible())) await sideTab.click();
  await panel.waitFor({ state: 'visible' });
  return panel;
}

/**
 * Click a copy button of a snippets box and read back what was copied: through the Clipboard
 * API, or (``fallback``: the page's Clipboard API refuses) from the copy event that the
 * textarea fallback fires.  Returns {shown: the snippet's text, copied, label: the button's
 * text right after}.
 */
async function copySnippet(page, box, kind, fallback = false) {
  const details = box.locator('details.nbdeploy-snippets');
  if (!(await details.evaluate(d => d.open))) await details.locator('summary').click();
  const snippet = box.locator(`.nbdeploy-snippet[data-kind="${kind}"]`);
  const shown = await snippet.locator('pre').textContent();
  if (fallback) {
    await page.evaluate(() => {
      window.__nbdCopied = null;
      Object.defineProperty(navigator, 'clipboard', {
        configurable: true, get: () => ({ writeText: () => Promise.reject(new Error('refused')) })
      });
      // the fallback selects a textarea's text and runs execCommand('copy'): the event's target
      document.addEventListener('copy', e => {
        const t = e.target;
        window.__nbdCopied = t && typeof t.value === 'string' ? t.value : String(document.getSelection());
      }, { once: true });
    });
  }
  const button = snippet.locator(`[data-action="copy-${kind}"]`);
  await button.click();
  await snippet.locator(`[data-action="copy-${kind}"][data-copied]`).waitFor({ state: 'attached', timeout: 10000 });
  const label = await button.textContent();
  let copied;
  if (fallback) {
    copied = await page.evaluate(() => window.__nbdCopied);
    await page.evaluate(() => { delete navigator.clipboard; });   // the real one again
  } else {
    copied = await page.evaluate(() => navigator.clipboard.readText());
  }
  return { shown, copied, label };
}

/**
 * Record every state the progress bars of ``kind`` jobs started from now on go through (a
 * MutationObserver in the page; bars of jobs already shown are left out).  ``progressSeen(page)``
 * returns them in order: [{job, where: 'sidebar' | 'tab', state, fraction, step}, ...].
 */
async function watchProgress(page, kind) {
  await page.evaluate(k => {
    if (window.__nbdObserver) window.__nbdObserver.disconnect();
    const bars = () => document.querySelectorAll(`.nbdeploy-progress[data-kind="${k}"]`);
    const old = new Set([...bars()].map(p => p.getAttribute('data-job')));
    const last = new Map();
    window.__nbdProgress = [];
    const note = () => {
      for (const p of bars()) {
        const job = p.getAttribute('data-job');
        if (old.has(job)) continue;
        const where = p.closest('#nbdeploy-sidebar') ? 'sidebar' : p.closest('.nbdeploy-report-tab') ? 'tab' : 'other';
        const s = { job, where, state: p.getAttribute('data-state'), fraction: p.getAttribute('data-fraction'),
          step: (p.querySelector('.nbdeploy-progress-step') || {}).textContent };
        const key = `${where} ${job}`;
        if (last.get(key) !== JSON.stringify(s)) {
          last.set(key, JSON.stringify(s));
          window.__nbdProgress.push(s);
        }
      }
    };
    window.__nbdObserver = new MutationObserver(note);
    window.__nbdObserver.observe(document.body, { subtree: true, childList: true, attributes: true });
  }, kind);
}

const progressSeen = page => page.evaluate(() => window.__nbdProgress || []);

module.exports = { LAB_URL, TOKEN, SHOT_DIR, run, openLab, openPanel, copySnippet, watchProgress, progressSeen };
