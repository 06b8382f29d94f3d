"""Session table: slots, TTL expiry, least-recently-active eviction, RESOURCE_EXHAUSTED,
and property tests of the table + kernel against the reference over random histories."""
import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck

from yujing.kernels import layout as L
from yujing.kernels.reference import reference
from yujing.service.errors import TableFull
from yujing.service.session_table import SessionTable
from tests.kernel_cases import default_pf, random_history
from tests.test_kernels_reference import assert_outputs_equal


def test_ttl_expiry_starts_a_new_session():
    t = SessionTable(capacity=4, ttl_ms=1000, backend="cpu")
    slots, new, _ = t.resolve([("t", "a")], now_ms=10_000)
    assert new.tolist() == [1]
    _, new, _ = t.resolve([("t", "a")], now_ms=10_500)
    assert new.tolist() == [0]
    _, new, _ = t.resolve([("t", "a")], now_ms=11_600)     # idle 1.1 s > TTL
    assert new.tolist() == [1] and t.expired == 1


def test_full_table_evicts_the_least_recently_active_idle_session():
    t = SessionTable(capacity=3, ttl_ms=3600_000, evict_min_idle_ms=1000, backend="cpu")
    for k, now in (("a", 1000), ("b", 2000), ("c", 3000)):
        t.resolve([("t", k)], now_ms=now)
    slots, new, errors = t.resolve([("t", "d")], now_ms=5000)
    assert not errors and new.tolist() == [1]
    assert ("t", "a") not in t.sessions.slot_of       # the oldest went
    assert {("t", "b"), ("t", "c"), ("t", "d")} <= set(t.sessions.slot_of)
    assert t.evicted >= 1


def test_full_table_with_no_idle_session_refuses_and_changes_nothing():
    t = SessionTable(capacity=2, ttl_ms=3600_000, evict_min_idle_ms=60_000, backend="cpu")
    t.resolve([("t", "a"), ("t", "b")], now_ms=1000)
    before = dict(t.sessions.slot_of)
    slots, new, errors = t.resolve([("t", "a"), ("t", "c")], now_ms=2000)
    assert list(errors) == [1] and isinstance(errors[1], TableFull)
    assert errors[1].code.name == "RESOURCE_EXHAUSTED"
    assert slots.tolist()[1] == -1 and dict(t.sessions.slot_of) == before


def test_sessions_of_the_current_batch_are_never_evicted():
    t = SessionTable(capacity=2, ttl_ms=3600_000, evict_min_idle_ms=0, backend="cpu")
    t.resolve([("t", "a"), ("t", "b")], now_ms=1000)
    slots, new, errors = t.resolve([("t", "a"), ("t", "b"), ("t", "c")], now_ms=1000)
    assert list(errors) == [2]


def test_capacity_of_four_million_sessions_fits_in_256_bytes_each():
    assert L.BYTES_PER_SESSION <= 256
    t = SessionTable(capacity=4_194_304, agent_capacity=16, backend="cpu")
    total = sum(a.nbytes for a in t.state.values())
    assert total == 4_194_304 * L.BYTES_PER_SESSION


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), sessions=st.integers(1, 12),
       batch=st.integers(1, 40), ooo=st.floats(0, 0.5), ttl_ms=st.sampled_from([60_000, 600_000, 10**9]),
       capacity=st.integers(1, 12))
def test_table_and_kernel_match_the_reference_over_random_interleavings(seed, n, sessions, batch, ooo,
                                                                          ttl_ms, capacity):
    """Random interleavings of many sessions, duplicates of a session within a batch,
    out-of-order timestamps, TTL expiry and eviction through the real table; the
    kernel's answers equal the reference replayed over the slots the table chose."""
    rng = np.random.default_rng(seed)
    ti, tf, th, clock = random_history(rng, n, n_sessions=sessions, n_agents=3, out_of_order=ooo, resets=0,
                                       with_clock=True)
    names = ti[L.T_SLOT].copy()                 # session names; the table picks the slots
    table = SessionTable(capacity=capacity, agent_capacity=4, ttl_ms=ttl_ms, evict_min_idle_ms=0,
                         backend="cpu")
    pf = default_pf()
    applied_ti, applied_tf, applied_th, ofs, ois = [], [], [], [], []
    for lo in range(0, n, batch):
        cols = np.arange(lo, min(n, lo + batch))
        now = int(clock[cols].max())
        slots, new, errors = table.resolve([("t", int(names[c])) for c in cols], now)
        keep = np.array([p for p in range(cols.size) if p not in errors], np.int64)
        if keep.size == 0:
            continue
        agents = [("t", int(a)) if a >= 0 else None for a in ti[L.T_AGENT, cols[keep]]]
        a_slots, a_new = table.resolve_agents(agents, now)
        b_ti = ti[:, cols[keep]].copy()
        b_ti[L.T_SLOT], b_ti[L.T_NEW] = slots[keep], new[keep]
        b_ti[L.T_AGENT], b_ti[L.T_NEW_AGENT] = a_slots, a_new
        b_tf, b_th = tf[:, cols[keep]].copy(), th[cols[keep]].copy()
        of, oi = table.apply(b_ti, b_tf, b_th, pf)
        applied_ti.append(b_ti), applied_tf.append(b_tf), applied_th.append(b_th)
        ofs.append(of), ois.append(oi)
    if not ofs:
        return
    ref_of, ref_oi = reference(np.concatenate(applied_ti, 1), np.concatenate(applied_tf, 1),
                               np.concatenate(applied_th), pf)
    assert_outputs_equal(np.concatenate(ofs, 1), np.concatenate(ois, 1), ref_of, ref_oi)
