"""The gRPC contract over real gRPC: every input is answered or refused with a clear
status, a refused turn changes no state, repeats are idempotent, streams keep order."""
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yujing.kernels import layout as L
from yujing.service.config import Config
from yujing.service.contract import pb
from tests.service_harness import assert_same_state, state_copy, ServiceThread, turn

NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=64, agent_capacity=16, max_batch=32, max_delay_ms=1.0,
                 max_text_bytes=1024, max_batch_turns=50, drain_s=1.0)
    s = ServiceThread(cfg).start()
    yield s
    s.stop()


BAD_TURNS = [
    (dict(session_id=""), "session_id"),
    (dict(turn_id=""), "turn_id"),
    (dict(session_id="x" * 129), "session_id"),
    (dict(tenant_id="t" * 200), "tenant_id"),
    (dict(agent_id="a" * 200), "agent_id"),
    (dict(text="怒" * 400), "text"),               # 1,200 bytes > 1,024
    (dict(speaker=0), "speaker"),
    (dict(speaker=9), "speaker"),
    (dict(channel=42), "channel"),
    (dict(customer_tier=-1), "customer_tier"),
    (dict(event=17), "event"),
    (dict(timestamp_ms=-5), "timestamp_ms"),
    (dict(timestamp_ms=NOW + 3600_000), "timestamp_ms"),
    (dict(timestamp_ms=1_790_000_000), "timestamp_ms"),   # seconds, not milliseconds
]


@pytest.mark.parametrize("bad,field", BAD_TURNS)
def test_bad_turn_is_refused_naming_the_field_and_changes_nothing(svc, bad, field):
    stub = svc.stub()
    stub.Score(turn(session="seed", turn_id="seed", text="my order is late"))
    before = state_copy(svc)
    fields = dict(session_id="victim", turn_id="t1", text="hello", speaker=pb.CUSTOMER)
    fields.update(bad)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(pb.Turn(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert_same_state(before, state_copy(svc))


def test_repeated_turn_id_returns_the_same_answer_without_counting_twice(svc):
    stub = svc.stub()
    first = stub.Score(turn(session="idem", turn_id="a", text="where is my refund???"))
    again = stub.Score(turn(session="idem", turn_id="a", text="where is my refund???"))
    assert again.duplicate and not first.duplicate
    assert again.risk_score == first.risk_score and again.customer_turns == first.customer_turns == 1
    state = stub.GetSession(pb.SessionRef(session_id="idem"))
    assert state.turns == 1
    nxt = stub.Score(turn(session="idem", turn_id="b", text="still waiting"))
    assert nxt.customer_turns == 2


def test_same_turn_id_twice_in_one_batch_counts_once(svc):
    b = pb.TurnBatch(turns=[turn(session="idem2", turn_id="x", text="refund now"),
                            turn(session="idem2", turn_id="x", text="refund now")])
    r = svc.stub().ScoreBatch(b)
    assert r.results[0].risk.customer_turns == 1
    assert r.results[1].risk.duplicate and r.results[1].risk.customer_turns == 1


def test_retries_and_repeats_are_not_sent_to_the_models_again(svc):
    seen: list[str] = []

    def spy(srv):
        router = srv.engine.router
        real = router.classify

        async def classify(texts):
            seen.extend(texts)
            return await real(texts)
        router.classify = classify
        return real

    real = svc.call(spy)
    try:
        stub = svc.stub()
        first = stub.Score(turn(session="retry", turn_id="1", text="alpha: my order is late"))
        again = stub.Score(turn(session="retry", turn_id="1", text="alpha: my order is late"))
        r = stub.ScoreBatch(pb.TurnBatch(turns=[
            turn(session="retry", turn_id="2", text="beta: still nothing"),
            turn(session="retry", turn_id="2", text="beta: still nothing"),
            turn(session="retry", turn_id="1", text="alpha: my order is late")]))
    finally:
        svc.call(lambda srv: setattr(srv.engine.router, "classify", real))
    assert seen == ["alpha: my order is late", "beta: still nothing"]
    assert again.duplicate and again.sentiment == first.sentiment and again.intent == first.intent
    assert [x.risk.duplicate for x in r.results] == [False, True, True]
    assert r.results[1].risk.sentiment == r.results[0].risk.sentiment
    assert r.results[2].risk.customer_turns == 1 and r.results[1].risk.customer_turns == 2


def test_models_are_used_only_for_the_languages_they_were_trained_on(svc):
    """Each model is used only for the languages its model.json names (the default
    sentiment, emotion and intent models: Chinese + English): a Chinese or a mixed text gets
    all three, a Russian one none, and a turn without a sentiment adds nothing."""
    stub = svc.stub()
    zh = stub.Score(turn(session="lang-zh", turn_id="1", text="我想取消这个订单"))
    assert zh.HasField("sentiment") and zh.sentiment.label
    assert zh.intent.label == "cancel_order" and zh.emotion.label
    en = stub.Score(turn(session="lang-en", turn_id="1", text="I want to cancel my order"))
    assert en.HasField("sentiment") and en.intent.label == "cancel_order"
    mixed = stub.Score(turn(session="lang-mix", turn_id="1", text="my order 还没到, where is it"))
    assert mixed.HasField("sentiment") and mixed.HasField("intent")
    ru = stub.Score(turn(session="lang-ru", turn_id="1", text="Где мой заказ? Это ужасно"))
    assert not ru.HasField("sentiment") and not ru.HasField("intent") and not ru.HasField("emotion")
    assert ru.indicators["sentiment_ewma"] == 0.0
    # a turn without a sentiment leaves the sentiment EWMA where it was (unknown is not neutral)
    s1 = stub.Score(turn(session="lang-seq", turn_id="1", text="太差了，我很生气，再也不买了"))
    s2 = stub.Score(turn(session="lang-seq", turn_id="2", text="Где мой заказ? Это ужасно"))
    assert s1.indicators["sentiment_ewma"] < 0
    assert s2.indicators["sentiment_ewma"] == s1.indicators["sentiment_ewma"]
    assert s2.customer_turns == 2
    emoji = stub.Score(turn(session="lang-emoji", turn_id="1", text="😡😡😡"))
    assert emoji.HasField("sentiment")          # no letters: the models may still know emoji


def test_older_turn_is_accepted_without_moving_the_session_back(svc):
    stub = svc.stub()
    t0 = NOW - 600_000
    a = stub.Score(turn(session="ooo", turn_id="1", text="hi", ts=t0 + 60_000))
    b = stub.Score(turn(session="ooo", turn_id="2", text="earlier message", ts=t0))
    assert a.session_time_ms == b.session_time_ms == t0 + 60_000
    assert b.customer_turns == 2
    state = stub.GetSession(pb.SessionRef(session_id="ooo"))
    assert state.started_ms == t0 and state.last_turn_ms == t0 + 60_000


def test_batch_reports_errors_per_item_and_applies_the_rest(svc):
    turns = [turn(session="b1", turn_id="1", text="ok"), pb.Turn(session_id="b1", turn_id="2"),
             turn(session="b1", turn_id="3", text="fine")]
    r = svc.stub().ScoreBatch(pb.TurnBatch(turns=turns))
    assert r.results[0].HasField("risk") and r.results[2].HasField("risk")
    err = r.results[1].error
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and err.field == "turns[1].speaker"
    assert r.results[2].risk.customer_turns == 2


def test_batch_over_the_limit_is_refused(svc):
    turns = [turn(session="big", turn_id=str(k)) for k in range(51)]
    with pytest.raises(grpc.RpcError) as err:
        svc.stub().ScoreBatch(pb.TurnBatch(turns=turns))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "turns" in err.value.details()
    with pytest.raises(grpc.RpcError):
        svc.stub().GetSession(pb.SessionRef(session_id="big"))


def test_stream_answers_in_order_across_sessions(svc):
    turns = [turn(session=f"st{k % 3}", turn_id=str(k), text=f"message {k}") for k in range(30)]
    out = list(svc.stub().ScoreStream(iter(turns)))
    assert [(r.session_id, r.turn_id) for r in out] == [(t.session_id, t.turn_id) for t in turns]
    assert [r.customer_turns for r in out if r.session_id == "st0"] == list(range(1, 11))


def test_stream_ends_with_the_status_of_a_bad_turn(svc):
    turns = [turn(session="sb", turn_id="1"), pb.Turn(session_id="sb", turn_id="2", speaker=7),
             turn(session="sb", turn_id="3")]
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for r in svc.stub().ScoreStream(iter(turns)):
            got.append(r.turn_id)
    assert got == ["1"] and err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_end_session_frees_the_slot_and_unknown_sessions_are_not_found(svc):
    stub = svc.stub()
    stub.Score(turn(session="end-me", turn_id="1", text="bye"))
    state = stub.EndSession(pb.SessionRef(session_id="end-me"))
    assert state.turns == 1
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.SessionRef(session_id="end-me"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    again = stub.Score(turn(session="end-me", turn_id="2", text="back"))
    assert again.customer_turns == 1


def test_answer_carries_models_reasons_and_indicators(svc):
    r = svc.stub().Score(turn(session="full", turn_id="1", text="This is terrible, I want a refund!!!"))
    assert set(r.indicators) == set(L.INDICATORS)
    assert r.models.sentiment_model == "sentiment" and r.models.sentiment_version
    assert r.models.policy_version.startswith("default")
    # the default models include dissatisfaction (P(dissatisfied) of a customer's words)
    assert r.models.dissatisfaction_model == "dissatisfaction" and r.models.dissatisfaction_version == "1"
    assert r.sentiment.label in r.sentiment.labels and abs(sum(r.sentiment.probabilities) - 1) < 1e-4
    assert r.level != pb.LEVEL_UNSPECIFIED and r.priority != pb.PRIORITY_UNSPECIFIED
    shares = [x.share for x in r.reasons]
    assert shares == sorted(shares, reverse=True) and all(0 < s <= 1 for s in shares)


def test_health_says_serving(svc):
    h = health_pb2_grpc.HealthStub(svc.channel())
    assert h.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING


def test_tenants_keep_sessions_apart(svc):
    stub = svc.stub()
    stub.Score(turn(session="shared-id", turn_id="1", tenant_id="tenant-a"))
    b = stub.Score(turn(session="shared-id", turn_id="1", tenant_id="tenant-b"))
    assert b.customer_turns == 1 and not b.duplicate
    assert stub.GetSession(pb.SessionRef(tenant_id="tenant-a", session_id="shared-id")).turns == 1


def test_full_table_refuses_with_resource_exhausted_and_changes_nothing(tmp_path_factory):
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(), capacity=2, agent_capacity=4,
                 evict_min_idle_s=3600, drain_s=1.0)
    s = ServiceThread(cfg).start()
    try:
        stub = s.stub()
        stub.Score(turn(session="a", turn_id="1", agent_id="ag"))
        stub.Score(turn(session="b", turn_id="1", agent_id="ag"))
        before = state_copy(s)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(turn(session="c", turn_id="1", agent_id="ag"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in err.value.details()
        assert_same_state(before, state_copy(s))
        r = stub.ScoreBatch(pb.TurnBatch(turns=[turn(session="a", turn_id="2"), turn(session="d", turn_id="1")]))
        assert r.results[0].risk.customer_turns == 2
        assert r.results[1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        stub.EndSession(pb.SessionRef(session_id="b"))
        assert stub.Score(turn(session="c", turn_id="1")).customer_turns == 1   # the freed slot
    finally:
        s.stop()
