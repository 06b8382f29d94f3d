"""CPU batch update: Numba ``@njit`` over a batch of turns, in arrival order.

Same device functions as :mod:`yujing.kernels.update_gpu` (built from
:mod:`yujing.kernels.turn_update`); the batch is folded turn by turn, agents first (they do
not depend on sessions), then sessions, so every turn sees exactly the state left by
the turns before it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from yujing.kernels import layout as L
from yujing.kernels.prefetch import prefetch_row
from yujing.kernels.scan import as_mask
from yujing.kernels.scan_cpu import sla_scan as sla_scan_cpu
from yujing.kernels.turn_update import build

_jit = njit(cache=True, nogil=True, error_model="numpy", inline="always", _nrt=False)
agent_steps, session_steps, fill_indicators = build(_jit, prefetch_row)


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def update_batch(sf, si, sh, sc, sb, sw, ai, aw, ti, tf, th, pf, fatigue, of, oi, order):
    """Apply turns ``0..B-1`` (columns of ``ti``/``tf``/``th``) and score each one.

    Writes the per-turn outputs into ``of`` (float64 [OF_ROWS, B]) and ``oi``
    (int64 [OI_ROWS, B]); ``fatigue`` (float64 [B]) is scratch for the agent pass.
    """
    n = ti.shape[1]
    agent_steps(ai, aw, ti, pf, fatigue, order, 0, n)
    session_steps(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi, order, 0, n)


class CpuKernels:
    """The ``cpu`` backend: state in NumPy arrays, updated in place by :func:`update_batch`."""

    name = "cpu"
    xp = np

    def apply(self, s: dict, a: dict, ti, tf, th, pf):
        n = ti.shape[1]
        of = np.zeros((L.OF_ROWS, n), dtype=np.float64)
        oi = np.zeros((L.OI_ROWS, n), dtype=np.int64)
        fatigue = np.zeros(n, dtype=np.float64)
        update_batch(s["sf"], s["si"], s["sh"], s["sc"], s["sb"], s["sw"], a["ai"], a["aw"],
                     ti, tf, th, pf, fatigue, of, oi, np.arange(n))
        return of, oi

    def sla_scan(self, state: dict, occupied, now_ms: int, max_out: int):
        """The scheduler's SLA scan (:mod:`yujing.kernels.scan`) over ``state`` at
        ``now_ms``: at most ``max_out`` new breaches of occupied slots, marked as reported.
        Returns int64 host arrays ``(slots, wait_ms, sla_ms)``, ``wait_ms = now_ms -
        I_WAIT_SINCE`` and ``sla_ms = F_SLA_MS`` (whole ms, rounded down), in slot order."""
        out = np.empty(max(int(max_out), 0), dtype=np.int64)
        si, sf = state["si"], state["sf"]
        n = sla_scan_cpu(si, sf, as_mask(occupied), np.int64(now_ms), out)
        slots = out[:n].copy()
        return (slots, np.int64(now_ms) - si[slots, L.I_SLA_ALERTED],
                np.floor(sf[slots, L.F_SLA_MS]).astype(np.int64))

    def to_host(self, arr):
        return np.asarray(arr)


@njit(cache=True, nogil=True)
def session_indicators(sf, si, sc, sb, sw, slot, pf, out):
    """The indicators of session ``slot`` at its own clock, into ``out[:N_INDICATORS, 0]``.

    Works on host arrays; the GPU backend passes a host copy of one slot's columns.
    """
    fill_indicators(sf, si, sc, sb, sw, slot, pf, out, 0)
