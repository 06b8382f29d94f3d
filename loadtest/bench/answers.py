"""``yujing bench answers``: what building the answers costs per turn, the generated classes
(service/answers_reference.py) against the wire bytes written directly (service/answers.py,
service/wire.py), and ``Engine.score`` with each, side by side in one run.

    python -m yujing.loadtest.bench.answers [--turns 40000] [--repeats 3] [--sizes 1,16,64,256] [--json FILE]
    yujing bench answers [--out FILE]           (default bench_results/answers.json)

The turns: loadtest/traffic.py's conversations (customer, agent and bot turns, ~30 %
escalating), batches of 256, the models' outputs of each batch computed once beforehand by
the in-process router (as ``yujing bench alerts`` does), so no model runs while timing.

1. ``answers``: the arguments of every ``build_answers`` call of one pass of the engine over
   the stream are recorded, then each builder is timed over all of them: ``reference`` (a
   ``pb.TurnRisk`` per turn), ``reference_serialized`` (the same plus ``SerializeToString``,
   which the answer cache did for every answer before), ``wire_py`` (bytes and ``tail_at``
   field by field in Python, ``build_answers_py``) and ``wire`` (``build_answers``: the
   compiled encoder, yujing.kernels.answers). us per turn (wall and this process's CPU
   time), best of ``--repeats``.
1b. ``by_batch``: the same recorded calls cut into batches of ``--sizes`` turns (1, 16, 64,
   256: each call's columns in order, the items and model outputs as they were), the
   Python encoder against ``build_answers``, interleaved.
2. ``duplicates``: a retried turn's answer from the cache: ``FromString``, ``duplicate =
   True`` and ``SerializeToString`` (what the cache and gRPC did) against
   ``wire.mark_duplicate``.
3. ``engine_score``: ``Engine.score`` over the stream on a fresh table, with the alert
   detector and an in-memory alert hub as the server has them, answers built by the wire
   path (``wire``: compiled; ``wire_py``: the Python encoder) or by the generated classes and
   serialised into the cache (``reference``, the engine as it was); us per turn, best of
   ``--repeats``, the three interleaved.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path

from yujing.loadtest.bench.alerts import _recorded_batches

DEFAULT_JSON = Path("bench_results/answers.json")


class _RecordedRouter:
    """The model router of a recorded stream: ``classify`` answers with the result set
    before the batch (``result``)."""

    def __init__(self):
        self.result = None

    async def classify(self, texts):
        return self.result


def _reference_builder(*args, **kw) -> list:
    """The engine's answers as they were built before the wire path: messages, each
    serialised once for the answer cache (``tail_at`` is not needed by the bench)."""
    from yujing.service import answers_reference as R

    out = []
    for m in R.build_answers(*args, **kw):
        raw = m.SerializeToString()
        out.append((raw, len(raw)))
    return out


def _engine(capacity: int, cfg):
    from yujing.service.alerts.detect import AlertDetector
    from yujing.service.alerts.hub import AlertHub, MemoryLog
    from yujing.service.alerts.trends import TrendTracker
    from yujing.service.engine import Engine
    from yujing.service.policy import load_policy
    from yujing.service.session_table import SessionTable

    pol = load_policy()
    table = SessionTable(capacity=capacity, agent_capacity=cfg.agent_capacity, backend="cpu")
    eng = Engine(pol, table, _RecordedRouter(), idempotency_window=cfg.idempotency_window)
    eng.detector = AlertDetector(pol, capacity, cfg.agent_capacity, TrendTracker(pol.trend))
    eng.hub = AlertHub(MemoryLog(), pol.version, pol.alerts, lambda: int(time.time() * 1000))
    return eng


def _record_calls(batches, results, with_text, cfg, capacity) -> list:
    """The arguments of each ``build_answers`` call of one engine pass over the stream."""
    from yujing.service import answers as A

    calls = []
    build = A.build_answers

    def record(items, positions, of, oi, *rest, **kw):
        calls.append(((items, positions.copy(), of.copy(), oi.copy(), *rest), dict(kw)))
        return build(items, positions, of, oi, *rest, **kw)

    eng = _engine(capacity, cfg)
    A.build_answers = record
    try:
        for b, wt, res in zip(batches, with_text, results):
            eng._apply_kernel(b, wt, res)
    finally:
        A.build_answers = build
    return calls


def _time_builder(fn, calls) -> tuple[float, float, int]:
    """Wall and CPU seconds (this process's; steadier on a shared machine) of one pass."""
    gc.collect()
    turns = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for args, kw in calls:
        turns += len(fn(*args, **kw))
    return time.perf_counter() - t0, time.process_time() - c0, turns


def bench_builders(calls, repeats: int) -> dict:
    from yujing.service import answers as A
    from yujing.service import answers_reference as R

    builders = {"reference": R.build_answers, "reference_serialized": _reference_builder,
                "wire_py": A.build_answers_py, "wire": A.build_answers}
    best, cpu = {}, {}
    for _ in range(repeats):
        for name, fn in builders.items():
            el, el_cpu, turns = _time_builder(fn, calls)
            us, us_cpu = 1e6 * el / turns, 1e6 * el_cpu / turns
            best[name] = min(best.get(name, us), us)
            cpu[name] = min(cpu.get(name, us_cpu), us_cpu)
    return {"us_per_turn": best, "cpu_us_per_turn": cpu, "turns": turns, "batches": len(calls),
            "speedup_vs_reference_serialized": best["reference_serialized"] / best["wire"],
            "cpu_speedup_vs_reference_serialized": cpu["reference_serialized"] / cpu["wire"],
            "cpu_speedup_vs_wire_py": cpu["wire_py"] / cpu["wire"]}


def _cut(calls, size: int) -> list:
    """The recorded calls in batches of ``size`` turns: each call's columns in order."""
    out = []
    for (items, positions, of, oi, outputs, versions, degraded), kw in calls:
        sla = kw.get("sla_s")
        for lo in range(0, len(positions), size):
            hi = lo + size
            out.append(((items, positions[lo:hi], of[:, lo:hi], oi[:, lo:hi], outputs, versions, degraded),
                        {"sla_s": None if sla is None else sla[lo:hi]}))
    return out


def bench_by_batch(calls, sizes, repeats: int, turns_per_size: int = 20_000) -> dict:
    """Per batch size: the Python encoder and ``build_answers`` (compiled), us per turn (CPU
    of this process, and wall), best of ``repeats``, interleaved."""
    from yujing.service import answers as A

    builders = {"wire_py": A.build_answers_py, "wire": A.build_answers}
    out = {}
    for size in sizes:
        cut = _cut(calls, size)
        keep, n = [], 0
        for args, kw in cut:                      # about turns_per_size turns for every size
            keep.append((args, kw))
            n += len(args[1])
            if n >= turns_per_size:
                break
        best, cpu = {}, {}
        for _ in range(repeats):
            for name, fn in builders.items():
                el, el_cpu, turns = _time_builder(fn, keep)
                best[name] = min(best.get(name, 1e9), 1e6 * el / turns)
                cpu[name] = min(cpu.get(name, 1e9), 1e6 * el_cpu / turns)
        out[str(size)] = {"us_per_turn": best, "cpu_us_per_turn": cpu, "turns": turns, "batches": len(keep),
                          "cpu_speedup": cpu["wire_py"] / cpu["wire"]}
    return out


def bench_duplicates(calls, repeats: int, n: int = 20_000) -> dict:
    from yujing.service import answers as A
    from yujing.service import wire
    from yujing.service.contract import pb

    held = []
    for args, kw in calls:
        held += A.build_answers(*args, **kw)
        if len(held) >= n:
            break
    plain = [raw for raw, _ in held]

    def generated():
        for raw in plain:
            m = pb.TurnRisk.FromString(raw)
            m.duplicate = True
            m.SerializeToString()

    def direct():
        for raw, tail_at in held:
            wire.mark_duplicate(raw, tail_at)

    best = {}
    for _ in range(repeats):
        for name, fn in (("generated_parse_mark_serialize", generated), ("wire_mark_duplicate", direct)):
            t0 = time.perf_counter()
            fn()
            us = 1e6 * (time.perf_counter() - t0) / len(held)
            best[name] = min(best.get(name, us), us)
    return {"answers": len(held), "us_per_answer": best}


def _score_pass(builder, batches, results, cfg, capacity) -> tuple[float, int]:
    from yujing.service import answers as A

    eng = _engine(capacity, cfg)
    wire_build = A.build_answers
    A.build_answers = builder

    async def run():
        turns, t = 0, 0.0
        for b, res in zip(batches, results):
            eng.router.result = res
            t0 = time.perf_counter()
            await eng.score(b)
            t += time.perf_counter() - t0
            turns += len(b)
        return t, turns

    gc.collect()
    try:
        return asyncio.run(run())
    finally:
        A.build_answers = wire_build


def bench_engine_score(batches, results, cfg, capacity: int, repeats: int) -> dict:
    from yujing.service import answers as A

    builders = {"reference": _reference_builder, "wire_py": A.build_answers_py, "wire": A.build_answers}
    best = {}
    for _ in range(repeats):
        for name, fn in builders.items():
            el, turns = _score_pass(fn, batches, results, cfg, capacity)
            us = 1e6 * el / turns
            best[name] = min(best.get(name, us), us)
    return {"us_per_turn": best, "turns": turns, "capacity": capacity}


def run(turns=40_000, sessions=10_000, batch=256, capacity=1 << 16, repeats=3, seed=3,
        sizes=(1, 16, 64, 256)) -> dict:
    model_repo = Path(__file__).resolve().parents[2] / "model_repo"
    batches, results, with_text, mix, cfg = _recorded_batches(turns, sessions, batch, seed, model_repo)
    _score_pass(_reference_builder, batches[:2], results[:2], cfg, 4096)      # compile, warm
    calls = _record_calls(batches, results, with_text, cfg, capacity)
    from yujing.service import answers as A

    A.warm_up()
    return {"mix": mix, "answers": bench_builders(calls, repeats),
            "by_batch": bench_by_batch(calls, sizes, repeats, min(turns, 20_000)),
            "duplicates": bench_duplicates(calls, repeats),
            "engine_score": bench_engine_score(batches, results, cfg, capacity, repeats)}


def table(r: dict) -> str:
    a, d, e = r["answers"]["us_per_turn"], r["duplicates"]["us_per_answer"], r["engine_score"]["us_per_turn"]
    c = r["answers"]["cpu_us_per_turn"]
    return "\n".join([
        f"answers, batches of {r['mix']['batch']} ({r['answers']['turns']:,} turns), us per turn (wall, CPU):",
        f"  reference (pb.TurnRisk)              {a['reference']:7.2f} {c['reference']:7.2f}",
        f"  reference + SerializeToString        {a['reference_serialized']:7.2f} {c['reference_serialized']:7.2f}",
        f"  wire bytes, Python (build_answers_py) {a['wire_py']:6.2f} {c['wire_py']:7.2f}",
        f"  wire bytes (build_answers, compiled) {a['wire']:7.2f} {c['wire']:7.2f}",
        "build_answers by batch size, us per turn (CPU; wall in brackets):",
        "  batch   Python encoder   build_answers   speedup (CPU)",
        *(f"  {size:>5}  {b['cpu_us_per_turn']['wire_py']:7.2f} ({b['us_per_turn']['wire_py']:5.2f})"
          f"  {b['cpu_us_per_turn']['wire']:7.2f} ({b['us_per_turn']['wire']:5.2f})"
          f"  {b['cpu_speedup']:6.2f}x" for size, b in r["by_batch"].items()),
        "a repeat's answer from the cache, us:",
        f"  FromString + duplicate + serialize   {d['generated_parse_mark_serialize']:7.2f}",
        f"  wire.mark_duplicate                  {d['wire_mark_duplicate']:7.2f}",
        "Engine.score (detector + memory hub), us per turn:",
        f"  reference answers                    {e['reference']:7.2f}",
        f"  wire answers, Python encoder         {e['wire_py']:7.2f}",
        f"  wire answers (compiled)              {e['wire']:7.2f}",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=40_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="1,16,64,256", help="batch sizes of the by_batch table")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    a = ap.parse_args(argv)
    import os

    load_before = [round(x, 2) for x in os.getloadavg()]
    r = run(turns=a.turns, repeats=a.repeats, sizes=tuple(int(x) for x in a.sizes.split(",")))
    r["loadavg_1_5_15"] = {"start": load_before, "end": [round(x, 2) for x in os.getloadavg()]}
    r["command"] = "python -m yujing.loadtest.bench.answers " + " ".join(argv if argv is not None else sys.argv[1:])
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(r, indent=2))
    print(table(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
