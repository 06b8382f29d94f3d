"""Which turns of a batch raise a session or agent alert, from the kernel's outputs.

A session alert is raised on a change, not on a state: one LEVEL_RISE each time the level
goes up (NONE -> BLUE -> YELLOW -> RED; a level that fell with the hysteresis and rises
again alerts again), one HANDOFF_NEEDED when a bot conversation starts needing a human (the
kernel's HANDOFF action appears), one AGENT_FATIGUE when an agent's negative customer turns
in 2 h reach the policy's count (again only after it fell below half of it). What was
last seen per session slot and per agent slot is kept here, on the host, beside the
session table's own host-side index; a slot that starts a new session starts clean.

The pass over a batch is compiled (``numba.njit``) and walks the turns in batch order, so
two turns of one session in one batch are seen one after the other, as the kernel saw them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from yujing.kernels import layout as L

RISE, HANDOFF, FATIGUE = 0, 1, 2        # rows of the marks


@njit(cache=True, nogil=True)
def mark_turns(slots, new, level, actions, agents, agents_new, fatigue, fatigue_turns,
               last_level, handoff_on, fatigue_on, marks):
    """``marks[RISE|HANDOFF|FATIGUE, i] = 1`` where turn ``i`` raises that alert; updates
    the per-slot memory (``last_level``, ``handoff_on`` by session slot, ``fatigue_on`` by
    agent slot) in place."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if new[i] != 0:
            last_level[s] = 0
            handoff_on[s] = 0
        lv = level[i]
        if lv > last_level[s]:
            marks[RISE, i] = 1
        last_level[s] = lv
        wants = 1 if (actions[i] & L.ACTION_HANDOFF) != 0 else 0
        if wants == 1 and handoff_on[s] == 0:
            marks[HANDOFF, i] = 1
        handoff_on[s] = wants
        a = agents[i]
        if a >= 0:
            if agents_new[i] != 0:
                fatigue_on[a] = 0
            f = fatigue[i]
            if fatigue_on[a] == 0 and f >= fatigue_turns:
                marks[FATIGUE, i] = 1
                fatigue_on[a] = 1
            elif fatigue_on[a] != 0 and f < 0.5 * fatigue_turns:
                fatigue_on[a] = 0


class SessionMarks:
    """Per-slot memory of what was alerted, and the queue and agent each session last named
    (for alerts raised by the clock, with no turn to read them from)."""

    def __init__(self, capacity: int, agent_capacity: int):
        self.last_level = np.zeros(capacity, np.uint8)
        self.handoff_on = np.zeros(capacity, np.uint8)
        self.fatigue_on = np.zeros(agent_capacity, np.uint8)
        self.queue_of: list = [""] * capacity
        self.agent_of: list = [""] * capacity

    def mark(self, slots, new, oi, agents, agents_new, fatigue, fatigue_turns: float) -> np.ndarray:
        """int8 [3, n] marks for one applied batch (``oi`` the kernel's integer outputs)."""
        marks = np.zeros((3, slots.shape[0]), np.int8)
        mark_turns(slots, new, oi[L.OI_LEVEL], oi[L.OI_ACTIONS], agents, agents_new, fatigue,
                   float(fatigue_turns), self.last_level, self.handoff_on, self.fatigue_on, marks)
        return marks

    def remember(self, slots, new, turns) -> None:
        """The queue and agent of each applied turn's session (the latest one wins; a new
        session forgets its slot's previous agent)."""
        q, a = self.queue_of, self.agent_of
        for s, fresh, t in zip(slots.tolist(), new.tolist(), turns):
            q[s] = t.queue
            if t.agent_id or fresh:
                a[s] = t.agent_id

    def export(self, live_slots) -> tuple[dict, dict]:
        """The marks for a snapshot: arrays whole, the queue and agent names of live slots."""
        live = [int(x) for x in live_slots]
        arrays = {"marks.last_level": self.last_level, "marks.handoff_on": self.handoff_on,
                  "marks.fatigue_on": self.fatigue_on}
        return arrays, {"marks_queue": [self.queue_of[s] for s in live],
                        "marks_agent": [self.agent_of[s] for s in live]}

    def restore(self, arrays: dict, meta: dict, live_slots) -> None:
        self.last_level[...] = arrays["marks.last_level"]
        self.handoff_on[...] = arrays["marks.handoff_on"]
        self.fatigue_on[...] = arrays["marks.fatigue_on"]
        for s, q, a in zip([int(x) for x in live_slots], meta["marks_queue"], meta["marks_agent"]):
            self.queue_of[s], self.agent_of[s] = q, a
