// Drive JupyterLab's nbdeploy report tab in headless Chromium (Playwright, Debian's chromium).
// Env: LAB_URL, LAB_TOKEN, BUNDLE_TAG (the bundle to report on), SECOND_TAG (another version of the
// same name, deleted from its own tab), SHOT_DIR, CHROMIUM.
// Prints one JSON line {ok, steps, sections, overflow, ...}; exits non-zero on failure.
const path = require('path');
const { SHOT_DIR, run, openLab, openPanel, copySnippet, watchProgress, progressSeen } = require('./lab');

const TAG = process.env.BUNDLE_TAG;
const SECOND = process.env.SECOND_TAG;
const shot = (page, name) => page.screenshot({ path: path.join(SHOT_DIR, `nbdeploy-report-${name}.png`) });

async function openTab(page, panel, tag) {
  const row = panel.locator(`.nbdeploy-bundle[data-tag="${tag}"]`);
  await row.waitFor({ state: 'visible' });
  await row.locator('[data-action="details"]').click();
  const view = page.locator(`.nbdeploy-report-tab[data-tag="${tag}"]`);
  await view.waitFor({ state: 'visible' });
  const frame = page.frameLocator(`.nbdeploy-report-tab[data-tag="${tag}"] iframe`);
  await frame.locator(`.nbd-report[data-tag="${tag}"]`).waitFor({ state: 'attached', timeout: 60000 });
  return { view, frame };
}

// What a reader would miss: elements that hide content sideways, tables wider than their box
// without a scroller, images not loaded.  Runs inside the report's frame.
function inspect() {
  const out = { hidden: [], unscrollable: [], images: [], sections: [], tables: 0 };
  out.sections = [...document.querySelectorAll('.nbd-report h4')].map(h => h.textContent);
  for (const e of document.querySelectorAll('.nbd-report *')) {
    const cs = getComputedStyle(e);
    if ((cs.overflowX === 'hidden' || cs.overflowX === 'clip') && e.scrollWidth > e.clientWidth + 1) {
      out.hidden.push(e.tagName + '.' + e.className);
    }
  }
  for (const t of document.querySelectorAll('.nbd-report table')) {
    out.tables++;
    const box = t.closest('.nbd-scroll');
    const fits = t.getBoundingClientRect().right <= document.documentElement.clientWidth + 1;
    const scrolls = box && getComputedStyle(box).overflowX === 'auto';
    if (!fits && !scrolls) out.unscrollable.push(t.innerText.slice(0, 40));
    // a cell cut by its own width (text-overflow) would also hide numbers
    for (const c of t.querySelectorAll('td,th')) {
      if (c.scrollWidth > c.clientWidth + 1) out.hidden.push('cell:' + c.innerText.slice(0, 20));
    }
  }
  for (const img of document.querySelectorAll('.nbd-report img')) {
    out.images.push({ alt: img.alt, natural: img.naturalWidth, shown: Math.round(img.getBoundingClientRect().width) });
  }
  out.docWidth = document.documentElement.scrollWidth;
  out.viewWidth = document.documentElement.clientWidth;
  return out;
}

run({ name: 'report', viewport: { width: 1400, height: 950 }, failureShot: 'nbdeploy-report-failure.png' },
  async ({ page, step, result }) => {
  step('open JupyterLab and the nbdeploy panel');
  await openLab(page);
  const panel = await openPanel(page);

  step('open the report tab');
  const { view, frame } = await openTab(page, panel, TAG);
  await page.waitForFunction(() => {
    const f = document.querySelector('.nbdeploy-report-tab iframe');
    const d = f && f.contentDocument;
    return d && [...d.images].every(i => i.complete && i.naturalWidth > 0);
  });
  result.first = await frame.locator('body').evaluate(inspect);
  await shot(page, 'tab');

  step('click a plot for full size, click again to bring it back');
  const img = frame.locator('.nbd-report img').first();
  await img.scrollIntoViewIfNeeded();
  await img.click();
  result.zoom = await img.evaluate(i => ({ cls: i.className, shown: Math.round(i.getBoundingClientRect().width), natural: i.naturalWidth }));
  await img.click();

  step('scroll to the explanations');
  await frame.locator('h4', { hasText: 'Explanations' }).scrollIntoViewIfNeeded();
  await shot(page, 'explanations');
  await frame.locator('h4', { hasText: 'Versions' }).scrollIntoViewIfNeeded();
  await shot(page, 'versions');

  step('a second click on Report reuses the tab');
  await openTab(page, panel, TAG);
  result.tabsForTag = await page.locator(`.nbdeploy-report-tab[data-tag="${TAG}"]`).count();

  step('its snippets are there before it serves, with copy buttons');
  const strip = view.locator('.nbdeploy-tab-snippets');
  await strip.locator('details.nbdeploy-snippets').waitFor({ state: 'attached', timeout: 30000 });
  result.snippetsBefore = await strip.locator('.nbdeploy-snippet[data-kind="curl"] pre').textContent();

  step('serve from the tab; its status and its progress follow');
  const status = view.locator('.nbdeploy-tab-status');
  await watchProgress(page, 'serve');
  await view.locator('[data-action="serve"]').click();
  await view.locator('.nbdeploy-tab-status .nbdeploy-health-ready').waitFor({ state: 'visible', timeout: 180000 });
  result.serving = await status.innerText();
  result.servingUrl = await status.locator('a.nbdeploy-url').getAttribute('href');
  await view.locator('.nbdeploy-jobs .nbdeploy-progress[data-kind="serve"][data-state="done"]')
    .waitFor({ state: 'visible', timeout: 30000 });
  result.serveProgress = (await progressSeen(page)).filter(p => p.where === 'tab');
  await shot(page, 'serving');

  step('copy the snippets, now aimed at the server: the Clipboard API, then the fallback');
  await strip.locator(`details.nbdeploy-snippets[data-url="${result.servingUrl}"]`).waitFor({ state: 'attached', timeout: 30000 });
  result.copyCurl = await copySnippet(page, strip, 'curl');
  result.copyPythonFallback = await copySnippet(page, strip, 'python', true);
  await shot(page, 'snippets');

  step('stop from the tab');
  await view.locator('[data-action="stop"]').click();
  await page.waitForFunction(tag => {
    const s = document.querySelector(`.nbdeploy-report-tab[data-tag="${tag}"] .nbdeploy-tab-status`);
    return s && s.textContent.trim() === 'not serving';
  }, TAG, { timeout: 90000 });
  result.stopped = await status.innerText();

  step('serve with an API key from the tab; it says how to get a key');
  await view.locator('[data-action="serve-key"]').click();
  await view.locator('.nbdeploy-tab-status .nbdeploy-health-ready').waitFor({ state: 'visible', timeout: 180000 });
  result.keyServing = await status.innerText();
  result.keyServingUrl = await status.locator('a.nbdeploy-url').getAttribute('href');
  result.sidebarKeyHint = await panel.locator(`.nbdeploy-server[data-tag="${TAG}"] .nbdeploy-auth-hint`).innerText();
  await shot(page, 'serving-key');
  await view.locator('[data-action="stop"]').click();
  await page.waitForFunction(tag => {
    const s = document.querySelector(`.nbdeploy-report-tab[data-tag="${tag}"] .nbdeploy-tab-status`);
    return s && s.textContent.trim() === 'not serving';
  }, TAG, { timeout: 90000 });

  step('export from the tab; a progress bar follows it to its end');
  await watchProgress(page, 'export');
  await view.locator('[data-action="export"]').click();
  const exportDialog = page.locator('.jp-Dialog');
  await exportDialog.waitFor({ state: 'visible' });
  await exportDialog.locator('input').fill('exported/report-tab.bento');
  await exportDialog.locator('.jp-Dialog-button.jp-mod-accept').click();
  await exportDialog.waitFor({ state: 'detached' });
  await page.waitForFunction(tag => {
    const s = document.querySelector(`.nbdeploy-report-tab[data-tag="${tag}"] .nbdeploy-tab-status`);
    return s && (/^Exported to /.test(s.textContent) || s.classList.contains('nbdeploy-error'));
  }, TAG, { timeout: 120000 });
  result.exported = await status.innerText();
  await view.locator('.nbdeploy-jobs .nbdeploy-progress[data-kind="export"][data-state="done"]')
    .waitFor({ state: 'visible', timeout: 30000 });
  result.exportProgress = (await progressSeen(page)).filter(p => p.where === 'tab');
  await shot(page, 'exported');

  step('delete the other version from its own tab');
  const second = await openTab(page, panel, SECOND);
  await second.view.locator('[data-action="delete"]').click();
  const dialog = page.locator('.jp-Dialog');
  await dialog.waitFor({ state: 'visible' });
  await dialog.locator('.jp-Dialog-button.jp-mod-warn').click();
  await page.locator(`.nbdeploy-report-tab[data-tag="${SECOND}"]`).waitFor({ state: 'detached', timeout: 60000 });
  await panel.locator(`.nbdeploy-bundle[data-tag="${SECOND}"]`).waitFor({ state: 'detached', timeout: 60000 });
  await shot(page, 'after-delete');
});
