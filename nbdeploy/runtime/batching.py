"""Adaptive ("natural") batching inside the served bundle.

Requests that arrive while the model is busy wait in a queue; when the model is free, all
waiting rows (up to ``max_batch_size``) run as one onnxruntime call.  At low load every
request runs alone with no added wait; under load the batch grows by itself.  The model runs
in a worker thread so the event loop keeps parsing requests that join the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np


class Batcher:
    def __init__(self, fn: Callable[[np.ndarray], dict], *, max_batch_size: int = 64):
        self.fn = fn
        self.max_batch_size = max(1, int(max_batch_size))
        self._pending: deque = deque()
        self._running = False
        self.batches = 0
        self.rows = 0

    async def submit(self, X: np.ndarray) -> dict:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((X, fut))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        from starlette.concurrency import run_in_threadpool

        try:
            await asyncio.sleep(0)  # requests already parsed in this loop turn join the first batch
            while self._pending:
                batch, rows = [], 0
                while self._pending and (not batch or rows + len(self._pending[0][0]) <= self.max_batch_size):
                    X, fut = self._pending.popleft()
                    batch.append((X, fut))
                    rows += len(X)
                Xs = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
                try:
                    out = await run_in_threadpool(self.fn, Xs)
                except Exception as exc:  # a model failure fails this batch's requests, not the loop
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.batches += 1
                self.rows += rows
                start = 0
                for X, fut in batch:
                    n = len(X)
                    if not fut.done():
                        fut.set_result({k: v[start:start + n] for k, v in out.items()})
                    start += n
        finally:
            self._running = False
