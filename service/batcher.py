"""The micro-batcher: gathers turns from concurrent calls into one batch (up to
``max_batch`` turns, or whatever has arrived ``max_delay_ms`` after the first), and
hands each batch to the engine. Batches run one after another, in arrival order.

The gathering delay applies when traffic is concurrent, that is when the previous batch
carried more than one turn: a lone caller is not held back for companions that are not
coming (a sequential client sees the pipeline's own latency, not ``max_delay_ms`` on top).
Under load, turns also gather by themselves while the previous batch is being scored.

A ScoreBatch request is submitted as one group, so its turns stay contiguous and in
order (a group larger than ``max_batch`` is split at batch boundaries, still in order).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

log = logging.getLogger(__name__)


class MicroBatcher:
    def __init__(self, process, max_batch: int = 256, max_delay_ms: float = 2.0, on_batch=None):
        self._process = process               # async (items) -> answers
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self._queue: deque = deque()          # (item, future)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._on_batch = on_batch             # callback(size, seconds)
        self.in_flight = 0
        self.last_batch_size = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="yujing-batcher")

    def submit(self, item) -> asyncio.Future:
        return self.submit_many([item])[0]

    def submit_many(self, items) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futs))
        self.in_flight += len(items)
        self._wakeup.set()
        return futs

    def refuse_queued(self, answer) -> int:
        """Answer every turn still waiting for a batch with ``answer`` (a refusal: nothing
        of them is applied) and forget them; the batch being scored finishes. Returns
        how many were refused (the shutdown's drain deadline)."""
        n = len(self._queue)
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_result(answer)
        self.in_flight -= n
        return n

    async def close(self) -> None:
        """Finish everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if (len(self._queue) < self.max_batch and self.max_delay_s > 0 and not self._closing
                    and self.last_batch_size > 1):
                deadline = loop.time() + self.max_delay_s
                while len(self._queue) < self.max_batch and not self._closing:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except asyncio.TimeoutError:
                        break
            n = min(self.max_batch, len(self._queue))
            self.last_batch_size = n
            batch = [self._queue.popleft() for _ in range(n)]
            items = [b[0] for b in batch]
            t0 = time.perf_counter()
            failure = None
            try:
                answers = await self._process(items)
            except Exception as exc:  # a bug, not a client error: fail this batch, keep serving
                log.exception("batch of %d turns failed", n)
                failure, answers = exc, [None] * n
            self.in_flight -= n
            if self._on_batch is not None:
                self._on_batch(n, time.perf_counter() - t0)
            # An answer may be a refusal (a YujingError value): it is a result, not a failure.
            for (_, fut), ans in zip(batch, answers):
                if not fut.done():
                    if failure is not None:
                        fut.set_exception(failure)
                    else:
                        fut.set_result(ans)
