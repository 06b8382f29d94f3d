"""predict_heads (one featurisation pass for several models) against each model's own
predict_proba, and the in-process router with and without the combined pass."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from yujing.service.models import textclf
from yujing.service.models.artifact import load_model
from yujing.service.models.lexicon import LexiconSentiment
from yujing.service.models.multihead import predict_heads, shares_features
from yujing.service.triton.client import serving_version
from yujing.service.triton.router import IN_PROCESS, ModelRouter
from tests.service_models import in_process_repo

TEXTS = ["你们的服务太差了，我要投诉！", "谢谢，问题解决了，很满意", "Thanks, that was great.",
         "I am angry, cancel my account 😡😡", "查一下账单", "", "ok", "where's my refund??? order #12345",
         "退订 " * 400, "Mixed 中文 and English, café naïve"]
DEFAULTS = ("sentiment", "emotion", "intent", "dissatisfaction")


@pytest.fixture(scope="module")
def defaults():
    repo = in_process_repo()
    return {m: load_model(repo / m / serving_version(repo, m) / "artifact", serving_version(repo, m))
            for m in DEFAULTS}


def test_the_default_models_share_one_featurisation(defaults):
    assert list(shares_features(defaults).values()) == [list(DEFAULTS)]


def test_every_head_equals_its_own_models_answer(defaults, monkeypatch):
    calls = []
    real = textclf.hash_features
    monkeypatch.setattr(textclf, "hash_features", lambda texts, cfg: calls.append(len(texts)) or real(texts, cfg))
    heads = predict_heads(defaults, TEXTS)
    assert calls == [len(TEXTS)]  # one pass over the texts for all four
    monkeypatch.setattr(textclf, "hash_features", real)
    assert list(heads) == list(DEFAULTS)
    for name, model in defaults.items():
        alone = model.predict_proba(TEXTS)
        assert heads[name].dtype == np.float32 and heads[name].shape == (len(TEXTS), len(model.labels))
        np.testing.assert_array_equal(heads[name], alone, err_msg=name)


def test_models_that_cannot_share_are_scored_on_their_own(defaults):
    other_cfg = load_model(in_process_repo() / "intent" / "1" / "artifact")
    other_cfg.cfg = replace(other_cfg.cfg, char_max=4)   # a different featurisation
    models = {"lexicon": LexiconSentiment(), "intent_v1": other_cfg, **defaults}
    groups = shares_features(models)
    assert sorted(map(sorted, groups.values())) == [["dissatisfaction", "emotion", "intent", "sentiment"],
                                                    ["intent_v1"]]
    heads = predict_heads(models, TEXTS)
    assert list(heads) == list(models)
    for name, model in models.items():
        np.testing.assert_array_equal(heads[name], model.predict_proba(TEXTS), err_msg=name)


def test_no_texts_give_empty_rows(defaults):
    heads = predict_heads(defaults, [])
    assert {m: p.shape for m, p in heads.items()} == {m: (0, len(defaults[m].labels)) for m in DEFAULTS}


def test_in_process_router_answers_the_same_with_and_without_the_combined_pass():
    async def classify(combined):
        async with ModelRouter(in_process_repo(), emotion_model="emotion", dissatisfaction_model="dissatisfaction",
                               combined_model=combined) as router:
            return await router.classify(TEXTS)

    one_pass, per_model = asyncio.run(classify("heads")), asyncio.run(classify(None))
    assert (one_pass.served_by, one_pass.degraded) == (per_model.served_by, per_model.degraded) == (IN_PROCESS, False)
    for a, b in ((one_pass.sentiment, per_model.sentiment), (one_pass.intent, per_model.intent),
                 (one_pass.emotion, per_model.emotion), (one_pass.dissatisfaction, per_model.dissatisfaction)):
        assert (a.model_name, a.model_version, a.labels, a.served_by, a.languages) == \
            (b.model_name, b.model_version, b.labels, b.served_by, b.languages)
        np.testing.assert_array_equal(a.probs, b.probs)


def test_bench_heads_measures_both_ways_side_by_side_in_process():
    """`yujing bench heads` (smoke, in-process): the two routers call as labelled, every
    batch size has both rows and their ratios."""
    from yujing.loadtest.bench.heads import bench_heads

    out = bench_heads(batches=(1, 16), seconds=0.05, triton=False)
    assert {m: r["model_calls_per_batch"] for m, r in out["in_process_routers"].items()} == \
        {"heads": 1, "per_model": 4}
    assert [row["heads"]["batch"] for row in out["in_process"]] == [1, 16]
    for row in out["in_process"]:
        assert row["heads"]["calls"] >= 1 and row["per_model"]["calls"] >= 1
        assert row["per_model_over_heads"]["p50"] > 0


def test_predict_requests_splits_one_call_by_request_and_isolates_a_failing_request():
    """The Python backends (per model and heads) score a Triton batch in one call and split
    the rows back by request; when that call fails, only the request that makes it fail
    gets an error, the others are still answered."""
    from yujing.service.triton.backend import predict_requests

    calls = []

    def predict(texts):
        calls.append(list(texts))
        if "poison" in texts:
            raise ValueError("cannot score")
        return np.array([[len(t), 1.0] for t in texts])

    errors = [None, None, None]
    out = predict_requests(predict, {0: ["a", "bb"], 2: ["ccc"]}, errors)
    assert len(calls) == 1 and errors == [None, None, None]
    np.testing.assert_array_equal(out[0], [[1, 1], [2, 1]])
    np.testing.assert_array_equal(out[2], [[3, 1]])

    def predict_heads(texts):
        rows = predict(texts)
        return {("sentiment", "1"): rows, ("intent", "2"): rows * 2}

    calls.clear()
    errors = [None, None, None]
    out = predict_requests(predict_heads, {0: ["a"], 1: ["poison", "x"], 2: ["dd"]}, errors)
    assert len(calls) == 4                     # the joint call, then one per request
    assert set(out) == {0, 2} and errors[0] is None and errors[2] is None
    assert errors[1] == ("ValueError: cannot score", "INTERNAL")
    np.testing.assert_array_equal(out[2][("intent", "2")], [[4, 2]])
    assert predict_requests(predict, {}, errors) == {}
