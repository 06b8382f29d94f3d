"""``yujing bench``: the benchmark suites that write the JSON behind BENCHMARKS.md.

    yujing bench kernels [--sessions 10000 1048576 4194304] [--batch 256 ... 65536] [--out FILE]
    yujing bench peer    [--turns 1000000] [--peer-sessions 20000] [--out FILE] (loadtest/bench/peer.py)
    yujing bench models  [--batch 1 8 64 256 1024] [--out FILE]                 (loadtest/bench/models.py)
    yujing bench e2e     [--duration 10] [--client-processes 1] [--out FILE]    (loadtest/bench/e2e.py)
    yujing bench heads   [--batch 1 8 64 256 1024] [--out FILE]                 (loadtest/bench/heads.py)
    yujing bench projection [--batch ...]     (arithmetic for one H100; a projection, not a measurement)
    yujing bench featurize [--batch 1 256 4096] [--out FILE]                    (loadtest/bench/featurize.py)
    yujing bench trends  [--batch 1 16 256] [--out FILE]                        (loadtest/bench/trends.py)
    yujing bench alerts  [--json FILE] [--alert-turns 40000] ...                (loadtest/bench/alerts.py)
    yujing bench closed  [--duration 10] [--modes ...] [--baseline DIR [--rounds N]] [--out FILE] (loadtest/bench/closed.py)
    yujing bench answers [--out FILE]                                           (loadtest/bench/answers.py)
    yujing bench lone    [--seconds 1.5] [--out FILE]                           (loadtest/bench/lone.py)

kernels: session updates per second of the CPU kernel (one thread) over tables of
each size and for each batch size, turns spread uniformly over the live sessions, and
in the same run (a) a STREAM-like copy measuring this machine's memory bandwidth and
(b) a "layout touch" loop that only reads and writes the cache lines one update of a
random slot touches in this layout (one line per row of every column array), so the
kernel can be put against two ceilings as ratios: the bytes it needs, and the lines
it cannot avoid touching. It also times the scheduler's SLA scan
(:func:`bench_sla_scan`) over each table size.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from yujing.kernels import layout as L

# Bytes one update reads and writes: the session's state row (read + write), the
# turn's inputs and outputs. The agent table is small and stays in cache.
BYTES_PER_UPDATE = (2 * L.BYTES_PER_SESSION + 8 * (L.TI_ROWS + L.TFL_ROWS + 1)
                    + 8 * (L.OF_ROWS + L.OI_ROWS))
STATE_ROWS = sum(rows for _, _, rows in L.SESSION_DTYPES)


def _span_units(nbytes: int, unit: int) -> float:
    """Average ``unit``-byte lines (or sectors) a run of ``nbytes`` covers when runs are
    laid end to end (row ``s`` of a C-contiguous [slot, fields] array starts at s*nbytes)."""
    period = unit // np.gcd(nbytes, unit) if nbytes % unit else 1
    tot = 0
    for k in range(period):
        a = k * nbytes
        tot += (a + nbytes - 1) // unit - a // unit + 1
    return tot / period


def _session_major() -> bool:
    """True when the layout keeps each dtype group session-major ([slot, field])."""
    return L.new_session_arrays(2)["sf"].shape == (2, L.SF_ROWS)


def units_per_update(unit: int) -> float:
    """Lines (unit=64) or sectors (unit=32) one update of a random slot touches."""
    if _session_major():
        return sum(_span_units(np.dtype(dt).itemsize * rows, unit) for _, dt, rows in L.SESSION_DTYPES)
    return float(STATE_ROWS)      # field-major: one unit per field row


# One update of a random slot touches these 64-byte lines (read, then written back).
LINES_PER_UPDATE = units_per_update(64)
LINE_BYTES_PER_UPDATE = 2 * 64 * LINES_PER_UPDATE


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
    ti[L.T_SPEAKER] = rng.choice([1, 1, 2, 3], batch)
    sentiment = rng.uniform(-1, 1, batch)
    ti[L.T_FLAGS] = L.TFLAG_HAS_TEXT | L.TFLAG_SENTIMENT | np.where(sentiment < -0.2, L.TFLAG_NEGATIVE, 0)
    ti[L.T_INTENT] = rng.integers(0, 27, batch)
    ti[L.T_WORDS] = rng.integers(1, 40, batch)
    ti[L.T_NEG_WORDS] = ti[L.T_WORDS] // 8
    tf[L.TF_SENTIMENT] = sentiment
    tf[L.TF_INTENT_WEIGHT] = rng.uniform(0, 1, batch)
    tf[L.TF_INTENSITY] = rng.uniform(0, 1, batch)
    tf[L.TF_SLA_MS] = 60_000.0
    th = rng.integers(0, 2**63, batch, dtype=np.int64).astype(np.uint64)
    return ti, tf, th


def _touch_kernel():
    from numba import njit

    @njit(nogil=True)
    def touch(sf, si, sh, sc, sb, sw, slots):
        """Read-modify-write every field of the slot in every session array, in the
        layout's own orientation ([slot, field]: the current layout)."""
        for i in range(slots.size):
            s = slots[i]
            for r in range(sf.shape[1]):
                sf[s, r] += 1.0
            for r in range(si.shape[1]):
                si[s, r] += 1
            for r in range(sh.shape[1]):
                sh[s, r] ^= np.uint64(1)
            for r in range(sc.shape[1]):
                sc[s, r] += 1
            for r in range(sb.shape[1]):
                sb[s, r] += 1
            for r in range(sw.shape[1]):
                sw[s, r] += 1

    @njit(nogil=True)
    def touch_field_major(f8, i8, u8, i4, b1, u2, slots):
        """The same fields stored one row per field ([field, slot], the first layout):
        one line per field per update. ``touch`` on the transposed views: the same
        read-modify-writes at the same addresses."""
        touch(f8.T, i8.T, u8.T, i4.T, b1.T, u2.T, slots)

    @njit(nogil=True)
    def touch_rows(table, slots):
        """The same bytes kept contiguous per session (a row-major [slot, 32] float64
        table, 256 bytes = 4 lines): the ceiling of a CPU-friendly layout."""
        for i in range(slots.size):
            s = slots[i]
            for r in range(table.shape[1]):
                table[s, r] += 1.0

    return touch, touch_rows, touch_field_major


def _phase_kernels():
    """The CPU kernel's three phases as separate loops (the same compiled device
    functions), so a run can say where an update's time goes."""
    from numba import njit

    from yujing.kernels.update_cpu import agent_steps, fill_indicators, session_steps

    @njit(nogil=True)  # no cache: it inlines kernels/ device functions, which may change
    def agents_only(ai, aw, ti, pf, fatigue):
        agent_steps(ai, aw, ti, pf, fatigue, np.arange(ti.shape[1]), 0, ti.shape[1])

    @njit(nogil=True)  # no cache: it inlines kernels/ device functions, which may change
    def sessions_only(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi):
        n = ti.shape[1]
        session_steps(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi, np.arange(n), 0, n)

    @njit(nogil=True)  # no cache: it inlines kernels/ device functions, which may change
    def indicators_only(sf, si, sc, sw, ti, pf, of):
        for i in range(ti.shape[1]):
            fill_indicators(sf, si, sc, sw, ti[L.T_SLOT, i], pf, of, i)

    return agents_only, sessions_only, indicators_only


def phase_profile(k, s, a, batches, pf, seconds: float = 0.5) -> dict:
    """ns per turn of the agent pass, the session pass (fold + indicators + score) and
    of the indicator read alone, on prepared batches."""
    agents_only, sessions_only, indicators_only = _phase_kernels()
    n = batches[0][0].shape[1]
    of = np.zeros((L.OF_ROWS, n))
    oi = np.zeros((L.OI_ROWS, n), np.int64)
    fat = np.zeros(n)
    calls = {
        "agent_pass": lambda ti, tf, th: agents_only(a["ai"], a["aw"], ti, pf, fat),
        "session_pass": lambda ti, tf, th: sessions_only(s["sf"], s["si"], s["sh"], s["sc"], s["sb"], s["sw"],
                                                         ti, tf, th, pf, fat, of, oi),
        "indicators_only": lambda ti, tf, th: indicators_only(s["sf"], s["si"], s["sc"], s["sw"], ti, pf, of),
        "apply_total": lambda ti, tf, th: k.apply(s, a, ti, tf, th, pf),
    }
    out = {}
    for name, fn in calls.items():
        fn(*batches[0])
        done, j, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(*batches[j % len(batches)])
            done += n
            j += 1
        out[name + "_ns_per_turn"] = 1e9 * (time.perf_counter() - t0) / done
    return out


def _init_table(k, n, rng, pf, t_ms):
    s = L.new_session_arrays(n)
    a = L.new_agent_arrays(1024)
    for lo in range(0, n, 65536):
        slots = np.arange(lo, min(n, lo + 65536))
        ti, tf, th = make_batch(rng, n, slots.size, t_ms, pf)
        ti[L.T_SLOT], ti[L.T_NEW], ti[L.T_AGENT] = slots, 1, -1
        k.apply(s, a, ti, tf, th, pf)
    return s, a


def fill_waits(si, sf, rng, now: int, waiting: float, breaching: float):
    """Session columns for a scheduler benchmark: a 60 s SLA everywhere, a share ``waiting``
    of the slots waiting less than the SLA, ``breaching`` of them past it (returned)."""
    n = si.shape[0]
    si[:, L.I_WAIT_SINCE] = L.NO_WAIT
    si[:, L.I_SLA_ALERTED] = L.NO_WAIT
    sf[:, L.F_SLA_MS] = 60_000.0
    waits = rng.choice(n, max(1, int(n * waiting)), replace=False)
    si[waits, L.I_WAIT_SINCE] = now - rng.integers(0, 59_000, waits.size)
    late = waits[:max(1, int(n * breaching))]
    si[late, L.I_WAIT_SINCE] = now - rng.integers(60_000, 600_000, late.size)
    return late


def bench_sla_scan(n: int, rng: np.random.Generator, passes: int = 30, waiting: float = 0.10,
                   breaching: float = 0.001, period_s: float = 1.0) -> dict:
    """The scheduler's SLA scan (kernels/scan_cpu.py) over ``n`` occupied sessions, a
    ``waiting`` share of them waiting within the SLA and a ``breaching`` share newly past
    it at every pass (their marks are cleared, untimed, before each pass). Reports the
    median and best ms per pass of the compiled loop and of the backend call
    (``CpuKernels.sla_scan``: mask view, output, gathers), sessions scanned per second,
    and the share of one core at one pass per ``period_s``; ``steady`` is a pass with
    nothing new to report."""
    from yujing.kernels.scan import as_mask
    from yujing.kernels.scan_cpu import sla_scan
    from yujing.kernels.update_cpu import CpuKernels

    now = 1_700_000_000_000
    s = L.new_session_arrays(n)
    si, sf = s["si"], s["sf"]
    late = fill_waits(si, sf, rng, now, waiting, breaching)
    occupied = np.ones(n, bool)
    mask, out, k = as_mask(occupied), np.empty(65536, np.int64), CpuKernels()

    def timed(fn, reset=True):
        fn()
        times, found = [], 0
        for _ in range(passes):
            if reset:
                si[late, L.I_SLA_ALERTED] = L.NO_WAIT
            t0 = time.perf_counter()
            found = fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), float(min(times)), found

    med, best, found = timed(lambda: sla_scan(si, sf, mask, now, out))
    b_med, b_best, b_found = timed(lambda: k.sla_scan(s, occupied, now, 65536)[0].size)
    st_med, _, st_found = timed(lambda: sla_scan(si, sf, mask, now, out), reset=False)
    assert found == b_found == late.size and st_found == 0, (found, b_found, st_found)
    return {"sessions": n, "waiting": max(1, int(n * waiting)), "breaching_per_pass": int(late.size),
            "passes": passes, "ms_per_pass_median": 1e3 * med, "ms_per_pass_best": 1e3 * best,
            "sessions_per_s": n / med, "backend_ms_per_pass_median": 1e3 * b_med,
            "backend_ms_per_pass_best": 1e3 * b_best, "steady_ms_per_pass_median": 1e3 * st_med,
            "period_s": period_s, "core_share_at_period": b_med / period_s}


def bench_kernels(sessions=(10_000, 1 << 20, 1 << 22), batches=(256, 1024, 4096, 16384, 65536),
                  seconds: float = 1.5, seed: int = 0) -> dict:
    from yujing.kernels.update_cpu import CpuKernels
    from yujing.service.policy import load_policy

    if isinstance(batches, int):
        batches = (batches,)
    pf = load_policy().pf
    k = CpuKernels()
    if not _session_major():
        raise SystemExit("bench kernels: expected the session-major layout ([slot, field])")
    touch, touch_rows, touch_fm = _touch_kernel()
    rng = np.random.default_rng(seed)
    out = {"batches": list(batches), "bytes_per_update": BYTES_PER_UPDATE,
           "lines_per_update": LINES_PER_UPDATE, "line_bytes_per_update": LINE_BYTES_PER_UPDATE,
           "threads": 1, "results": [], "touch": []}
    t_ms = 1_700_000_000_000
    for n in sessions:
        s, a = _init_table(k, n, rng, pf, t_ms)
        for batch in batches:
            n_pre = max(4, min(64, (1 << 20) // batch))
            pre = [make_batch(rng, n, batch, t_ms + 1000 * (j + 1), pf) for j in range(n_pre)]
            ti0 = pre[0][0].copy()
            ti0[L.T_NEW_AGENT] = 1
            k.apply(s, a, ti0, pre[0][1], pre[0][2], pf)     # warm, agents initialised
            done, t0, j = 0, time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                ti, tf, th = pre[j % n_pre]
                k.apply(s, a, ti, tf, th, pf)
                done += batch
                j += 1
            el = time.perf_counter() - t0
            rate = done / el
            out["results"].append({"sessions": n, "batch": batch, "updates": done, "seconds": el,
                                   "updates_per_s": rate, "ns_per_update": 1e9 / rate,
                                   "state_bytes": n * L.BYTES_PER_SESSION,
                                   "gb_per_s_needed": rate * BYTES_PER_UPDATE / 1e9,
                                   "gb_per_s_lines": rate * LINE_BYTES_PER_UPDATE / 1e9})
            del pre
        pre = [make_batch(rng, n, 4096, t_ms + 1000 * (j + 1), pf) for j in range(16)]
        out.setdefault("phases", []).append({"sessions": n, "batch": 4096, **phase_profile(k, s, a, pre, pf)})
        del pre
        # the layout's ceiling: touch the same lines, nothing else
        slots = rng.integers(0, n, 1 << 20)
        touch(s["sf"], s["si"], s["sh"], s["sc"], s["sb"], s["sw"], slots[:1024])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            touch(s["sf"], s["si"], s["sh"], s["sc"], s["sb"], s["sw"], slots)
            best = min(best, time.perf_counter() - t0)
        del s, a
        fm = {name: np.zeros((rows_, n), dtype=dt) for name, dt, rows_ in L.SESSION_DTYPES}
        args = [fm[name] for name, _, _ in L.SESSION_DTYPES]
        touch_fm(*args, slots[:1024])
        best_fm = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            touch_fm(*args, slots)
            best_fm = min(best_fm, time.perf_counter() - t0)
        del fm, args
        rows = np.zeros((n, 32))
        touch_rows(rows, slots[:1024])
        best_rows = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            touch_rows(rows, slots)
            best_rows = min(best_rows, time.perf_counter() - t0)
        del rows
        out["touch"].append({"sessions": n, "updates_per_s": slots.size / best,
                             "gb_per_s_lines": slots.size / best * LINE_BYTES_PER_UPDATE / 1e9,
                             "field_major_updates_per_s": slots.size / best_fm,
                             "field_major_lines_per_update": STATE_ROWS,
                             "row_major_updates_per_s": slots.size / best_rows,
                             "row_major_gb_per_s_lines": slots.size / best_rows * 2 * 256 / 1e9})
    out["sla_scan"] = [bench_sla_scan(n, rng) for n in sessions]
    out["stream_copy_gb_per_s"] = stream_copy_gbps()
    touch_by_n = {t["sessions"]: t["updates_per_s"] for t in out["touch"]}
    rows_by_n = {t["sessions"]: t["row_major_updates_per_s"] for t in out["touch"]}
    base = {r["batch"]: r["updates_per_s"] for r in out["results"] if r["sessions"] == sessions[0]}
    for r in out["results"]:
        r["fraction_of_copy_bw_needed"] = r["gb_per_s_needed"] / out["stream_copy_gb_per_s"]
        r["fraction_of_copy_bw_lines"] = r["gb_per_s_lines"] / out["stream_copy_gb_per_s"]
        r["fraction_of_layout_touch"] = r["updates_per_s"] / touch_by_n[r["sessions"]]
        r["fraction_of_row_major_touch"] = r["updates_per_s"] / rows_by_n[r["sessions"]]
        r["relative_to_smallest_table"] = r["updates_per_s"] / base[r["batch"]]
    return out


# --- a projection for one H100 (not measured: arithmetic on published figures) -----------
H100_HBM_BPS = 3.35e12      # HBM3, SXM
H100_PCIE_BPS = 64e9        # PCIe Gen5 x16, one direction
H100_LAUNCH_S = 5e-6        # one kernel launch
SECTOR = 32                 # bytes of one DRAM/L2 sector


def h100_projection(batches=(256, 1024, 4096, 16384, 65536)) -> dict:
    """Per-batch time = fixed + host<->device bytes / PCIe + state bytes / HBM, where
    fixed = 2 launches (agent pass, session pass) + 2 copies' latency (taken as one
    launch each), the state stays resident on the GPU (only the turn inputs and the
    outputs cross PCIe), and a random slot costs one 32-byte sector per row of every
    session array's run, read and written (a random slot's fields in each dtype group are
    contiguous in the session-major layout)."""
    # kernels/update_gpu.py as written issues about 40 device operations per batch: 4
    # host-to-device copies, 4 fills, two group_by (mask, flatnonzero, argsort, gathers,
    # compare, concatenate, a host sync each: ~15 operations), 2 kernels, 2 copies back
    ops_as_implemented = 40
    io_bytes = 8 * (L.TI_ROWS + L.TFL_ROWS + 1) + 8 * (L.OF_ROWS + L.OI_ROWS)
    state_sector_bytes = 2 * SECTOR * units_per_update(SECTOR)
    fixed = 4 * H100_LAUNCH_S
    rows = []
    for b in batches:
        t_pcie = b * io_bytes / H100_PCIE_BPS
        t_hbm = b * state_sector_bytes / H100_HBM_BPS
        t = fixed + t_pcie + t_hbm
        t_impl = ops_as_implemented * H100_LAUNCH_S + t_pcie + t_hbm
        rows.append({"batch": b, "fixed_us": fixed * 1e6, "pcie_us": t_pcie * 1e6, "hbm_us": t_hbm * 1e6,
                     "batch_us": t * 1e6, "updates_per_s": b / t,
                     "fixed_as_implemented_us": ops_as_implemented * H100_LAUNCH_S * 1e6,
                     "updates_per_s_as_implemented": b / t_impl,
                     "bound": max((fixed, "launch"), (t_pcie, "pcie"), (t_hbm, "hbm"))[1]})
    return {"projection": True, "assumptions": {
        "hbm_bytes_per_s": H100_HBM_BPS, "pcie_bytes_per_s": H100_PCIE_BPS, "launch_s": H100_LAUNCH_S,
        "fixed_per_batch_s": fixed, "io_bytes_per_update": io_bytes,
        "device_ops_per_batch_as_implemented": ops_as_implemented,
        "state_bytes_per_update_ideal": 2 * L.BYTES_PER_SESSION,
        "state_sector_bytes_per_update": state_sector_bytes,
        "hbm_only_ceiling_updates_per_s": H100_HBM_BPS / state_sector_bytes,
        "pcie_only_ceiling_updates_per_s": H100_PCIE_BPS / io_bytes}, "rows": rows}


def _machine() -> dict:
    import os
    import subprocess

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        keep = ("Model name", "CPU(s)", "Thread(s) per core", "L1d cache", "L2 cache", "L3 cache",
                "Hypervisor vendor")
        info["lscpu"] = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lscpu.splitlines()
                                                           if ":" in ln) if k.strip() in keep}
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except Exception:  # noqa: BLE001 - the machine block is informative only
        pass
    info["loadavg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _run(args) -> int:
    import os

    load_before = [round(x, 2) for x in os.getloadavg()]
    if args.suite == "kernels":
        result = bench_kernels(tuple(args.sessions), tuple(args.batch or (256, 1024, 4096, 16384, 65536)),
                               args.seconds)
    elif args.suite == "projection":
        result = h100_projection(tuple(args.batch or (256, 1024, 4096, 16384, 65536)))
    elif args.suite == "peer":
        from yujing.loadtest.bench.peer import bench_peer
        result = bench_peer(turns=args.turns, sessions=args.peer_sessions, batch=(args.batch or [4096])[0],
                            ref_turns=args.ref_turns)
    elif args.suite == "models":
        from yujing.loadtest.bench.models import bench_models
        result = bench_models(batches=tuple(args.batch or (1, 8, 64, 256, 1024)), seconds=args.seconds)
    elif args.suite == "heads":
        from yujing.loadtest.bench.heads import bench_heads
        result = bench_heads(batches=tuple(args.batch or (1, 8, 64, 256, 1024)), seconds=args.seconds)
    elif args.suite == "e2e":
        from yujing.loadtest.bench.e2e import bench_e2e
        result = bench_e2e(args)
    elif args.suite == "closed":
        from yujing.loadtest.bench.closed import bench_closed
        result = bench_closed(args)
    elif args.suite == "featurize":
        from yujing.loadtest.bench.featurize import bench_featurize
        result = bench_featurize(batches=tuple(args.batch or (1, 256, 4096)), seconds=args.seconds)
    elif args.suite == "trends":
        from yujing.loadtest.bench.trends import bench_trends
        result = bench_trends(batches=tuple(args.batch or (1, 16, 256)), seconds=args.seconds)
    elif args.suite == "lone":
        from yujing.loadtest.bench.lone import bench_lone
        result = bench_lone(seconds=args.seconds)
    elif args.suite == "alerts":       # its own table and JSON (loadtest/bench/alerts.py)
        from yujing.loadtest.bench.alerts import run as run_alerts
        return run_alerts(args)
    elif args.suite == "durability":   # its own options (loadtest/bench/durability.py)
        from yujing.loadtest.bench.durability import main as run_durability
        return run_durability(["--json", str(args.out)] if args.out else [])
    elif args.suite == "answers":      # its own options (loadtest/bench/answers.py)
        from yujing.loadtest.bench.answers import main as run_answers
        return run_answers(["--json", str(args.out)] if args.out else [])
    else:
        raise SystemExit(f"unknown suite {args.suite}")
    result["machine"] = _machine()
    result["machine"]["loadavg_1_5_15_at_start"] = load_before
    result["command"] = "yujing bench " + " ".join(sys.argv[2:])
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite and write its JSON")
    p.add_argument("suite", choices=("kernels", "peer", "models", "e2e", "closed", "projection", "alerts",
                                          "durability", "featurize", "heads", "answers", "trends", "lone"))
    p.add_argument("--sessions", type=int, nargs="+", default=[10_000, 1 << 20, 1 << 22],
                   help="kernels: table sizes")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="kernels: batch sizes (default 256..65536); peer: the kernel's batch (4096); "
                        "models, heads: batch sizes (default 1 8 64 256 1024); featurize: (default 1 256 4096); trends: (default 1 16 256)")
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per measured point (lone: per hop)")
    p.add_argument("--turns", type=int, default=1_000_000, help="peer: turns in the replayed log")
    p.add_argument("--peer-sessions", type=int, default=20_000, help="peer: sessions in the log")
    p.add_argument("--ref-turns", type=int, default=3_000, help="peer: turns of the reference sample")
    p.add_argument("--duration", type=float, default=10.0, help="e2e, closed: seconds per load point")
    p.add_argument("--quick", action="store_true", help="e2e: short points (smoke run)")
    p.add_argument("--client-processes", type=int, default=1,
                   help="e2e: load-generator processes (more when the generator is the bottleneck)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="closed: also measure another checkout's service (a folder with its own .venv, "
                        "e.g. the main branch's), mode by mode beside this one")
    p.add_argument("--modes", nargs="+", default=None, choices=("batch", "unary", "stream", "sequential"),
                   help="closed: the modes to measure (default: all)")
    p.add_argument("--rounds", type=int, default=1,
                   help="closed with --baseline: rounds per mode, the order alternating; ratios of the medians")
    p.add_argument("--out", type=Path, default=None)
    from yujing.loadtest.bench.alerts import add_arguments as add_alerts_arguments
    add_alerts_arguments(p)
    p.set_defaults(func=_run)
