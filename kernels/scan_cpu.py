"""CPU SLA scan: Numba ``@njit``, one plain loop over the slots in slot order.

Same per-slot test as :mod:`yujing.kernels.scan_gpu` (built from :mod:`yujing.kernels.scan`).
The loop reads the table front to back, which the hardware prefetcher streams; it is
memory-bound (one 40-byte ``si`` row per slot, the ``sf`` row of each waiting one).
At 1,048,576 sessions, 10 % waiting, the loop takes 7 to 12 ms a pass (medians of
separate runs on this project's 2 shared cores; ``yujing bench kernels``, its
``sla_scan`` block). Neither threads nor prefetching paid, in the same runs: a two-phase
``prange`` split (flag per chunk, then compaction) took 29 ms median against the loop's
9.5 ms, and collecting candidates per chunk to prefetch their ``sf`` rows was no faster.
"""
from __future__ import annotations

from numba import njit

from yujing.kernels import layout as L
from yujing.kernels.scan import build

sla_due = build(njit(cache=True, nogil=True, inline="always", _nrt=False))


@njit(cache=True, nogil=True, _nrt=False)
def sla_scan(si, sf, occupied, now_ms, out_slots):
    """Report the SLA breaches of the occupied slots (``occupied``: uint8 [C]) at
    ``now_ms`` into ``out_slots[:n]`` in slot order, mark each one
    (``si[s, I_SLA_ALERTED] = si[s, I_WAIT_SINCE]``) and return ``n``. Stops at the
    first breach that does not fit, leaving it and the slots after it unmarked."""
    cap = out_slots.shape[0]
    n = 0
    for s in range(si.shape[0]):
        if occupied[s] == 0:
            continue
        since = sla_due(si, sf, s, now_ms)
        if since == L.NO_WAIT:
            continue
        if n == cap:
            break
        out_slots[n] = s
        si[s, L.I_SLA_ALERTED] = since
        n += 1
    return n
