"""The dissatisfaction model (P(dissatisfied) of a customer's words, under equal priors) on
the model side: the router answers it, ``read_outputs`` spreads it over a batch with the
``trusted`` rule (Chinese only: the model was trained on Chinese dialogues), the turn log
records and replays it, and an older record without it still replays."""
from __future__ import annotations

import asyncio
import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from yujing.service.contract import pb
from yujing.service.engine import PendingTurn
from yujing.service.featurize import featurize_batch
from yujing.service.model_outputs import read_outputs
from yujing.service.policy import load_policy
from yujing.service.storage.turn_log import decode_batch, encode_batch
from yujing.service.triton.router import IN_PROCESS, ModelRouter
from tests.service_models import in_process_repo

COMPLAINT_ZH = "你们这什么破服务，退款到现在还没到账，我要投诉！"
COMPLAINT_EN = "This is the worst service ever, I want a refund and I will complain!"
THANKS_ZH = "好的，谢谢，问题解决了"


def _classify(texts, dissatisfaction_model="dissatisfaction", combined_model="heads"):
    async def go():
        async with ModelRouter(in_process_repo(), emotion_model="emotion",
                               dissatisfaction_model=dissatisfaction_model, combined_model=combined_model) as router:
            return await router.classify(texts)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def texts_and_result():
    texts = [COMPLAINT_ZH, COMPLAINT_EN, THANKS_ZH, "😡😡😡"]
    return texts, _classify(texts)


def _outputs(texts, result, n_extra=1):
    """read_outputs for the texts at positions 0..len-1 of a batch with ``n_extra`` turns
    without text after them."""
    n = len(texts) + n_extra
    languages = featurize_batch(list(texts) + [""] * n_extra).languages
    return read_outputs(result, list(range(len(texts))), n, languages, load_policy(), lambda labels: None)


def test_the_router_answers_the_dissatisfaction_model(texts_and_result):
    texts, r = texts_and_result
    d = r.dissatisfaction
    assert (d.model_name, d.model_version, d.labels, d.languages, d.served_by) == \
        ("dissatisfaction", "1", ("other", "dissatisfied"), ("zh",), IN_PROCESS)
    assert d.probs.shape == (len(texts), 2) and np.allclose(d.probs.sum(axis=1), 1, atol=1e-5)
    assert d.probs[0, 1] > 0.5 > d.probs[2, 1]  # a complaint, a thank-you that closes the matter
    assert _classify(texts, dissatisfaction_model=None).dissatisfaction is None


def test_per_model_and_one_pass_answers_are_the_same(texts_and_result):
    texts, one_pass = texts_and_result
    per_model = _classify(texts, combined_model=None)
    np.testing.assert_array_equal(one_pass.dissatisfaction.probs, per_model.dissatisfaction.probs)


def test_read_outputs_trusts_it_for_chinese_only(texts_and_result):
    texts, r = texts_and_result
    out = _outputs(texts, r)
    assert out.dissatisfaction.dtype == np.float64 and out.has_dissatisfaction.dtype == bool
    # Chinese complaint: used; English: not the model's language; Chinese thanks: used;
    # emoji only (no letters): the model may know them, used; the turn without text: nothing
    assert out.has_dissatisfaction.tolist() == [True, False, True, True, False]
    assert out.dissatisfaction[0] == pytest.approx(float(r.dissatisfaction.probs[0, 1]))
    assert out.dissatisfaction[0] > 0.5
    assert out.dissatisfaction[1] == 0.0 and out.dissatisfaction[4] == 0.0


def test_without_the_model_the_fields_stay_none(texts_and_result):
    texts, r = texts_and_result
    out = _outputs(texts, SimpleNamespace(sentiment=r.sentiment, intent=r.intent, emotion=r.emotion))
    assert out.dissatisfaction is None and out.has_dissatisfaction is None
    assert out.emotion_id is not None


def _items(texts):
    items = []
    for k, text in enumerate(texts):
        t = pb.Turn(session_id="s", turn_id=str(k), speaker=pb.CUSTOMER, text=text)
        items.append(PendingTurn(turn=t, key=("t", "s"), idem=("t", "s", str(k)), ts_ms=1000 * k, now_ms=1000 * k))
    return items


def _same_scores(a, b):
    assert (a.model_name, a.model_version, a.labels, a.served_by, a.languages) == \
        (b.model_name, b.model_version, b.labels, b.served_by, b.languages)
    np.testing.assert_array_equal(a.probs, b.probs)


def test_the_turn_log_records_and_replays_it(texts_and_result):
    texts, r = texts_and_result
    back = decode_batch(encode_batch(_items(texts), r))
    for role in ("sentiment", "intent", "emotion", "dissatisfaction"):
        _same_scores(getattr(back.result, role), getattr(r, role))
    assert [it.turn.text for it in back.items] == texts


def _without_flag(payload: bytes, flag: str) -> bytes:
    """A ``T`` record as a version without ``flag`` in its header wrote it."""
    (hlen,) = struct.unpack_from("<I", payload, 1)
    header = json.loads(payload[5:5 + hlen])
    assert header["result"].pop(flag) is False
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return payload[:1] + struct.pack("<I", len(head)) + head + payload[5 + hlen:]


def test_an_older_record_without_it_still_replays(texts_and_result):
    texts, r = texts_and_result
    old = SimpleNamespace(sentiment=r.sentiment, intent=r.intent, emotion=r.emotion, dissatisfaction=None,
                          served_by=r.served_by, degraded=r.degraded)
    back = decode_batch(_without_flag(encode_batch(_items(texts), old), "dissatisfaction"))
    assert back.result.dissatisfaction is None
    _same_scores(back.result.emotion, r.emotion)
    _same_scores(back.result.intent, r.intent)
    out = _outputs(texts, back.result)
    assert out.dissatisfaction is None and out.has_dissatisfaction is None
    # with the model but without emotion (--emotion-model ''): the flags keep them apart
    no_emotion = SimpleNamespace(sentiment=r.sentiment, intent=r.intent, emotion=None,
                                 dissatisfaction=r.dissatisfaction, served_by=r.served_by, degraded=r.degraded)
    back = decode_batch(encode_batch(_items(texts), no_emotion))
    assert back.result.emotion is None
    _same_scores(back.result.dissatisfaction, r.dissatisfaction)
