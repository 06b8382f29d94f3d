"""``yujing bench models``: texts per second of the sentiment and intent models, by batch
size, in-process and through the embedded Triton server, in one run.

    yujing bench models [--batch 1 8 64 256 1024] [--seconds 1.5] [--out FILE]

In-process: the model artifact Triton serves (``model_repo/<model>/<version>/artifact``),
loaded here and called with ``predict_proba`` on this thread. Triton: the embedded
server (:class:`yujing.service.triton.launcher.TritonServer` on ``model_repo``) called with the
service's own client (:class:`yujing.service.triton.client.TritonModelClient`), one request in
flight (latency-bound) and ``--concurrency`` in flight (throughput). Texts are the load
generator's conversation texts (zh, en, mixed). Server and client share this machine.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

MODELS = ("sentiment", "intent")
REPO = Path(__file__).resolve().parents[1] / "model_repo"


def sample_texts(n: int = 4096, seed: int = 3) -> list[str]:
    from yujing.loadtest.traffic import ConversationTraffic

    gen = ConversationTraffic(seed=seed, sessions=100_000, concurrent=2_000)
    out = []
    while len(out) < n:
        t = gen.next_turn()
        if t.text:
            out.append(t.text)
    return out


def _version(model: str) -> str:
    from yujing.service.triton.client import repository_versions, serving_version

    return serving_version(REPO, model) or str(max(repository_versions(REPO, model)))


def _timed(fn, batch: int, texts: list[str], seconds: float) -> dict:
    fn(texts[:batch])  # warm
    done, calls, t0 = 0, 0, time.perf_counter()
    lo = 0
    while True:
        chunk = texts[lo:lo + batch]
        if len(chunk) < batch:
            lo, chunk = 0, texts[:batch]
        fn(chunk)
        lo += batch
        done += batch
        calls += 1
        el = time.perf_counter() - t0
        if el >= seconds and calls >= 3:
            break
    return {"batch": batch, "texts_per_s": done / el, "ms_per_call": 1e3 * el / calls, "calls": calls}


async def _triton_point(client, model: str, batch: int, texts: list[str], seconds: float,
                        concurrency: int) -> dict:
    await client.infer(model, texts[:batch])
    done = calls = 0
    t0 = time.perf_counter()
    stop = t0 + seconds

    async def worker(w: int):
        nonlocal done, calls
        lo = (w * batch) % len(texts)
        while time.perf_counter() < stop or calls < 3:
            chunk = texts[lo:lo + batch]
            if len(chunk) < batch:
                lo, chunk = 0, texts[:batch]
            await client.infer(model, chunk)
            lo += batch
            done += batch
            calls += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    el = time.perf_counter() - t0
    return {"batch": batch, "concurrency": concurrency, "texts_per_s": done / el,
            "ms_per_call": 1e3 * el * concurrency / calls, "calls": calls}


def bench_models(batches=(1, 8, 64, 256, 1024), seconds: float = 1.5, concurrency: int = 4,
                 triton: bool = True) -> dict:
    from yujing.service.models.artifact import load_model

    texts = sample_texts()
    out: dict = {"models": {}, "texts": len(texts), "seconds_per_point": seconds,
                 "mean_text_chars": sum(map(len, texts)) / len(texts)}
    for m in MODELS:
        v = _version(m)
        model = load_model(REPO / m / v / "artifact")
        out["models"][m] = {"version": v, "labels": len(model.labels),
                            "in_process": [_timed(model.predict_proba, b, texts, seconds) for b in batches]}
    if triton:
        from yujing.service.triton.client import TritonModelClient
        from yujing.service.triton.launcher import TritonServer

        t = time.perf_counter()
        with TritonServer(REPO, models=list(MODELS), allow_http=False, allow_metrics=False,
                          startup_timeout_s=180) as server:
            out["triton_start_s"] = time.perf_counter() - t

            async def run():
                client = TritonModelClient(server.grpc_url, REPO, default_timeout_s=60.0)
                try:
                    for m in MODELS:
                        rows1, rowsc = [], []
                        for b in batches:
                            rows1.append(await _triton_point(client, m, b, texts, seconds, 1))
                            rowsc.append(await _triton_point(client, m, b, texts, seconds, concurrency))
                        out["models"][m]["triton_1_in_flight"] = rows1
                        out["models"][m][f"triton_{concurrency}_in_flight"] = rowsc
                finally:
                    await client.close()

            asyncio.run(run())
    for m in MODELS:
        d = out["models"][m]
        if "triton_1_in_flight" in d:
            d["triton_over_in_process"] = [
                {"batch": a["batch"], "one_in_flight": a["texts_per_s"] / ip["texts_per_s"],
                 f"{concurrency}_in_flight": c["texts_per_s"] / ip["texts_per_s"]}
                for ip, a, c in zip(d["in_process"], d["triton_1_in_flight"], d[f"triton_{concurrency}_in_flight"])]
    return out
