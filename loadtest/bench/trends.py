"""``yujing bench trends``: ``TrendTracker.observe`` (the service's queue trends) against the
plain numpy reference (``yujing.service.alerts.trends_reference``), side by side in one
process.

    yujing bench trends [--batch 1 16 256] [--seconds 1.5] [--out FILE]
    python -m yujing.loadtest.bench.trends [--batch 1 16 256] [--seconds 1.5]

Both trackers are first fed the same 30 hours of traffic (4 tenants x 6 queues, intent
categories, some complaints), so every row the measured batches touch already exists and
its cached window sums are current: the state of a long-running server. Then each side
observes the same pre-built batches, as ``AlertDetector._trend_events`` passes them (lists
of strings, numpy columns), in alternating rounds so a busy neighbour slows both alike; the
figure is the median over rounds of the microseconds per call. Two kinds of batch:
``plain`` (customer and agent turns, no complaint: the common case) and ``complaint`` (every
customer turn a complaint, which adds the repeated-complaint scan). The batches carry the
latest bucket's time, so the measured calls move no ring and raise no alert.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

HOUR = 3_600_000
DAY0 = 1_700_000_000_000 // (24 * HOUR) * (24 * HOUR)
CATEGORIES = ("", "refund", "delivery", "billing", "other")


def batch(rng, n: int, t_ms: int, complaint: bool) -> dict:
    tenant = rng.integers(0, 4, n)
    queue = rng.integers(0, 6, n)
    customer = rng.random(n) < 0.6
    return dict(
        tenants=[f"t{i}" for i in tenant.tolist()], queues=[f"q{i}" for i in queue.tolist()],
        categories=[CATEGORIES[i] if c else "" for i, c in zip(rng.integers(0, 5, n).tolist(), customer)],
        ts_ms=np.full(n, t_ms, np.int64) - rng.integers(0, 1000, n), customer=customer,
        negative=customer & (rng.random(n) < 0.2), complaint=customer & np.bool_(complaint),
        new_session=rng.random(n) < 0.1, escalation=np.zeros(n, bool),
        session_hash=rng.integers(-(1 << 62), 1 << 62, n),
        intent_id=np.where(customer, rng.integers(0, 20, n), -1),
        simhash=np.where(customer, rng.integers(1, 1 << 62, n), 0).astype(np.uint64))


def history(rng, hours: int = 30, per_hour: int = 600) -> list[dict]:
    out = []
    for h in range(hours):
        for k in range(per_hour // 100):
            b = batch(rng, 100, DAY0 + h * HOUR + (k + 1) * HOUR // (per_hour // 100) - 1000, False)
            b["complaint"] = b["customer"] & (rng.random(100) < 0.05)
            out.append(b)
    return out


def _per_call(fn, args: list[dict]) -> float:
    start = time.perf_counter()
    for a in args:
        fn(**a)
    return (time.perf_counter() - start) / len(args)


def bench_trends(batches=(1, 16, 256), seconds: float = 1.5, rounds: int = 9) -> dict:
    from yujing.service.alerts import trends
    from yujing.service.alerts.trends_reference import ReferenceTrendTracker

    warm_s = trends.warm_up() if hasattr(trends, "warm_up") else None
    rng = np.random.default_rng(11)
    feed = history(rng)
    sides = {"compiled": trends.TrendTracker(), "reference": ReferenceTrendTracker()}
    for tr in sides.values():
        for b in feed:
            tr.observe(**b)
    end_ms = int(max(b["ts_ms"].max() for b in feed))
    rows = []
    for kind in ("plain", "complaint"):
        for n in batches:
            calls = [batch(rng, n, end_ms, kind == "complaint") for _ in range(64)]
            one = max(_per_call(tr.observe, calls[:4]) for tr in sides.values())     # both see the same turns
            reps = max(1, int(seconds / rounds / 2 / max(one * len(calls), 1e-6)))
            times: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(rounds):
                for name, tr in sides.items():
                    times[name].append(min(_per_call(tr.observe, calls) for _ in range(reps)))
            us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            rows.append({"batch_kind": kind, "batch": n, "rounds": rounds, "calls_per_round": len(calls) * reps,
                         **{f"{k}_us_per_call": round(v, 2) for k, v in us.items()},
                         "reference_over_compiled": round(us["reference"] / us["compiled"], 2)})
            print(f"{kind:9s} batch {n:4d}: compiled {us['compiled']:8.1f} us/call, "
                  f"reference {us['reference']:8.1f} us/call: {us['reference'] / us['compiled']:.2f}x",
                  file=sys.stderr)
    a, b = sides["compiled"], sides["reference"]
    same = a.queues() == b.queues() and all(repr(a.health(t, q)) == repr(b.health(t, q))
                                            for t, q, c in a.queues() if not c)
    return {"suite": "trends", "warm_up_s": warm_s, "rows": rows, "health_equal_after": same}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--seconds", type=float, default=1.5)
    args = ap.parse_args(argv)
    print(json.dumps(bench_trends(tuple(args.batch), args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
