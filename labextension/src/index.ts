/**
 * nbdeploy in JupyterLab: the plugin that puts the sidebar (panel.ts) in the left area and opens
 * bundle reports in main-area tabs (report.ts), one per bundle.  All data comes from the nbdeploy
 * Jupyter server extension (REST under {baseUrl}nbdeploy/, api.ts); nothing here talks to BentoML.
 *
 * Rendering uses textContent only (never innerHTML with data, render.ts), so names and messages
 * from the server cannot inject markup.  The one exception is the report tab: it shows the HTML
 * report the server renders (every value escaped there) in an iframe sandboxed without scripts,
 * so even markup that slipped through could not run.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';

import { NbdeployPanel } from './panel';
import { nbdeployIcon } from './render';
import { ReportView } from './report';

export { ApiError } from './api';
export { nbdeployIcon } from './render';
export { NbdeployPanel } from './panel';
export { ReportView } from './report';

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
