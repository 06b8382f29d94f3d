"""The micro-batcher: gathers turns from concurrent calls into one batch (up to
``max_batch`` turns, or whatever has arrived ``max_delay_ms`` after the first), and
hands each batch to the engine, in arrival order.

Up to ``in_flight_batches`` batches are out at once: while one waits for its model call, the
next is started only when a full batch is already queued (so under light load batching is
as it was, and under heavy load the models and the kernel work at the same time). Answers
are delivered batch by batch in order; the process function must apply overlapping calls in
the order it was called (:meth:`yujing.service.engine.Engine.score` does).

The gathering delay applies when traffic is concurrent and fast enough for the wait to
pay: the previous batch carried more than one turn, and at the recent arrival rate at least
``GATHER_MIN_TURNS`` more turns are expected within ``max_delay_ms``. A lone caller is not
held back for companions that are not coming (a sequential client sees the pipeline's own
latency, not ``max_delay_ms`` on top), and neither is moderate traffic, whose turns would
mostly wait the whole delay for one or two companions (at 335 turns/s, p50 6.3 ms with the
wait against 4.4 ms without, BENCHMARKS.md §8).
Under load, turns also gather by themselves while the previous batch is being scored.

A ScoreBatch request is submitted as one group, so its turns stay contiguous and in
order (a group larger than ``max_batch`` is split at batch boundaries, still in order).

Turns nobody waits for are dropped before the models: when a batch is taken, a turn
whose call was cancelled (the client went away, or gRPC cancelled it at its deadline:
its future is cancelled) or whose deadline has passed is not scored and changes no state
(``on_drop(reason, n)``: "cancelled", "deadline"). A turn applied while its caller left
(its future was cancelled during the batch) is counted as "undelivered": its answer is in
the idempotency window, so a retry gets it as a duplicate.

:meth:`expected_wait_s` estimates how long a turn submitted now would wait for its
answer, from the queue and the recent cost of a batch (the admission by time in queue,
:mod:`yujing.service.admission`).
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections import deque

from yujing.service.errors import DeadlinePassed

log = logging.getLogger(__name__)

NO_DEADLINE = math.inf


class _Group:
    """The turns of one :meth:`MicroBatcher.submit_group` call: a future for all of them,
    their answers so far and how many are still to come."""

    __slots__ = ("fut", "answers", "left")

    def __init__(self, fut: asyncio.Future, n: int):
        self.fut, self.answers, self.left = fut, [None] * n, n


class _Member:
    """One turn of a group, in the queue where a lone turn has its future: ``done()`` once
    its call is gone (the group's future cancelled) or finished; an answer or a failure is
    this turn's result in the group's list."""

    __slots__ = ("group", "i")

    def __init__(self, group: _Group, i: int):
        self.group, self.i = group, i

    def done(self) -> bool:
        return self.group.fut.done()

    def set_result(self, answer) -> None:
        g = self.group
        g.answers[self.i] = answer
        g.left -= 1
        if g.left == 0:
            g.fut.set_result(g.answers)

    set_exception = set_result


DEADLINE_PASSED = DeadlinePassed("the call's deadline passed before this turn was scored (nothing of it applied)")


class MicroBatcher:
    # the estimate's memory: each batch moves the averages this much towards itself (~20 batches)
    EWMA = 0.05
    LEARN_BATCHES = 16    # batches seen before the estimate is used
    GATHER_MIN_TURNS = 2  # the turns a gathering wait must be expected to bring
    RATE_WINDOW_S = 0.05  # the arrival rate: turns over windows of at least this long, averaged

    def __init__(self, process, max_batch: int = 256, max_delay_ms: float = 2.0, on_batch=None, on_drop=None,
                 on_stage=None, in_flight_batches: int = 1):
        self._process = process               # async (items) -> answers
        self.in_flight_batches = in_flight_batches
        self._out: deque = deque()            # batches started: (entries, task, loop time started)
        self._last_done = 0.0                 # loop time the last batch was answered
        self.overlapped = 0                   # batches started while another was out
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self._queue: deque = deque()          # (item, future or _Member, deadline: loop time or NO_DEADLINE, loop time queued)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._on_batch = on_batch             # callback(size, seconds from the batch's start to its answers)
        self._on_drop = on_drop               # callback(reason, n): "cancelled", "deadline", "undelivered"
        self._on_stage = on_stage             # callback("queue", the oldest turn's wait in seconds)
        self.in_flight = 0
        self.last_batch_size = 0
        self.arrivals = 0                     # turns submitted since start
        self.arrival_rate = 0.0               # turns/s, recent (:meth:`_rate`)
        self._rate_at = None                  # (loop time, arrivals) where the current window began
        self._rate_windows = 0
        # the recent cost of scoring: seconds per batch and per turn (None until a batch ran)
        self.batch_s: float | None = None
        self.turn_s: float | None = None
        self.learned = 0
        self._moments: list | None = None     # weighted means of n, seconds, n^2, n * seconds
        self._busy_until = 0.0                # loop time the running batch is expected to end

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="yujing-batcher")

    def submit(self, item, deadline: float = NO_DEADLINE) -> asyncio.Future:
        """Queue ``item``; its future gets its answer. ``deadline`` is the loop time after
        which nobody waits for it."""
        fut = asyncio.get_running_loop().create_future()
        self._enqueue(((item, fut),), deadline)
        return fut

    def submit_group(self, items, deadline: float = NO_DEADLINE) -> asyncio.Future:
        """Queue ``items`` (in order, contiguous); one future gets the list of their answers
        in order, once every one is answered: one future and one wake-up for a ScoreBatch
        call, not one per turn. A turn whose batch failed has the exception as its answer,
        the others keep theirs; cancelling the future drops the turns not yet scored."""
        group = _Group(asyncio.get_running_loop().create_future(), len(items))
        if not items:
            group.fut.set_result([])
        else:
            self._enqueue([(item, _Member(group, i)) for i, item in enumerate(items)], deadline)
        return group.fut

    def _enqueue(self, pairs, deadline: float) -> None:
        now = asyncio.get_running_loop().time()
        self._queue.extend((item, target, deadline, now) for item, target in pairs)
        self.in_flight += len(pairs)
        self.arrivals += len(pairs)
        self._wakeup.set()

    def expected_wait_s(self, n: int = 1) -> float:
        """About how long ``n`` turns submitted now would wait for their answers: the rest of
        the running batch, the queue ahead of them and their own batches, at the recent cost
        per batch and per turn. 0 until ``LEARN_BATCHES`` batches ran (too little to go by)."""
        if self.learned < self.LEARN_BATCHES:
            return 0.0
        ahead = len(self._queue) + n
        batches = math.ceil(ahead / self.max_batch)
        running = max(0.0, self._busy_until - asyncio.get_running_loop().time())
        return running + batches * self.batch_s + ahead * self.turn_s

    def refuse_queued(self, answer) -> int:
        """Answer every turn still waiting for a batch with ``answer`` (a refusal: nothing
        of them is applied) and forget them; the batch being scored finishes. Returns
        how many were refused (the shutdown's drain deadline)."""
        n = len(self._queue)
        while self._queue:
            fut = self._queue.popleft()[1]
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

    def _take(self, now: float) -> list:
        """Up to ``max_batch`` turns somebody still waits for, oldest first; the others are
        dropped (counted by reason) and leave the in-flight count."""
        batch, cancelled, expired = [], 0, 0
        q = self._queue
        while q and len(batch) < self.max_batch:
            entry = q.popleft()
            fut = entry[1]
            if fut.done():            # cancelled by its call (or answered already: nothing to do)
                cancelled += 1
            elif entry[2] <= now:
                fut.set_result(DEADLINE_PASSED)
                expired += 1
            else:
                batch.append(entry)
        dropped = cancelled + expired
        if dropped:
            self.in_flight -= dropped
            if self._on_drop is not None:
                if cancelled:
                    self._on_drop("cancelled", cancelled)
                if expired:
                    self._on_drop("deadline", expired)
        return batch

    def _learn(self, n: int, seconds: float) -> None:
        """Fold one batch's duration into the cost estimate ``seconds = batch_s + n * turn_s``:
        a least-squares line through the recent batches (exponentially weighted moments of
        size and duration), so both parts are learned from batches of different sizes. One
        slow batch (a pause of the process, a model reload) counts at most as a batch 4x the
        prediction: it must not refuse traffic by itself."""
        self.learned += 1
        if self._moments is None:
            self._moments = [float(n), seconds, float(n * n), n * seconds]
        else:
            predicted = self.batch_s + n * self.turn_s
            if predicted > 0:
                seconds = min(seconds, 4 * predicted)
            a = self.EWMA
            for i, x in enumerate((float(n), seconds, float(n * n), n * seconds)):
                self._moments[i] += a * (x - self._moments[i])
        mn, my, mnn, mny = self._moments
        var = mnn - mn * mn
        slope = (mny - mn * my) / var if var > 1e-9 * max(mnn, 1.0) else my / mn
        fixed = my - slope * mn
        if fixed < 0 or slope < 0:        # not a line through these points: all per turn
            slope, fixed = my / mn, 0.0
        self.batch_s, self.turn_s = fixed, slope

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._out and (len(self._out) >= self.in_flight_batches or len(self._queue) < self.max_batch):
                await self._finish_oldest(loop)
                continue
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._out and self._should_gather(loop.time()):
                await self._gather(loop)
            batch = self._take(loop.time())
            n = len(batch)
            if n == 0:
                continue
            self.last_batch_size = n
            if self._on_stage is not None:
                self._on_stage("queue", loop.time() - batch[0][3])
            now = loop.time()
            if self.batch_s is not None:
                self._busy_until = max(now, self._busy_until) + self.batch_s + n * self.turn_s
            if self._out:
                self.overlapped += 1
            # tasks take their first step in the order they are made: the engine sees its
            # score() calls in batch order
            self._out.append((batch, asyncio.ensure_future(self._process([b[0] for b in batch])), now))

    def _should_gather(self, now: float) -> bool:
        """Wait ``max_delay_s`` for companions before taking a batch? (The module docstring.)"""
        return (len(self._queue) < self.max_batch and self.max_delay_s > 0 and not self._closing
                and self.last_batch_size > 1 and self._rate(now) * self.max_delay_s >= self.GATHER_MIN_TURNS)

    def _rate(self, now: float) -> float:
        """The recent arrival rate (turns/s): the turns submitted over each window of at
        least ``RATE_WINDOW_S``, averaged half and half with the estimate before it."""
        if self._rate_at is None:
            self._rate_at = (now, self.arrivals)
            return self.arrival_rate
        t0, n0 = self._rate_at
        dt = now - t0
        if dt >= self.RATE_WINDOW_S:
            sample = (self.arrivals - n0) / dt
            self.arrival_rate = sample if self._rate_windows == 0 else 0.5 * (self.arrival_rate + sample)
            self._rate_windows += 1
            self._rate_at = (now, self.arrivals)
        return self.arrival_rate

    async def _gather(self, loop) -> None:
        """Wait up to ``max_delay_s`` for a full batch."""
        deadline = loop.time() + self.max_delay_s
        while len(self._queue) < self.max_batch and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left):      # no task per wait, as wait_for makes
                    await self._wakeup.wait()
            except TimeoutError:
                return

    async def _finish_oldest(self, loop) -> None:
        """Wait for the oldest batch started and deliver its answers."""
        batch, task, started = self._out[0]
        n = len(batch)
        failure = None
        try:
            answers = await task
        except Exception as exc:  # a bug, not a client error: fail this batch, keep serving
            log.exception("batch of %d turns failed", n)
            failure, answers = exc, [None] * n
        self._out.popleft()
        now = loop.time()
        # the time this batch held the pipeline: from its start, or from the answer of the
        # batch before it when the two overlapped
        seconds = now - max(started, self._last_done)
        self._last_done = now
        self.in_flight -= n
        if not self._out:
            self._busy_until = 0.0
        self._learn(n, seconds)
        if self._on_batch is not None:
            self._on_batch(n, now - started)       # the batch's own time, start to answers
        # An answer may be a refusal (a YujingError value): it is a result, not a failure.
        undelivered = 0
        for (_, fut, _, _), ans in zip(batch, answers):
            if fut.done():
                undelivered += 1
            elif failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(ans)
        if undelivered and self._on_drop is not None:
            self._on_drop("undelivered", undelivered)
