"""The compiled queue trends (TrendTracker.observe: yujing.kernels.trends.observe_batch) equal
the plain numpy reference (yujing.service.alerts.trends_reference.ReferenceTrendTracker).

Both trackers get the same long seeded random stream: several tenants, queues and intent
categories (and the ignored "other"), batches of 1 to a few hundred turns, turns out of
order and late (some older than the ring), complaints with intents and near-duplicate
SimHashes, surges of negative turns, volume and complaints so that every rule fires and is
released, gaps of days, and a small ``max_rows`` so that queues fold into "other" and the
global row. After every batch the events must be equal (kinds, figures, summaries, order,
event times, by repr: the same types too), and every few batches the whole state, every
queue's ``health()``, ``gauges()`` and ``queues()``.
"""
from __future__ import annotations

import numpy as np
import pytest

from yujing.kernels import trends as kernel
from yujing.service.alerts import trends
from yujing.service.alerts.trends import TrendPolicy, TrendTracker
from yujing.service.alerts.trends_reference import ReferenceTrendTracker

HOUR = 3_600_000
MINUTE = 60_000
DAY0 = 1_700_000_000_000 // (24 * HOUR) * (24 * HOUR)
CATEGORIES = ("", "", "refund", "delivery", "billing", "other", "account")
STATE = ("_counts", "_last", "_first", "_clock", "_parent", "_active", "_false_since", "_seg", "_seg_b")


def test_kernel_constants_are_the_trackers():
    assert trends.COUNTERS.index("customer_turns") == kernel.CUSTOMER and trends.NC == kernel.NC
    assert [trends.TURNS, trends.CUSTOMER, trends.NEGATIVE, trends.COMPLAINTS, trends.NEW_SESSIONS,
            trends.ESCALATIONS] == [kernel.TURNS, kernel.CUSTOMER, kernel.NEGATIVE, kernel.COMPLAINTS,
                                    kernel.NEW_SESSIONS, kernel.ESCALATIONS]
    assert (trends._NEVER, trends._FAR, trends._UNSET) == (kernel.NEVER, kernel.FAR, kernel.UNSET)


def stream(seed: int, batches: int, n_tenants: int = 3, n_queues: int = 7):
    """Batches of turns (the keyword arguments of observe), in time order with noise."""
    rng = np.random.default_rng(seed)
    t = DAY0
    base_sim = rng.integers(1, 1 << 63, 6, dtype=np.uint64)
    for k in range(batches):
        phase = (k // 40) % 6          # quiet, negative surge, volume spike, complaints, quiet, repeats
        r = rng.random()
        if r < 0.01:
            t += int(rng.integers(2, 5)) * 24 * HOUR          # a gap of days (past the ring)
        elif r < 0.05:
            t += int(rng.integers(1, 8)) * HOUR
        else:
            t += int(rng.integers(0, 6 * MINUTE if phase != 2 else MINUTE))
        n = int(rng.choice([1, 1, 2, 3, 8, 16, 40, 120, 300]))
        if phase == 2:
            n = max(n, 60)
        ts = t - rng.integers(0, 10 * MINUTE, n)
        late = rng.random(n)
        ts = np.where(late < 0.08, ts - rng.integers(0, 6 * HOUR, n), ts)          # out of order
        ts = np.where(late < 0.01, ts - rng.integers(60, 100, n) * HOUR, ts)       # older than the ring
        tenant = rng.integers(0, n_tenants, n)
        queue = np.minimum(rng.geometric(0.35, n) - 1, n_queues - 1)
        if phase == 3:
            queue[:] = 0
        customer = rng.random(n) < 0.7
        neg_p = 0.6 if phase == 1 else 0.1
        comp_p = 0.5 if phase == 3 else (0.6 if phase == 5 else 0.05)
        complaint = customer & (rng.random(n) < comp_p)
        cat_i = rng.integers(0, len(CATEGORIES), n)
        categories = [CATEGORIES[i] if c else "" for i, c in zip(cat_i.tolist(), customer.tolist())]
        intent = np.where(customer, rng.integers(0, 4, n), -1)
        intent = np.where(rng.random(n) < 0.2, -1, intent)
        flips = rng.integers(0, 64, (n, 3)).astype(np.uint64)
        sim = base_sim[rng.integers(0, 6, n)]
        for j in range(rng.integers(0, 4)):
            sim = sim ^ (np.uint64(1) << flips[:, j])
        sim = np.where(rng.random(n) < 0.15, np.uint64(0), sim).astype(np.uint64)
        sim = np.where(customer, sim, np.uint64(0)).astype(np.uint64)
        sessions = rng.integers(0, 12 if phase == 5 else 1 << 40, n)
        yield dict(tenants=[f"t{i}" for i in tenant.tolist()], queues=[f"q{i}" for i in queue.tolist()],
                   categories=categories, ts_ms=ts, customer=customer,
                   negative=rng.random(n) < neg_p, complaint=complaint, new_session=rng.random(n) < 0.2,
                   escalation=rng.random(n) < (0.2 if phase == 1 else 0.02), session_hash=sessions,
                   intent_id=intent, simhash=sim)


def assert_same_state(ref, got):
    for name in STATE:
        np.testing.assert_array_equal(getattr(ref, name), getattr(got, name), err_msg=name)
    assert (ref.late_dropped, ref.folded_queues, ref._stream_ms) == (got.late_dropped, got.folded_queues,
                                                                     got._stream_ms)
    assert ref.queues() == got.queues()
    assert sorted(ref._recent) == sorted(got._recent)
    for r, a in ref._recent.items():
        b = got._recent[r]
        for name in ("ts", "sess", "intent", "sim"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"_recent.{name}")
        assert (a.n, a.pos, a.clusters) == (b.n, b.pos, b.clusters)
    for tenant, queue, cat in ref.queues():
        if not cat:
            assert repr(ref.health(tenant, queue)) == repr(got.health(tenant, queue))
    assert repr(ref.gauges(5)) == repr(got.gauges(5))


POLICIES = {
    # small thresholds so that every rule fires often; a small row bound folds queues
    "low": dict(max_rows=16, warmup_hours=4, warmup_hours_24h=25, negative_min_customer_turns=5,
                volume_min_customer_turns=10, complaint_min_complaints=3, complaint_min_customer_turns=10,
                repeated_complaints=3, near_dup_bits=4),
    "defaults": {},
    "hourly_buckets": dict(bucket_minutes=60, max_rows=24, category_alerts=False, warmup_hours=4,
                           warmup_hours_24h=25, negative_min_customer_turns=3, volume_min_customer_turns=5,
                           complaint_min_complaints=2, complaint_min_customer_turns=0, ignore_categories=[]),
    "quarter_hours": dict(bucket_minutes=15, max_rows=40, negative_share_floor=0.0, complaint_rate_floor=0.0,
                          negative_min_customer_turns=1, volume_min_customer_turns=1, complaint_min_complaints=1,
                          complaint_min_customer_turns=1, warmup_hours_24h=30),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_compiled_observe_equals_the_numpy_reference(name, monkeypatch):
    if name == "low":           # forget the remembered row keys often, too
        monkeypatch.setattr(trends, "_ROW_CACHE_MAX", 8)
    policy = TrendPolicy.from_section(POLICIES[name])
    ref, got = ReferenceTrendTracker(policy), TrendTracker(policy)
    kinds = {}
    for k, batch in enumerate(stream(seed=sum(map(ord, name)), batches=1500)):
        want = ref.observe(**batch)
        have = got.observe(**batch)
        assert repr(have) == repr(want), f"batch {k}"
        for e in want:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        if k % 97 == 0:
            assert_same_state(ref, got)
    assert_same_state(ref, got)
    assert got.late_dropped > 0
    assert got.folded_queues > 0 or policy.max_rows > 100
    if name != "defaults":           # the stream is too thin for the default volumes
        assert set(kinds) == set(trends.RULES), kinds


def test_lists_and_arrays_of_other_types_are_taken_alike():
    """Python lists, other int/bool dtypes and strided columns give the same result."""
    batch = next(stream(seed=5, batches=1))
    while batch["ts_ms"].shape[0] < 8:
        batch = next(stream(seed=int(batch["ts_ms"][0] % 1000), batches=1))
    a, b = TrendTracker(), TrendTracker()
    a.observe(**batch)
    two = np.stack([batch["ts_ms"], batch["ts_ms"]], axis=1)          # a strided column
    b.observe(**{**{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in batch.items()},
                 "ts_ms": two[:, 0], "customer": batch["customer"].astype(np.int8)})
    assert_same_state(a, b)


def test_warm_up_compiles_the_kernel():
    assert trends.warm_up() >= 0
    assert kernel.observe_batch.signatures
