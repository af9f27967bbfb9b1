// Build the federated extension into ../nbdeploy/labextension without `jupyter labextension build`
// (which, with JupyterLab 4.6, goes through jupyter_builder and needs network to fetch core metadata).
// Usage: node build.js [--development]
const { execFileSync } = require('child_process');
const path = require('path');
const fs = require('fs');

function corePath() {
  if (process.env.JUPYTERLAB_STAGING) return process.env.JUPYTERLAB_STAGING;
  const python = process.env.PYTHON || 'python3';
  const out = execFileSync(python, ['-c',
    'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))']);
  return out.toString().trim();
}

const core = corePath();
if (!fs.existsSync(path.join(core, 'package.json'))) {
  console.error(`JupyterLab staging folder not found at ${core}; set JUPYTERLAB_STAGING`);
  process.exit(1);
}
const builder = require.resolve('@jupyterlab/builder/lib/build-labextension.js');
const args = [builder, '--core-path', core];
if (process.argv.includes('--development')) args.push('--development');
args.push(__dirname);
execFileSync(process.execPath, args, { stdio: 'inherit', cwd: __dirname });
