"""``yujing bench heads``: one model call per micro-batch (the combined model ``heads``)
against one call per model, side by side in one run, through the embedded Triton and
in-process.

    yujing bench heads [--batch 1 8 64 256 1024] [--seconds 1.5] [--out FILE]

Both ways are the service's own call: :meth:`yujing.service.triton.router.ModelRouter.classify`
on the default models (sentiment, emotion, intent, dissatisfaction at their serving versions), one batch
in flight as the micro-batcher sends them, with ``combined_model="heads"`` (one Triton
request to ``model_repo/heads``; in-process one :func:`~yujing.service.models.multihead.predict_heads`
pass) and ``combined_model=None`` (``--combined-model ''``: a request per model, concurrently;
in-process a ``predict_proba`` per model). The two are measured in alternating rounds of
``--seconds / rounds`` each, so a change of load on a shared machine falls on both alike;
the figures are per-call latency percentiles and texts per second, and the ratios
per-model / heads (above 1: heads is faster). Texts are the load generator's
conversation texts (zh, en, mixed). Server and client share this machine.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

from yujing.loadtest.bench.models import sample_texts

MODES = {"heads": "heads", "per_model": None}  # row name -> ModelRouter combined_model
ROUNDS = 6


def _repo():
    from yujing.service.paths import DEFAULT_MODEL_REPO

    return DEFAULT_MODEL_REPO


def _summary(batch: int, latencies: list[float], elapsed: float) -> dict:
    ms = 1e3 * np.asarray(latencies)
    return {"batch": batch, "calls": len(latencies), "texts_per_s": batch * len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


async def _side_by_side(routers: dict, batch: int, texts: list[str], seconds: float) -> dict:
    """Alternating rounds of sequential ``classify`` calls on each router; per mode the
    latencies of every call and the time spent in its rounds."""
    lat = {name: [] for name in routers}
    spent = {name: 0.0 for name in routers}
    pos = {name: 0 for name in routers}
    for name, router in routers.items():  # warm: JIT, connections, Triton's first batch
        for _ in range(3):
            await router.classify(texts[:batch])
    for _ in range(ROUNDS):
        for name, router in routers.items():
            t_round = time.perf_counter()
            stop = t_round + seconds / ROUNDS
            while True:
                lo = pos[name]
                chunk = texts[lo:lo + batch]
                if len(chunk) < batch:
                    lo, chunk = 0, texts[:batch]
                t0 = time.perf_counter()
                result = await router.classify(chunk)
                lat[name].append(time.perf_counter() - t0)
                pos[name] = lo + batch
                if result.degraded:
                    raise RuntimeError(f"bench heads: {name} answered degraded ({result.served_by})")
                if time.perf_counter() >= stop:
                    break
            spent[name] += time.perf_counter() - t_round
    rows = {name: _summary(batch, lat[name], spent[name]) for name in routers}
    heads, per_model = rows["heads"], rows["per_model"]
    rows["per_model_over_heads"] = {
        "p50": per_model["p50_ms"] / heads["p50_ms"], "p99": per_model["p99_ms"] / heads["p99_ms"],
        "texts_per_s_heads_over_per_model": heads["texts_per_s"] / per_model["texts_per_s"]}
    return rows


async def _measure(url: str | None, batches, texts: list[str], seconds: float) -> tuple[list[dict], dict]:
    from yujing.service.triton.router import IN_PROCESS, TRITON, ModelRouter

    routers = {name: ModelRouter(_repo(), url, emotion_model="emotion", dissatisfaction_model="dissatisfaction",
                                 deadline_s=60.0, combined_model=combined)
               for name, combined in MODES.items()}
    try:
        for router in routers.values():
            await router.start()
        calls = {name: (r.served_by, r.triton_calls if url else "in-process", r.model_calls_per_batch)
                 for name, r in routers.items()}
        want = TRITON if url else IN_PROCESS
        if calls["heads"][2] != 1 or calls["per_model"][2] != len(routers["heads"].models) or any(
                c[0] != want for c in calls.values()):
            raise RuntimeError(f"bench heads: the routers do not call as labelled: {calls}")
        rows = [await _side_by_side(routers, b, texts, seconds) for b in batches]
        return rows, {name: {"served_by": c[0], "triton_calls": c[1], "model_calls_per_batch": c[2],
                             "versions": routers[name].versions} for name, c in calls.items()}
    finally:
        for router in routers.values():
            await router.close()


def bench_heads(batches=(1, 8, 64, 256, 1024), seconds: float = 1.5, triton: bool = True) -> dict:
    texts = sample_texts()
    out: dict = {"texts": len(texts), "mean_text_chars": sum(map(len, texts)) / len(texts),
                 "seconds_per_point_per_mode": seconds, "rounds": ROUNDS, "in_flight": 1}
    out["in_process"], out["in_process_routers"] = asyncio.run(_measure(None, batches, texts, seconds))
    if triton:
        from yujing.service.triton.launcher import TritonServer

        t = time.perf_counter()
        with TritonServer(_repo(), models=["sentiment", "emotion", "intent", "dissatisfaction", "heads"], allow_http=False,
                          allow_metrics=False, startup_timeout_s=180) as server:
            out["triton_start_s"] = time.perf_counter() - t
            out["triton"], out["triton_routers"] = asyncio.run(_measure(server.grpc_url, batches, texts, seconds))
    return out
