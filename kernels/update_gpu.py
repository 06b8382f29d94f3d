"""GPU batch update: ``numba.cuda`` kernels, one thread per session and per agent.

The turns of a batch are grouped by session slot (a stable sort keeps arrival order
inside a group); thread ``g`` walks group ``g`` and folds its turns one after the
other with the same device functions as the CPU kernel (:mod:`yujing.kernels.turn_update`).
Two threads never touch the same session or agent, so there are no races and no
atomics, and several turns of one session in a batch give exactly the sequential
result. The agent pass runs first (a separate launch) because each session turn reads
its agent's fatigue as of that turn.

State arrays may be CuPy arrays (production) or NumPy arrays (tests under
``NUMBA_ENABLE_CUDASIM=1``). CuPy is imported only by :class:`GpuKernels`.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from yujing.kernels import layout as L
from yujing.kernels.scan import as_mask
from yujing.kernels.scan_gpu import sla_scan as sla_scan_gpu
from yujing.kernels.turn_update import build



@cuda.jit(device=True)
def _no_prefetch(arr, row):
    pass


agent_steps, session_steps, fill_indicators = build(cuda.jit(device=True), _no_prefetch)
THREADS_PER_BLOCK = 128


@cuda.jit
def agent_kernel(ai, aw, ti, tf, pf, fatigue, order, starts, n_groups):
    g = cuda.grid(1)
    if g < n_groups:
        agent_steps(ai, aw, ti, pf, fatigue, order, starts[g], starts[g + 1])


@cuda.jit
def session_kernel(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi, order, starts, n_groups):
    g = cuda.grid(1)
    if g < n_groups:
        session_steps(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi, order, starts[g], starts[g + 1])


def group_by(keys, xp=np):
    """Stable grouping of batch positions by key: ``(order, starts, n_groups)``.

    ``order[starts[g]:starts[g+1]]`` are the positions of group ``g`` in arrival order.
    Negative keys (no agent) are left out.
    """
    idx = xp.flatnonzero(keys >= 0)
    order = idx[xp.argsort(keys[idx], kind="stable")]
    k = keys[order]
    if k.size == 0:
        return order.astype(np.int64), xp.zeros(1, dtype=np.int64), 0
    breaks = xp.flatnonzero(k[1:] != k[:-1]) + 1
    starts = xp.concatenate([xp.zeros(1, dtype=np.int64), breaks.astype(np.int64),
                             xp.asarray([k.size], dtype=np.int64)])
    return order.astype(np.int64), starts, int(starts.size - 1)


def update_batch(sf, si, sh, sc, sb, sw, ai, aw, ti, tf, th, pf, fatigue, of, oi, xp=np):
    """Launch the agent then the session kernel on one batch (arrays on one device)."""
    fatigue[:] = 0.0
    order, starts, n = group_by(ti[L.T_AGENT], xp)
    if n:
        blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        agent_kernel[blocks, THREADS_PER_BLOCK](ai, aw, ti, tf, pf, fatigue, order, starts, n)
    order, starts, n = group_by(ti[L.T_SLOT], xp)
    if n:
        blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        session_kernel[blocks, THREADS_PER_BLOCK](sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue,
                                                  of, oi, order, starts, n)


class GpuKernels:
    """The ``gpu`` backend: state in CuPy arrays on the device; one batch per call."""

    name = "gpu"

    def __init__(self):
        import cupy  # only on the GPU path

        self.xp = cupy

    def apply(self, s: dict, a: dict, ti, tf, th, pf):
        cp = self.xp
        n = ti.shape[1]
        d_ti, d_tf, d_th, d_pf = (cp.asarray(x) for x in (ti, tf, th, pf))
        of = cp.zeros((L.OF_ROWS, n), dtype=np.float64)
        oi = cp.zeros((L.OI_ROWS, n), dtype=np.int64)
        fatigue = cp.zeros(n, dtype=np.float64)
        update_batch(s["sf"], s["si"], s["sh"], s["sc"], s["sb"], s["sw"], a["ai"], a["aw"],
                     d_ti, d_tf, d_th, d_pf, fatigue, of, oi, xp=cp)
        return cp.asnumpy(of), cp.asnumpy(oi)

    def sla_scan(self, state: dict, occupied, now_ms: int, max_out: int):
        """The scheduler's SLA scan (:mod:`yujing.kernels.scan`) on the device: the host
        occupancy mask is copied over (1 byte a slot), the kernel marks at most
        ``max_out`` new breaches, and only those come back: int64 host arrays
        ``(slots, wait_ms, sla_ms)`` as on the CPU backend, in the kernel's order."""
        xp = self.xp
        si, sf = state["si"], state["sf"]
        out = xp.empty(max(int(max_out), 0), dtype=np.int64)
        n = sla_scan_gpu(si, sf, xp.asarray(as_mask(occupied)), now_ms, out, xp=xp)
        slots = out[:n]
        since = self.to_host(si[slots, L.I_SLA_ALERTED])
        sla = self.to_host(sf[slots, L.F_SLA_MS])
        return (self.to_host(slots).astype(np.int64), np.int64(now_ms) - since.astype(np.int64),
                np.floor(sla).astype(np.int64))

    def to_host(self, arr):
        return self.xp.asnumpy(arr)
