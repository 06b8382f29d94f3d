"""``yujing bench``: the benchmark suites that write the JSON behind BENCHMARKS.md.

    yujing bench kernels [--sessions 10000 1048576 4194304] [--batch 4096] [--out FILE]

kernels: session updates per second of the CPU kernel (one thread) over tables of
each size, turns spread uniformly over the live sessions, and in the same run a
STREAM-like copy measuring this machine's memory bandwidth, so the kernel's
bytes-per-update can be put against the ceiling as a ratio.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kernels import layout as L

# Bytes one update reads and writes: the session's state row (read + write), the
# turn's inputs and outputs. The agent table is small and stays in cache.
BYTES_PER_UPDATE = (2 * L.BYTES_PER_SESSION + 8 * (L.TI_ROWS + L.TFL_ROWS + 1)
                    + 8 * (L.OF_ROWS + L.OI_ROWS))


def stream_copy_gbps(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best-of copy bandwidth (read + write bytes / s) of a ``n_bytes`` float64 array."""
    a = np.ones(n_bytes // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * n_bytes / best / 1e9


def make_batch(rng: np.random.Generator, n_sessions: int, batch: int, t_ms: int, pf: np.ndarray):
    """A batch of ``batch`` realistic turns on uniformly random existing sessions."""
    ti = np.zeros((L.TI_ROWS, batch), np.int64)
    tf = np.zeros((L.TFL_ROWS, batch), np.float64)
    ti[L.T_SLOT] = rng.integers(0, n_sessions, batch)
    ti[L.T_AGENT] = rng.integers(-1, 1024, batch)
    ti[L.T_TS] = t_ms + np.sort(rng.integers(0, 1000, batch))
    ti[L.T_NOW] = ti[L.T_TS]
    ti[L.T_SPEAKER] = rng.choice([1, 1, 2, 3], batch)
    sentiment = rng.uniform(-1, 1, batch)
    ti[L.T_FLAGS] = L.TFLAG_HAS_TEXT | np.where(sentiment < -0.2, L.TFLAG_NEGATIVE, 0)
    ti[L.T_INTENT] = rng.integers(0, 27, batch)
    ti[L.T_WORDS] = rng.integers(1, 40, batch)
    ti[L.T_NEG_WORDS] = ti[L.T_WORDS] // 8
    tf[L.TF_SENTIMENT] = sentiment
    tf[L.TF_INTENT_WEIGHT] = rng.uniform(0, 1, batch)
    tf[L.TF_INTENSITY] = rng.uniform(0, 1, batch)
    tf[L.TF_SLA_MS] = 60_000.0
    th = rng.integers(0, 2**63, batch, dtype=np.int64).astype(np.uint64)
    return ti, tf, th


def bench_kernels(sessions=(10_000, 1 << 20, 1 << 22), batch: int = 4096, seconds: float = 3.0,
                  seed: int = 0) -> dict:
    from kernels.update_cpu import CpuKernels
    from service.policy import load_policy

    pf = load_policy().pf
    k = CpuKernels()
    rng = np.random.default_rng(seed)
    out = {"batch": batch, "bytes_per_update": BYTES_PER_UPDATE, "results": []}
    for n in sessions:
        s = L.new_session_arrays(n)
        a = L.new_agent_arrays(1024)
        t_ms = 1_700_000_000_000
        # every session gets its first turn (initialised) before timing
        for lo in range(0, n, 65536):
            slots = np.arange(lo, min(n, lo + 65536))
            ti, tf, th = make_batch(rng, n, slots.size, t_ms, pf)
            ti[L.T_SLOT], ti[L.T_NEW], ti[L.T_AGENT] = slots, 1, -1
            k.apply(s, a, ti, tf, th, pf)
        batches = [make_batch(rng, n, batch, t_ms + 1000 * (j + 1), pf) for j in range(64)]
        ti0 = batches[0][0].copy()
        ti0[L.T_NEW_AGENT] = 1
        k.apply(s, a, ti0, batches[0][1], batches[0][2], pf)     # warm, agents initialised
        done, t0, j = 0, time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            ti, tf, th = batches[j % len(batches)]
            k.apply(s, a, ti, tf, th, pf)
            done += batch
            j += 1
        el = time.perf_counter() - t0
        rate = done / el
        out["results"].append({"sessions": n, "updates": done, "seconds": el, "updates_per_s": rate,
                               "ns_per_update": 1e9 / rate, "state_bytes": n * L.BYTES_PER_SESSION,
                               "gb_per_s_touched": rate * BYTES_PER_UPDATE / 1e9})
        del s
    out["stream_copy_gb_per_s"] = stream_copy_gbps()
    for r in out["results"]:
        r["fraction_of_copy_bandwidth"] = r["gb_per_s_touched"] / out["stream_copy_gb_per_s"]
    base = out["results"][0]["updates_per_s"]
    for r in out["results"]:
        r["relative_to_smallest"] = r["updates_per_s"] / base
    return out


def _machine() -> dict:
    import os

    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor()}


def _run(args) -> int:
    if args.suite == "kernels":
        result = bench_kernels(tuple(args.sessions), args.batch, args.seconds)
    else:
        raise SystemExit(f"unknown suite {args.suite}")
    result["machine"] = _machine()
    result["command"] = "yujing bench " + " ".join(sys.argv[2:])
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite and write its JSON")
    p.add_argument("suite", choices=("kernels",))
    p.add_argument("--sessions", type=int, nargs="+", default=[10_000, 1 << 20, 1 << 22])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=_run)
