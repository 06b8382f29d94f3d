"""Bursts and overload, over real gRPC against a real service (in-process models).

* A burst of thousands of concurrent unary calls is answered, not cancelled: gRPC core's
  own backlog limit (by default it drops calls it holds beyond 1,000 to 3,000 with a bare
  CANCELLED) is raised so that the service decides.
* When more turns wait than ``max_pending_turns``, unary and batch calls are refused with
  RESOURCE_EXHAUSTED and a message saying so; a refused turn changes no state, and the
  refusals are counted in the metrics.
"""
from __future__ import annotations

import asyncio
import collections
import time

import grpc
import pytest

from yujing.service.config import Config
from yujing.service.contract import pb, pb_grpc
from tests.service_harness import ServiceThread, turn

NOW = int(time.time() * 1000)


def _start(tmp_path_factory, **kw) -> ServiceThread:
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=1 << 14, agent_capacity=16, drain_s=1.0, **kw)
    return ServiceThread(cfg).start()


async def _flood(port: int, n: int, prefix: str) -> list:
    """``n`` concurrent unary Score calls on one channel; each outcome as 'OK' or (code, details)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.RiskScorerStub(ch)

        async def one(i):
            try:
                await stub.Score(turn(session=f"{prefix}{i}", turn_id="1", text="where is my refund?",
                                      ts=NOW), timeout=120)
                return "OK"
            except grpc.aio.AioRpcError as err:
                return (err.code(), err.details())

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_a_burst_of_concurrent_calls_is_answered_not_cancelled(tmp_path_factory):
    svc = _start(tmp_path_factory)
    try:
        outcomes = asyncio.run(_flood(svc.port, 6000, "burst"))
    finally:
        svc.stop()
    counts = collections.Counter(o if o == "OK" else o[0].name for o in outcomes)
    assert counts == {"OK": 6000}, counts


def test_overload_is_refused_with_resource_exhausted_and_changes_no_state(tmp_path_factory):
    svc = _start(tmp_path_factory, max_pending_turns=64, max_batch_turns=64, max_batch=256)
    gate_open = asyncio.Event

    def hold_the_models(srv):
        """Stall the real model call until released, so turns pile up deterministically."""
        router = srv.engine.router
        real = router.classify
        gate = gate_open()

        async def classify(texts):
            await gate.wait()
            return await real(texts)
        router.classify = classify
        return gate

    gate = svc.call(hold_the_models)
    try:
        async def scenario():
            flood = asyncio.ensure_future(_flood(svc.port, 600, "over"))
            # let the burst arrive while the models are held, then release them
            deadline = time.monotonic() + 60
            while svc.call(lambda s: s.batcher.in_flight) < 64 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
                stub = pb_grpc.RiskScorerStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as batch_err:
                    await stub.ScoreBatch(pb.TurnBatch(turns=[turn(session="batch-x", turn_id="1", ts=NOW)]))
            svc.loop.call_soon_threadsafe(gate.set)
            return await flood, batch_err.value

        outcomes, batch_err = asyncio.run(scenario())
        ok = [i for i, o in enumerate(outcomes) if o == "OK"]
        refused = [(i, o) for i, o in enumerate(outcomes) if o != "OK"]
        assert len(ok) >= 64 and refused, (len(ok), len(refused))
        for _, (code, details) in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "overloaded" in details and "retry" in details and "limit 64" in details
        assert batch_err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in batch_err.details()

        # a refused turn changed no state; an accepted one did
        stub = svc.stub()
        assert stub.GetSession(pb.SessionRef(session_id=f"over{ok[0]}")).turns == 1
        for i, _ in refused[:20]:
            with pytest.raises(grpc.RpcError) as err:
                stub.GetSession(pb.SessionRef(session_id=f"over{i}"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):
            stub.GetSession(pb.SessionRef(session_id="batch-x"))
        assert svc.call(lambda s: len(s.table)) == len(ok)
        assert svc.call(lambda s: s.metrics.overload_refusals._value.get()) == len(refused) + 1

        # once the backlog is gone, calls are admitted again
        again = stub.Score(turn(session=f"over{refused[0][0]}", turn_id="1", text="hello again", ts=NOW))
        assert again.customer_turns == 1 and not again.duplicate
        assert svc.call(lambda s: s.batcher.in_flight) == 0
    finally:
        svc.loop.call_soon_threadsafe(gate.set)
        svc.stop()
