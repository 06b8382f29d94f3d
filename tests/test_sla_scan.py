"""The scheduler's SLA scan (yujing.kernels.scan): the CPU twin and the GPU twin (under
the CUDA simulator, in a subprocess) against the plain reference on random tables,
reporting each wait once, overflow of the output found on later passes, and the whole
path through SessionTable.sla_breaches after real turns."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from yujing.kernels import layout as L
from yujing.kernels.reference import sla_scan_reference
from yujing.kernels.scan import as_mask, current_wait_ms
from yujing.kernels.scan_cpu import sla_scan
from yujing.kernels.update_cpu import CpuKernels
from yujing.service.session_table import SessionTable
from tests.kernel_cases import default_pf

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_700_000_000_000


def random_table(rng: np.random.Generator, n: int, now: int = NOW):
    """Session arrays (random contents in every column) and an occupancy mask, with the
    scan's cases mixed: not waiting, waiting short of / exactly at / beyond the SLA, a
    wait in the future (client clock ahead), SLA 0, negative, fractional or NaN, already
    reported for this wait, reported for an earlier wait, free slots with stale data."""
    s = L.new_session_arrays(n)
    for name, arr in s.items():
        if arr.dtype.kind == "f":
            arr[:] = rng.uniform(-1, 1, arr.shape)
        else:
            arr[:] = rng.integers(0, 100, arr.shape).astype(arr.dtype)
    si, sf = s["si"], s["sf"]
    sla = rng.choice([0.0, -1.0, 1.0, 1500.5, 20_000.0, 60_000.0, 3_600_000.0, np.nan], n)
    sf[:, L.F_SLA_MS] = sla
    age = rng.integers(-5_000, 130_000, n)
    exact = (rng.random(n) < 0.15) & (sla > 0)
    age[exact] = np.floor(sla[exact]).astype(np.int64) + rng.integers(-1, 2, int(exact.sum()))
    since = now - age
    waiting = rng.random(n) < 0.7
    si[:, L.I_WAIT_SINCE] = np.where(waiting, since, L.NO_WAIT)
    pick = rng.random(n)
    si[:, L.I_SLA_ALERTED] = np.where(pick < 0.5, L.NO_WAIT,
                                      np.where(pick < 0.8, si[:, L.I_WAIT_SINCE], since - 1_000))
    occupied = rng.random(n) < 0.8
    return s, occupied


def _breaching_count(s, occupied, now):
    ref = {k: v.copy() for k, v in s.items()}
    return len(sla_scan_reference(ref["si"], ref["sf"], occupied, now, 1 << 30)[0])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_out", [1 << 16, 0, 1, 7])
def test_cpu_scan_equals_the_reference_on_random_tables(seed, max_out):
    rng = np.random.default_rng(seed)
    s, occupied = random_table(rng, 3000)
    assert _breaching_count(s, occupied, NOW) > 20     # the random table has breaches to find
    ref = {k: v.copy() for k, v in s.items()}
    ref_slots, ref_wait, ref_sla = sla_scan_reference(ref["si"], ref["sf"], occupied, NOW, max_out)
    cpu = {k: v.copy() for k, v in s.items()}
    out = np.full(max_out, -7, np.int64)
    n = sla_scan(cpu["si"], cpu["sf"], as_mask(occupied), NOW, out)
    assert n == len(ref_slots) == min(max_out, _breaching_count(s, occupied, NOW))
    assert out[:n].tolist() == ref_slots
    for name in s:                              # marks exactly the reported slots, nothing else
        assert np.array_equal(cpu[name], ref[name], equal_nan=True), name
    back = {k: v.copy() for k, v in s.items()}
    slots, wait_ms, sla_ms = CpuKernels().sla_scan(back, occupied, NOW, max_out)
    assert all(a.dtype == np.int64 for a in (slots, wait_ms, sla_ms))
    assert (slots.tolist(), wait_ms.tolist(), sla_ms.tolist()) == (ref_slots, ref_wait, ref_sla)
    assert np.array_equal(back["si"], ref["si"])


def test_a_second_pass_at_the_same_clock_finds_nothing():
    s, occupied = random_table(np.random.default_rng(42), 2000)
    k = CpuKernels()
    first = k.sla_scan(s, occupied, NOW, 1 << 16)[0]
    assert first.size > 20
    assert k.sla_scan(s, occupied, NOW, 1 << 16)[0].size == 0
    later = k.sla_scan(s, occupied, NOW + 10**9, 1 << 16)[0]
    assert not set(later.tolist()) & set(first.tolist())   # never the same wait twice


def test_an_overflowing_output_leaves_the_rest_for_the_next_passes():
    s, occupied = random_table(np.random.default_rng(7), 3000)
    full = {k: v.copy() for k, v in s.items()}
    everything = sla_scan_reference(full["si"], full["sf"], occupied, NOW, 1 << 30)[0]
    assert len(everything) > 40
    k, got, passes = CpuKernels(), [], 0
    while True:
        slots = k.sla_scan(s, occupied, NOW, 16)[0]
        assert slots.size <= 16
        passes += 1
        if slots.size == 0:
            break
        got += slots.tolist()
    assert got == everything
    assert passes == -(-len(everything) // 16) + 1
    assert np.array_equal(s["si"], full["si"])


def test_a_new_wait_is_reported_again_and_free_slots_never():
    s = L.new_session_arrays(4)
    si, sf = s["si"], s["sf"]
    si[:, L.I_WAIT_SINCE] = NOW - 100_000
    si[:, L.I_SLA_ALERTED] = L.NO_WAIT
    sf[:, L.F_SLA_MS] = 60_000.0
    occupied = np.array([True, True, False, True])
    k = CpuKernels()
    slots, wait_ms, sla_ms = k.sla_scan(s, occupied, NOW, 10)
    assert slots.tolist() == [0, 1, 3] and wait_ms.tolist() == [100_000] * 3 and sla_ms.tolist() == [60_000] * 3
    si[1, L.I_WAIT_SINCE] = NOW + 5_000           # answered, then a new wait on slot 1
    assert k.sla_scan(s, occupied, NOW + 64_999, 10)[0].tolist() == []
    slots, wait_ms, _ = k.sla_scan(s, occupied, NOW + 65_000, 10)
    assert slots.tolist() == [1] and wait_ms.tolist() == [60_000]
    si[3, L.I_WAIT_SINCE] = L.NO_WAIT             # answered, no new wait
    assert k.sla_scan(s, occupied, NOW + 10**8, 10)[0].tolist() == []


def test_current_wait_ms():
    si = L.new_session_arrays(3)["si"]
    si[:, L.I_WAIT_SINCE] = [L.NO_WAIT, NOW - 1234, NOW + 50]
    assert [current_wait_ms(si, s, NOW) for s in range(3)] == [0, 1234, 0]


# --- through the session table, after real turns -----------------------------------------
def _turn(slot, new, ts, speaker=L.SPEAKER_CUSTOMER, sla_ms=60_000.0):
    ti = np.zeros((L.TI_ROWS, 1), np.int64)
    tf = np.zeros((L.TFL_ROWS, 1))
    ti[L.T_SLOT], ti[L.T_NEW], ti[L.T_TS], ti[L.T_SPEAKER] = slot, new, ts, speaker
    ti[L.T_AGENT], ti[L.T_INTENT], ti[L.T_WORDS] = -1, 0, 5
    ti[L.T_FLAGS] = L.TFLAG_HAS_TEXT | L.TFLAG_SENTIMENT
    tf[L.TF_SLA_MS] = sla_ms
    return ti, tf, np.zeros(1, np.uint64)


def _say(table, pf, key, ts, speaker=L.SPEAKER_CUSTOMER, sla_ms=60_000.0):
    slots, new, errors = table.resolve([key], now_ms=ts)
    assert not errors
    table.apply(*_turn(int(slots[0]), int(new[0]), ts, speaker, sla_ms), pf)
    return int(slots[0])


def test_new_slot_resets_the_reported_mark():
    s = L.new_session_arrays(2)
    a = L.new_agent_arrays(1)
    s["si"][:] = 12345                               # a previous life's data
    CpuKernels().apply(s, a, *_turn(1, 1, NOW), default_pf())
    assert s["si"][1, L.I_SLA_ALERTED] == L.NO_WAIT
    assert s["si"][1, L.I_WAIT_SINCE] == NOW        # the customer's turn starts a wait


def test_session_table_reports_a_waiting_customer_once_per_wait():
    pf = default_pf()
    t = SessionTable(capacity=8, agent_capacity=2, backend="cpu")
    a, b, c = ("t", "a"), ("t", "b"), ("t", "c")
    slot_a = _say(t, pf, a, NOW)
    _say(t, pf, b, NOW, speaker=L.SPEAKER_AGENT)    # an agent speaking: nobody waits
    assert t.sla_breaches(NOW + 59_999) == []
    assert t.sla_breaches(NOW + 60_000) == [(a, slot_a, 60_000, 60_000)]
    assert t.sla_breaches(NOW + 60_000) == []
    assert t.sla_breaches(NOW + 600_000) == []       # the same wait is not reported again
    _say(t, pf, a, NOW + 1_000_000, speaker=L.SPEAKER_AGENT)   # answered
    assert t.sla_breaches(NOW + 2_000_000) == []
    _say(t, pf, a, NOW + 2_000_000)                             # waits again, 20 s SLA now
    _say(t, pf, a, NOW + 2_005_000, sla_ms=20_000.0)           # still the same wait
    assert t.sla_breaches(NOW + 2_019_999) == []
    assert t.sla_breaches(NOW + 2_020_000) == [(a, slot_a, 20_000, 20_000)]
    # an ended session is never reported, even though its slot keeps its data
    t.end(a, pf)
    assert t.sla_breaches(NOW + 9_000_000) == []
    # its slot reused by a new session whose first wait starts at the same timestamp
    slot_c = _say(t, pf, c, NOW + 2_000_000)
    assert slot_c == slot_a
    assert t.sla_breaches(NOW + 2_059_999) == []
    assert t.sla_breaches(NOW + 2_060_000) == [(c, slot_c, 60_000, 60_000)]


def test_session_table_output_bound_defers_the_rest():
    pf = default_pf()
    t = SessionTable(capacity=16, agent_capacity=2, backend="cpu")
    keys = [("t", str(k)) for k in range(10)]
    for key in keys:
        _say(t, pf, key, NOW)
    first = t.sla_breaches(NOW + 60_000, max_out=4)
    second = t.sla_breaches(NOW + 60_000, max_out=100)
    assert len(first) == 4 and len(second) == 6
    assert sorted(k for k, *_ in first + second) == sorted(keys)


# --- the GPU twin under the CUDA simulator ------------------------------------------------
SIM_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from yujing.kernels import layout as L
    from yujing.kernels.reference import sla_scan_reference
    from yujing.kernels.scan import as_mask
    from yujing.kernels.scan_gpu import sla_scan
    from yujing.kernels.update_gpu import GpuKernels
    from tests.test_sla_scan import NOW, random_table

    seed, n = map(int, sys.argv[1:3])
    res = {}
    s, occ = random_table(np.random.default_rng(seed), n)
    ref = {k: v.copy() for k, v in s.items()}
    r_slots, r_wait, r_sla = sla_scan_reference(ref["si"], ref["sf"], occ, NOW, 1 << 30)
    res["n_ref"] = len(r_slots)
    g = {k: v.copy() for k, v in s.items()}
    out = np.full(1024, -7, np.int64)
    k = sla_scan(g["si"], g["sf"], as_mask(occ), NOW, out)
    res["all_equal"] = sorted(out[:k].tolist()) == r_slots and k == len(r_slots)
    res["state_equal"] = all(np.array_equal(g[x], ref[x], equal_nan=True) for x in s)
    res["second_pass"] = sla_scan(g["si"], g["sf"], as_mask(occ), NOW, out)

    # overflow: each pass reports some 5 of the remaining breaches and marks only those
    g = {k: v.copy() for k, v in s.items()}
    got, ok = [], True
    for _ in range(len(r_slots) + 2):
        before = g["si"].copy()
        out = np.full(5, -7, np.int64)
        k = sla_scan(g["si"], g["sf"], as_mask(occ), NOW, out)
        rows = np.flatnonzero((g["si"] != before).any(axis=1)).tolist()
        ok &= k == min(5, len(r_slots) - len(got)) and sorted(out[:k].tolist()) == rows
        got += out[:k].tolist()
        if k == 0:
            break
    res["overflow_ok"] = bool(ok)
    res["overflow_union"] = sorted(got) == r_slots and len(got) == len(set(got))
    res["overflow_state_equal"] = bool(np.array_equal(g["si"], ref["si"]))

    # the backend method, with NumPy standing in for CuPy
    kern = GpuKernels.__new__(GpuKernels)
    kern.xp, kern.to_host = np, np.asarray
    g = {k: v.copy() for k, v in s.items()}
    slots, wait_ms, sla_ms = kern.sla_scan(g, occ, NOW, 1 << 12)
    res["backend_equal"] = (sorted(zip(slots.tolist(), wait_ms.tolist(), sla_ms.tolist()))
                            == list(zip(r_slots, r_wait, r_sla)))
    res["backend_dtypes"] = [str(a.dtype) for a in (slots, wait_ms, sla_ms)]
    print(json.dumps(res))
""")


def run_sim(*args):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SIM_SCRIPT, *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("seed,n", [(1, 300), (2, 517)])
def test_gpu_scan_equals_the_reference_under_simulator(seed, n):
    r = run_sim(seed, n)
    assert r["n_ref"] > 10, r
    assert r["all_equal"] and r["state_equal"], r
    assert r["second_pass"] == 0, r
    assert r["overflow_ok"] and r["overflow_union"] and r["overflow_state_equal"], r
    assert r["backend_equal"] and r["backend_dtypes"] == ["int64"] * 3, r
