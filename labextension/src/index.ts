/**
 * nbdeploy sidebar: bundles and running servers, with serve / stop / open docs / push / delete,
 * a detail view (model card + plots) and server logs.  All data comes from the nbdeploy
 * Jupyter server extension (REST under {baseUrl}nbdeploy/); nothing here talks to BentoML.
 *
 * Rendering uses textContent only (never innerHTML with data), so names and messages from the
 * server cannot inject markup.  The one exception is the report tab (ReportView): it shows the
 * HTML report the server renders (every value escaped there) in an iframe sandboxed without
 * scripts, so even markup that slipped through could not run.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, InputDialog, MainAreaWidget, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<path class="jp-icon3" fill="#616161" d="M12 2 3 7v10l9 5 9-5V7l-9-5zm0 2.3 6.6 3.7L12 11.7 5.4 8 12 4.3zM5 9.7l6 3.4v6.6l-6-3.4V9.7zm8 10v-6.6l6-3.4v6.6l-6 3.4z"/>
</svg>`;

export const nbdeployIcon = new LabIcon({ name: 'nbdeploy:icon', svgstr: ICON_SVG });

// --- REST --------------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public hint?: string
  ) {
    super(message);
  }
}

interface IBundle {
  name: string;
  version: string;
  tag: string;
  created: string;
  size_bytes: number;
  variant: string | null;
  framework: string | null;
  task: string | null;
}

interface IServer {
  id: string;
  name: string;
  tag: string;
  url: string;
  port: number;
  pid: number;
  health: 'ready' | 'starting' | 'stopped';
  stable?: boolean;
  auth?: string;
  auth_hint?: string;
}

interface IRolloutVersion {
  tag: string;
  requests?: number;
  error_rate?: number;
  mean_ms?: number;
  compared_rows?: number;
  differ_share?: number | null;
}

interface IRollout {
  id: string;
  stable: boolean;
  primary: IRolloutVersion;
  canary: IRolloutVersion | null;
  weight?: number;
  previous?: { tag: string } | null;
}

interface ILog {
  text: string;
  offset: number;
  running: boolean;
}

interface IJob {
  id: string;
  kind: string;
  target: string;
  status: 'pending' | 'running' | 'done' | 'failed';
  result: any;
  error: { error: string; message: string; hint?: string } | null;
}

const MISSING =
  'The nbdeploy server extension is not running in this Jupyter server. ' +
  'Install nbdeploy in the environment Jupyter runs from (pip install nbdeploy), ' +
  'check `jupyter server extension list`, then restart JupyterLab.';

async function api<T = any>(
  path: string[],
  init: RequestInit = {},
  raw = false,
  query?: Record<string, string>
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  let url = URLExt.join(settings.baseUrl, 'nbdeploy', ...path.map(encodeURIComponent));
  if (query) {
    url += URLExt.objectToQueryString(query);
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (err) {
    throw new ApiError(0, `Cannot reach the Jupyter server: ${err}`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let hint: string | undefined;
    try {
      const body = await response.json();
      message = body.message || message;
      hint = body.hint;
    } catch {
      /* not JSON */
    }
    if (response.status === 404 && path[0] === 'info') {
      throw new ApiError(404, MISSING);
    }
    throw new ApiError(response.status, message, hint);
  }
  return (raw ? response : await response.json()) as T;
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

async function waitJob(job: IJob, timeoutMs = 180000): Promise<IJob> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const j = await api<IJob>(['jobs', job.id]);
    if (j.status === 'done' || j.status === 'failed') {
      return j;
    }
    await sleep(700);
  }
  throw new ApiError(0, `${job.kind} of ${job.target} is still running after ${timeoutMs / 1000} s`);
}

// --- small DOM helpers --------------------------------------------------------------------------

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') {
      node.className = v;
    } else {
      node.setAttribute(k, v);
    }
  }
  for (const c of children) {
    if (c !== null && c !== undefined) {
      node.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
  }
  return node;
}

function button(label: string, action: string, onClick: () => void, title = ''): HTMLButtonElement {
  const b = el('button', {
    class: `jp-Button jp-mod-styled nbdeploy-btn nbdeploy-btn-${action}`,
    'data-action': action,
    title: title || label
  }, label);
  b.addEventListener('click', ev => {
    ev.stopPropagation();
    onClick();
  });
  return b;
}

function size(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function when(iso: string): string {
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function fmt(v: any): string {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'number') {
    if (Number.isInteger(v) || Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
    return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : String(Number(v.toPrecision(3)));
  }
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** A key/value table of the scalar fields of an object (nested objects shortened). */
function kvTable(obj: Record<string, any>, skip: string[] = []): HTMLElement {
  const table = el('table', { class: 'nbdeploy-kv' });
  for (const [k, v] of Object.entries(obj)) {
    if (skip.includes(k) || v === null || v === undefined) continue;
    let text = fmt(v);
    if (text.length > 160) text = text.slice(0, 157) + '…';
    table.append(el('tr', {}, el('th', {}, k), el('td', {}, text)));
  }
  return table;
}

const isObj = (v: any): v is Record<string, any> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Only the scalar fields of an object (arrays of scalars joined), for a compact key/value table. */
function scalars(obj: any, skip: string[] = []): Record<string, any> {
  const out: Record<string, any> = {};
  if (!isObj(obj)) return out;
  for (const [k, v] of Object.entries(obj)) {
    if (skip.includes(k) || v === null || v === undefined) continue;
    if (Array.isArray(v)) {
      if (v.length && v.every(x => !isObj(x) && !Array.isArray(x))) out[k] = v.map(fmt).join(', ');
    } else if (!isObj(v)) {
      out[k] = v;
    }
  }
  return out;
}

/** A compact table (scrolls sideways in a narrow sidebar rather than wrapping numbers). */
function table(head: string[], rows: (string | number | boolean | null | undefined)[][]): HTMLElement {
  const t = el('table', { class: 'nbdeploy-table' }, el('tr', {}, ...head.map(h => el('th', {}, h))));
  for (const r of rows) {
    t.append(el('tr', {}, ...r.map(c => el('td', {}, fmt(c)))));
  }
  return el('div', { class: 'nbdeploy-scroll' }, t);
}

const shortProvider = (p: any) => (typeof p === 'string' ? p.replace(/ExecutionProvider$/, '') : p);

/** Verification, benchmark, quantization, serving and explanation summaries of a model card. */
function reportSections(r: Record<string, any>): HTMLElement[] {
  const out: HTMLElement[] = [];
  const section = (title: string, ...body: (HTMLElement | null)[]) => {
    const kept = body.filter((b): b is HTMLElement => b !== null);
    if (kept.length) out.push(el('h4', {}, title), ...kept);
  };
  const kv = (o: Record<string, any>) => (Object.keys(o).length ? kvTable(o) : null);

  if (isObj(r.verify)) {
    section('Verification', kv(scalars(r.verify, ['native_metric', 'onnx_metric', 'metric'])));
  }
  const opt = isObj(r.optimize) ? r.optimize : {};
  const bench = isObj(r.benchmark) ? r.benchmark : isObj(opt.benchmark) ? opt.benchmark : null;
  if (bench && Array.isArray(bench.entries)) {
    const rows: any[][] = [];
    for (const e of bench.entries) {
      if (e.error) {
        rows.push([e.variant, shortProvider(e.provider), '—', null, String(e.error)]);
        continue;
      }
      // one row and the largest batch: enough to compare variants in a narrow sidebar
      const pts: any[] = e.points || [];
      for (const p of pts.length > 2 ? [pts[0], pts[pts.length - 1]] : pts) {
        rows.push([e.variant, shortProvider(e.provider), p.batch_size, p.p50_ms, p.rows_per_s]);
      }
    }
    section('Benchmark', rows.length ? table(['variant', 'provider', 'batch', 'p50 ms', 'rows/s'], rows) : null);
  }
  const quant = isObj(r.quantization) ? r.quantization : isObj(opt.quantization) ? opt.quantization : null;
  if (quant || opt.chosen) {
    const variants = quant && Array.isArray(quant.variants) ? quant.variants : [];
    section('Quantization',
      kv(scalars({ chosen: opt.chosen ?? r.chosen_variant, reason: opt.reason, provider: opt.provider })),
      variants.length
        ? table(['variant', 'status', 'size', 'Δ', 'ok', 'p50 ms'], variants.map((v: any) => [
          v.name, v.status, typeof v.size_bytes === 'number' ? size(v.size_bytes) : null,
          v.delta === null || v.delta === undefined ? null : `${fmt(v.delta)} ${v.delta_unit || ''}`,
          v.within_tolerance, v.latency?.p50_ms_batch1]))
        : null);
  }
  if (isObj(r.serving)) {
    // what the bundle really runs with (the benchmark's hints are only an input to it)
    const sv = r.serving;
    const b = isObj(sv.batching) ? sv.batching : null;
    const why = isObj(sv.reasons) ? sv.reasons : {};
    section('Serving', kv(scalars({
      device: sv.device, workers: sv.workers, threads: sv.threads,
      batching: b ? `up to ${b.max_batch_size} rows` : 'off',
      'why batching': why.batching, 'why threads': why.threads
    })));
  } else if (isObj(opt.serving)) {
    const sv = opt.serving;
    section('Serving', kv(scalars({
      threads: sv.threads, batching: sv.batching?.enabled, 'max batch': sv.batching?.max_batch_size,
      'max latency ms': sv.batching?.max_latency_ms, why: sv.batching?.reason ?? sv.threads_reason
    })));
  }
  if (isObj(r.explain)) {
    const ex = r.explain;
    const methods = Array.isArray(ex.methods) ? ex.methods.map((m: any) => (isObj(m) ? m.method || m.name : m)) : [];
    section('Explanation', kv(scalars({ ...scalars(ex, ['feature_names', 'output_names']), methods,
      seconds: ex.timings?.total_s })));
  }
  return out;
}

// --- the panel ---------------------------------------------------------------------------------

function pct(v: number | null | undefined, digits = 1): string {
  return v === null || v === undefined ? '–' : `${(v * 100).toFixed(digits)}%`;
}

/** A stable server's versions: the one serving, a canary with its comparison, Promote/Rollback. */
function rolloutBox(r: IRollout, onPromote: () => void, onRollback: () => void): HTMLElement {
  const version = (tag: string) => tag.split(':')[1] || tag;
  const box = el('div', {
    class: 'nbdeploy-rollout', 'data-primary': r.primary.tag, 'data-canary': r.canary ? r.canary.tag : ''
  }, el('div', { class: 'nbdeploy-row' }, 'Serving ', el('b', { title: r.primary.tag }, version(r.primary.tag))));
  if (r.canary) {
    const c = r.canary;
    box.append(
      el('div', { class: 'nbdeploy-row nbdeploy-canary' }, 'Canary ', el('b', { title: c.tag }, version(c.tag)),
        ` · ${pct(r.weight, 0)} of requests`),
      table(['', 'requests', 'errors', 'mean ms'], [
        ['serving', r.primary.requests, pct(r.primary.error_rate), r.primary.mean_ms],
        ['canary', c.requests, pct(c.error_rate), c.mean_ms]]),
      el('div', { class: 'nbdeploy-meta nbdeploy-differ' },
        `Differing predictions: ${pct(c.differ_share)} of ${c.compared_rows ?? 0} compared rows`));
  }
  const actions = el('div', { class: 'nbdeploy-actions' });
  if (r.canary) {
    actions.append(button('Promote', 'promote', onPromote, `Send all requests to ${r.canary.tag}`),
      button('Rollback', 'rollback', onRollback, `Stop the canary; ${r.primary.tag} keeps serving`));
  } else if (r.previous) {
    actions.append(button('Rollback', 'rollback', onRollback, `Return to ${r.previous.tag}`));
  }
  if (actions.childElementCount) box.append(actions);
  return box;
}

export class NbdeployPanel extends Widget {
  private message: HTMLElement;
  private serversBox: HTMLElement;
  private bundlesBox: HTMLElement;
  private detailBox: HTMLElement;
  private canPush = false;
  private available = false;
  private timer: number | undefined;
  private logTimer: number | undefined;
  private busy = new Set<string>();
  private shownBundles = '';
  private openTab: ((tag: string) => void) | null;

  constructor(openTab: ((tag: string) => void) | null = null) {
    super();
    this.openTab = openTab;
    this.id = 'nbdeploy-sidebar';
    this.addClass('nbdeploy-panel');
    this.title.icon = nbdeployIcon;
    this.title.caption = 'nbdeploy: bundles and servers';

    const refresh = button('Refresh', 'refresh', () => void this.refresh(), 'Reload bundles and servers');
    this.message = el('div', { class: 'nbdeploy-message', role: 'status' });
    this.serversBox = el('div', { class: 'nbdeploy-servers' });
    this.bundlesBox = el('div', { class: 'nbdeploy-bundles' });
    this.detailBox = el('div', { class: 'nbdeploy-detail' });
    this.node.append(
      el('div', { class: 'nbdeploy-header' }, el('h2', {}, 'nbdeploy'), refresh),
      this.message,
      el('h3', {}, 'Running servers'),
      this.serversBox,
      el('h3', {}, 'Bundles'),
      this.bundlesBox,
      this.detailBox
    );
  }

  protected onAfterShow(): void {
    void this.refresh();
    // servers' health every 4 s, the bundle list every 20 s (new bundles from notebooks)
    let tick = 0;
    this.timer = window.setInterval(() => {
      void this.refreshServers(true);
      if (++tick % 5 === 0 && this.available) void this.refreshBundles(true);
    }, 4000);
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
    window.clearInterval(this.logTimer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    window.clearInterval(this.logTimer);
    super.dispose();
  }

  private say(text: string, kind: 'info' | 'error' | 'ok' = 'info', hint?: string): void {
    this.message.replaceChildren();
    if (!text) return;
    this.message.className = `nbdeploy-message nbdeploy-${kind}`;
    this.message.append(el('span', {}, text));
    if (hint) this.message.append(el('div', { class: 'nbdeploy-hint' }, hint));
  }

  private fail(what: string, err: unknown): void {
    if (err instanceof ApiError) {
      this.say(`${what}: ${err.message}`, 'error', err.hint);
    } else {
      this.say(`${what}: ${err}`, 'error');
    }
  }

  async refresh(): Promise<void> {
    try {
      const info = await api<{ push: boolean; version: string }>(['info']);
      this.available = true;
      this.canPush = info.push;
    } catch (err) {
      this.available = false;
      this.serversBox.replaceChildren();
      this.bundlesBox.replaceChildren();
      this.detailBox.replaceChildren();
      window.clearInterval(this.logTimer);
      this.fail('nbdeploy unavailable', err);
      this.message.classList.add('nbdeploy-missing');
      return;
    }
    if (this.message.classList.contains('nbdeploy-missing')) this.say('');
    await Promise.all([this.refreshServers(false), this.refreshBundles()]);
  }

  private async refreshServers(quiet: boolean): Promise<void> {
    if (!this.available) return;
    try {
      const { servers } = await api<{ servers: IServer[] }>(['servers']);
      const rollouts = new Map<string, IRollout>();
      await Promise.all(servers.filter(s => s.stable && s.health === 'ready').map(async s => {
        try {
          rollouts.set(s.id, await api<IRollout>(['servers', s.id, 'rollout']));
        } catch { /* stopped meanwhile: shown without its versions */ }
      }));
      this.renderServers(servers, rollouts);
    } catch (err) {
      if (!quiet) this.fail('Listing servers failed', err);
    }
  }

  private async refreshBundles(quiet = false): Promise<void> {
    try {
      const { bundles } = await api<{ bundles: IBundle[] }>(['bundles']);
      const key = JSON.stringify(bundles.map(b => b.tag));
      if (quiet && key === this.shownBundles) return; // keep the DOM (and focus) when nothing changed
      this.shownBundles = key;
      this.renderBundles(bundles);
    } catch (err) {
      if (!quiet) this.fail('Listing bundles failed', err);
    }
  }

  private renderServers(servers: IServer[], rollouts: Map<string, IRollout> = new Map()): void {
    if (!servers.length) {
      this.serversBox.replaceChildren(el('div', { class: 'nbdeploy-empty' }, 'No server running.'));
      return;
    }
    this.serversBox.replaceChildren(
      ...servers.map(s => {
        const health = el('span', { class: `nbdeploy-health nbdeploy-health-${s.health}`, title: `health: ${s.health}` }, s.health);
        const link = el('a', { href: s.url, target: '_blank', rel: 'noopener noreferrer', class: 'nbdeploy-url' }, s.url);
        return el('div', { class: 'nbdeploy-server', 'data-id': s.id, 'data-tag': s.tag, 'data-health': s.health },
          el('div', { class: 'nbdeploy-row' }, el('span', { class: 'nbdeploy-name' }, s.tag), health),
          el('div', { class: 'nbdeploy-row' }, link),
          s.auth_hint ? el('div', { class: 'nbdeploy-meta nbdeploy-auth-hint', title: s.auth_hint },
            'API key required (nbdeploy keys create NAME in a terminal)') : null,
          rollouts.has(s.id) ? rolloutBox(rollouts.get(s.id)!, () => void this.roll(s, 'promote'),
            () => void this.roll(s, 'rollback')) : null,
          el('div', { class: 'nbdeploy-actions' },
            button('Open docs', 'docs', () => window.open(s.url, '_blank', 'noopener'), `Open the served API docs at ${s.url}`),
            button('Logs', 'logs', () => void this.showLogs(s.id)),
            button('Stop', 'stop', () => void this.stop(s), `Stop ${s.id}`)));
      })
    );
  }

  private renderBundles(bundles: IBundle[]): void {
    if (!bundles.length) {
      this.bundlesBox.replaceChildren(el('div', { class: 'nbdeploy-empty' },
        'No bundles yet. In a notebook: nbdeploy.deploy(model, X) or %deploy model --sample X.'));
      return;
    }
    const byName = new Map<string, IBundle[]>();
    for (const b of bundles) {
      byName.set(b.name, [...(byName.get(b.name) || []), b]);
    }
    const groups: HTMLElement[] = [];
    for (const [name, versions] of byName) {
      const items = versions.map((b, i) =>
        el('li', { class: 'nbdeploy-bundle', 'data-tag': b.tag, 'data-name': b.name },
          el('div', { class: 'nbdeploy-row' },
            el('span', { class: 'nbdeploy-version', title: b.tag }, b.version),
            i === 0 ? el('span', { class: 'nbdeploy-latest' }, 'latest') : null),
          el('div', { class: 'nbdeploy-meta' },
            [b.framework, b.task, b.variant].filter(Boolean).join(' · ') + ` · ${size(b.size_bytes)} · ${when(b.created)}`),
          el('div', { class: 'nbdeploy-actions' },
            // the full report in a main-area tab (one per bundle); in-sidebar only without a shell
            button('Details', 'details', () => this.openTab ? this.openTab(b.tag) : void this.showReport(b.tag),
              `Open the report of ${b.tag} in a tab`),
            button('Serve', 'serve', () => void this.serve(b.tag), `Start bentoml serve ${b.tag}`),
            this.pushButton(b.tag),
            button('Delete', 'delete', () => void this.remove(b.tag), `Delete version ${b.version}`))));
      groups.push(el('div', { class: 'nbdeploy-group', 'data-name': name },
        el('div', { class: 'nbdeploy-group-name' }, name, el('span', { class: 'nbdeploy-count' }, ` (${versions.length})`)),
        el('ul', {}, ...items)));
    }
    this.bundlesBox.replaceChildren(...groups);
  }

  private pushButton(tag: string): HTMLButtonElement {
    const b = button('Push', 'push', () => void this.push(tag),
      this.canPush ? `Build an image of ${tag} and push it to a registry` : 'Push is not available in this install');
    b.disabled = !this.canPush;
    return b;
  }

  private async runJob(label: string, path: string[], body: object, key: string): Promise<IJob | null> {
    if (this.busy.has(key)) return null;
    this.busy.add(key);
    try {
      this.say(`${label}…`);
      const job = await api<IJob>(path, { method: 'POST', body: JSON.stringify(body) });
      const done = await waitJob(job);
      if (done.status === 'failed') {
        const e = done.error || { message: 'failed', hint: undefined };
        this.say(`${label} failed: ${e.message}`, 'error', e.hint);
        return null;
      }
      return done;
    } catch (err) {
      this.fail(`${label} failed`, err);
      return null;
    } finally {
      this.busy.delete(key);
    }
  }

  async serve(tag: string): Promise<void> {
    const p = this.runJob(`Starting ${tag}`, ['bundles', tag, 'serve'], {}, `serve:${tag}`);
    void this.refreshServers(true);
    const done = await p;
    if (done) this.say(`${done.result.tag} is serving at ${done.result.url}`, 'ok');
    await this.refreshServers(false);
  }

  async roll(s: IServer, op: 'promote' | 'rollback'): Promise<void> {
    const label = op === 'promote' ? `Promoting the canary of ${s.id}` : `Rolling back ${s.id}`;
    const done = await this.runJob(label, ['servers', s.id, op], {}, `${op}:${s.id}`);
    if (done) this.say(`${s.id} now serves ${done.result.tag}.`, 'ok');
    await this.refreshServers(false);
  }

  async stop(s: IServer): Promise<void> {
    const done = await this.runJob(`Stopping ${s.id}`, ['servers', s.id, 'stop'], {}, `stop:${s.id}`);
    if (done) this.say(`Stopped ${s.id}.`, 'ok');
    await this.refreshServers(false);
  }

  async push(tag: string): Promise<void> {
    const res = await InputDialog.getText({
      title: `Push ${tag}`,
      label: 'Image reference (registry/repository:tag)',
      placeholder: '127.0.0.1:5000/model:1.0'
    });
    if (!res.button.accept || !res.value) return;
    const done = await this.runJob(`Pushing ${tag} to ${res.value}`, ['bundles', tag, 'push'], { ref: res.value }, `push:${tag}`);
    if (done) this.say(`Pushed ${done.result?.pinned ?? res.value}`, 'ok');
  }

  async remove(tag: string): Promise<void> {
    const ok = await showDialog({
      title: 'Delete bundle version',
      body: `Delete ${tag} from the BentoML store? This cannot be undone.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!ok.button.accept) return;
    try {
      await api(['bundles', tag], { method: 'DELETE' });
      this.say(`Deleted ${tag}.`, 'ok');
      this.detailBox.replaceChildren();
    } catch (err) {
      this.fail(`Deleting ${tag} failed`, err);
    }
    await this.refreshBundles();
  }

  private closeButton(): HTMLButtonElement {
    return button('Close', 'close', () => {
      window.clearInterval(this.logTimer);
      this.detailBox.replaceChildren();
    });
  }

  async showReport(tag: string): Promise<void> {
    window.clearInterval(this.logTimer);
    let data: { tag: string; report: any };
    try {
      data = await api(['bundles', tag, 'report']);
    } catch (err) {
      this.fail(`Reading the report of ${tag} failed`, err);
      return;
    }
    const r = data.report || {};
    const box = el('div', { class: 'nbdeploy-report', 'data-tag': data.tag },
      el('div', { class: 'nbdeploy-header' }, el('h3', {}, data.tag), this.closeButton()));
    box.append(el('div', { class: 'nbdeploy-meta' }, r.description || ''));
    box.append(kvTable({ framework: r.framework, model: r.model_type, task: r.task, variant: r.chosen_variant,
      device: r.device, features: r.input_schema?.n_features, created: r.created }));

    if (Array.isArray(r.steps) && r.steps.length) {
      const t = el('table', { class: 'nbdeploy-steps' },
        el('tr', {}, el('th', {}, 'step'), el('th', {}, 'state'), el('th', {}, 'summary')));
      for (const s of r.steps) {
        t.append(el('tr', { class: `nbdeploy-step-${s.state}` },
          el('td', {}, String(s.step)), el('td', {}, String(s.state)), el('td', {}, s.summary ? String(s.summary) : '')));
      }
      box.append(el('h4', {}, 'Pipeline'), t);
    }
    box.append(...reportSections(r));
    const plots: string[] = r.plots || [];
    if (plots.length) {
      box.append(el('h4', {}, 'Plots'));
      for (const p of plots) {
        const img = el('img', { class: 'nbdeploy-plot', alt: p, title: p });
        box.append(el('figure', {}, img, el('figcaption', {}, p)));
        void this.loadPlot(data.tag, p, img);
      }
    }
    this.detailBox.replaceChildren(box);
    box.scrollIntoView({ block: 'nearest' });
  }

  private async loadPlot(tag: string, plot: string, img: HTMLImageElement): Promise<void> {
    try {
      const resp = await api<Response>(['bundles', tag, 'plots', plot], {}, true);
      img.src = URL.createObjectURL(await resp.blob());
    } catch (err) {
      img.alt = `${plot}: ${err instanceof Error ? err.message : err}`;
    }
  }

  async showLogs(id: string): Promise<void> {
    window.clearInterval(this.logTimer);
    let log: ILog;
    try {
      log = await api<ILog>(['servers', id, 'logs'], {}, false, { tail: '300' });
    } catch (err) {
      this.fail(`Reading the log of ${id} failed`, err);
      return;
    }
    const pre = el('pre', { class: 'nbdeploy-logs' }, log.text);
    this.detailBox.replaceChildren(el('div', { class: 'nbdeploy-logbox', 'data-id': id },
      el('div', { class: 'nbdeploy-header' }, el('h3', {}, `Log: ${id}`), this.closeButton()), pre));
    pre.scrollTop = pre.scrollHeight;
    let offset = log.offset;
    if (!log.running) return;
    // follow the log by polling for the bytes after `offset`
    this.logTimer = window.setInterval(async () => {
      try {
        const r = await api<ILog>(['servers', id, 'logs'], {}, false, { offset: String(offset) });
        if (r.text) {
          pre.textContent += r.text;
          pre.scrollTop = pre.scrollHeight;
        }
        offset = r.offset;
        if (!r.running) window.clearInterval(this.logTimer);
      } catch {
        /* transient; the next tick retries */
      }
    }, 2000);
  }
}

// --- the report in a main-area tab ----------------------------------------------------------------

/**
 * One bundle's full report in a main-area tab: the model card rendered by the server
 * (GET bundles/TAG/report.html: the same HTML report the notebook saves), in a sandboxed
 * iframe (no script runs in it; markup comes from the server, escaped there), plus the actions
 * serve / stop / push / delete and a status line that follows the bundle's servers and jobs.
 */
export class ReportView extends Widget {
  readonly tag: string;
  private status: HTMLElement;
  private frame: HTMLIFrameElement;
  private timer: number | undefined;
  private busy = false;
  private servers: IServer[] = [];
  private serveBtn: HTMLButtonElement;
  private stopBtn: HTMLButtonElement;
  private pushBtn: HTMLButtonElement;
  private keyBtn: HTMLButtonElement;
  private rolloutEl: HTMLElement;
  private keepNote = false; // an action's result stays in the status line until the next action

  constructor(tag: string, private onChange: () => void = () => undefined) {
    super();
    this.tag = tag;
    this.addClass('nbdeploy-report-tab');
    this.node.setAttribute('data-tag', tag);
    this.status = el('div', { class: 'nbdeploy-tab-status', role: 'status' });
    this.serveBtn = button('Serve', 'serve', () => void this.serve(), `Start bentoml serve ${tag}`);
    this.keyBtn = button('Serve with key', 'serve-key', () => void this.serve('key'),
      'Serve it so that clients must send an API key (nbdeploy keys)');
    this.stopBtn = button('Stop', 'stop', () => void this.stop(), 'Stop its servers');
    this.pushBtn = button('Push', 'push', () => void this.push(), 'Build an image and push it to a registry');
    const bar = el('div', { class: 'nbdeploy-tab-actions' }, this.serveBtn, this.keyBtn, this.stopBtn, this.pushBtn,
      button('Export', 'export', () => void this.exportArchive(),
        'Write the bundle as one archive (bentoml import reads it) under the Jupyter root folder'),
      button('Delete', 'delete', () => void this.remove(), `Delete ${tag}`),
      button('Reload', 'reload', () => void this.load(), 'Render the report again'));
    this.frame = el('iframe', { class: 'nbdeploy-report-frame', title: `report of ${tag}`,
      sandbox: 'allow-same-origin allow-popups allow-popups-to-escape-sandbox' });
    this.rolloutEl = el('div', { class: 'nbdeploy-tab-rollout' });
    this.node.append(el('div', { class: 'nbdeploy-tab-head' }, el('h2', {}, tag), bar), this.status,
      this.rolloutEl, this.frame);
  }

  protected onAfterAttach(): void {
    void this.load();
    void this.poll();
    // live status: the bundle's servers every 3 s while the tab is open
    this.timer = window.setInterval(() => void this.poll(), 3000);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this.timer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  private say(text: string, kind: 'info' | 'error' | 'ok' = 'info', hint?: string): void {
    this.status.className = `nbdeploy-tab-status nbdeploy-${kind}`;
    this.status.replaceChildren(el('span', {}, text));
    if (hint) this.status.append(el('div', { class: 'nbdeploy-hint' }, hint));
  }

  private fail(what: string, err: unknown): void {
    const e = err as ApiError;
    this.say(`${what}: ${e && e.message ? e.message : err}`, 'error', e?.hint);
  }

  async load(): Promise<void> {
    try {
      const r = await api<{ tag: string; html: string }>(['bundles', this.tag, 'report.html']);
      this.frame.srcdoc = `<!doctype html><html><head><meta charset="utf-8"><style>
        body{margin:8px 14px;background:#fff} img{cursor:zoom-in} img.nbd-full{cursor:zoom-out;width:auto!important;max-width:none!important}
        </style></head><body>${r.html}</body></html>`;
      this.frame.onload = () => {
        // a click shows a plot at full size, another click brings it back
        const doc = this.frame.contentDocument;
        doc?.querySelectorAll('img').forEach(img =>
          img.addEventListener('click', () => img.classList.toggle('nbd-full')));
      };
    } catch (err) {
      this.fail(`Reading the report of ${this.tag} failed`, err);
    }
  }

  private showServers(): void {
    const mine = this.servers.filter(s => s.tag === this.tag);
    this.serveBtn.disabled = this.busy || mine.length > 0;
    this.keyBtn.disabled = this.serveBtn.disabled;
    this.stopBtn.disabled = this.busy || mine.length === 0;
    if (this.busy) return;
    if (mine.length) {
      this.status.className = 'nbdeploy-tab-status nbdeploy-ok';
      this.status.replaceChildren(...mine.flatMap(s => [
        el('span', { class: `nbdeploy-health nbdeploy-health-${s.health}` }, s.health), ' at ',
        el('a', { href: s.url, target: '_blank', rel: 'noopener noreferrer', class: 'nbdeploy-url' }, s.url), ' · ',
        el('a', { href: `${s.url}/docs`, target: '_blank', rel: 'noopener noreferrer' }, 'API docs'), ' ',
        s.auth_hint ? el('div', { class: 'nbdeploy-auth-hint' }, `API key required. ${s.auth_hint}`) : '']));
    } else if (!this.status.classList.contains('nbdeploy-error') && !this.keepNote) {
      this.status.className = 'nbdeploy-tab-status';
      this.status.replaceChildren(el('span', {}, 'not serving'));
    }
  }

  /** Stable servers of this bundle's name: the version serving, a canary, Promote/Rollback. */
  private async showRollouts(): Promise<void> {
    const name = this.tag.split(':')[0];
    const stable = this.servers.filter(s => s.stable && s.name === name && s.health === 'ready');
    const boxes: HTMLElement[] = [];
    for (const s of stable) {
      try {
        const r = await api<IRollout>(['servers', s.id, 'rollout']);
        const box = rolloutBox(r, () => void this.roll(s, 'promote'), () => void this.roll(s, 'rollback'));
        box.setAttribute('data-id', s.id);
        box.querySelectorAll('button').forEach(b => { (b as HTMLButtonElement).disabled = this.busy; });
        boxes.push(box);
      } catch { /* stopped meanwhile */ }
    }
    this.rolloutEl.replaceChildren(...boxes);
  }

  async roll(s: IServer, op: 'promote' | 'rollback'): Promise<void> {
    const label = op === 'promote' ? `Promoting the canary of ${s.id}` : `Rolling back ${s.id}`;
    await this.job(label, ['servers', s.id, op], {});
  }

  private async poll(): Promise<void> {
    try {
      const { servers } = await api<{ servers: IServer[] }>(['servers']);
      this.servers = servers;
      this.showServers();
      await this.showRollouts();
    } catch {
      /* transient; the next tick retries */
    }
  }

  private async job(label: string, path: string[], body: object): Promise<IJob | null> {
    this.busy = true;
    this.keepNote = false;
    this.showServers();
    this.say(`${label}…`);
    try {
      const job = await api<IJob>(path, { method: 'POST', body: JSON.stringify(body) });
      const deadline = Date.now() + 600000;
      while (Date.now() < deadline) {
        const j = await api<IJob>(['jobs', job.id]);
        if (j.status === 'done') return j;
        if (j.status === 'failed') {
          const e = j.error || { message: 'failed', hint: undefined };
          this.say(`${label} failed: ${e.message}`, 'error', e.hint);
          return null;
        }
        const secs = Math.round((Date.now() - (deadline - 600000)) / 1000);
        this.say(`${label}… (${j.status}, ${secs} s)`);
        await sleep(700);
      }
      this.say(`${label}: still running after 10 min`, 'error');
      return null;
    } catch (err) {
      this.fail(`${label} failed`, err);
      return null;
    } finally {
      this.busy = false;
      await this.poll();
      this.onChange();
    }
  }

  async serve(auth: 'off' | 'key' = 'off'): Promise<void> {
    this.status.classList.remove('nbdeploy-error');
    await this.job(`Starting ${this.tag}${auth === 'key' ? ' with API keys' : ''}`, ['bundles', this.tag, 'serve'],
      auth === 'key' ? { auth } : {});
  }

  async stop(): Promise<void> {
    for (const s of this.servers.filter(x => x.tag === this.tag)) {
      await this.job(`Stopping ${s.id}`, ['servers', s.id, 'stop'], {});
    }
  }

  async exportArchive(): Promise<void> {
    const [name, version] = this.tag.split(':');
    const res = await InputDialog.getText({
      title: `Export ${this.tag}`,
      label: 'Archive path, relative to the Jupyter root folder (.bento, .tar.gz, .tar.xz, .tar or .zip)',
      text: `${name}-${version}.bento`
    });
    if (!res.button.accept || !res.value) return;
    const done = await this.job(`Exporting ${this.tag} to ${res.value}`, ['bundles', this.tag, 'export'],
      { path: res.value });
    if (done) {
      this.say(`Exported to ${done.result.path} (${size(done.result.size_bytes)})`, 'ok');
      this.keepNote = true;
    }
  }

  async push(): Promise<void> {
    const res = await InputDialog.getText({
      title: `Push ${this.tag}`,
      label: 'Image reference (registry/repository:tag)',
      placeholder: '127.0.0.1:5000/model:1.0'
    });
    if (!res.button.accept || !res.value) return;
    const done = await this.job(`Pushing ${this.tag} to ${res.value}`, ['bundles', this.tag, 'push'], { ref: res.value });
    if (done) this.say(`Pushed ${done.result?.pinned ?? res.value}`, 'ok');
  }

  async remove(): Promise<void> {
    const ok = await showDialog({
      title: 'Delete bundle version',
      body: `Delete ${this.tag} from the BentoML store? This cannot be undone.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!ok.button.accept) return;
    try {
      await api(['bundles', this.tag], { method: 'DELETE' });
      this.onChange();
      this.parent?.dispose();   // the MainAreaWidget: its bundle is gone
    } catch (err) {
      this.fail(`Deleting ${this.tag} failed`, err);
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbdeploy:sidebar',
  description: 'nbdeploy bundles and servers in the left sidebar',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const tabs = new Map<string, MainAreaWidget<ReportView>>();
    // one tab per bundle, reused when it is already open
    const openReport = (tag: string): void => {
      const open = tabs.get(tag);
      if (open && !open.isDisposed) {
        app.shell.activateById(open.id);
        return;
      }
      const view = new ReportView(tag, () => void panel.refresh());
      const w = new MainAreaWidget({ content: view });
      w.id = `nbdeploy-report-${tag.replace(/[^A-Za-z0-9_-]/g, '-')}`;
      w.title.label = tag;
      w.title.icon = nbdeployIcon;
      w.title.closable = true;
      w.disposed.connect(() => tabs.delete(tag));
      tabs.set(tag, w);
      app.shell.add(w, 'main');
      app.shell.activateById(w.id);
    };
    const panel = new NbdeployPanel(openReport);
    app.shell.add(panel, 'left', { rank: 900 });
    if (restorer) restorer.add(panel, 'nbdeploy-sidebar');
    app.commands.addCommand('nbdeploy:open', {
      label: 'Show nbdeploy bundles and servers',
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand('nbdeploy:report', {
      label: 'Open an nbdeploy report',
      execute: args => openReport(String(args.tag))
    });
    app.commands.addCommand('nbdeploy:refresh', {
      label: 'Refresh nbdeploy',
      execute: () => panel.refresh()
    });
  }
};

export default plugin;
