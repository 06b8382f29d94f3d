"""GPU SLA scan: a ``numba.cuda`` kernel, one thread per slot, an atomic output counter.

Same per-slot test as :mod:`yujing.kernels.scan_cpu` (built from :mod:`yujing.kernels.scan`).
Thread ``s`` tests slot ``s``; a breach takes position ``k = atomic_add(count, 1)`` and,
only when ``k < len(out_slots)``, writes ``out_slots[k] = s`` and marks the slot. A
breach that does not fit is left unmarked (the next pass finds it); ``count`` still
counts it, so ``n = min(count, len(out_slots))``. Order in ``out_slots`` is the order
threads won the counter. Each thread writes only its own slot's ``I_SLA_ALERTED``: no
races besides the counter.

Occupancy: the kernel filters on a device copy of the host mask (``occupied``, uint8
[C], 1 MiB at 1 M sessions, copied by the caller once per pass), so stale data in
freed slots is never reported. Arrays may be CuPy arrays (production) or NumPy
arrays (tests under ``NUMBA_ENABLE_CUDASIM=1``). CuPy is never imported here.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from yujing.kernels import layout as L
from yujing.kernels.scan import build

sla_due = build(cuda.jit(device=True))
THREADS_PER_BLOCK = 256


@cuda.jit
def sla_scan_kernel(si, sf, occupied, now_ms, out_slots, count):
    s = cuda.grid(1)
    if s < si.shape[0] and occupied[s] != 0:
        since = sla_due(si, sf, s, now_ms)
        if since != L.NO_WAIT:
            k = cuda.atomic.add(count, 0, 1)
            if k < out_slots.shape[0]:
                out_slots[k] = s
                si[s, L.I_SLA_ALERTED] = since


def sla_scan(si, sf, occupied, now_ms, out_slots, xp=np) -> int:
    """Launch the scan over every slot (all arrays on one device, ``xp`` their module);
    returns ``n``, the breaches written to ``out_slots[:n]`` (one host sync)."""
    n_slots = si.shape[0]
    count = xp.zeros(1, dtype=np.int64)
    if n_slots:
        blocks = (n_slots + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        sla_scan_kernel[blocks, THREADS_PER_BLOCK](si, sf, occupied, np.int64(now_ms), out_slots, count)
    return min(int(count[0]), int(out_slots.shape[0]))
