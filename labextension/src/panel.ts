/**
 * The nbdeploy sidebar: bundles and running servers, with serve / stop / open docs / push /
 * delete, the progress of running jobs, snippets with copy buttons, a detail view (model card +
 * plots, used when there is no main area for the report tab) and server logs.
 */
import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { api, ApiError, IBundle, IJob, ILog, IRollout, IServer, ISnippets, runJob } from './api';
import {
  button, el, JobsView, kvTable, nbdeployIcon, reportSections, rolloutBox, size, snippetsBox, when
} from './render';

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
  private shownServers = '';
  private openTab: ((tag: string) => void) | null;
  private jobs = new JobsView();
  private jobTimer: number | undefined;
  private snippets = new Map<string, ISnippets | null>(); // by tag + url: fetched once per server

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
      this.jobs.node,
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
      void this.refreshJobs();
      if (++tick % 5 === 0 && this.available) void this.refreshBundles(true);
    }, 4000);
    // jobs started anywhere (the report tab, another browser tab) show their progress here:
    // every second while one runs
    this.jobTimer = window.setInterval(() => {
      if (this.jobs.active()) void this.refreshJobs();
    }, 1000);
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
    window.clearInterval(this.logTimer);
    window.clearInterval(this.jobTimer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    window.clearInterval(this.logTimer);
    window.clearInterval(this.jobTimer);
    super.dispose();
  }

  /** Progress of the server's jobs (serve, push, export, ...): running ones and recent ends. */
  private async refreshJobs(): Promise<void> {
    if (!this.available) return;
    try {
      const { jobs } = await api<{ jobs: IJob[] }>(['jobs']);
      this.jobs.merge(jobs, () => true);
    } catch {
      /* transient; the next tick retries */
    }
  }

  /** A server's snippets (curl / Python aimed at its URL), fetched once per server process:
   *  a restart on the same port (another pid, maybe with auth on) fetches them again. */
  private async serverSnippets(s: IServer): Promise<ISnippets | null> {
    const key = `${s.tag} ${s.url} ${s.pid} ${s.auth ?? 'off'}`;
    if (!this.snippets.has(key)) {
      for (const k of [...this.snippets.keys()]) {
        if (k.startsWith(`${s.tag} ${s.url} `)) this.snippets.delete(k); // that server's older process
      }
      try {
        this.snippets.set(key, await api<ISnippets>(['bundles', s.tag, 'snippets']));
      } catch {
        return null; // e.g. deleted meanwhile; asked again next time
      }
    }
    return this.snippets.get(key) ?? null;
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
      this.shownServers = '';
      this.detailBox.replaceChildren();
      window.clearInterval(this.logTimer);
      this.fail('nbdeploy unavailable', err);
      this.message.classList.add('nbdeploy-missing');
      return;
    }
    if (this.message.classList.contains('nbdeploy-missing')) this.say('');
    await Promise.all([this.refreshServers(false), this.refreshBundles(), this.refreshJobs()]);
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
      const snippets = new Map<string, ISnippets | null>();
      await Promise.all(servers.filter(s => s.health === 'ready').map(async s => {
        snippets.set(s.id, await this.serverSnippets(s));
      }));
      this.renderServers(servers, rollouts, snippets);
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

  private renderServers(servers: IServer[], rollouts: Map<string, IRollout> = new Map(),
    snippets: Map<string, ISnippets | null> = new Map()): void {
    // keep the DOM (an open snippet, focus, a "Copied" note) while nothing changed
    const key = JSON.stringify([servers, [...rollouts], [...snippets]]);
    if (key === this.shownServers) return;
    this.shownServers = key;
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
          snippetsBox(snippets.get(s.id) ?? null,
            !!this.serversBox.querySelector(`.nbdeploy-server[data-id="${CSS.escape(s.id)}"] details.nbdeploy-snippets[open]`)),
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
      const done = await runJob(path, body, 180000, j => this.jobs.update(j));
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
    try {
      const snips = snippetsBox(await api<ISnippets>(['bundles', data.tag, 'snippets']), true);
      if (snips) box.append(el('h4', {}, 'Call it'), snips);
    } catch {
      /* no snippets: the report stands without them */
    }
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
