"""The answers' wire bytes (service/wire.py, service/answers.py) against the generated
classes (service/answers_reference.py): decoded field by field, and byte for byte against
``SerializeToString(deterministic=True)``, over random kernel and model outputs with the
awkward values (NaN, infinities, -0.0, values beyond float32, huge and negative integers,
empty and non-ASCII strings, no reasons, every action combination, turns with and without
sentiment, intent and emotion, agent and customer turns); duplicates; ScoreBatch answers
with errors among them; the real pipeline's answers."""
import asyncio
import math
import struct
import time
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from yujing.kernels import layout as L
from yujing.service import answers as A
from yujing.service import answers_reference as R
from yujing.service import wire
from yujing.service.contract import pb
from yujing.service.errors import InvalidTurn
from yujing.service.idempotency import AnswerCache, resolve_repeats
from yujing.service.model_outputs import ModelOutputs
from yujing.service.policy import IntentTable

SPECIAL = [0.0, -0.0, float("nan"), -float("nan"), float("inf"), -float("inf"), 1e-50, -1e-50, 1e300, -1e300,
           3.4028235e38, 3.5e38, 1.0, -1.0, 0.5, 123456.789, 5e-324]
STRINGS = ["", "s1", "会话-七", "ümlaut", "x" * 128, "🙂 emoji", "a\x00b"]


# -- a field-by-field comparison that knows NaN and -0.0 ----------------------------------------
def _same_scalar(a, b, fd) -> bool:
    if fd.type == FD.TYPE_FLOAT:
        return struct.pack("<f", a) == struct.pack("<f", b)
    if fd.type == FD.TYPE_DOUBLE:
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def assert_same_fields(got, ref, path="TurnRisk") -> None:
    """Every field of ``got`` equals ``ref``'s (presence of sub-messages included)."""
    for fd in ref.DESCRIPTOR.fields:
        where = f"{path}.{fd.name}"
        a, b = getattr(got, fd.name), getattr(ref, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            assert set(a) == set(b), where
            vfd = fd.message_type.fields_by_name["value"]
            for k in b:
                assert _same_scalar(a[k], b[k], vfd), (where, k, a[k], b[k])
        elif fd.is_repeated:
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                if fd.message_type is not None:
                    assert_same_fields(x, y, f"{where}[{i}]")
                else:
                    assert _same_scalar(x, y, fd), (f"{where}[{i}]", x, y)
        elif fd.message_type is not None:
            assert got.HasField(fd.name) == ref.HasField(fd.name), where
            if ref.HasField(fd.name):
                assert_same_fields(a, b, where)
        else:
            assert _same_scalar(a, b, fd), (where, a, b)


# -- random inputs -------------------------------------------------------------------------------
def _pick(rng, values, n):
    return [values[i] for i in rng.integers(0, len(values), n)]


def _floats(rng, n, special_share=0.3):
    x = rng.normal(0, 10, n) * rng.choice([1e-3, 1.0, 1e3], n)
    mask = rng.random(n) < special_share
    x[mask] = _pick(rng, SPECIAL, int(mask.sum()))
    return x


def random_batch(rng, n_items=24):
    """A batch as ``build_answers`` takes it: items, positions, of, oi, outputs, versions,
    degraded, sla_s."""
    items = [SimpleNamespace(turn=pb.Turn(
        tenant_id=_pick(rng, STRINGS, 1)[0], session_id=_pick(rng, STRINGS, 1)[0] or "s",
        turn_id=_pick(rng, STRINGS, 1)[0] + str(k),
        speaker=int(rng.choice([pb.CUSTOMER, pb.CUSTOMER, pb.AGENT, pb.BOT])))) for k in range(n_items)]
    n = int(rng.integers(1, n_items + 1))
    positions = np.sort(rng.choice(n_items, n, replace=False)).astype(np.int64)
    of = np.zeros((L.OF_ROWS, n))
    for r in range(L.OF_ROWS):
        of[r] = _floats(rng, n)
    oi = np.zeros((L.OI_ROWS, n), np.int64)
    oi[L.OI_LEVEL] = rng.choice([0, 1, 2, 3, 3, -1, 7], n)
    oi[L.OI_PRIORITY] = rng.choice([0, 1, 2, 3, 4, -1], n)
    oi[L.OI_ACTIONS] = rng.integers(0, 8, n)
    oi[L.OI_CUSTOMER] = rng.choice([0, 1, 127, 128, 300, 2**32 - 1], n)
    oi[L.OI_TURNS] = rng.integers(0, 1000, n)
    oi[L.OI_SESSION_TIME] = rng.choice([0, 1, -1, 1_700_000_000_000, -2**63, 2**63 - 1], n)
    for c in range(n):
        k = int(rng.integers(0, L.TOP_REASONS + 1))          # 0 .. 3 reasons
        idx = rng.choice(L.N_INDICATORS, L.TOP_REASONS, replace=False)
        idx[k:] = -1
        oi[L.OI_REASON_IDX:L.OI_REASON_IDX + L.TOP_REASONS, c] = idx
        for j in idx[:k]:                                    # a reason's words need a finite value
            if not math.isfinite(of[j, c]):
                of[j, c] = rng.normal(0, 5)
    if rng.random() < 0.3:                                   # the kernel's plain values, no oddities
        of[:L.N_INDICATORS] = np.abs(rng.normal(0, 1, (L.N_INDICATORS, n)))
    outputs = _random_outputs(rng, n_items)
    sla_s = None if rng.random() < 0.2 else rng.choice([60.0, 0.0, 30.0, 1e6, 0.001], n)
    versions = pb.ModelVersions(**{f: _pick(rng, STRINGS, 1)[0] for f in
                                   ("sentiment_model", "sentiment_version", "intent_model", "served_by",
                                    "policy_version", "emotion_model")})
    return items, positions, of, oi, outputs, versions, bool(rng.random() < 0.5), sla_s


def _probs(rng, n, m):
    p = rng.random((n, m)).astype(np.float32)
    mask = rng.random((n, m)) < 0.15
    p[mask] = np.array(_pick(rng, [0.0, -0.0, float("nan"), float("inf"), 1e-45, 1.0], int(mask.sum())), np.float32)
    return p


def _random_outputs(rng, n):
    if rng.random() < 0.1:
        return ModelOutputs.empty(n)                          # no texts: the models were not asked
    s_labels = tuple(_pick(rng, ["negative", "neutral", "positive", "", "负面"], int(rng.integers(0, 4))))
    out = ModelOutputs.empty(n)
    out.has_sentiment[:] = rng.random(n) < 0.7
    out.sentiment[:] = _floats(rng, n)
    out.sentiment_labels = s_labels
    out.sentiment_probs = _probs(rng, n, len(s_labels))
    out.sentiment_label = [(_pick(rng, list(s_labels), 1)[0] if s_labels else "") if h else ""
                           for h in out.has_sentiment]
    m = int(rng.integers(1, 6))
    labels = tuple(_pick(rng, ["refund", "cancel_order", "none", "", "投诉", "x" * 200], m))
    out.intent_table = IntentTable(labels=labels, category=tuple(_pick(rng, ["complaint", "", "legal", "法律"], m)),
                                   weight=_floats(rng, m), raise_=np.zeros(m, np.int64), complaint=np.zeros(m, bool))
    out.intent_probs = _probs(rng, n, m)
    out.intent_id = np.where(rng.random(n) < 0.6, rng.integers(0, m, n), -1).astype(np.int64)
    if rng.random() < 0.7:
        e_labels = tuple(_pick(rng, ["neutral", "angry", "anxious", "sad", "happy", "愤怒"], int(rng.integers(1, 6))))
        out.emotion_labels = e_labels
        out.emotion_probs = _probs(rng, n, len(e_labels))
        out.emotion_id = np.where(rng.random(n) < 0.6, rng.integers(0, len(e_labels), n), -1).astype(np.int64)
    return out


def _deterministic(msg) -> bytes:
    return msg.SerializeToString(deterministic=True)


def _duplicate(msg) -> "pb.TurnRisk":
    dup = pb.TurnRisk()
    dup.CopyFrom(msg)
    dup.duplicate = True
    return dup


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(60))
def test_answers_equal_the_generated_classes(seed):
    rng = np.random.default_rng(seed)
    batch = random_batch(rng)
    ref = R.build_answers(*batch)
    got = A.build_answers(*batch)
    assert len(got) == len(ref)
    for (raw, tail_at), want in zip(got, ref):
        assert_same_fields(pb.TurnRisk.FromString(raw), want)
        assert raw == _deterministic(want)
        assert wire.find_tail(raw) == tail_at
        # a repeat: duplicate = true in field order, as the generated class writes it
        assert wire.mark_duplicate(raw, tail_at) == _deterministic(_duplicate(want))
        # the answer as the generated class serialises it by default (an old snapshot's)
        plain = want.SerializeToString()
        assert_same_fields(pb.TurnRisk.FromString(wire.mark_duplicate(plain, wire.find_tail(plain))),
                           _duplicate(want))


def test_every_action_combination():
    rng = np.random.default_rng(0)
    items, positions, of, oi, outputs, versions, degraded, sla_s = random_batch(rng, 8)
    n = oi.shape[1]
    for bits in range(8):
        oi[L.OI_ACTIONS] = bits
        for (raw, _), want in zip(A.build_answers(items, positions, of, oi, outputs, versions, degraded, sla_s),
                                  R.build_answers(items, positions, of, oi, outputs, versions, degraded, sla_s)):
            assert raw == _deterministic(want)
            assert list(pb.TurnRisk.FromString(raw).actions) == list(want.actions)
    assert n >= 1


def test_an_answer_without_any_field_set():
    """Zero everywhere: only what is always present (the indicators, models, action)."""
    items = [SimpleNamespace(turn=pb.Turn())]
    of, oi = np.zeros((L.OF_ROWS, 1)), np.zeros((L.OI_ROWS, 1), np.int64)
    oi[L.OI_LEVEL] = oi[L.OI_PRIORITY] = -1
    oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3] = -1
    args = (items, np.zeros(1, np.int64), of, oi, ModelOutputs.empty(1), pb.ModelVersions(), False, None)
    (raw, tail_at), = A.build_answers(*args)
    want, = R.build_answers(*args)
    assert raw == _deterministic(want) and tail_at == len(raw)
    assert A.build_answers(items, np.zeros(0, np.int64), of[:, :0], oi[:, :0], ModelOutputs.empty(1),
                           pb.ModelVersions(), False, None) == []


def test_find_tail_refuses_what_is_not_a_message():
    with pytest.raises(ValueError):
        wire.find_tail(b"\x12\x05ab")                   # a string running past the end
    with pytest.raises(ValueError):
        wire.find_tail(b"\x0b")                         # wire type 3 (groups) is not used
    assert wire.find_tail(b"") == 0


def test_varints_and_floats():
    for n in (0, 1, 127, 128, 300, 2**32 - 1, 2**63 - 1, -1, -2**63):
        assert wire.varint_field(wire.KEY_SESSION_TIME_MS, n) == _deterministic(pb.TurnRisk(session_time_ms=n))
    for x in SPECIAL:
        assert wire.float_field(wire.KEY_RISK_SCORE, x) == _deterministic(pb.TurnRisk(risk_score=x))


def test_cache_marks_duplicates_and_survives_a_snapshot():
    rng = np.random.default_rng(7)
    batch = random_batch(rng)
    built, ref = A.build_answers(*batch), R.build_answers(*batch)
    cache = AnswerCache(len(built))
    for c, (raw, tail_at) in enumerate(built):
        cache.put(("t", "s", str(c)), raw, tail_at)
    for c, want in enumerate(ref):
        assert cache.get(("t", "s", str(c))) == _deterministic(_duplicate(want))
    arrays, keys = cache.export()
    again = AnswerCache(len(built))
    assert again.restore(arrays, keys) == len(built)
    assert [again.get(tuple(k)) for k in keys] == [cache.get(tuple(k)) for k in keys]
    # a snapshot from before idem.tail_at: the generated class's bytes, tail_at found by a scan
    old = AnswerCache(len(built))
    raws = [w.SerializeToString() for w in ref]
    old.restore({"idem.bytes": np.frombuffer(b"".join(raws), np.uint8),
                 "idem.lengths": np.array([len(r) for r in raws], np.int64)}, keys)
    for k, want in zip(keys, ref):
        got = pb.TurnRisk.FromString(old.get(tuple(k)))
        assert_same_fields(got, _duplicate(want))


def test_repeats_in_one_batch_are_duplicates_of_their_first_copy():
    rng = np.random.default_rng(3)
    batch = random_batch(rng)
    (raw, _), = A.build_answers(*batch)[:1]
    want, = R.build_answers(*batch)[:1]
    err = InvalidTurn("bad", "turn_id")
    out = resolve_repeats([raw, 0, err, 2])
    assert out[0] == raw and out[1] == _deterministic(_duplicate(want)) and out[3] is err


def test_batch_with_errors_equals_the_generated_batch():
    rng = np.random.default_rng(11)
    batch = random_batch(rng)
    built, ref = A.build_answers(*batch), R.build_answers(*batch)
    errors = [(3, "turns[1].session_id is required", "turns[1].session_id"), (8, "overloaded: 说明", ""),
              (0, "", ""), (-1, "negative code", "f")]
    results, want = [], pb.TurnRiskBatch()
    for c, ((raw, _), msg) in enumerate(zip(built, ref)):
        if c % 3 == 1 and errors:
            code, message, field = errors.pop()
            results.append(wire.TurnError(wire.error_result(code, message, field)))
            want.results.add(error=pb.TurnError(code=code, message=message, field=field))
        results.append(raw)
        want.results.add(risk=msg)
    results.append(wire.mark_duplicate(*built[0]))
    want.results.add(risk=_duplicate(ref[0]))
    results.append(b"")                               # an empty TurnRisk is still a set oneof member
    want.results.add(risk=pb.TurnRisk())
    got = wire.batch_bytes(results)
    assert got == _deterministic(want)
    assert wire.batch_bytes([]) == b""
    decoded = pb.TurnRiskBatch.FromString(got)
    assert [r.WhichOneof("result") for r in decoded.results] == [r.WhichOneof("result") for r in want.results]


def test_the_pipelines_answers_equal_the_generated_classes(monkeypatch, tmp_path):
    """The engine's real batches (in-process models, the kernel, the policy): every answer
    it builds equals the reference builder's for the same outputs, and a retry gets the
    duplicate-marked bytes."""
    from tests.service_models import in_process_repo
    from yujing.service.config import Config
    from yujing.service.engine import Engine
    from yujing.service.policy import load_policy
    from yujing.service.session_table import SessionTable
    from yujing.service.triton.router import ModelRouter
    from yujing.service.validate import validate_turn
    from yujing.loadtest.traffic import ConversationTraffic

    checked = []
    build = A.build_answers

    def both(*args, **kw):
        got = build(*args, **kw)
        ref = R.build_answers(*args, **kw)
        for (raw, _), want in zip(got, ref):
            assert raw == _deterministic(want)
        checked.append(len(got))
        return got

    monkeypatch.setattr(A, "build_answers", both)
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo()).validate()
    gen = ConversationTraffic(seed=5, sessions=40, concurrent=40)

    async def run():
        router = ModelRouter(cfg.model_repo, None)
        await router.start()
        try:
            eng = Engine(load_policy(), SessionTable(capacity=256, agent_capacity=16, backend="cpu"), router, 1024)
            now = int(time.time() * 1000)
            items = [validate_turn(gen.next_turn(), cfg, now) for _ in range(300)]
            first = []
            for lo in range(0, len(items), 64):
                first += await eng.score(items[lo:lo + 64])
            again = await eng.score(items[:10] + items[:1])
            return first, again
        finally:
            await router.close()

    first, again = asyncio.run(run())
    assert sum(checked) >= 290 and all(isinstance(a, bytes) for a in first)
    for a, b in zip(first[:10], again[:10]):
        want = _duplicate(pb.TurnRisk.FromString(a))
        assert b == _deterministic(want)
    assert again[-1] == again[0]


def test_the_handlers_send_the_reference_bytes(monkeypatch, tmp_path):
    """Over real gRPC, read as raw bytes (no client-side parsing): Score, ScoreStream and
    ScoreBatch answers (fresh turns, a retry, a repeat inside a batch, refused turns among
    them) are exactly the generated classes' deterministic bytes for the same answers."""
    import grpc

    from tests.service_harness import ServiceThread
    from tests.service_models import in_process_repo
    from yujing.service.config import Config

    reference = {}                      # (tenant, session, turn_id) -> the reference message
    build = A.build_answers

    def both(items, positions, *rest, **kw):
        for k, msg in zip(positions.tolist(), R.build_answers(items, positions, *rest, **kw)):
            t = items[k].turn
            reference[(t.tenant_id, t.session_id, t.turn_id)] = msg
        return build(items, positions, *rest, **kw)

    monkeypatch.setattr(A, "build_answers", both)
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(), capacity=256, agent_capacity=16,
                 max_batch=32, max_delay_ms=1.0, drain_s=1.0, data_dir=str(tmp_path))
    svc = ServiceThread(cfg).start()
    try:
        ch = svc.channel()
        method = "/yujing.v1.RiskScorer/"
        score = ch.unary_unary(method + "Score", request_serializer=pb.Turn.SerializeToString)
        batch = ch.unary_unary(method + "ScoreBatch", request_serializer=pb.TurnBatch.SerializeToString)
        stream = ch.stream_stream(method + "ScoreStream", request_serializer=pb.Turn.SerializeToString)
        texts = ["我要投诉，三天了还没发货！", "This is unacceptable, I want a refund now!", "", "thanks", "会员积分"]

        def turn(s, t, speaker=pb.CUSTOMER, **kw):
            return pb.Turn(tenant_id="acme", session_id=s, turn_id=t, text=texts[int(t) % len(texts)],
                           speaker=speaker, agent_id="a1", **kw)

        def expect(t, dup=False):
            msg = reference[(t.tenant_id, t.session_id, t.turn_id)]
            return _deterministic(_duplicate(msg) if dup else msg)

        first = turn("s1", "1")
        assert score(first, timeout=30) == expect(first)
        assert score(first, timeout=30) == expect(first, dup=True)        # a retry: from the cache
        got = list(stream(iter([turn("s2", str(i), pb.AGENT if i % 3 == 1 else pb.CUSTOMER) for i in range(12)]
                               + [first]), timeout=30))
        want = [expect(turn("s2", str(i))) for i in range(12)] + [expect(first, dup=True)]
        assert got == want
        turns = [turn("s3", str(i), pb.BOT if i % 4 == 3 else pb.CUSTOMER) for i in range(20)]
        turns[5] = turns[2]                                                 # a repeat inside the batch
        turns[7] = pb.Turn(session_id="s3", turn_id="", speaker=pb.CUSTOMER)  # refused: no turn_id
        turns.append(turn("s2", "4"))                                       # answered before: a duplicate
        raw = batch(pb.TurnBatch(turns=turns), timeout=30)
        decoded = pb.TurnRiskBatch.FromString(raw)
        want = pb.TurnRiskBatch()
        for k, (t, r) in enumerate(zip(turns, decoded.results)):
            if k == 7:
                assert r.WhichOneof("result") == "error" and r.error.field.endswith("turn_id")
                want.results.add(error=r.error)
            else:
                want.results.add(risk=pb.TurnRisk.FromString(expect(t, dup=k in (5, 20))))
        assert raw == _deterministic(want)
    finally:
        svc.stop()


def test_the_answers_bench_runs(tmp_path):
    """``yujing bench answers`` end to end on a small stream (figures not checked: no
    wall-clock asserts), so the suite behind BENCHMARKS.md keeps working."""
    import json

    from yujing.loadtest.bench import answers as bench

    assert bench.main(["--turns", "600", "--repeats", "1", "--json", str(tmp_path / "a.json")]) == 0
    r = json.loads((tmp_path / "a.json").read_text())
    assert r["answers"]["turns"] == 600 and r["engine_score"]["turns"] == 600
    assert set(r["answers"]["cpu_us_per_turn"]) == {"reference", "reference_serialized", "wire_py", "wire"}
    assert set(r["by_batch"]) == {"1", "16", "64", "256"}
    assert r["duplicates"]["answers"] > 0


def test_one_turns_indicator_block_equals_the_batch_path():
    """Small batches write each turn's indicator block with one struct pack, large ones with
    numpy: the same bytes, specials included (both paths also meet the reference above)."""
    rng = np.random.default_rng(5)
    block = A._INDICATOR_BLOCK
    for n in (1, 2, 7, 8, 9, 30):
        of = np.vstack([_floats(rng, n, 0.5) for _ in range(L.N_INDICATORS)])
        assert block.rows(of) == b"".join(block.row(r) for r in of.T.tolist())
