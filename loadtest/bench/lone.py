"""``yujing bench lone``: what one turn at a time costs, hop by hop (issue 13's latency
floor), each hop measured back to back and with the caller idle between calls.

    yujing bench lone [--seconds 1.5] [--out FILE]

A lone turn (a sequential client, or a quiet hour) crosses three processes: the client's
call to the service (gRPC), the service's call to the embedded Triton (HTTP), Triton's hand
over to its Python-backend stub (shared memory), and back. Each part is measured on its
own, in alternating rounds (``ROUNDS``) of "back to back" and "idle": the same calls with
``IDLE_S`` of sleep before each, as a caller that waits for its next turn has. The idle
figure is the one a lone turn pays: on a small virtual machine a process that slept starts
its next call on cold caches.

* ``engine``: the service's synchronous step (:meth:`Engine._apply_kernel`: features,
  policy, slots, kernel, answers, alerts) for batches of one turn, the load generator's
  conversation turns, models answered beforehand; us a batch, by stage.
* ``triton``: one text through the service's own Triton client
  (:meth:`TritonModelClient.infer_heads`, all heads, over HTTP as the service sends it;
  ``triton_over_grpc`` the same over gRPC) against the embedded Triton; per call
  p50 and the client process's CPU, and Triton's own split of a request from its
  statistics (queue, compute input / infer / output) with its processes' CPU a request.
* ``grpc``: the bare echo server (``yujing.loadtest.bench.e2e echo``) and a sequential
  ``Score`` client: the floor of one gRPC hop; p50 and the server's CPU a call.
* ``service``: the same client against ``yujing serve`` (embedded Triton, turn log on):
  the whole of a lone turn, to put beside the sum of the hops.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

from yujing.loadtest.bench.closed import _cpu_s, _tree_cpu_s
from yujing.loadtest.bench.e2e import Child, Service

ROUNDS = 4
IDLE_S = 0.002
TEXT = "我的快递三天了还没到，怎么回事？"


def _ways(r: int) -> tuple:
    return ("back_to_back", "idle") if r % 2 == 0 else ("idle", "back_to_back")


def _alternate(measure, seconds: float) -> dict:
    """``measure(idle_s, span)`` in ROUNDS rounds of each way, the order alternating."""
    got: dict = {"back_to_back": [], "idle": []}
    for r in range(ROUNDS):
        for way in _ways(r):
            got[way].append(measure(IDLE_S if way == "idle" else 0.0, seconds / ROUNDS))
    return got


async def _alternate_async(measure, seconds: float) -> dict:
    """:func:`_alternate` of a coroutine function."""
    got: dict = {"back_to_back": [], "idle": []}
    for r in range(ROUNDS):
        for way in _ways(r):
            got[way].append(await measure(IDLE_S if way == "idle" else 0.0, seconds / ROUNDS))
    return got


def _medians(got: dict) -> dict:
    """Each way's median round (by its first figure), and that figure of every round."""
    out = {}
    for way, rows in got.items():
        key = next(iter(rows[0]))
        out[way] = sorted(rows, key=lambda x: x[key])[(len(rows) - 1) // 2]
        out[way + "_rounds"] = [x[key] for x in rows]
    return out


# -- engine ---------------------------------------------------------------------------------
def bench_engine(seconds: float) -> dict:
    from yujing.loadtest.bench.alerts import _recorded_batches
    from yujing.loadtest.bench.answers import _engine
    from yujing.service.paths import DEFAULT_MODEL_REPO

    batches, results, with_text, _, cfg = _recorded_batches(4000, 2000, 1, 7, DEFAULT_MODEL_REPO)
    eng = _engine(1 << 16, cfg)
    for b, wt, res in zip(batches[:200], with_text, results):      # warm: compile, caches
        eng._apply_kernel(b, wt, res)
    at = [200]

    def measure(idle_s: float, span: float) -> dict:
        stages: dict = {}
        eng.on_stage = lambda s, v: stages.__setitem__(s, stages.get(s, 0.0) + v)
        n, busy, end = 0, 0.0, time.monotonic() + span
        while time.monotonic() < end:
            k = at[0] % len(batches)
            at[0] += 1
            if idle_s:
                time.sleep(idle_s)
            t0 = time.perf_counter()
            eng._apply_kernel(batches[k], with_text[k], results[k])
            busy += time.perf_counter() - t0
            n += 1
        return {"us_per_batch": round(busy / n * 1e6, 1), "batches": n,
                **{f"{s}_us": round(v / n * 1e6, 1) for s, v in stages.items()}}

    return _medians(_alternate(measure, seconds))


# -- triton ---------------------------------------------------------------------------------
def bench_triton(seconds: float, over: str = "http") -> dict:
    """``over``: "http" (the service's inference requests, :mod:`yujing.service.triton.http_infer`)
    or "grpc" (``--triton-inference grpc``)."""
    import tritonclient.grpc as grpcclient

    from yujing.service.paths import DEFAULT_MODEL_REPO
    from yujing.service.triton.client import TritonModelClient
    from yujing.service.triton.launcher import TritonServer

    heads = {"sentiment": "", "emotion": "", "intent": "", "dissatisfaction": ""}
    with TritonServer(DEFAULT_MODEL_REPO, models=["heads"], allow_http=True, allow_metrics=False) as server:
        stats_client = grpcclient.InferenceServerClient(server.grpc_url)   # statistics: not a restricted protocol

        def triton_cpu_s() -> float:       # the server and its Python-backend stubs (its children)
            return _cpu_s(server.pid) + _tree_cpu_s(server.pid)

        def stats() -> dict:
            s = stats_client.get_inference_statistics("heads", as_json=True)["model_stats"][0]["inference_stats"]
            return {k: int(s[k]["ns"]) for k in ("queue", "compute_input", "compute_infer", "compute_output")}

        async def run_all() -> dict:
            client = TritonModelClient(server.grpc_url, DEFAULT_MODEL_REPO,
                                       http_url=server.http_url if over == "http" else None)
            for _ in range(50):
                await client.infer_heads("heads", [TEXT], heads)

            async def calls(idle_s: float, span: float) -> dict:
                lat, end = [], time.monotonic() + span
                s0, c0, g0 = stats(), time.process_time(), triton_cpu_s()
                while time.monotonic() < end:
                    if idle_s:
                        await asyncio.sleep(idle_s)
                    t0 = time.perf_counter()
                    await client.infer_heads("heads", [TEXT], heads)
                    lat.append(time.perf_counter() - t0)
                n = len(lat)
                s1, c1, g1 = stats(), time.process_time(), triton_cpu_s()
                return {"p50_ms": round(statistics.median(lat) * 1e3, 3), "calls": n,
                        "client_cpu_us_per_call": round((c1 - c0) / n * 1e6, 1),
                        "triton_cpu_us_per_call": round((g1 - g0) / n * 1e6, 1),
                        **{f"triton_{k}_us": round((s1[k] - s0[k]) / n / 1e3, 1) for k in s0}}

            got = await _alternate_async(calls, seconds)
            await client.close()
            return got

        import uvloop
        got = uvloop.run(run_all())
        stats_client.close()
    return _medians(got)


# -- grpc and the whole service ----------------------------------------------------------------
def _sequential(port: int, pid: int, seconds: float, tag: str) -> dict:
    """A sequential ``Score`` client against ``port`` (server process ``pid``): fresh turn
    ids, one session per 50 turns; back to back and idle rounds."""
    import grpc
    import uvloop

    from yujing.service.contract import pb, pb_grpc

    async def run_all() -> dict:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.RiskScorerStub(ch)
            n = [0]

            def turn():
                n[0] += 1
                return pb.Turn(session_id=f"{tag}-{n[0] // 50}", turn_id=str(n[0]), speaker=pb.CUSTOMER, text=TEXT)

            for _ in range(200):
                await stub.Score(turn())

            async def calls(idle_s: float, span: float) -> dict:
                lat, end, c0 = [], time.monotonic() + span, _cpu_s(pid)
                while time.monotonic() < end:
                    if idle_s:
                        await asyncio.sleep(idle_s)
                    t = turn()
                    t0 = time.perf_counter()
                    await stub.Score(t)
                    lat.append(time.perf_counter() - t0)
                return {"p50_ms": round(statistics.median(lat) * 1e3, 3), "calls": len(lat),
                        "server_cpu_us_per_call": round((_cpu_s(pid) - c0) / len(lat) * 1e6, 1)}

            return await _alternate_async(calls, seconds)

    return _medians(uvloop.run(run_all()))


def bench_grpc(seconds: float) -> dict:
    echo = Child([sys.executable, "-m", "yujing.loadtest.bench.e2e", "echo", "--port", "0"],
                 r"echo serving on [\d.]+:(\d+)")
    try:
        return _sequential(echo.port, echo.proc.pid, seconds, "echo")
    finally:
        echo.stop()


def bench_service(seconds: float) -> dict:
    """``yujing serve`` (embedded Triton, turn log on): the whole of a lone turn, to put
    beside the sum of its hops."""
    svc = Service()
    try:
        return _sequential(svc.port, svc.proc.pid, seconds, "svc")
    finally:
        svc.stop()


def bench_lone(seconds: float = 1.5) -> dict:
    """The three hops, each over ``seconds`` (ROUNDS rounds of each way)."""
    return {"idle_s": IDLE_S, "rounds": ROUNDS, "engine": bench_engine(seconds), "triton": bench_triton(seconds),
            "triton_over_grpc": bench_triton(seconds, "grpc"),
            "grpc": bench_grpc(seconds), "service": bench_service(seconds)}
