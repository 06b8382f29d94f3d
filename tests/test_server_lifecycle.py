"""Micro-batching of concurrent calls, and graceful shutdown: calls in flight finish,
new ones are refused, the service reports NOT_SERVING."""
import asyncio

import grpc
import pytest

from yujing.service.config import Config
from yujing.service.contract import pb, pb_grpc
from tests.service_harness import ServiceThread, turn
from tests.service_models import in_process_repo


def start(tmp_path_factory, **kw):
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory), capacity=4096,
                 agent_capacity=64, **kw)
    return ServiceThread(cfg).start()


async def fire(port, n, sessions=50):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.RiskScorerStub(ch)
        calls = [stub.Score(turn(session=f"s{k % sessions}", turn_id=str(k), text=f"message number {k}"))
                 for k in range(n)]
        return await asyncio.gather(*calls, return_exceptions=True)


def test_concurrent_calls_share_batches(tmp_path_factory):
    svc = start(tmp_path_factory, max_batch=64, max_delay_ms=5.0)
    try:
        before = svc.call(lambda s: s.engine.batches)
        answers = asyncio.run(fire(svc.port, 400))
        assert all(isinstance(a, pb.TurnRisk) for a in answers)
        batches = svc.call(lambda s: s.engine.batches) - before
        assert batches < 400 / 2, batches          # many turns per kernel launch
        per_session = {}
        for a in answers:
            per_session.setdefault(a.session_id, []).append(a.customer_turns)
        assert all(sorted(v) == list(range(1, len(v) + 1)) for v in per_session.values())
    finally:
        svc.stop()


def test_graceful_shutdown_finishes_calls_in_flight(tmp_path_factory):
    svc = start(tmp_path_factory, max_batch=16, max_delay_ms=20.0, drain_s=10.0)
    port = svc.port

    async def scenario():
        task = asyncio.create_task(fire(port, 300))
        # calls are in flight: the service holds some (a fixed sleep raced on a loaded machine)
        for _ in range(1000):
            await asyncio.sleep(0.01)
            b = svc.srv.batcher
            if b is not None and (b.in_flight > 0 or svc.srv.engine.batches > 0):
                break
        svc.loop.call_soon_threadsafe(svc._stop.set)
        return await task

    answers = asyncio.run(scenario())
    svc._thread.join(30)
    ok = [a for a in answers if isinstance(a, pb.TurnRisk)]
    refused = [a for a in answers if not isinstance(a, pb.TurnRisk)]
    assert ok, "calls accepted before the shutdown must be answered"
    for err in refused:   # only calls that arrived after the drain began may be refused
        assert err.code() in (grpc.StatusCode.UNAVAILABLE,), err
    with pytest.raises(grpc.RpcError):
        pb_grpc.RiskScorerStub(grpc.insecure_channel(f"127.0.0.1:{port}")).Score(turn(), timeout=2)


@pytest.mark.parametrize("module", ["yujing.service.featurize", "yujing.service.answers",
                                    "yujing.service.alerts.trends"])
def test_the_compiled_kernels_are_warmed_up_before_serving(tmp_path_factory, monkeypatch, module):
    """The server compiles (or loads) each kernel a scored batch runs (the text features,
    the answers, the queue trends) before it reports SERVING, so the first turn does not pay numba's
    compile."""
    import importlib

    mod = importlib.import_module(module)
    calls = []
    real = mod.warm_up
    monkeypatch.setattr(mod, "warm_up", lambda: calls.append(1) or real())
    svc = start(tmp_path_factory)
    try:
        assert calls == [1]
    finally:
        svc.stop()
