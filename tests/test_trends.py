"""Queue trends (service/alerts/trends.py): synthetic days replayed in event time raise each
queue alert once, at the right time, and only past the warm-up and volume guards; the row
bound folds queues into "other"; the [trend] section is validated; health() reports the
counts fed in."""
import tomllib

import numpy as np
import pytest

from yujing.service.alerts.trends import DEFAULT_TREND_TOML, TrendPolicy, TrendTracker
from yujing.service.errors import ConfigError

HOUR = 3_600_000
MINUTE = 60_000
DAY0 = 1_700_000_000_000 // (24 * HOUR) * (24 * HOUR)      # a midnight (UTC)


def spread(n: int, share: float) -> np.ndarray:
    """n flags, exactly round(n * share) of them set, evenly spread."""
    j = np.arange(n)
    return (np.floor((j + 1) * share) - np.floor(j * share)) == 1


def hours(spec, tenant="t", queue="q", category="", customer_share=1.0):
    """Turns for ``spec`` = [(hour, n, negative share, complaint share), ...], timestamps
    spread through each hour; every turn its own session (first turn: new session)."""
    cols = {k: [] for k in ("ts_ms", "customer", "negative", "complaint", "session_hash")}
    for h, n, neg, comp in spec:
        j = np.arange(n)
        cols["ts_ms"].append(DAY0 + h * HOUR + ((j + 0.5) * HOUR / n).astype(np.int64))
        cols["customer"].append(spread(n, customer_share))
        cols["negative"].append(spread(n, neg))
        cols["complaint"].append(spread(n, comp))
        cols["session_hash"].append(h * 1_000_003 + j + hash((tenant, queue)) % 1000 * 10_000_019)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    n = out["ts_ms"].shape[0]
    out.update(tenants=[tenant] * n, queues=[queue] * n, categories=[category] * n,
               new_session=np.ones(n, bool), escalation=np.zeros(n, bool),
               intent_id=np.full(n, -1, np.int64), simhash=np.zeros(n, np.uint64))
    return out


def merge(*parts):
    out = {k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list)
               else np.concatenate([p[k] for p in parts])) for k in parts[0]}
    order = np.argsort(out["ts_ms"], kind="stable")
    return {k: ([v[i] for i in order] if isinstance(v, list) else v[order]) for k, v in out.items()}


def feed(tracker, turns, batch=50, start_ms=None, until_ms=None):
    """Replay ``turns`` (time-ordered) in batches; returns the events."""
    ts = turns["ts_ms"]
    lo = 0 if start_ms is None else int(np.searchsorted(ts, start_ms))
    hi = ts.shape[0] if until_ms is None else int(np.searchsorted(ts, until_ms))
    events = []
    for a in range(lo, hi, batch):
        b = min(a + batch, hi)
        events += tracker.observe(**{k: v[a:b] for k, v in turns.items()})
    return events


def kinds(events):
    return [e.kind for e in events]


# -- NEGATIVE_SURGE ----------------------------------------------------------------------
def test_negative_surge_in_hour_14_raises_one_alert_in_that_hour():
    day = hours([(h, 200, 0.35 if h == 14 else 0.10, 0.0) for h in range(24)])
    tr = TrendTracker()
    before = feed(tr, day, until_ms=DAY0 + 14 * HOUR)
    assert before == []
    health_before = tr.health("t", "q")["health_index"]
    during = feed(tr, day, start_ms=DAY0 + 14 * HOUR, until_ms=DAY0 + 14 * HOUR + 50 * MINUTE)
    health_during = tr.health("t", "q")["health_index"]
    after = feed(tr, day, start_ms=DAY0 + 14 * HOUR + 50 * MINUTE)
    events = during + after
    assert kinds(events) == ["NEGATIVE_SURGE"]
    e = events[0]
    assert DAY0 + 14 * HOUR <= e.event_time_ms < DAY0 + 15 * HOUR
    assert (e.tenant_id, e.queue, e.intent_category, e.level, e.priority) == ("t", "q", "", 2, 3)
    assert e.figures["value"] >= 1.5 * e.figures["baseline"] and e.figures["ratio"] >= 1.5
    assert e.figures["baseline"] == pytest.approx(0.10, abs=0.005)
    assert e.figures["window_s"] == 3600 and e.figures["count"] > 0
    assert "negative share" in e.summary_en and "负面占比" in e.summary_zh
    assert 0 <= health_during < health_before <= 100


def test_a_second_surge_after_the_cooldown_raises_a_second_alert():
    day = hours([(h, 200, 0.35 if h in (8, 20) else 0.10, 0.0) for h in range(24)])
    events = feed(TrendTracker(), day)
    assert kinds(events) == ["NEGATIVE_SURGE", "NEGATIVE_SURGE"]
    assert DAY0 + 8 * HOUR <= events[0].event_time_ms < DAY0 + 9 * HOUR
    assert DAY0 + 20 * HOUR <= events[1].event_time_ms < DAY0 + 21 * HOUR


def test_a_surge_in_one_category_is_raised_for_that_category():
    spec_rest = [(h, 400, 0.10, 0.0) for h in range(24)]
    spec_refund = [(h, 100, 0.30 if h == 14 else 0.10, 0.0) for h in range(24)]
    # the rest in the policy's "no particular intent" category, which gets no row of its own
    turns = merge(hours(spec_rest, category="other"), hours(spec_refund, category="refund"))
    tr = TrendTracker()
    events = feed(tr, turns)
    assert [(e.kind, e.intent_category) for e in events] == [("NEGATIVE_SURGE", "refund")]
    assert tr.queues() == [("t", "q", ""), ("t", "q", "refund")]
    assert "category 'refund'" in events[0].summary_en
    off = feed(TrendTracker(TrendPolicy(category_alerts=False)), turns)
    assert off == []


# -- VOLUME_SPIKE ------------------------------------------------------------------------
def test_three_hour_volume_spike_raises_once_not_before_it():
    spec = [(h, 600 if h in (34, 35, 36) else 200, 0.0, 0.0) for h in range(48)]
    tr = TrendTracker()
    events = feed(tr, hours(spec))
    assert kinds(events) == ["VOLUME_SPIKE"]
    e = events[0]
    assert DAY0 + 34 * HOUR <= e.event_time_ms < DAY0 + 37 * HOUR
    assert e.figures["baseline"] == pytest.approx(600, rel=0.02)      # 3 h at 200/h
    assert e.figures["value"] >= 2 * e.figures["baseline"] and e.figures["window_s"] == 3 * 3600
    assert (e.level, e.priority) == (2, 2)


# -- COMPLAINT_RATE_UP -------------------------------------------------------------------
def test_complaint_rate_up_over_24_h_against_the_previous_24_h():
    spec = [(h, 200, 0.0, 0.10 if h >= 48 else 0.05) for h in range(72)]
    events = feed(TrendTracker(), hours(spec), batch=100)
    assert kinds(events) == ["COMPLAINT_RATE_UP"]
    e = events[0]
    # 24 h rate = 5 % + 5 % x (hours into day 3) / 24 reaches 1.3 x 5 % after ~7.2 h
    assert DAY0 + 54 * HOUR <= e.event_time_ms < DAY0 + 57 * HOUR
    assert e.figures["baseline"] == pytest.approx(0.05, abs=0.002)
    assert e.figures["ratio"] >= 1.3 and e.figures["count"] >= 20
    flat = [(h, 200, 0.0, 0.05) for h in range(72)]
    assert feed(TrendTracker(), hours(flat), batch=100) == []


def test_complaint_rate_rule_waits_for_48_h_of_history():
    # day 2 at twice the complaint rate of day 1: armed only at the 48 h mark
    spec = [(h, 200, 0.0, 0.10 if h >= 24 else 0.05) for h in range(48)]
    events = feed(TrendTracker(), hours(spec), batch=100)
    assert all(e.event_time_ms >= DAY0 + 48 * HOUR - 10 * MINUTE for e in events)
    early = feed(TrendTracker(TrendPolicy(warmup_hours_24h=30)), hours(spec), batch=100)
    assert kinds(early) == ["COMPLAINT_RATE_UP"]
    assert DAY0 + 30 * HOUR <= early[0].event_time_ms < DAY0 + 32 * HOUR


# -- REPEATED_COMPLAINT ------------------------------------------------------------------
def complaints(n, queue="q", sessions=None, simhash=0xDEADBEEFCAFEF00D, intent=-1, category="",
               every_ms=5 * MINUTE, t0=DAY0 + 10 * HOUR):
    sessions = list(range(100, 100 + n)) if sessions is None else sessions
    sims = simhash if isinstance(simhash, list) else [simhash] * n
    return dict(tenants=["t"] * n, queues=[queue] * n, categories=[category] * n,
                ts_ms=t0 + np.arange(n) * every_ms, customer=np.ones(n, bool), negative=np.ones(n, bool),
                complaint=np.ones(n, bool), new_session=np.ones(n, bool), escalation=np.zeros(n, bool),
                session_hash=np.asarray(sessions, np.int64), intent_id=np.full(n, intent, np.int64),
                simhash=np.asarray(sims, np.uint64))


def one_by_one(tracker, turns):
    n = len(turns["tenants"])
    events = []
    for i in range(n):
        events += tracker.observe(**{k: v[i:i + 1] for k, v in turns.items()})
    return events


def test_five_sessions_with_the_same_complaint_raise_one_repeated_complaint():
    tr = TrendTracker()
    events = one_by_one(tr, complaints(7))
    assert kinds(events) == ["REPEATED_COMPLAINT"]
    e = events[0]
    assert e.event_time_ms == DAY0 + 10 * HOUR + 4 * 5 * MINUTE       # the 5th complaint
    assert e.figures["value"] == 5 and e.figures["window_s"] == 3600
    assert (e.level, e.priority, e.queue) == (3, 3, "q")
    # the same five in one batch: one alert too
    assert kinds(TrendTracker().observe(**complaints(5))) == ["REPEATED_COMPLAINT"]


def test_four_sessions_or_one_session_five_times_raise_nothing():
    assert one_by_one(TrendTracker(), complaints(4)) == []
    assert one_by_one(TrendTracker(), complaints(5, sessions=[7] * 5)) == []
    # five sessions but spread over 80 minutes: never five within an hour
    assert one_by_one(TrendTracker(), complaints(5, every_ms=20 * MINUTE)) == []


def test_similar_means_same_intent_or_near_duplicate_simhash():
    by_intent = complaints(5, simhash=0, intent=12, category="refund")
    assert kinds(TrendTracker().observe(**by_intent)) == ["REPEATED_COMPLAINT"]
    assert TrendTracker().observe(**by_intent)[0].intent_category == "refund"
    # the policy's "no intent" category does not make complaints similar
    assert TrendTracker().observe(**complaints(5, simhash=0, intent=3, category="other")) == []
    base = 0xDEADBEEFCAFEF00D
    near = [base, base ^ 0b111, base ^ (0b11 << 40), base ^ 1, base ^ (1 << 63)]     # <= 3 bits away
    assert kinds(TrendTracker().observe(**complaints(5, simhash=near))) == ["REPEATED_COMPLAINT"]
    far = near[:4] + [base ^ 0xFFFFF]                                                # 20 bits away
    assert TrendTracker().observe(**complaints(5, simhash=far)) == []
    assert TrendTracker(TrendPolicy(near_dup_bits=24)).observe(**complaints(5, simhash=far)) != []  # all within 22


# -- guards and bounds -------------------------------------------------------------------
def test_a_tiny_queue_raises_nothing():
    spec = [(h, 9 if h in (15, 16, 17) else 3, 1.0 if h == 14 else 0.0, 0.0) for h in range(24)]
    assert feed(TrendTracker(), hours(spec), batch=1) == []
    # the guards are what keeps it quiet: without them the same day alerts
    loose = TrendPolicy(negative_min_customer_turns=1, volume_min_customer_turns=1)
    assert sorted(kinds(feed(TrendTracker(loose), hours(spec), batch=1))) == ["NEGATIVE_SURGE", "VOLUME_SPIKE"]


def test_more_queues_than_max_rows_fold_into_other():
    tr = TrendTracker(TrendPolicy(max_rows=32))       # reserve: 2 rows
    t0 = DAY0 + 6 * HOUR
    parts = [hours([(5, 1, 0.0, 0.0)], tenant="a", queue=f"q{i}") for i in range(40)]
    parts += [hours([(5, 1, 0.0, 0.0)], tenant="b", queue=f"x{i}") for i in range(3)]
    for p in parts:
        tr.observe(**p)
    rows = tr.queues()
    assert len(rows) == 32
    assert ("a", "other", "") in rows and ("*", "other", "") in rows
    assert ("a", "q29", "") in rows and ("a", "q30", "") not in rows
    assert tr.health("a", "q35")["tracked_as"] == ("a", "other")
    assert tr.health("a", "other", t0)["windows"]["1h"]["turns"] == 10
    assert tr.health("b", "x1")["tracked_as"] == ("*", "other")
    assert tr.health("*", "other", t0)["windows"]["1h"]["turns"] == 3
    assert sum(tr.health(t, q, t0)["windows"]["1h"]["turns"] for t, q, _ in rows if (t, q) != ("a", "other")
               and (t, q) != ("*", "other")) == 30
    assert tr.folded_queues == 13


def test_a_turn_older_than_the_ring_is_not_counted():
    tr = TrendTracker()
    tr.observe(**hours([(100, 2, 0.0, 0.0)]))
    tr.observe(**hours([(20, 1, 0.0, 0.0)]))        # 80 h older than the clock
    tr.observe(**hours([(99, 1, 0.0, 0.0)]))        # late but inside the ring
    assert tr.late_dropped == 1
    w = tr.health("t", "q")["windows"]
    assert w["1h"]["turns"] == 2 and w["3h"]["turns"] == 3


# -- the policy section ------------------------------------------------------------------
def test_default_toml_is_the_dataclass_defaults():
    section = tomllib.loads(DEFAULT_TREND_TOML)["trend"]
    assert TrendPolicy.from_section(section) == TrendPolicy()
    assert TrendPolicy.from_section(None) == TrendPolicy()
    p = TrendPolicy.from_section({"levels": {"VOLUME_SPIKE": "RED"}, "priorities": {"NEGATIVE_SURGE": "P0"},
                                  "negative_surge_ratio": 2})
    assert p.levels["VOLUME_SPIKE"] == 3 and p.levels["NEGATIVE_SURGE"] == 2
    assert p.priorities["NEGATIVE_SURGE"] == 4 and p.negative_surge_ratio == 2.0


@pytest.mark.parametrize("section, key", [
    ({"negative_surge_ratoi": 1.5}, "negative_surge_ratoi"),
    ({"negative_surge_ratio": 0.5}, "negative_surge_ratio"),
    ({"negative_surge_ratio": 1}, "negative_surge_ratio"),
    ({"near_dup_bits": 65}, "near_dup_bits"),
    ({"max_rows": 100.5}, "max_rows"),
    ({"bucket_minutes": 7}, "bucket_minutes"),
    ({"warmup_hours": "6"}, "warmup_hours"),
    ({"category_alerts": 1}, "category_alerts"),
    ({"levels": {"VOLUME_SPIKE": "PURPLE"}}, "VOLUME_SPIKE"),
    ({"priorities": {"SURGE": "P1"}}, "SURGE"),
    ({"health_weights": {"negative": 80, "complaints": 30}}, "health_weights"),
    ({"health_negative_yellow": 0.5}, "health_negative"),
])
def test_bad_values_are_refused_naming_the_key(section, key):
    with pytest.raises(ConfigError) as exc:
        TrendPolicy.from_section(section, "policy.toml [trend]")
    assert key in str(exc.value) and str(exc.value).startswith("policy.toml [trend]")
    assert isinstance(exc.value, ValueError)


# -- health ------------------------------------------------------------------------------
def test_health_reports_the_counts_fed_in():
    t0 = DAY0 + 30 * HOUR                      # a bucket boundary
    tr = TrendTracker()

    def turns(at_ms, customer, negative, complaint, new, esc, cats=None):
        n = len(customer)
        return dict(tenants=["t"] * n, queues=["q"] * n, categories=cats or [""] * n,
                    ts_ms=np.asarray(at_ms, np.int64), customer=np.asarray(customer, bool),
                    negative=np.asarray(negative, bool), complaint=np.asarray(complaint, bool),
                    new_session=np.asarray(new, bool), escalation=np.asarray(esc, bool),
                    session_hash=np.arange(n), intent_id=np.full(n, -1), simhash=np.zeros(n, np.uint64))

    # 20 h ago: 10 customer turns, 1 negative
    tr.observe(**turns([t0 - 20 * HOUR] * 10, [1] * 10, [1] + [0] * 9, [0] * 10, [1] + [0] * 9, [0] * 10))
    # 2 h ago: 4 turns, 3 customer, 1 negative, 1 complaint, 1 new session
    tr.observe(**turns([t0 - 2 * HOUR] * 4, [1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0] * 4))
    # the last half hour: 7 turns, 5 customer (2 of them refund), 2 negative, 1 complaint,
    # 2 new sessions, 1 escalation
    at = [t0 - 30 * MINUTE + k * 5 * MINUTE for k in range(7)]
    tr.observe(**turns(at, [1, 0, 1, 1, 0, 1, 1], [1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0],
                       [1, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1, 0],
                       cats=["refund", "", "", "refund", "", "", ""]))
    h = tr.health("t", "q", t0 + MINUTE)
    w = h["windows"]
    assert [w["1h"][k] for k in ("turns", "customer_turns", "negative_turns", "complaints", "new_sessions",
                                 "escalations")] == [7, 5, 2, 1, 2, 1]
    assert w["1h"]["negative_share"] == pytest.approx(0.4) and w["1h"]["complaint_rate"] == pytest.approx(0.2)
    assert [w["3h"][k] for k in ("turns", "customer_turns", "negative_turns", "complaints")] == [11, 8, 3, 2]
    assert [w["24h"][k] for k in ("turns", "customer_turns", "negative_turns", "complaints")] == [21, 18, 4, 2]
    # 1 h baseline: the 24 h before the last hour, 115 of its 10-minute buckets seen
    # (first turn 120 buckets before now, minus the 6 of the window, plus the current one)
    assert w["1h"]["baseline_customer_turns"] == pytest.approx(13 / 115 * 6)
    assert w["1h"]["baseline_negative_share"] == pytest.approx(2 / 13)
    assert w["1h"]["baseline_complaint_rate"] == pytest.approx(1 / 13)
    assert w["1h"]["baseline_ready"] and not w["24h"]["baseline_ready"]
    assert w["24h"]["baseline_customer_turns"] == 0
    assert {c: (x["customer_turns"], x["negative_turns"], x["complaints"])
            for c, x in h["categories"].items()} == {"refund": (2, 2, 1)}
    assert 0 <= h["health_index"] < 100      # the last hour is worse than its baseline
    assert h["as_of_ms"] == t0 + MINUTE
    assert tr.health("t", "q")["as_of_ms"] == at[-1] == tr.health("t", "q")["clock_ms"]
    assert tr.health("t", "nope") is None


def test_health_defaults_to_the_stream_clock_and_gauges_are_bounded():
    tr = TrendTracker()
    tr.observe(**hours([(1, 30, 0.2, 0.0)], queue="a"))
    tr.observe(**hours([(2, 40, 0.5, 0.0)], queue="b"))
    tr.observe(**hours([(5, 10, 0.0, 0.0)], queue="c"))
    quiet = tr.health("t", "a")                    # as of 5:59, the latest turn of any queue
    assert quiet["windows"]["1h"]["turns"] == 0 and quiet["windows"]["24h"]["turns"] == 30
    assert quiet["clock_ms"] < quiet["as_of_ms"]
    # bucketed: the 1 h window as of 1:55 is the buckets 1:00 .. 1:50
    assert tr.health("t", "a", DAY0 + HOUR + 55 * MINUTE)["windows"]["1h"]["turns"] == 30
    assert tr.health("t", "a", DAY0 + 2 * HOUR)["windows"]["1h"]["turns"] == 25      # 1:10 .. 2:00
    g = tr.gauges(10)
    assert [(t, q) for t, q, _, _ in g] == [("t", "a"), ("t", "b"), ("t", "c")]
    assert [idx for _, _, idx, _ in g] == [tr.health("t", q)["health_index"] for q in "abc"]
    assert all(0 <= idx <= 100 for _, _, idx, _ in g)
    g2 = tr.gauges(2)
    assert [(t, q) for t, q, _, _ in g2] == [("t", "a"), ("*", "other")]
    assert g2[1][3] == 0.0                          # b and c summed: no negative turn of theirs in the last hour
    at_b = TrendTracker()
    at_b.observe(**hours([(2, 40, 0.5, 0.0)], queue="b"))
    assert at_b.gauges(5)[0][3] == pytest.approx(0.5)


def test_cached_window_sums_equal_a_fresh_read_with_late_turns():
    rng = np.random.default_rng(7)
    tr = TrendTracker()
    t = DAY0
    for _ in range(150):
        n = 40
        t += int(rng.integers(0, 20 * MINUTE))
        ts = t - rng.integers(0, 3 * HOUR, n) * (rng.random(n) < 0.3)      # some turns late
        turns = dict(tenants=["t"] * n, queues=[f"q{i}" for i in rng.integers(0, 3, n)],
                     categories=[("", "refund", "order")[i] for i in rng.integers(0, 3, n)], ts_ms=ts,
                     customer=rng.random(n) < 0.7, negative=rng.random(n) < 0.2,
                     complaint=rng.random(n) < 0.1, new_session=rng.random(n) < 0.2,
                     escalation=rng.random(n) < 0.05, session_hash=rng.integers(0, 1 << 40, n),
                     intent_id=np.full(n, -1), simhash=np.zeros(n, np.uint64))
        tr.observe(**turns)
        rows = np.arange(len(tr.queues()))
        nowb = tr._last[tr._parent[rows]]
        cached, fresh = tr._figures(rows, nowb, cached=True), tr._figures(rows, nowb)
        for name in ("cur1", "base1", "cur3", "base3", "cur24", "prev24"):
            np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name), err_msg=name)
    assert tr.health("t", "q1")["windows"]["24h"]["turns"] > 0
