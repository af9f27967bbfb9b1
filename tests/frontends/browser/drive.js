// Drive JupyterLab's nbdeploy sidebar in headless Chromium (Playwright, no browser download).
// Env: LAB_URL (http://127.0.0.1:PORT/), LAB_TOKEN, BUNDLE_TAG, SHOT_DIR, CHROMIUM (default /usr/bin/chromium),
// MODE ("serve", the default: Details opens the report tab, serve, logs, stop, error messages; or "push-delete": the Push
// button with PUSH_REF typed into its dialog, then the Delete button, cancelled once, then confirmed).
// Prints one JSON line {ok, steps, console_errors, ...}; exits non-zero on failure.
const path = require('path');
const { SHOT_DIR, run, openLab, openPanel, copySnippet, watchProgress, progressSeen } = require('./lab');

const TAG = process.env.BUNDLE_TAG;
let step;

// The sidebar's message after an action: waits until it reports success or failure.
async function outcome(page, startsWith, timeout) {
  await page.waitForFunction(prefix => {
    const m = document.querySelector('#nbdeploy-sidebar .nbdeploy-message');
    if (!m) return false;
    if (m.classList.contains('nbdeploy-error')) return true;
    return m.classList.contains('nbdeploy-ok') && m.textContent.startsWith(prefix);
  }, startsWith, { timeout });
  const m = page.locator('#nbdeploy-sidebar .nbdeploy-message');
  return { cls: await m.getAttribute('class'), text: await m.innerText() };
}

async function pushAndDelete(page, panel, bundle) {
  const REF = process.env.PUSH_REF;
  step('push: click Push');
  const pushBtn = bundle.locator('[data-action="push"]');
  if (await pushBtn.isDisabled()) throw new Error('the Push button is disabled');
  await pushBtn.click();
  const dialog = page.locator('.jp-Dialog');
  await dialog.waitFor({ state: 'visible' });
  step('push: type the image reference');
  await dialog.locator('input').fill(REF);
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-push-dialog.png') });
  await watchProgress(page, 'push');
  await dialog.locator('.jp-Dialog-button.jp-mod-accept').click();
  await dialog.waitFor({ state: 'detached' });
  step('push: its progress bar shows, then ends');
  const bar = panel.locator('.nbdeploy-jobs .nbdeploy-progress[data-kind="push"]');
  await bar.first().waitFor({ state: 'visible', timeout: 60000 });
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-push-progress.png') });
  step('push: wait for the job');
  const pushed = await outcome(page, 'Pushed ', 480000);
  await panel.locator('.nbdeploy-jobs .nbdeploy-progress[data-kind="push"][data-state="done"]')
    .waitFor({ state: 'visible', timeout: 30000 });
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-pushed.png') });
  if (!/nbdeploy-ok/.test(pushed.cls)) throw new Error(`push failed in the sidebar: ${pushed.text}`);
  const pushProgress = (await progressSeen(page)).filter(p => p.where === 'sidebar');

  step('delete: click Delete, then Cancel');
  await bundle.locator('[data-action="delete"]').click();
  await dialog.waitFor({ state: 'visible' });
  const question = await dialog.innerText();
  await dialog.locator('.jp-Dialog-button.jp-mod-reject').click();
  await dialog.waitFor({ state: 'detached' });
  await page.waitForTimeout(1000);
  if (!(await bundle.isVisible())) throw new Error('Cancel deleted the bundle');

  step('delete: click Delete, then confirm');
  await bundle.locator('[data-action="delete"]').click();
  await dialog.waitFor({ state: 'visible' });
  await dialog.locator('.jp-Dialog-button.jp-mod-warn').click();
  await dialog.waitFor({ state: 'detached' });
  const deleted = await outcome(page, 'Deleted ', 60000);
  if (!/nbdeploy-ok/.test(deleted.cls)) throw new Error(`delete failed in the sidebar: ${deleted.text}`);
  await bundle.waitFor({ state: 'detached' });
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-deleted.png') });
  return { pushed_message: pushed.text, delete_question: question, deleted_message: deleted.text,
    push_progress: pushProgress };
}

// MODE=canary: SERVER_ID is a stable server of BUNDLE_TAG with a canary CANARY_TAG in progress.
// The sidebar shows both versions and their comparison; Promote, then Rollback, change what it serves.
async function canary(page, panel) {
  const SID = process.env.SERVER_ID;
  const CANARY = process.env.CANARY_TAG;
  const server = panel.locator(`.nbdeploy-server[data-id="${SID}"]`);
  step('canary: see both versions');
  const box = server.locator(`.nbdeploy-rollout[data-primary="${TAG}"][data-canary="${CANARY}"]`);
  await box.waitFor({ state: 'visible', timeout: 60000 });
  // the comparison fills in as the test's load reaches both versions
  await page.waitForFunction(sel => {
    const d = document.querySelector(sel);
    return d && /Differing predictions: \d/.test(d.textContent);
  }, `.nbdeploy-server[data-id="${SID}"] .nbdeploy-differ`, { timeout: 60000 });
  const canaryText = await box.innerText();
  await box.scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-canary.png') });
  step('canary: Promote');
  await box.locator('[data-action="promote"]').click();
  const promoted = await outcome(page, `${SID} now serves`, 120000);
  if (!/nbdeploy-ok/.test(promoted.cls)) throw new Error(`promote failed in the sidebar: ${promoted.text}`);
  const after = server.locator(`.nbdeploy-rollout[data-primary="${CANARY}"][data-canary=""]`);
  await after.waitFor({ state: 'visible', timeout: 30000 });
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-promoted.png') });
  step('canary: open the report tab; Rollback there');
  await panel.locator(`.nbdeploy-bundle[data-tag="${TAG}"] [data-action="details"]`).click();
  const tabBox = page.locator(`.nbdeploy-report-tab[data-tag="${TAG}"] .nbdeploy-tab-rollout ` +
    `.nbdeploy-rollout[data-id="${SID}"][data-primary="${CANARY}"]`);
  await tabBox.waitFor({ state: 'visible', timeout: 30000 });
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-report-tab-rollout.png') });
  await tabBox.locator('[data-action="rollback"]').click();
  const tabBack = page.locator(`.nbdeploy-report-tab[data-tag="${TAG}"] .nbdeploy-tab-rollout ` +
    `.nbdeploy-rollout[data-id="${SID}"][data-primary="${TAG}"][data-canary=""]`);
  await tabBack.waitFor({ state: 'visible', timeout: 120000 });
  const rolled = await tabBack.innerText();
  step('canary: the sidebar follows');
  await server.locator(`.nbdeploy-rollout[data-primary="${TAG}"][data-canary=""]`)
    .waitFor({ state: 'visible', timeout: 30000 });
  return { canary_text: canaryText, promoted_message: promoted.text, tab_rolled_text: rolled };
}

run({ name: 'drive', failureShot: 'nbdeploy-sidebar-failure.png' }, async ({ page, step: log, result }) => {
  step = log;
  step('open JupyterLab');
  await openLab(page);

  step('open the nbdeploy panel');
  const panel = await openPanel(page);

  step('see the bundle');
  const bundle = panel.locator(`.nbdeploy-bundle[data-tag="${TAG}"]`);
  await bundle.waitFor({ state: 'visible' });

  if (process.env.MODE === 'canary') return canary(page, panel);
  if (process.env.MODE === 'push-delete') return pushAndDelete(page, panel, bundle);

  step('Details opens its report in a tab');
  await bundle.locator('[data-action="details"]').click();
  const tabView = page.locator(`.nbdeploy-report-tab[data-tag="${TAG}"]`);
  await tabView.waitFor({ state: 'visible' });
  const frame = page.frameLocator(`.nbdeploy-report-tab[data-tag="${TAG}"] iframe`);
  const report = frame.locator(`.nbd-report[data-tag="${TAG}"]`);
  await report.waitFor({ state: 'attached', timeout: 60000 });
  const reportText = await report.innerText();
  if (!/Verification/.test(reportText) || !/PASS/.test(reportText)) {
    throw new Error(`report does not show verification: ${reportText.slice(0, 300)}`);
  }
  if (await panel.locator('.nbdeploy-report').count()) throw new Error('Details also rendered the report in the sidebar');

  if (process.env.EXPECT_PLOT) {
    step('see its plot');
    const img = frame.locator(`img[alt="${process.env.EXPECT_PLOT}"]`);
    await img.waitFor({ state: 'attached' });
    const loaded = await img.evaluate(i => i.complete && i.naturalWidth > 0);
    if (!loaded) throw new Error(`plot ${process.env.EXPECT_PLOT} did not load in the report tab`);
    await img.scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-report.png') });
  }

  step('Details again reuses the tab');
  await bundle.locator('[data-action="details"]').click();
  await page.waitForTimeout(500);
  const tabs = await page.locator(`.nbdeploy-report-tab[data-tag="${TAG}"]`).count();
  if (tabs !== 1) throw new Error(`Details opened ${tabs} tabs for one bundle`);

  step('serve it');
  await watchProgress(page, 'serve');
  await bundle.locator('[data-action="serve"]').click();
  const ready = panel.locator(`.nbdeploy-server[data-tag="${TAG}"][data-health="ready"]`);
  await ready.waitFor({ state: 'visible', timeout: 150000 });
  const serverUrl = await ready.locator('.nbdeploy-url').innerText();
  const message = await panel.locator('.nbdeploy-message').innerText();
  await panel.locator('.nbdeploy-jobs .nbdeploy-progress[data-kind="serve"][data-state="done"]')
    .waitFor({ state: 'visible', timeout: 30000 });
  result.serve_progress = (await progressSeen(page)).filter(p => p.where === 'sidebar');

  step('copy its snippets: the Clipboard API, then the fallback');
  await ready.locator('details.nbdeploy-snippets').waitFor({ state: 'attached', timeout: 30000 });
  result.snippets_url = await ready.locator('details.nbdeploy-snippets').getAttribute('data-url');
  result.copy_curl = await copySnippet(page, ready, 'curl');
  result.copy_python_fallback = await copySnippet(page, panel.locator(`.nbdeploy-server[data-tag="${TAG}"]`), 'python', true);
  await page.screenshot({ path: path.join(SHOT_DIR, 'nbdeploy-sidebar-snippets.png') });

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
  return { server_url: serverUrl, message };
});
