"""yujing.service.models.lexicon: the last-resort sentiment and intent models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from yujing.service.models import TextModel
from yujing.service.models.artifact import ArtifactError, load_model
from yujing.service.models.lexicon import (
    INTENT_LABELS,
    SENTIMENT_LABELS,
    LexiconIntent,
    LexiconSentiment,
    write_artifact,
)


@pytest.fixture(scope="module")
def sentiment() -> LexiconSentiment:
    return LexiconSentiment()


@pytest.fixture(scope="module")
def intent() -> LexiconIntent:
    return LexiconIntent()


def label_of(model, text: str) -> str:
    return model.labels[int(model.predict_proba([text])[0].argmax())]


def write_meta(path, meta: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return path


# --- the TextModel contract -------------------------------------------------------------

@pytest.mark.parametrize("factory", [LexiconSentiment, LexiconIntent])
def test_text_model_protocol(factory):
    model = factory()
    assert isinstance(model, TextModel)
    assert isinstance(model.name, str) and isinstance(model.version, str)
    texts = ["", "谢谢", "I want a refund!!!", "转人工", "x" * 20_000, "😡"]
    p = model.predict_proba(texts)
    assert p.dtype == np.float32 and p.shape == (len(texts), len(model.labels))
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert model.predict_proba([]).shape == (0, len(model.labels))


def test_labels():
    assert LexiconSentiment().labels == ("negative", "neutral", "positive")
    labels = LexiconIntent().labels
    assert labels[-1] == "none"
    for name in ("complaint", "contact_human_agent", "contact_customer_service", "get_refund",
                 "cancel_order", "track_order", "payment_issue", "delete_account",
                 "change_order", "delivery_period", "check_invoice"):
        assert name in labels


# --- sentiment --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("谢谢，服务很好，非常满意", "positive"),
    ("客服很给力，问题解决了，感谢", "positive"),
    ("垃圾！太差了，骗子，气死我了", "negative"),
    ("等了三天还没收到，太失望了，我要投诉", "negative"),
    ("Thank you so much, the agent was great", "positive"),
    ("Perfect, that solved it. Thanks!", "positive"),
    ("This is ridiculous and unacceptable, worst service ever", "negative"),
    ("terrible experience, my flight was delayed and nobody helped", "negative"),
    ("请问发票怎么开", "neutral"),
    ("What time do you open tomorrow", "neutral"),
])
def test_polite_and_angry(sentiment, text, expected):
    assert label_of(sentiment, text) == expected


@pytest.mark.parametrize("text, expected", [
    ("我不满意", "negative"),
    ("满意", "positive"),
    ("不错", "positive"),
    ("还不错，挺好的", "positive"),
    ("不太好", "negative"),
    ("没问题，谢谢", "positive"),
    ("not bad", "positive"),
    ("not happy", "negative"),
    ("happy", "positive"),
    ("I am not happy with this at all", "negative"),
    ("not very helpful", "negative"),
    ("I don't like it", "negative"),
])
def test_negation(sentiment, text, expected):
    assert label_of(sentiment, text) == expected


def test_negation_window_stops_at_clause_break(sentiment):
    near, far = sentiment.polarity(["不，满意", "不满意"])
    assert near > 0 > far


def test_intensifiers_and_exclamations_strengthen(sentiment):
    plain, very, shouted = sentiment.polarity(["差", "非常差", "非常差！！！"])
    assert shouted < very < plain < 0
    plain, very = sentiment.polarity(["good", "very good"])
    assert very > plain > 0


def test_contrast_weighs_the_second_clause(sentiment):
    (p,) = sentiment.polarity(["The food was good but the delivery was terrible"])
    assert p < 0


def test_batch_equals_one_by_one(sentiment):
    texts = ["谢谢", "", "not bad", "太差了！", "ok"]
    batch = sentiment.polarity(texts)
    single = [sentiment.polarity([t])[0] for t in texts]
    np.testing.assert_allclose(batch, single)


def test_neutral_when_no_evidence(sentiment):
    p = sentiment.predict_proba(["", "订单号 123456"])
    assert (p.argmax(axis=1) == SENTIMENT_LABELS.index("neutral")).all()


# --- intent -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("我要取消订单", "cancel_order"),
    ("I need to cancel my order", "cancel_order"),
    ("我的快递到哪了", "track_order"),
    ("where is my package?", "track_order"),
    ("转人工", "contact_human_agent"),
    ("let me talk to a human agent", "contact_human_agent"),
    ("我要退款", "get_refund"),
    ("I want a refund", "get_refund"),
    ("where is my refund, what is the refund status", "track_refund"),
    ("支付失败了怎么办", "payment_issue"),
    ("I was charged twice", "payment_issue"),
    ("帮我注销账号", "delete_account"),
    ("please delete my account", "delete_account"),
    ("我要投诉你们", "complaint"),
    ("I want to file a complaint", "complaint"),
    ("忘记密码了", "recover_password"),
    ("how long does delivery take", "delivery_period"),
    ("I need to change my order", "change_order"),
    ("客服电话是多少", "contact_customer_service"),
    ("can I check my invoice", "check_invoice"),
    ("hello", "none"),
    ("今天天气不错", "none"),
])
def test_intents(intent, text, expected):
    assert label_of(intent, text) == expected


def test_no_cue_is_confidently_none(intent):
    p = intent.predict_proba(["hello there"])[0]
    assert p[intent.labels.index("none")] > 0.7


# --- artifacts --------------------------------------------------------------------------

def test_load_sentiment_artifact(tmp_path):
    write_meta(tmp_path / "s", {"kind": "lexicon", "name": "sentiment",
                                "labels": ["positive", "negative", "neutral"], "version": "7"})
    model = load_model(tmp_path / "s")
    assert isinstance(model, LexiconSentiment)
    assert model.name == "sentiment" and model.version == "7"
    assert model.labels == ("positive", "negative", "neutral")
    p = model.predict_proba(["太差了", "谢谢"])
    assert p[0].argmax() == 1 and p[1].argmax() == 0      # columns follow model.json


def test_load_version_override_and_extra_terms(tmp_path):
    write_artifact(tmp_path / "s", "sentiment", terms={"拉胯": -2.0, "lifesaver": 2.0})
    model = load_model(tmp_path / "s", version="42")
    assert model.version == "42"
    assert label_of(model, "真拉胯") == "negative"
    assert label_of(model, "you are a lifesaver") == "positive"


def test_load_intent_artifact_with_label_subset(tmp_path):
    labels = ["get_refund", "cancel_order", "none"]
    write_meta(tmp_path / "i", {"kind": "lexicon", "name": "intent", "task": "intent",
                                "labels": labels})
    model = load_model(tmp_path / "i")
    assert isinstance(model, LexiconIntent) and model.labels == tuple(labels)
    p = model.predict_proba(["我要退款", "转人工", "cancel my order"])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [labels[i] for i in p.argmax(axis=1)] == ["get_refund", "none", "cancel_order"]


def test_load_intent_artifact_with_extra_cues(tmp_path):
    write_artifact(tmp_path / "i", "intent", cues={"track_order": {"包裹呢": 1.5}})
    model = load_model(tmp_path / "i")
    assert model.labels == INTENT_LABELS
    assert label_of(model, "我的包裹呢") == "track_order"


@pytest.mark.parametrize("meta", [
    {"kind": "lexicon", "name": "s", "task": "sentiment", "labels": ["neg", "pos"]},
    {"kind": "lexicon", "name": "i", "task": "intent", "labels": ["get_refund"]},
    {"kind": "lexicon", "name": "i", "task": "intent", "labels": ["fly_to_mars", "none"]},
    {"kind": "lexicon", "name": "x", "task": "translation", "labels": ["none"]},
    {"kind": "lexicon", "name": "i", "task": "intent", "labels": ["none"],
     "cues": {"fly_to_mars": {"火星": 1.0}}},
])
def test_bad_artifacts_raise_artifact_error(tmp_path, meta):
    write_meta(tmp_path / "bad", meta)
    with pytest.raises(ArtifactError):
        load_model(tmp_path / "bad")
