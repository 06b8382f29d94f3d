"""Strict streams and clean errors, over real gRPC: a request whose bytes are not the
method's message is refused with INVALID_ARGUMENT and a short message (never UNKNOWN
with a Python exception name, never a traceback in the log), counted in the metrics and
logged at most once every 10 s; a stream with such a message answers every turn before
it, then ends with the error, and applies nothing after it."""
import gc
import logging
import random
import time

import grpc
import pytest

from yujing.service.config import Config
from yujing.service.contract import pb
from yujing.service.metrics import MetricsInterceptor
from tests.service_harness import assert_same_state, state_copy, ServiceThread, turn

RISK = "/yujing.v1.RiskScorer/"
TYPES = {"Score": "yujing.v1.Turn", "ScoreBatch": "yujing.v1.TurnBatch",
         "GetSession": "yujing.v1.SessionRef", "EndSession": "yujing.v1.SessionRef"}
GARBAGE = b"\xff\xff\xff"


def _raw(b):
    return b


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from tests.service_models import in_process_repo

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=2048, agent_capacity=64, max_batch=32, max_delay_ms=1.0,
                 max_text_bytes=1024, max_batch_turns=50, drain_s=1.0)
    s = ServiceThread(cfg).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(svc):
    ch = svc.channel()
    yield ch
    ch.close()


@pytest.fixture
def interceptor(svc):
    """The service's MetricsInterceptor, its log rate limit reset (white box)."""
    found = [o for o in gc.get_objects() if isinstance(o, MetricsInterceptor) and o.metrics is svc.srv.metrics]
    assert len(found) == 1
    ic = found[0]
    ic._log_after, ic._suppressed = 0.0, 0
    return ic


def call_raw(channel, method: str, data: bytes):
    """(code, details) of ``method`` called with ``data`` as the request's bytes."""
    fn = channel.unary_unary(RISK + method, request_serializer=_raw, response_deserializer=_raw)
    try:
        fn(data, timeout=10)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def sample(svc, name, **labels):
    return svc.call(lambda srv: srv.metrics.registry.get_sample_value(name, labels)) or 0.0


def no_tracebacks(caplog):
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, "\n".join(f"{r.name} {r.levelname}: {r.getMessage()[:300]}" for r in bad[:3])


# ---- 1. undecodable unary requests ----------------------------------------------------------

@pytest.mark.parametrize("method", list(TYPES))
def test_undecodable_request_is_invalid_argument_counted_and_changes_nothing(svc, channel, method, caplog):
    caplog.set_level(logging.INFO)
    svc.stub().Score(turn(session="seed", turn_id="seed", text="my order is late"))
    before = state_copy(svc)
    n_code = sample(svc, "yujing_rpc_requests_total", method=method, code="INVALID_ARGUMENT")
    n_bad = sample(svc, "yujing_undecodable_requests_total", method=method)
    code, details = call_raw(channel, method, GARBAGE)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith(f"request is not a valid {TYPES[method]}: "), details
    assert "DecodeError" not in details and "Unexpected" not in details
    assert len(details) < 200
    assert sample(svc, "yujing_rpc_requests_total", method=method, code="INVALID_ARGUMENT") == n_code + 1
    assert sample(svc, "yujing_undecodable_requests_total", method=method) == n_bad + 1
    assert_same_state(before, state_copy(svc))
    no_tracebacks(caplog)


def test_undecodable_requests_are_logged_at_most_once_per_interval(svc, channel, interceptor, caplog,
                                                                    monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(interceptor, "LOG_EVERY_S", 1.0)
    t0 = time.monotonic()
    for _ in range(30):
        assert call_raw(channel, "Score", GARBAGE)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - t0 < 1.0, "too slow to test the interval"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "undecodable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Score" in warnings[0].getMessage() and "truncated" in warnings[0].getMessage()
    time.sleep(1.1)
    call_raw(channel, "Score", GARBAGE)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "undecodable" in r.getMessage()]
    assert len(warnings) == 2
    assert "29 more" in warnings[1].getMessage(), warnings[1].getMessage()
    no_tracebacks(caplog)


# ---- 2. streams never lose turns silently ---------------------------------------------------

def _stream(channel, messages: list[bytes]):
    """(answers, code, details) of a ScoreStream sending ``messages`` as raw bytes."""
    fn = channel.stream_stream(RISK + "ScoreStream", request_serializer=_raw,
                               response_deserializer=pb.TurnRisk.FromString)
    answers = []
    try:
        for a in fn(iter(messages), timeout=20):
            answers.append(a)
    except grpc.RpcError as err:
        return answers, err.code(), err.details()
    return answers, grpc.StatusCode.OK, ""


@pytest.mark.parametrize("good_before", [1, 3])
def test_stream_with_an_undecodable_message_answers_the_turns_before_it_then_fails(svc, channel, good_before,
                                                                                   caplog):
    caplog.set_level(logging.INFO)
    sid = f"strict-stream-{good_before}"
    good = [turn(session=sid, turn_id=str(k), text=f"turn {k}").SerializeToString() for k in range(good_before + 2)]
    n_bad = sample(svc, "yujing_undecodable_requests_total", method="ScoreStream")
    answers, code, details = _stream(channel, good[:good_before] + [GARBAGE] + good[good_before:])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("request is not a valid yujing.v1.Turn: "), details
    assert [a.turn_id for a in answers] == [str(k) for k in range(good_before)]
    assert [a.session_id for a in answers] == [sid] * good_before
    state = svc.stub().GetSession(pb.SessionRef(session_id=sid))
    assert state.turns == good_before          # the turns after the bad message were not applied
    assert sample(svc, "yujing_undecodable_requests_total", method="ScoreStream") == n_bad + 1
    assert sample(svc, "yujing_rpc_requests_total", method="ScoreStream", code="INVALID_ARGUMENT") >= 1
    no_tracebacks(caplog)


def test_stream_of_valid_turns_still_answers_every_turn(svc, channel):
    sid = "strict-stream-ok"
    msgs = [turn(session=sid, turn_id=str(k), text=f"turn {k}").SerializeToString() for k in range(5)]
    answers, code, _ = _stream(channel, msgs)
    assert code == grpc.StatusCode.OK
    assert [a.turn_id for a in answers] == [str(k) for k in range(5)]


# ---- 3. hostile inputs: every one a defined status, no state change -------------------------

_TURN = turn(session="hostile", turn_id="1", text="hi").SerializeToString()
HOSTILE = [
    # (method, bytes, a word the message must hold)
    ("Score", b"\xf8\xff\xff\xff\x7f\x01", "field number"),                     # field number > 2^29-1
    ("Score", b"\x82\x80\x80\x80\x10\x00", "field number"),                     # field 2^29, one past the max
    ("Score", b"\x0f\x00", "wire type 7"),                                     # invalid wire type
    ("Score", b"\x16\x00", "wire type 6"),
    ("Score", _TURN.replace(b"hi", b"\xff\xfe"), "UTF-8"),                      # text not UTF-8
    ("Score", _TURN.replace(b"hostile", b"host\xc3\x28le"), "UTF-8"),           # session_id not UTF-8
    ("Score", _TURN[:-1], ""),                                                 # truncated
    ("Score", b"\x3a\x7f" + b"x" * 10, "claims"),                              # text runs past the end
    ("Score", b"\x1b", "group"),                                               # a group never closed
    ("Score", b"\x1c", "group"),                                               # end of a group never opened
    ("ScoreBatch", pb.TurnBatch(turns=[pb.Turn(text="ab")]).SerializeToString().replace(b"ab", b"a\xff"),
     "turns[0].text"),
    ("ScoreBatch", b"\x0a\x05\x3a\x09abc", "turns[0]"),                        # nested length runs past
    ("GetSession", b"\x12\x02\xc3\x28", "session_id"),
    ("EndSession", b"\x0a\x02\xc3\x28\x12\x01x", "tenant_id"),
]


@pytest.mark.parametrize("method,data,word", HOSTILE)
def test_hostile_bytes_get_invalid_argument_with_a_message_and_change_nothing(svc, channel, method, data, word,
                                                                             caplog):
    caplog.set_level(logging.INFO)
    before = state_copy(svc)
    code, details = call_raw(channel, method, data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details and "Unexpected" not in details and "Error" not in details, details
    assert word in details, details
    assert_same_state(before, state_copy(svc))
    no_tracebacks(caplog)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:                                   # flip a byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:                                 # truncate
            del b[rng.randrange(len(b)):]
        elif op == 2:                                       # insert random bytes
            k = rng.randrange(len(b) + 1)
            b[k:k] = rng.randbytes(rng.randint(1, 6))
        elif op == 3 and b:                                 # duplicate a slice
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 8)]
        else:                                               # set a high bit (bad UTF-8, long varints)
            if b:
                b[rng.randrange(len(b))] |= 0x80
    return bytes(b)


def _fuzz_inputs(n: int, seed: int = 14) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = k % 3
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 48)))
        else:
            base = (pb.Turn(session_id=f"fz{k}", turn_id=str(k), text="where is my refund??", speaker=pb.CUSTOMER,
                            agent_id="a1", queue="billing").SerializeToString() if kind == 1 else
                    pb.TurnBatch(turns=[pb.Turn(session_id=f"fz{k}", turn_id=str(j), text=f"t{j}",
                                                speaker=pb.CUSTOMER) for j in range(2)]).SerializeToString())
            out.append(_mutate(rng, base))
    return out


def test_fuzz_every_answer_is_a_defined_status_and_the_service_keeps_serving(svc, channel, caplog):
    caplog.set_level(logging.INFO)
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    seen: dict = {}
    for data in _fuzz_inputs(300):
        for method in TYPES:
            code, details = call_raw(channel, method, data)
            seen[(method, code.name)] = seen.get((method, code.name), 0) + 1
            assert code in allowed, (method, data, code, details)
            if code != grpc.StatusCode.OK:
                assert details and "Unexpected" not in details, (method, data, details)
    # the fuzz reached both the decoder's refusals and the field checks behind it
    assert seen.get(("Score", "INVALID_ARGUMENT"), 0) > 100, seen
    assert sample(svc, "yujing_undecodable_requests_total", method="Score") > 50
    ans = svc.stub().Score(turn(session="after-fuzz", turn_id="1", text="still there?"))
    assert ans.session_id == "after-fuzz"
    no_tracebacks(caplog)
