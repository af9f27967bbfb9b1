// Drive the %deploy widget in a JupyterLab notebook, in headless Chromium (Playwright, Debian's chromium).
// Env: LAB_URL, LAB_TOKEN, NOTEBOOK (path under the lab's root), SHOT_DIR, CHROMIUM.
// Runs every cell, then checks the step rows, the tabs, Serve/Stop, the API docs links, a snippet's
// copy button (read back from the clipboard) and the explain-row picker,
// saves the notebook, and screenshots each state.  Prints one JSON line; exits non-zero on failure.
const { run, openLab } = require('./lab');

const NOTEBOOK = process.env.NOTEBOOK;

run({ name: 'widget', viewport: { width: 1280, height: 1500 }, failureShot: 'nbdeploy-widget-failure.png' },
  async ({ page, context, step, result, shot: screenshot }) => {
  const shot = (name, locator) => screenshot(`nbdeploy-widget-${name}.png`, locator);
  step('open the notebook');
  await openLab(page, `lab/tree/${NOTEBOOK}`);
  const nb = page.locator('.jp-NotebookPanel');
  await nb.waitFor({ state: 'visible', timeout: 120000 });
  await page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').waitFor({ timeout: 120000 }).catch(() => {});
  const kernelDialog = page.locator('.jp-Dialog .jp-Dialog-button.jp-mod-accept');
  if (await kernelDialog.isVisible().catch(() => false)) await kernelDialog.click();
  await page.locator('.jp-Notebook-ExecutionIndicator, .jp-KernelStatus').first().waitFor({ timeout: 60000 }).catch(() => {});
  await page.waitForFunction(() => /Idle/.test(document.body.innerText), null, { timeout: 120000 }).catch(() => {});
  await page.waitForTimeout(1000);   // kernel connected

  step('run all cells');
  await page.locator('.lm-MenuBar-itemLabel', { hasText: /^Run$/ }).click();
  await page.locator('.lm-Menu-itemLabel', { hasText: /^Run All Cells$/ }).click();

  step('the widget appears with live step rows');
  const widget = page.locator('.jp-OutputArea-output .widget-vbox').filter({ hasText: 'nbdeploy' }).first();
  await widget.waitFor({ state: 'visible', timeout: 120000 });
  await page.locator('.jp-OutputArea-output span[title="running"]').first().waitFor({ state: 'visible', timeout: 120000 })
    .then(async () => { result.sawRunning = true; await shot('running'); }).catch(() => { result.sawRunning = false; });

  step('the run ends: built, tabs shown');
  await widget.locator('text=✔ built').waitFor({ state: 'visible', timeout: 300000 });
  const tabBar = widget.locator('.lm-TabBar-tab');
  await tabBar.first().waitFor({ state: 'visible' });
  result.tabs = await tabBar.allInnerTexts();
  result.rowStates = await widget.locator('span[title]').evaluateAll(
    spans => spans.map(s => s.getAttribute('title')).filter(t => ['done', 'running', 'pending', 'failed', 'skipped', 'not requested'].includes(t)));
  await widget.scrollIntoViewIfNeeded();
  await shot('summary', widget);

  for (const [i, name] of [[1, 'benchmark'], [2, 'quantization'], [3, 'explanations'], [4, 'bundle']]) {
    step(`open the ${name} tab`);
    await tabBar.nth(i).click();
    await page.waitForTimeout(400);
    const panel = widget.locator('.widget-tab-contents > .lm-Widget:not(.lm-mod-hidden)').first();
    result[`${name}Text`] = (await panel.innerText()).slice(0, 4000);
    result[`${name}Width`] = await panel.evaluate(p => ({ scroll: p.scrollWidth, client: p.clientWidth }));
    await shot(name, widget);
  }

  step('explain a row with the picker at the top of Explanations');
  await tabBar.nth(3).click();
  const explainTab = widget.locator('.widget-tab-contents > .lm-Widget:not(.lm-mod-hidden)').first();
  const rowInput = explainTab.locator('.widget-inline-hbox').filter({ hasText: 'row' }).locator('input').first();
  await rowInput.fill('3');
  await rowInput.press('Enter');
  await explainTab.locator('button', { hasText: 'Explain row' }).click();
  await explainTab.locator('text=SHAP, row 3').first().waitFor({ state: 'visible', timeout: 120000 });
  result.explainRow = (await explainTab.innerText()).slice(0, 600);
  await shot('explain-row', widget);

  step('Serve from the Bundle tab');
  await tabBar.nth(4).click();
  const bundleTab = widget.locator('.widget-tab-contents > .lm-Widget:not(.lm-mod-hidden)').first();
  await bundleTab.locator('button', { hasText: /^Serve$/ }).click();
  await bundleTab.locator('text=serving at').first().waitFor({ state: 'visible', timeout: 180000 });
  result.serving = await bundleTab.locator('a[href^="http://127.0.0.1:"]').first().getAttribute('href');

  step('the API docs and OpenAPI links while serving');
  const docs = widget.locator('a', { hasText: /^API docs$/ });
  await docs.first().waitFor({ state: 'visible', timeout: 30000 });
  result.apiDocsHrefs = await docs.evaluateAll(as => as.map(a => a.getAttribute('href')));
  result.openapiHrefs = await widget.locator('a', { hasText: /^OpenAPI$/ }).evaluateAll(as => as.map(a => a.getAttribute('href')));
  // GET them while the server runs (from Node: no CORS), as a click in a new tab would
  const docsResp = await page.request.get(result.apiDocsHrefs[0]);
  result.apiDocsGet = { status: docsResp.status(), type: docsResp.headers()['content-type'] || '',
    swagger: /swagger/i.test(await docsResp.text()) };
  const openapiResp = await page.request.get(result.openapiHrefs[0]);
  result.openapiGet = { status: openapiResp.status(), paths: openapiResp.ok() ? Object.keys((await openapiResp.json()).paths || {}) : [] };

  step('copy the curl snippet with its button');
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(page.url()).origin });
  // the snippets are re-rendered with the served address: wait for that version of the button
  const copy = bundleTab.locator(`button.nbd-copy[data-text^="curl -X POST ${result.serving.replace(/\/$/, '')}/predict"]`).first();
  await copy.waitFor({ state: 'visible', timeout: 30000 });
  result.copyLabelBefore = await copy.textContent();
  // every label the button shows after the click ("Copied" for 1.5 s, then "Copy" again)
  await copy.evaluate(b => {
    window.__nbdLabels = [];
    new MutationObserver(() => window.__nbdLabels.push(b.textContent))
      .observe(b, { childList: true, characterData: true, subtree: true });
  });
  await copy.click();
  await page.waitForFunction(() => window.__nbdLabels.length > 0, null, { timeout: 10000, polling: 50 });
  await shot('serving', widget);     // taken at once: most likely still showing "Copied"
  result.copyLabels = await page.evaluate(() => window.__nbdLabels);
  result.copied = await page.evaluate(() => navigator.clipboard.readText());
  result.copyButtons = await bundleTab.locator('button.nbd-copy').count();

  step('Stop');
  await bundleTab.locator('button', { hasText: /^Stop$/ }).click();
  await bundleTab.locator('text=not serving').first().waitFor({ state: 'visible', timeout: 90000 });
  await shot('stopped', widget);

  step('save the notebook');
  await nb.click({ position: { x: 5, y: 5 } }).catch(() => {});
  await page.keyboard.press('Control+s');
  await page.waitForTimeout(2500);
});
