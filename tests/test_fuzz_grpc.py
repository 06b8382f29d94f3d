"""Hypothesis over the whole gRPC surface (issue 14, "tests that try to break it").

Every RPC of ``RiskScorer`` and ``Alerts`` is called, over real gRPC against a real service
(in-process models), with generated requests: well-formed messages with hostile field
values (ids of every length and script, enum numbers outside the enums, timestamps from
-2^63 to 2^63, texts with control characters, surrogates' neighbours and 16 KiB runs) and
raw bytes (truncated and mutated encodings of valid messages, random bytes). For each:

* the answer is OK or a status the contract names (README "Errors"); never UNKNOWN or
  INTERNAL, so no handler raised;
* a refused call changes no state (tables, slot indexes, answer cache compared before and
  after), and a unary Score refused for a field leaves the session as it was;
* at the end the service still answers and reports SERVING.

1,000 generated calls in the default run; ``pytest --run-slow`` runs 10,000.
"""
from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.service_harness import ServiceThread, assert_same_state, state_copy
from yujing.service.config import Config
from yujing.service.contract import pb

DEFINED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
# generated calls per RPC family in the default run; --run-slow multiplies by 10
SHARE = {"turn": 300, "batch": 100, "raw": 300, "ref": 100, "alerts": 200}


def _examples(request, family: str) -> int:
    return SHARE[family] * (10 if request.config.getoption("--run-slow") else 1)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=512, agent_capacity=64, max_batch=32, max_delay_ms=0.5,
                 max_text_bytes=4096, max_batch_turns=20, evict_min_idle_s=3600, drain_s=1.0)
    s = ServiceThread(cfg).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(svc):
    ch = svc.channel()
    yield ch
    ch.close()


def _ident(b):
    return b


def call(channel, path: str, data: bytes, stream: bool = False):
    """(status, response bytes or None) of calling ``path`` with ``data`` as the request."""
    try:
        if stream:
            fn = channel.stream_stream(path, request_serializer=_ident, response_deserializer=_ident)
            out = list(fn(iter(data), timeout=10))
            return grpc.StatusCode.OK, out
        if path.endswith("WatchAlerts"):
            fn = channel.unary_stream(path, request_serializer=_ident, response_deserializer=_ident)
            it = fn(data, timeout=0.3)
            out = []
            for m in it:               # a live tail: read what is there until the deadline
                out.append(m)
                if len(out) > 50:
                    it.cancel()
                    break
            return grpc.StatusCode.OK, out
        fn = channel.unary_unary(path, request_serializer=_ident, response_deserializer=_ident)
        return grpc.StatusCode.OK, fn(data, timeout=10)
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED) and \
                path.endswith("WatchAlerts"):
            return grpc.StatusCode.OK, None    # our own deadline / cancel ended the tail
        return err.code(), err.details()


# ---- strategies --------------------------------------------------------------------------------
ids = st.one_of(st.sampled_from(["", "s1", "t1", "a1", "q"]), st.text(max_size=40),
                st.text(min_size=120, max_size=140), st.text(alphabet="会话客户", min_size=30, max_size=40))
texts = st.one_of(st.text(max_size=200), st.sampled_from(["", "I want a refund NOW!!!", "在吗？", "\x00\x01\u202e"]),
                  st.text(alphabet="ab啊", min_size=4000, max_size=4200))
enum_n = st.one_of(st.integers(-3, 8), st.integers(-(2**31), 2**31 - 1))
stamps = st.one_of(st.just(0), st.integers(-(2**63), 2**63 - 1), st.integers(10**11, 2 * 10**12))


@st.composite
def turns(draw):
    t = pb.Turn(tenant_id=draw(ids), session_id=draw(ids), turn_id=draw(ids), agent_id=draw(ids),
                queue=draw(ids), text=draw(texts), timestamp_ms=draw(stamps))
    for name in ("speaker", "channel", "customer_tier", "event"):
        setattr(t, name, draw(enum_n))
    return t


def mutate(data: bytes, draw) -> bytes:
    """A truncated, bit-flipped or spliced copy of ``data`` (or random bytes)."""
    how = draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if how == "random" or not data:
        return draw(st.binary(max_size=300))
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(min_size=1, max_size=20)) + data[i:]


FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _check(svc, before, code, path):
    assert code in DEFINED, (path, code)
    if code != grpc.StatusCode.OK:
        assert_same_state(before, state_copy(svc))


# ---- the tests ---------------------------------------------------------------------------------
def test_fuzz_score(svc, channel, request):
    @settings(FUZZ, max_examples=_examples(request, "turn"))
    @given(t=turns())
    def run(t):
        before = state_copy(svc)
        code, _ = call(channel, "/yujing.v1.RiskScorer/Score", t.SerializeToString())
        _check(svc, before, code, "Score")
    run()


def test_fuzz_score_batch_and_stream(svc, channel, request):
    @settings(FUZZ, max_examples=_examples(request, "batch"))
    @given(ts=st.lists(turns(), max_size=25), stream=st.booleans())
    def run(ts, stream):
        before = state_copy(svc)
        if stream:
            code, out = call(channel, "/yujing.v1.RiskScorer/ScoreStream", [t.SerializeToString() for t in ts],
                             stream=True)
            assert code in DEFINED, ("ScoreStream", code)   # turns before a refusal are applied (and answered)
        else:
            code, out = call(channel, "/yujing.v1.RiskScorer/ScoreBatch",
                             pb.TurnBatch(turns=ts).SerializeToString())
            _check(svc, before, code, "ScoreBatch")
            if code == grpc.StatusCode.OK:
                res = pb.TurnRiskBatch.FromString(out).results
                assert len(res) == len(ts)
                for r in res:
                    if r.WhichOneof("result") == "error":
                        assert r.error.code in {c.value[0] for c in DEFINED}, r.error
    run()


def test_fuzz_raw_bytes_on_every_method(svc, channel, request):
    methods = {"/yujing.v1.RiskScorer/Score": pb.Turn(session_id="s", turn_id="1", speaker=pb.CUSTOMER, text="hi"),
               "/yujing.v1.RiskScorer/ScoreBatch": pb.TurnBatch(turns=[pb.Turn(session_id="s", turn_id="2",
                                                                               speaker=pb.AGENT)]),
               "/yujing.v1.RiskScorer/GetSession": pb.SessionRef(tenant_id="t", session_id="s"),
               "/yujing.v1.RiskScorer/EndSession": pb.SessionRef(tenant_id="t", session_id="s"),
               "/yujing.v1.Alerts/AckAlert": pb.AckRequest(alert_id=1, by="me"),
               "/yujing.v1.Alerts/GetQueueHealth": pb.QueueRef(tenant_id="t", queue="q"),
               "/yujing.v1.Alerts/WatchAlerts": pb.AlertQuery(tenant_id="t", from_oldest=True)}

    @settings(FUZZ, max_examples=_examples(request, "raw"))
    @given(path=st.sampled_from(sorted(methods)), data=st.data())
    def run(path, data):
        raw = mutate(methods[path].SerializeToString(), data.draw)
        before = state_copy(svc)
        code, _ = call(channel, path, raw)
        assert code in DEFINED, (path, code, raw)
        if code != grpc.StatusCode.OK or path.endswith(("GetSession", "Alert", "Health", "Alerts")):
            assert_same_state(before, state_copy(svc))
    run()


def test_fuzz_session_refs(svc, channel, request):
    @settings(FUZZ, max_examples=_examples(request, "ref"))
    @given(tenant=ids, session=ids, end=st.booleans())
    def run(tenant, session, end):
        before = state_copy(svc)
        path = "/yujing.v1.RiskScorer/" + ("EndSession" if end else "GetSession")
        code, _ = call(channel, path, pb.SessionRef(tenant_id=tenant, session_id=session).SerializeToString())
        assert code in DEFINED, (path, code)
        if code != grpc.StatusCode.OK or not end:
            assert_same_state(before, state_copy(svc))
    run()


def test_fuzz_alerts_api(svc, channel, request):
    queries = st.builds(pb.AlertQuery, tenant_id=ids, queues=st.lists(ids, max_size=3),
                        kinds=st.lists(enum_n, max_size=3), min_level=enum_n,
                        after_id=st.integers(0, 2**64 - 1), from_oldest=st.booleans())
    acks = st.builds(pb.AckRequest, alert_id=st.integers(0, 2**64 - 1), by=ids, note=texts)
    refs = st.builds(pb.QueueRef, tenant_id=ids, queue=ids)

    @settings(FUZZ, max_examples=_examples(request, "alerts"))
    @given(which=st.sampled_from(["WatchAlerts", "AckAlert", "GetQueueHealth"]), data=st.data())
    def run(which, data):
        msg = data.draw({"WatchAlerts": queries, "AckAlert": acks, "GetQueueHealth": refs}[which])
        before = state_copy(svc)
        code, _ = call(channel, "/yujing.v1.Alerts/" + which, msg.SerializeToString())
        assert code in DEFINED, (which, code)
        assert_same_state(before, state_copy(svc))
    run()


def test_the_service_is_still_serving_after_the_fuzzing(svc, channel):
    """Last in the module: every fuzz test above ran against this same service."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ok = pb.Turn(tenant_id="t1", session_id="after-fuzz", turn_id="1", speaker=pb.CUSTOMER, text="hello")
    code, out = call(channel, "/yujing.v1.RiskScorer/Score", ok.SerializeToString())
    assert code == grpc.StatusCode.OK and pb.TurnRisk.FromString(out).session_id == "after-fuzz"
    h = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
