/**
 * The report tab: one bundle's full report in a main-area tab, with its actions.
 */
import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { api, ApiError, IJob, IRollout, IServer, ISnippets, runJob } from './api';
import { button, el, JobsView, rolloutBox, size, snippetsBox } from './render';

/**
 * One bundle's full report in a main-area tab: the model card rendered by the server
 * (GET bundles/TAG/report.html: the same HTML report the notebook saves), in a sandboxed
 * iframe (no script runs in it; markup comes from the server, escaped there), plus the actions
 * serve / stop / push / delete, a status line that follows the bundle's servers, the progress
 * of its jobs (from this tab or elsewhere), and its curl / Python snippets with copy buttons
 * (outside the iframe, which runs no script and so could not copy).
 */
export class ReportView extends Widget {
  readonly tag: string;
  private status: HTMLElement;
  private frame: HTMLIFrameElement;
  private timer: number | undefined;
  private jobTimer: number | undefined;
  private polling: Promise<void> = Promise.resolve();
  private pollQueued = false;
  private busy = false;
  private servers: IServer[] = [];
  private serveBtn: HTMLButtonElement;
  private stopBtn: HTMLButtonElement;
  private pushBtn: HTMLButtonElement;
  private keyBtn: HTMLButtonElement;
  private rolloutEl: HTMLElement;
  private snippetsEl: HTMLElement;
  private snippetsFor: string | null = null; // the server URL the shown snippets aim at ('' for none)
  private jobs = new JobsView();
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
    this.snippetsEl = el('div', { class: 'nbdeploy-tab-snippets' });
    this.node.append(el('div', { class: 'nbdeploy-tab-head' }, el('h2', {}, tag), bar), this.status,
      this.jobs.node, this.rolloutEl, this.snippetsEl, this.frame);
  }

  protected onAfterAttach(): void {
    void this.load();
    void this.poll();
    // live status: the bundle's servers every 3 s while the tab is open; a job started
    // elsewhere (the sidebar) every second while it runs
    this.timer = window.setInterval(() => void this.poll(), 3000);
    this.jobTimer = window.setInterval(() => {
      if (this.jobs.active()) void this.pollJobs();
    }, 1000);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this.timer);
    window.clearInterval(this.jobTimer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    window.clearInterval(this.jobTimer);
    super.dispose();
  }

  private async pollJobs(): Promise<void> {
    try {
      const { jobs } = await api<{ jobs: IJob[] }>(['jobs']);
      const mine = new Set(this.servers.filter(s => s.tag === this.tag).map(s => s.id));
      this.jobs.merge(jobs, j => j.target === this.tag || mine.has(j.target));
    } catch {
      /* transient; the next tick retries */
    }
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
        el('a', { href: `${s.url}/`, target: '_blank', rel: 'noopener noreferrer' }, 'API docs'), ' ',
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

  /** One poll at a time, in order (a poll after an action must not be overtaken by an older
   * one that still saw the server it stopped); at most one waits behind the running one. */
  private poll(): Promise<void> {
    if (this.pollQueued) return this.polling;
    this.pollQueued = true;
    this.polling = this.polling.then(() => {
      this.pollQueued = false;
      return this.pollOnce();
    });
    return this.polling;
  }

  private async pollOnce(): Promise<void> {
    try {
      const [{ servers }, { jobs }] = await Promise.all([
        api<{ servers: IServer[] }>(['servers']), api<{ jobs: IJob[] }>(['jobs'])]);
      this.servers = servers;
      const mine = new Set(servers.filter(s => s.tag === this.tag).map(s => s.id));
      this.jobs.merge(jobs, j => j.target === this.tag || mine.has(j.target));
      this.showServers();
      await this.showRollouts();
      await this.showSnippets();
    } catch {
      /* transient; the next tick retries */
    }
  }

  /** The snippets, aimed at this version's running server (fetched again when that changes). */
  private async showSnippets(): Promise<void> {
    const ready = this.servers.find(s => s.tag === this.tag && s.health === 'ready');
    const url = ready ? ready.url : '';
    if (url === this.snippetsFor) return;
    const open = !!this.snippetsEl.querySelector('details[open]');
    const snips = snippetsBox(await api<ISnippets>(['bundles', this.tag, 'snippets']), open);
    this.snippetsFor = url;
    this.snippetsEl.replaceChildren(...(snips ? [snips] : []));
  }

  private async job(label: string, path: string[], body: object): Promise<IJob | null> {
    this.busy = true;
    this.keepNote = false;
    this.showServers();
    this.say(`${label}…`);
    try {
      const t0 = Date.now();
      const j = await runJob(path, body, 600000, polled => {
        this.jobs.update(polled);
        if (polled.status === 'pending' || polled.status === 'running') {
          this.say(`${label}… (${polled.status}, ${Math.round((Date.now() - t0) / 1000)} s)`);
        }
      });
      if (j.status === 'done') return j;
      const e = j.error || { message: 'failed', hint: undefined };
      this.say(`${label} failed: ${e.message}`, 'error', e.hint);
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
