"""Random turn histories in the kernels' input layout, for the kernel tests."""
from __future__ import annotations

import numpy as np

from yujing.kernels import layout as L
from yujing.service.policy import load_policy

_PF = None


def default_pf() -> np.ndarray:
    global _PF
    if _PF is None:
        _PF = load_policy().pf
    return _PF.copy()


def every_weight_pf() -> np.ndarray:
    """The default policy with every indicator weighing at least 5 points, so the score's
    risk rule of each one (negative part, beyond the SLA, beyond even odds) is exercised
    even where the default policy gives an indicator no weight."""
    pf = default_pf()
    w = pf[L.P_WEIGHTS:L.P_WEIGHTS + L.N_INDICATORS]
    w[w < 5.0] = 5.0
    return pf


def random_history(rng: np.random.Generator, n: int, n_sessions: int = 5, n_agents: int = 3,
                   max_gap_ms: int = 120_000, out_of_order: float = 0.1, resets: float = 0.02,
                   t0: int = 1_700_000_000_000, with_clock: bool = False):
    """``n`` turns over ``n_sessions`` slots, arrival order, with realistic mixtures:
    customer/agent/bot speakers, events, negative turns, near-duplicate SimHashes,
    out-of-order timestamps and sessions restarted on a reused slot (``resets``).
    ``with_clock``: also return the server clock at each turn's arrival (int64 [n])."""
    ti = np.zeros((L.TI_ROWS, n), np.int64)
    tf = np.zeros((L.TFL_ROWS, n), np.float64)
    th = np.zeros(n, np.uint64)
    clock = t0
    arrival = np.zeros(n, np.int64)
    seen_slots: set[int] = set()
    seen_agents: set[int] = set()
    base_hashes = rng.integers(0, 2**63, size=4, dtype=np.int64).astype(np.uint64)
    for i in range(n):
        clock += int(rng.integers(0, max_gap_ms))
        s = int(rng.integers(0, n_sessions))
        ts = clock - int(rng.integers(0, 10 * max_gap_ms)) if rng.random() < out_of_order else clock
        ti[L.T_SLOT, i] = s
        ti[L.T_TS, i] = max(ts, 0)
        arrival[i] = clock
        if s not in seen_slots or rng.random() < resets:
            ti[L.T_NEW, i] = 1
            seen_slots.add(s)
        a = int(rng.integers(-1, n_agents))
        ti[L.T_AGENT, i] = a
        if a >= 0 and a not in seen_agents:
            ti[L.T_NEW_AGENT, i] = 1
            seen_agents.add(a)
        speaker = int(rng.choice([1, 1, 1, 2, 2, 3]))
        ti[L.T_SPEAKER, i] = speaker
        ti[L.T_EVENT, i] = int(rng.choice([0] * 12 + [1, 2, 3, 4, 5]))
        has_text = rng.random() < 0.92
        sentiment = float(rng.uniform(-1, 1))
        negative = sentiment < -0.2
        complaint = rng.random() < 0.3
        # a text without a sentiment (a language the model does not know) now and then
        known = has_text and rng.random() < 0.9
        # the dissatisfaction model scores fewer texts (it knows one language): its own flag
        dissat_known = has_text and rng.random() < 0.7
        ti[L.T_FLAGS, i] = ((L.TFLAG_HAS_TEXT if has_text else 0) | (L.TFLAG_NEGATIVE if negative and known else 0)
                            | (L.TFLAG_COMPLAINT if complaint else 0) | (L.TFLAG_SENTIMENT if known else 0)
                            | (L.TFLAG_DISSATISFACTION if dissat_known else 0))
        ti[L.T_INTENT, i] = int(rng.integers(0, 4))
        ti[L.T_ESC_MASK, i] = int(rng.integers(0, 256)) if rng.random() < 0.1 else 0
        words = int(rng.integers(0, 30))
        ti[L.T_WORDS, i] = words
        ti[L.T_NEG_WORDS, i] = int(rng.integers(0, words + 1)) // 3
        ti[L.T_RAISE, i] = int(rng.integers(0, 2)) if rng.random() < 0.1 else 0
        ti[L.T_TIER_RAISE, i] = int(rng.integers(0, 2))
        ti[L.T_FLOOR, i] = int(rng.integers(0, 4)) if rng.random() < 0.05 else 0
        tf[L.TF_SENTIMENT, i] = sentiment if known else 0.0
        tf[L.TF_INTENT_WEIGHT, i] = float(rng.uniform(0, 1))
        tf[L.TF_INTENSITY, i] = float(rng.uniform(0, 1))
        tf[L.TF_ESC_LEVEL, i] = float(rng.uniform(0, 1)) if ti[L.T_ESC_MASK, i] else 0.0
        tf[L.TF_SLA_MS, i] = float(rng.choice([20_000.0, 60_000.0, 3_600_000.0]))
        # probabilities, with the byte's rounding edges (k + 0.5) / 255 and 0, 0.5, 1 now and then
        edge = rng.random()
        tf[L.TF_DISSATISFACTION, i] = (
            0.0 if not dissat_known else
            float(rng.choice([0.0, 0.5, 1.0, (int(rng.integers(0, 255)) + 0.5) / 255.0])) if edge < 0.2 else
            float(rng.uniform(0, 1)))
        if rng.random() < 0.05:
            th[i] = np.uint64(0)
        else:  # a few base texts with small perturbations: near-duplicates happen
            flip = np.uint64(0)
            for _ in range(int(rng.integers(0, 12))):
                flip |= np.uint64(1) << np.uint64(int(rng.integers(0, 64)))
            th[i] = base_hashes[int(rng.integers(0, 4))] ^ flip
    return (ti, tf, th, arrival) if with_clock else (ti, tf, th)


def run_cpu(ti, tf, th, pf, batch: int, n_slots: int, n_agents: int):
    """Apply the history in batches of ``batch`` with the CPU backend; concatenated outputs."""
    from yujing.kernels.update_cpu import CpuKernels

    k = CpuKernels()
    s = L.new_session_arrays(n_slots)
    a = L.new_agent_arrays(max(n_agents, 1))
    ofs, ois = [], []
    for lo in range(0, ti.shape[1], batch):
        of, oi = k.apply(s, a, ti[:, lo:lo + batch].copy(), tf[:, lo:lo + batch].copy(),
                         th[lo:lo + batch].copy(), pf)
        ofs.append(of)
        ois.append(oi)
    return np.concatenate(ofs, axis=1), np.concatenate(ois, axis=1), s, a
