/**
 * The REST client of the nbdeploy Jupyter server extension ({baseUrl}nbdeploy/...): the shapes
 * it answers with, one request function that turns error bodies into ApiError (message + hint),
 * and polling of the jobs that long actions (serve, stop, push, export) run as.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public hint?: string
  ) {
    super(message);
  }
}

export interface IBundle {
  name: string;
  version: string;
  tag: string;
  created: string;
  size_bytes: number;
  variant: string | null;
  framework: string | null;
  task: string | null;
}

export interface IServer {
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

export interface IRolloutVersion {
  tag: string;
  requests?: number;
  error_rate?: number;
  mean_ms?: number;
  compared_rows?: number;
  differ_share?: number | null;
}

export interface IRollout {
  id: string;
  stable: boolean;
  primary: IRolloutVersion;
  canary: IRolloutVersion | null;
  weight?: number;
  previous?: { tag: string } | null;
}

export interface ILog {
  text: string;
  offset: number;
  running: boolean;
}

/** A job's latest progress report: fraction 0..1 (null while unknown) and the step in progress. */
export interface IProgress {
  fraction: number | null;
  message: string;
  updated: number | null;
}

export interface IJob {
  id: string;
  kind: string;
  target: string;
  status: 'pending' | 'running' | 'done' | 'failed';
  created: number;
  finished: number | null;
  result: any;
  error: { error: string; message: string; hint?: string } | null;
  progress?: IProgress;
}

/** Ready-to-run calls of a bundle's /predict (null for inputs that are not feature rows). */
export interface ISnippets {
  tag: string;
  url: string | null;
  curl: string | null;
  python: string | null;
}

const MISSING =
  'The nbdeploy server extension is not running in this Jupyter server. ' +
  'Install nbdeploy in the environment Jupyter runs from (pip install nbdeploy), ' +
  'check `jupyter server extension list`, then restart JupyterLab.';

export async function api<T = any>(
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

export const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** Poll a job until it is done or failed; ``onPoll`` sees each state (its progress) on the way. */
export async function waitJob(job: IJob, timeoutMs = 180000, onPoll?: (j: IJob) => void): Promise<IJob> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const j = await api<IJob>(['jobs', job.id]);
    onPoll?.(j);
    if (j.status === 'done' || j.status === 'failed') {
      return j;
    }
    await sleep(700);
  }
  throw new ApiError(0, `${job.kind} of ${job.target} is still running after ${timeoutMs / 1000} s`);
}

/** Start a long action (POST, answered 202 with a job) and wait for its end. */
export async function runJob(path: string[], body: object, timeoutMs = 180000,
  onPoll?: (j: IJob) => void): Promise<IJob> {
  const job = await api<IJob>(path, { method: 'POST', body: JSON.stringify(body) });
  onPoll?.(job);
  return waitJob(job, timeoutMs, onPoll);
}
