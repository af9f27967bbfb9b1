/**
 * Rendering helpers shared by the sidebar (panel.ts) and the report tab (report.ts): DOM
 * building with textContent only (never innerHTML with data, so names and messages from the
 * server cannot inject markup), number formats, report sections, the rollout box, snippets with
 * copy buttons and job progress bars.
 */
import { LabIcon } from '@jupyterlab/ui-components';

import { IJob, IRollout, ISnippets } from './api';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<path class="jp-icon3" fill="#616161" d="M12 2 3 7v10l9 5 9-5V7l-9-5zm0 2.3 6.6 3.7L12 11.7 5.4 8 12 4.3zM5 9.7l6 3.4v6.6l-6-3.4V9.7zm8 10v-6.6l6-3.4v6.6l-6 3.4z"/>
</svg>`;

export const nbdeployIcon = new LabIcon({ name: 'nbdeploy:icon', svgstr: ICON_SVG });

// --- small DOM helpers --------------------------------------------------------------------------

export function el<K extends keyof HTMLElementTagNameMap>(
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

export function button(label: string, action: string, onClick: () => void, title = ''): HTMLButtonElement {
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

export function size(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function when(iso: string): string {
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function fmt(v: any): string {
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
export function kvTable(obj: Record<string, any>, skip: string[] = []): HTMLElement {
  const table = el('table', { class: 'nbdeploy-kv' });
  for (const [k, v] of Object.entries(obj)) {
    if (skip.includes(k) || v === null || v === undefined) continue;
    let text = fmt(v);
    if (text.length > 160) text = text.slice(0, 157) + '…';
    table.append(el('tr', {}, el('th', {}, k), el('td', {}, text)));
  }
  return table;
}

export const isObj = (v: any): v is Record<string, any> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Only the scalar fields of an object (arrays of scalars joined), for a compact key/value table. */
export function scalars(obj: any, skip: string[] = []): Record<string, any> {
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
export function table(head: string[], rows: (string | number | boolean | null | undefined)[][]): HTMLElement {
  const t = el('table', { class: 'nbdeploy-table' }, el('tr', {}, ...head.map(h => el('th', {}, h))));
  for (const r of rows) {
    t.append(el('tr', {}, ...r.map(c => el('td', {}, fmt(c)))));
  }
  return el('div', { class: 'nbdeploy-scroll' }, t);
}

export const shortProvider = (p: any) => (typeof p === 'string' ? p.replace(/ExecutionProvider$/, '') : p);

/** Verification, benchmark, quantization, serving and explanation summaries of a model card. */
export function reportSections(r: Record<string, any>): HTMLElement[] {
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

export function pct(v: number | null | undefined, digits = 1): string {
  return v === null || v === undefined ? '–' : `${(v * 100).toFixed(digits)}%`;
}

/** A stable server's versions: the one serving, a canary with its comparison, Promote/Rollback. */
export function rolloutBox(r: IRollout, onPromote: () => void, onRollback: () => void): HTMLElement {
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


// --- copying snippets -------------------------------------------------------------------------------

/** Put ``text`` on the clipboard: the Clipboard API where the page may use it, else a hidden
 * textarea and execCommand('copy') (plain http origins, older browsers). True when it worked. */
export async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* refused (no permission, no focus): try the fallback */
  }
  const area = el('textarea', { class: 'nbdeploy-copy-fallback', readonly: '', 'aria-hidden': 'true' });
  area.value = text;
  area.style.position = 'fixed';
  area.style.top = '-1000px';
  area.style.opacity = '0';
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** A button that copies ``text()`` and says so for a moment ("Copied" / "Copy failed"). */
export function copyButton(label: string, action: string, text: () => string): HTMLButtonElement {
  const b = button(label, action, async () => {
    const ok = await copyText(text());
    b.textContent = ok ? 'Copied' : 'Copy failed: select the text';
    b.setAttribute('data-copied', ok ? 'yes' : 'no');
    window.setTimeout(() => { b.textContent = label; }, 1500);
  }, `${label} to the clipboard`);
  b.classList.add('nbdeploy-copy');
  return b;
}

/** The curl and Python snippets of a bundle, each with a copy button; null if there are none. */
export function snippetsBox(s: ISnippets | null, open = false): HTMLElement | null {
  if (!s || (!s.curl && !s.python)) return null;
  const box = el('details', { class: 'nbdeploy-snippets', 'data-tag': s.tag, 'data-url': s.url || '' },
    el('summary', {}, s.url ? `Call ${s.url}/predict` : 'Call it (curl / Python)'));
  if (open) box.setAttribute('open', '');
  for (const [kind, label, text] of [['curl', 'curl', s.curl], ['python', 'Python', s.python]] as const) {
    if (!text) continue;
    box.append(el('div', { class: 'nbdeploy-snippet', 'data-kind': kind },
      el('div', { class: 'nbdeploy-row' }, el('b', {}, label), copyButton(`Copy ${label}`, `copy-${kind}`, () => text)),
      el('pre', { class: 'nbdeploy-snippet-text' }, text)));
  }
  return box;
}

// --- job progress -------------------------------------------------------------------------------------

const JOB_LABEL: Record<string, string> = {
  serve: 'Serving', stop: 'Stopping', push: 'Pushing', export: 'Exporting', promote: 'Promoting',
  rollback: 'Rolling back'
};

/** One job as a progress bar with its step and fraction; at its end a full bar ("done") or the
 * error inline with its hint. */
export function progressRow(j: IJob): HTMLElement {
  const p = j.progress || { fraction: null, message: '', updated: null };
  const ended = j.status === 'done' || j.status === 'failed';
  const bar = el('progress', { class: 'nbdeploy-progress-bar', max: '1' });
  if (j.status === 'done') {
    bar.value = 1;
  } else if (p.fraction !== null && p.fraction !== undefined) {
    bar.value = p.fraction;
  } // else: no value, an indeterminate bar
  const pctText = j.status === 'done' ? '100%' : p.fraction !== null && p.fraction !== undefined
    ? `${Math.round(p.fraction * 100)}%` : '';
  const step = j.status === 'failed' ? 'failed' : j.status === 'done' ? 'done' : p.message || j.status;
  const row = el('div', {
    class: `nbdeploy-progress nbdeploy-progress-${j.status}`, 'data-job': j.id, 'data-kind': j.kind,
    'data-target': j.target, 'data-state': j.status, 'data-fraction': String(j.status === 'done' ? 1 : p.fraction ?? '')
  },
  el('div', { class: 'nbdeploy-row' },
    el('span', { class: 'nbdeploy-progress-label' }, `${JOB_LABEL[j.kind] || j.kind} ${j.target}`),
    el('span', { class: 'nbdeploy-progress-pct' }, pctText)),
  bar,
  el('div', { class: 'nbdeploy-progress-step' }, step));
  if (j.status === 'failed' && j.error) {
    row.append(el('div', { class: 'nbdeploy-progress-error' }, j.error.message));
    if (j.error.hint) row.append(el('div', { class: 'nbdeploy-hint' }, j.error.hint));
  }
  if (ended) row.setAttribute('data-ended', 'yes');
  return row;
}

/** The jobs a view follows, drawn as progress rows; a finished one stays a while so that its
 * end is seen: ``doneMs`` when it worked, ``failedMs`` (longer: its error and hint) when not. */
export class JobsView {
  readonly node: HTMLElement;
  private jobs = new Map<string, { job: IJob; seen: number }>();
  private gone = new Set<string>(); // shown and timed out: not shown again

  constructor(private doneMs = 10000, private failedMs = 60000) {
    this.node = el('div', { class: 'nbdeploy-jobs', 'aria-live': 'polite' });
  }

  update(j: IJob, endedAt?: number): void {
    if (this.gone.has(j.id)) return;
    const known = this.jobs.get(j.id);
    const ended = (x: IJob) => x.status === 'done' || x.status === 'failed';
    // a job only moves forward: never let an older poll undo its end
    if (known && ended(known.job) && j.status !== known.job.status) return;
    // two polls in flight may answer out of order: keep the newer report
    const was = known?.job.progress?.updated ?? null;
    const now = j.progress?.updated ?? null;
    if (known && j.status === known.job.status && was !== null && now !== null && now < was) return;
    // ``seen``: when its end was first seen (how long a finished row stays counts from there)
    const seen = known && ended(known.job) ? known.seen : ended(j) ? endedAt ?? Date.now() : Date.now();
    this.jobs.set(j.id, { job: j, seen });
    this.render();
  }

  /** Jobs listed by the server (GET jobs): the ones still running, and recent ends. */
  merge(all: IJob[], keep: (j: IJob) => boolean): void {
    for (const j of all) {
      if (!keep(j) || this.gone.has(j.id)) continue;
      if ((j.status === 'done' || j.status === 'failed') && !this.jobs.has(j.id)) {
        const endedAt = (j.finished ?? 0) * 1000;
        if (Date.now() - endedAt > this.keepFor(j)) continue;   // ended before this view looked
        this.update(j, endedAt);
      } else {
        this.update(j);
      }
    }
    this.render();
  }

  private keepFor(j: IJob): number {
    return j.status === 'done' ? this.doneMs : j.status === 'failed' ? this.failedMs : Infinity;
  }

  active(): boolean {
    return [...this.jobs.values()].some(({ job }) => job.status === 'pending' || job.status === 'running');
  }

  private render(): void {
    const now = Date.now();
    for (const [id, { job, seen }] of this.jobs) {
      if (now - seen > this.keepFor(job)) {
        this.jobs.delete(id);
        this.gone.add(id);
      }
    }
    const rows = [...this.jobs.values()].sort((a, b) => a.job.created - b.job.created).map(({ job }) => progressRow(job));
    this.node.replaceChildren(...rows);
  }
}
