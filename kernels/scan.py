"""The scheduler's SLA scan, written once and compiled twice.

The session clock moves only when a turn arrives, so a customer left waiting with no
further turn raises nothing on the turn path. The service therefore runs a pass about
once a second over the whole session table at the server clock ``now_ms``. A slot
``s`` is a breach to report when

    occupied[s]
    and w != NO_WAIT                         w   = si[s, I_WAIT_SINCE]
    and sla > 0                              sla = sf[s, F_SLA_MS]
    and now_ms - w >= sla
    and si[s, I_SLA_ALERTED] != w

and reporting it sets ``si[s, I_SLA_ALERTED] = w``. Each wait (one value of
``I_WAIT_SINCE``) is reported once; an answer clears the wait, and the next wait has a
new ``I_WAIT_SINCE`` and is reported again once it breaches. A new slot starts with
``I_SLA_ALERTED = NO_WAIT`` (turn_update's ``init_session``), so a reused slot does
not inherit its previous life's report. ``now_ms`` is the server clock and ``w`` a turn
timestamp: a client clock running ahead only delays the report (a negative wait is no
breach).

Output: ``sla_scan(si, sf, occupied, now_ms, out_slots) -> n`` writes the breaching
slots into ``out_slots[:n]``, ``n <= len(out_slots)``, and marks only those. When more
slots breach than ``out_slots`` holds, the rest are left unmarked and the next pass
finds them. The CPU twin (:mod:`yujing.kernels.scan_cpu`) reports in slot order; the GPU
twin (:mod:`yujing.kernels.scan_gpu`) in whatever order its threads win an atomic
counter, so when the output overflows the GPU reports *some* ``len(out_slots)`` of the
breaches, not the lowest slots. :func:`build` holds the per-slot test both compile;
:func:`yujing.kernels.reference.sla_scan_reference` is the plain-Python check.

Cost: the test reads ``occupied[s]`` (1 byte), then ``si[s]`` (one 64-byte line at
most, 40-byte rows) and only for waiting slots ``sf[s]`` (one line), so a pass over
C slots reads about ``C * (1 + 40)`` bytes plus one line per waiting slot.
"""
from __future__ import annotations

import numpy as np

from yujing.kernels import layout as L


def build(jit):
    """Return ``sla_due(si, sf, s, now_ms) -> w``, compiled with ``jit``: the wait
    ``si[s, I_WAIT_SINCE]`` to report now, or NO_WAIT when slot ``s`` (taken as
    occupied) has nothing new to report (the rule in this module's docstring)."""

    @jit
    def sla_due(si, sf, s, now_ms):
        since = si[s, L.I_WAIT_SINCE]
        if since == L.NO_WAIT or si[s, L.I_SLA_ALERTED] == since:
            return L.NO_WAIT
        sla = sf[s, L.F_SLA_MS]
        if sla > 0.0 and float(now_ms - since) >= sla:
            return since
        return L.NO_WAIT

    return sla_due


def as_mask(occupied) -> np.ndarray:
    """The occupancy mask as a contiguous uint8 host array (a bool array is viewed, not
    copied), so each twin is compiled for one mask type."""
    occ = np.ascontiguousarray(occupied)
    if occ.dtype == np.bool_:
        return occ.view(np.uint8)
    return occ.astype(np.uint8, copy=False)


def current_wait_ms(si, s: int, now_ms: int) -> int:
    """How long slot ``s``'s customer has waited at ``now_ms``: ``max(0, now_ms - w)``
    with ``w = si[s, I_WAIT_SINCE]``, 0 when not waiting. Host-side (``si`` may be a
    NumPy or a CuPy array; one element is read)."""
    since = int(si[s, L.I_WAIT_SINCE])
    if since == L.NO_WAIT:
        return 0
    return max(0, int(now_ms) - since)
