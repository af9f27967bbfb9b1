"""Long actions (serve, stop, push, export) as jobs: the handler answers 202 + a job id at once,
the work runs in a thread pool, and the client polls ``GET /nbdeploy/jobs/{id}``.

A job started with ``progress=True`` hands its callable a reporter ``report(fraction, message)``
(``fraction`` in 0..1, or ``None`` when unknown); the job's ``progress`` field carries the
latest report, so that a front end draws a bar with its step, sees it end, or shows the error.

Nothing here runs on the event loop except bookkeeping, so a slow ``bentoml serve`` start
or a registry push never blocks Jupyter.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import NbdeployError, http_status

#: jobs kept in memory (finished ones beyond this are forgotten, oldest first)
MAX_JOBS = 200


@dataclass
class Job:
    id: str
    kind: str                       # "serve" | "stop" | "push" | ...
    target: str                     # bundle tag or server id the job acts on
    status: str = "pending"         # "pending" | "running" | "done" | "failed"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: dict | None = None
    http_status: int | None = None  # what the action would have answered had it been synchronous
    fraction: float | None = None   # progress 0..1 (None: not known yet)
    message: str = ""               # the step in progress, e.g. "uploading sha256:ab12… (3.1 of 40 MB)"
    updated: float | None = None    # when progress was last reported

    def report(self, fraction: float | None, message: str = "") -> None:
        """Record progress; a fraction never goes back (a later, smaller one keeps the larger)."""
        if fraction is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            if self.fraction is not None:
                fraction = max(fraction, self.fraction)
            self.fraction = fraction
        if message:
            self.message = str(message)[:300]
        self.updated = time.time()

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed")

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status,
                "created": self.created, "started": self.started, "finished": self.finished,
                "result": self.result, "error": self.error, "http_status": self.http_status,
                "progress": {"fraction": self.fraction, "message": self.message, "updated": self.updated}}


class JobManager:
    """Runs callables in a small thread pool and remembers their outcome."""

    def __init__(self, max_workers: int = 6, log=None):
        # threads mostly wait (on a server start or a registry); enough of them that a stop
        # never queues behind slow serve or push jobs
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="nbdeploy-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self.log = log

    def submit(self, kind: str, target: str, fn: Callable[..., Any], *, progress: bool = False) -> Job:
        """Run ``fn()`` as a job; with ``progress=True`` it is called as ``fn(job.report)``."""
        job = Job(id=uuid.uuid4().hex, kind=kind, target=target)
        with self._lock:
            self._jobs[job.id] = job
            self._trim()
        self.executor.submit(self._run, job, fn, progress)
        return job

    def _run(self, job: Job, fn: Callable[..., Any], progress: bool = False) -> None:
        job.status, job.started = "running", time.time()
        job.report(None, f"{job.kind} started")
        try:
            result = fn(job.report) if progress else fn()
            job.result = result.to_dict() if hasattr(result, "to_dict") else result
            job.report(1.0, "done")
            job.status, job.http_status = "done", 200
        except Exception as exc:  # the job records the failure; the server keeps going
            job.http_status = http_status(exc)
            if isinstance(exc, NbdeployError):
                job.error = exc.to_dict()
            else:
                job.error = {"error": type(exc).__name__, "message": str(exc) or type(exc).__name__}
                if self.log:
                    self.log.error("nbdeploy job %s (%s %s) failed:\n%s", job.id, job.kind, job.target,
                                   traceback.format_exc())
            job.status = "failed"
        finally:
            job.finished = time.time()

    def _trim(self) -> None:
        while len(self._jobs) > MAX_JOBS:
            oldest = next((k for k, j in self._jobs.items() if j.done), None)
            if oldest is None:
                break
            del self._jobs[oldest]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def active(self, kind: str, target: str) -> Job | None:
        """A pending or running job of ``kind`` on ``target`` (to refuse duplicates)."""
        with self._lock:
            return next((j for j in self._jobs.values()
                         if j.kind == kind and j.target == target and not j.done), None)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
