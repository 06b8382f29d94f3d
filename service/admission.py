"""Admission control: one budget of turns accepted and not yet answered, shared by every
kind of call, and a bound on how long a turn may expect to wait.

    adm = Admission(batcher, max_pending_turns=32_768, max_queue_s=1.0, on_refuse=...)
    adm.admit(n, deadline_left_s)     # raises Overloaded (RESOURCE_EXHAUSTED) before any state moves
    ...                               # submit, await the answers, send them
    adm.release(n)                    # when the answers are handed to gRPC (or the call is gone)

What counts (``pending``): every turn of a Score, ScoreBatch or ScoreStream call from its
admission until its answer leaves the handler. A stream's answers that its client has not
read yet still count (20 streams that never read held 41.7 k turns and 1.2 GB before
this), so no kind of call can take the budget from the others unseen.

A call is refused, with the reason counted (``on_refuse(reason, n)``), when

* ``turns``: the budget would be exceeded (``max_pending_turns``);
* ``queue_time``: the turns would wait longer than ``max_queue_s`` for their answers,
  by the batcher's estimate (:meth:`MicroBatcher.expected_wait_s`). This bounds latency
  under overload: the queue cannot grow to seconds of work while every caller times out;
* ``deadline``: the caller's own deadline is nearer than that estimate: the answer would
  come after the caller stopped waiting, so the turn is not taken.

A stream does not fail for the first two while it has answers its client has not read: its
reader waits for them to be read (flow control reaches the client through gRPC), so a slow
reader slows only itself. A stream with nothing outstanding is refused like a unary call.
"""
from __future__ import annotations

import asyncio
import math

from yujing.service.errors import Overloaded


class Admission:
    def __init__(self, batcher, max_pending_turns: int, max_queue_s: float = 0.0, on_refuse=None):
        self.batcher = batcher
        self.limit = max_pending_turns
        self.max_queue_s = max_queue_s          # 0: no bound on the expected wait
        self.pending = 0
        self._on_refuse = on_refuse             # callback(reason, n)

    def refusal_reason(self, n: int, deadline_left_s: float | None = None) -> tuple[str, str] | None:
        """Why ``n`` more turns cannot be taken now, as (reason, message), or None; counts nothing."""
        if self.pending + n > self.limit:
            return "turns", (f"overloaded: {self.pending:,} turns are waiting to be answered and this call adds "
                             f"{n:,} (limit {self.limit:,}); retry with backoff")
        if self.max_queue_s > 0 or deadline_left_s is not None:
            wait = self.batcher.expected_wait_s(n)
            if 0 < self.max_queue_s < wait:
                return "queue_time", (f"overloaded: these turns would wait about {wait * 1e3:,.0f} ms to be "
                                      f"scored (limit {self.max_queue_s * 1e3:,.0f} ms); retry with backoff")
            if deadline_left_s is not None and wait > deadline_left_s:
                return "deadline", (f"overloaded: these turns would wait about {wait * 1e3:,.0f} ms to be scored, "
                                    f"past the call's deadline (in {deadline_left_s * 1e3:,.0f} ms); not taken")
        return None

    def refuse(self, reason: tuple[str, str], n: int) -> Overloaded:
        """The refusal of ``n`` turns for ``reason`` (from :meth:`refusal_reason`), counted."""
        if self._on_refuse is not None:
            self._on_refuse(reason[0], n)
        return Overloaded(reason[1])

    def admit(self, n: int, deadline_left_s: float | None = None) -> None:
        """Take ``n`` turns into the budget, or raise their :class:`Overloaded` refusal."""
        reason = self.refusal_reason(n, deadline_left_s)
        if reason is not None:
            raise self.refuse(reason, n)
        self.pending += n

    def release(self, n: int) -> None:
        self.pending -= n


def loop_deadline(deadline_left_s: float | None) -> float:
    """The event-loop time at which the caller stops waiting (``math.inf``: no deadline)."""
    if deadline_left_s is None:
        return math.inf
    return asyncio.get_running_loop().time() + deadline_left_s
