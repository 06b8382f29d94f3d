"""service/metrics.py: the counters move, over real gRPC and a real /metrics HTTP scrape."""
from __future__ import annotations

import asyncio
import threading
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from yujing.service.contract import pb, pb_grpc
from yujing.service.metrics import Metrics, MetricsInterceptor


def samples(text: str) -> dict:
    """The exposition ``text`` as {(name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return samples(r.read().decode())


def val(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class _Echo(pb_grpc.RiskScorerServicer):
    async def Score(self, request, context):
        if not request.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        return pb.TurnRisk(session_id=request.session_id, turn_id=request.turn_id)

    async def ScoreStream(self, request_iterator, context):
        async for t in request_iterator:
            yield pb.TurnRisk(session_id=t.session_id, turn_id=t.turn_id)

    async def ScoreBatch(self, request, context):
        out = pb.TurnRiskBatch()
        for t in request.turns:
            out.results.add(risk=pb.TurnRisk(session_id=t.session_id))
        return out


class _Server:
    """A small grpc.aio server with the interceptor, on its own loop in a thread."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.ready = threading.Event()
        self.port = None
        self.loop = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            self.stop_ev = asyncio.Event()
            server = grpc.aio.server(interceptors=[MetricsInterceptor(self.metrics)])
            pb_grpc.add_RiskScorerServicer_to_server(_Echo(), server)
            self.port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.ready.set()
            await self.stop_ev.wait()
            await server.stop(0)

        asyncio.run(main())

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(10)


def test_interceptor_counts_unary_stream_and_errors():
    m = Metrics()
    port = m.start_http("127.0.0.1", 0)
    try:
        assert port > 0
        with _Server(m) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.RiskScorerStub(ch)
            for i in range(3):
                stub.Score(pb.Turn(session_id="s", turn_id=str(i), speaker=pb.CUSTOMER))
            with pytest.raises(grpc.RpcError) as ei:
                stub.Score(pb.Turn(turn_id="x", speaker=pb.CUSTOMER))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            answers = list(stub.ScoreStream(iter([pb.Turn(session_id="s", turn_id=str(i)) for i in range(5)])))
            assert len(answers) == 5
            stub.ScoreBatch(pb.TurnBatch(turns=[pb.Turn(session_id="s", turn_id="b")]))
            s = scrape(port)
        assert val(s, "yujing_rpc_requests_total", method="Score", code="OK") == 3
        assert val(s, "yujing_rpc_requests_total", method="Score", code="INVALID_ARGUMENT") == 1
        assert val(s, "yujing_rpc_requests_total", method="ScoreStream", code="OK") == 1
        assert val(s, "yujing_rpc_requests_total", method="ScoreBatch", code="OK") == 1
        assert val(s, "yujing_rpc_latency_seconds_count", method="Score", code="OK") == 3
        assert val(s, "yujing_stream_messages_total", method="ScoreStream", direction="received") == 5
        assert val(s, "yujing_stream_messages_total", method="ScoreStream", direction="sent") == 5
    finally:
        m.stop_http()


def test_batch_gauges_and_counters_move():
    m = Metrics()
    port = m.start_http("127.0.0.1", 0)
    try:
        m.observe_batch(7, 0.002)
        m.observe_batch(64, 0.004)
        m.observe_model_call("in-process", 0.001)
        m.observe_model_call("triton", 0.5, error="timeout")
        m.set_live_sessions(42)
        m.inc_evictions(2)
        m.inc_expirations()
        m.set_fallback(True)
        s = scrape(port)
        assert val(s, "yujing_batch_size_count") == 2
        assert val(s, "yujing_batch_size_sum") == 71
        assert val(s, "yujing_batch_latency_seconds_count") == 2
        assert val(s, "yujing_model_call_latency_seconds_count", served_by="in-process") == 1
        assert val(s, "yujing_model_call_errors_total", kind="timeout") == 1
        assert val(s, "yujing_live_sessions") == 42
        assert val(s, "yujing_session_evictions_total") == 2
        assert val(s, "yujing_session_expirations_total") == 1
        assert val(s, "yujing_fallback_active") == 1
    finally:
        m.stop_http()


def test_watch_reads_table_and_router_at_scrape():
    class Table:
        evicted, expired = 5, 9

        def __len__(self):
            return 11

    class Router:
        served_by = "triton"

        class stats:
            triton_failures = 0

        async def classify(self, texts):
            class R:
                served_by = "triton"
            return R()

    m = Metrics()
    router = Router()
    m.instrument_router(router)
    m.watch(table=Table(), router=router)
    asyncio.run(router.classify(["hi"]))
    s = samples(m.render().decode())
    assert val(s, "yujing_live_sessions") == 11
    assert val(s, "yujing_session_evictions_total") == 5
    assert val(s, "yujing_session_expirations_total") == 9
    assert val(s, "yujing_fallback_active") == 0
    assert val(s, "yujing_model_call_latency_seconds_count", served_by="triton") == 1


def test_real_service_metrics(tmp_path_factory):
    """The real service, when server.py wires the metrics (Config.metrics_port)."""
    from yujing.service.config import Config
    from tests.service_harness import ServiceThread, turn
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=4096, agent_capacity=1024, metrics_port=0, drain_s=0.5)
    svc = ServiceThread(cfg).start()
    try:
        metrics = getattr(svc.srv, "metrics", None)
        if metrics is None or getattr(metrics, "port", None) is None:
            pytest.skip("server.py does not wire yujing.service.metrics yet")
        stub = svc.stub()
        for i in range(4):
            stub.Score(turn(session="m1", turn_id=str(i), text="我要投诉"))
        s = scrape(metrics.port)
        assert val(s, "yujing_rpc_requests_total", method="Score", code="OK") >= 4
        assert val(s, "yujing_batch_size_count") >= 1
        assert val(s, "yujing_live_sessions") >= 1
        assert val(s, "yujing_fallback_active") == 1  # in-process models
        assert val(s, "yujing_model_calls_per_batch") == 1  # sentiment, emotion, intent, dissatisfaction in one pass
    finally:
        svc.stop()


def test_garbage_collector_pauses_are_timed_and_folded_in_by_generation():
    import gc

    m = Metrics()
    m.watch_gc()
    try:
        gc.collect()             # a full collection
        gc.collect(0)
    finally:
        m.unwatch_gc()
    m.fold_gc_pauses()
    s = samples(m.render().decode())
    full = val(s, "yujing_gc_pause_seconds_count", generation="2")
    young = val(s, "yujing_gc_pause_seconds_count", generation="0")
    assert full >= 1 and young >= 1
    assert val(s, "yujing_gc_pause_seconds_sum", generation="2") > 0
    gc.collect()                 # not watched any more: not counted
    m.fold_gc_pauses()
    s = samples(m.render().decode())
    assert val(s, "yujing_gc_pause_seconds_count", generation="2") == full
    assert m._on_gc not in gc.callbacks


def test_the_serving_process_freezes_its_start_up_heap_and_a_test_service_does_not(tmp_path_factory):
    """``yujing serve`` freezes what start-up left alive (its metrics show the frozen count
    and the pauses of serving); a service started with create_server in a process that hosts others
    (the tests) leaves the collector as it was."""
    import gc
    import re
    import time

    from tests.service_harness import ServeProcess, ServiceThread, turn
    from tests.service_models import in_process_repo
    from yujing.service.config import Config

    before = gc.get_freeze_count()
    svc = ServiceThread(Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                               capacity=1024, agent_capacity=64, drain_s=0.5)).start()
    try:
        svc.stub().Score(turn(session="g1", turn_id="1", text="hello"))
        assert gc.get_freeze_count() == before
    finally:
        svc.stop()
    assert svc.srv.metrics._on_gc not in gc.callbacks      # stopped: no longer timing this process

    p = ServeProcess("--models", "in-process", "--capacity", "1024", "--agent-capacity", "64",
                     "--metrics-port", "0", "--scan-period-s", "0.2", timeout_s=120)
    try:
        port = None
        for _ in range(100):
            m = re.search(r"yujing metrics on http://[\d.]+:(\d+)/metrics", p.output())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.1)
        assert port is not None, p.output()[-2000:]
        deadline = time.monotonic() + 30
        while True:       # serving's young collections, folded in by a scheduler pass (the
            s = scrape(port)          # freeze's own full collection is start-up's: not counted)
            if val(s, "yujing_gc_pause_seconds_count", generation="0") >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert val(s, "yujing_gc_frozen_objects") > 10_000       # modules, models, kernels at least
        assert val(s, "yujing_gc_pause_seconds_count", generation="0") >= 1
    finally:
        p.stop()


def test_the_interceptor_wraps_each_method_once_not_each_call(tmp_path_factory, monkeypatch):
    """What the interceptor adds to a call is a look-up and the counting: the wrapped
    handler of a method is built on its first call and reused (issue 13: the interceptor
    costs no more than a counter per call)."""
    from collections import Counter as Count

    from tests.service_harness import ServiceThread, turn
    from tests.service_models import in_process_repo
    from yujing.service.config import Config

    built = Count()
    original = MetricsInterceptor._wrap

    def counting(self, handler, method):
        built[method] += 1
        return original(self, handler, method)

    monkeypatch.setattr(MetricsInterceptor, "_wrap", counting)
    svc = ServiceThread(Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                               capacity=1024, agent_capacity=64, drain_s=0.5)).start()
    try:
        stub = svc.stub()
        for i in range(20):
            stub.Score(turn(session="w1", turn_id=str(i), text="hello"))
        for i in range(3):
            stub.ScoreBatch(pb.TurnBatch(turns=[turn(session="w2", turn_id=f"b{i}", text="hi")]))
        answers = list(stub.ScoreStream(iter([turn(session="w3", turn_id=str(i), text="ok") for i in range(5)])))
        assert len(answers) == 5
        with pytest.raises(grpc.RpcError) as refused:       # a refused call goes through the same handler
            stub.Score(pb.Turn(session_id="", turn_id="x", speaker=pb.CUSTOMER))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert built["Score"] == built["ScoreBatch"] == built["ScoreStream"] == 1, built
        s = samples(svc.srv.metrics.render().decode())
        assert val(s, "yujing_rpc_requests_total", method="Score", code="OK") == 20
        assert val(s, "yujing_rpc_requests_total", method="Score", code="INVALID_ARGUMENT") == 1
        assert val(s, "yujing_rpc_requests_total", method="ScoreBatch", code="OK") == 3
        assert val(s, "yujing_stream_messages_total", method="ScoreStream", direction="sent") == 5
    finally:
        svc.stop()


def test_overlapping_batches_over_real_grpc_keep_each_session_in_order_and_are_counted(tmp_path_factory):
    """--batches-in-flight 2 with micro-batches of 4: a ScoreBatch of 64 turns of one session
    is scored as 16 batches, the next full one started while one is out; the session's
    turns are still applied one after another (its customer-turn count runs 1..64), and
    the overlaps are counted in yujing_batches_overlapped_total."""
    from yujing.service.config import Config
    from tests.service_harness import ServiceThread, turn
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory), capacity=4096,
                 agent_capacity=1024, metrics_port=0, drain_s=0.5, max_batch=4, batches_in_flight=2)
    svc = ServiceThread(cfg).start()
    try:
        stub = svc.stub()
        texts = ["hello", "where is my order?", "this is the third time I ask!", "我要投诉"]
        batch = pb.TurnBatch(turns=[turn(session="ordered", turn_id=str(i), text=texts[i % 4]) for i in range(64)])
        got = stub.ScoreBatch(batch, timeout=60)
        assert [r.risk.customer_turns for r in got.results] == list(range(1, 65))
        assert val(scrape(svc.srv.metrics.port), "yujing_batches_overlapped_total") >= 1
    finally:
        svc.stop()


def test_the_start_up_freeze_is_not_counted_as_a_pause_of_serving():
    """yujing serve collects and freezes its start-up heap once (a full collection of about
    0.1 s): an SRE reading yujing_gc_pause_seconds must not see it as a serving pause."""
    import gc

    from yujing.service.server import _freeze_startup_heap

    m = Metrics()
    m.watch_gc()
    try:
        _freeze_startup_heap(m)
        gc.unfreeze()            # this test process is not a server: give its heap back
        assert m._on_gc in gc.callbacks      # still timing what comes after
        gc.collect()
    finally:
        m.unwatch_gc()
    m.fold_gc_pauses()
    s = samples(m.render().decode())
    assert val(s, "yujing_gc_pause_seconds_count", generation="2") == 1    # the later one only
