"""The committed hashed n-gram models: loading, probabilities, determinism, odd inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from yujing.service.models import TextModel
from yujing.service.models.artifact import ArtifactError, load_model, read_meta
from yujing.service.models.textclf import KIND, FeatureConfig, hash_features

REPO = Path(__file__).resolve().parents[1]
MODELS = ("sentiment", "emotion", "intent", "intent_banking77", "intent_banking77_minilm")
MAX_BYTES = 25 * 1024 * 1024

TEXTS = [
    "I have been waiting for two hours, this is ridiculous!",
    "thanks, that was really helpful :)",
    "我要投诉，你们的服务太差了",
    "谢谢，客服态度很好",
    "my card 还没到 and nobody answers 电话",
    "",
    "   ",
    "🙂🙂🙂",
    "where is my refund",
    "x" * 50_000,
    "很好" * 20_000,
    "\x00\ufeff\u200b odd \u2028 chars",
]


def artifact(name: str) -> Path:
    """The newest version's artifact (what Triton and the service serve)."""
    versions = sorted((d for d in (REPO / "model_repo" / name).iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    return versions[-1] / "artifact"


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return load_model(artifact(request.param))


def test_artifact_metadata_and_size():
    for name in MODELS:
        art = artifact(name)
        meta = read_meta(art)
        assert meta["kind"] == KIND and meta["name"] == name
        for key in ("training_command", "data_files", "split_rule", "metrics", "created"):
            assert meta.get(key), f"{name}: model.json lacks {key}"
        assert all(len(f["sha256"]) == 64 for f in meta["data_files"])
        size = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
        assert size < MAX_BYTES, f"{name}: {size} bytes"
        labels_txt = (REPO / "model_repo" / name / "labels.txt").read_text(encoding="utf-8").split("\n")
        assert [l for l in labels_txt if l] == meta["labels"]


def test_label_sets():
    assert load_model(artifact("sentiment")).labels == ("negative", "neutral", "positive")
    assert load_model(artifact("emotion")).labels == ("neutral", "angry", "anxious", "sad", "happy")
    assert len(load_model(artifact("intent")).labels) == 28 and load_model(artifact("intent")).labels[-1] == "none"
    assert len(load_model(artifact("intent_banking77")).labels) == 77


def test_protocol_shape_and_normalisation(model):
    assert isinstance(model, TextModel)
    p = model.predict_proba(TEXTS)
    assert p.dtype == np.float32 and p.shape == (len(TEXTS), len(model.labels))
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert model.predict_proba([]).shape == (0, len(model.labels))


def test_deterministic_and_batch_independent(model):
    a = model.predict_proba(TEXTS)
    b = model.predict_proba(TEXTS)
    np.testing.assert_array_equal(a, b)
    singles = np.concatenate([model.predict_proba([t]) for t in TEXTS])
    np.testing.assert_allclose(a, singles, atol=1e-6)
    again = load_model(artifact(model.name)).predict_proba(TEXTS)
    np.testing.assert_array_equal(a, again)


def test_version_override():
    assert load_model(artifact("intent"), version="7").version == "7"


def test_sentiment_sanity():
    m = load_model(artifact("sentiment"))
    p = m.predict_proba(["worst airline ever, lost my bag and nobody helps",
                         "thank you so much, great crew and smooth flight!",
                         "太差了，再也不会买了", "非常好，物流很快，下次还来"])
    neg, pos = m.labels.index("negative"), m.labels.index("positive")
    assert p[0].argmax() == neg and p[2].argmax() == neg
    assert p[1].argmax() == pos and p[3].argmax() == pos


def test_intent_sanity():
    m = load_model(artifact("intent"))
    p = m.predict_proba(["I want to cancel my order", "where is my refund?"])
    assert m.labels[p[0].argmax()] == "cancel_order"
    assert m.labels[p[1].argmax()] in ("get_refund", "track_refund")
    b = load_model(artifact("intent_banking77"))
    assert b.labels[b.predict_proba(["my card still has not arrived"])[0].argmax()] == "card_arrival"


def test_hashing_is_stable():
    # the bucket ids are part of the artifact format: they must not change between runs
    ptr, idx, cnt = hash_features(["Hello, 世界!"], FeatureConfig(hash_bits=20))
    assert ptr.tolist() == [0, len(idx)] and cnt.sum() >= len(idx)
    ptr2, idx2, _ = hash_features(["Hello, 世界!"], FeatureConfig(hash_bits=20))
    assert idx.tolist() == idx2.tolist()
    # case, full-width forms and digits are folded
    a = hash_features(["ＡＢＣ 123"], FeatureConfig())[1].tolist()
    b = hash_features(["abc 999"], FeatureConfig())[1].tolist()
    assert a == b


def test_broken_artifact(tmp_path):
    art = tmp_path / "a"
    art.mkdir()
    meta = read_meta(artifact("intent"))
    (art / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ArtifactError):
        load_model(art)  # weights.npz missing


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_save_load_roundtrip_all_head_kinds(tmp_path, dtype):
    from yujing.service.models.textclf import HashedNgramClassifier, Head

    rng = np.random.default_rng(0)
    cfg = FeatureConfig(hash_bits=12)
    labels = ("a", "b", "c")
    buckets = np.sort(rng.choice(1 << 12, 500, replace=False))
    idf = rng.uniform(1, 3, 500).astype(np.float32)
    heads = [Head("linear", 1.0, {"W": rng.normal(size=(500, 3)), "b": np.zeros(3)}),
             Head("mlp", 0.5, {"W1": rng.normal(size=(500, 8)), "b1": np.zeros(8),
                               "W2": rng.normal(size=(8, 3)), "b2": np.ones(3)})]
    m = HashedNgramClassifier("toy", labels, cfg, buckets, idf, heads)
    m.save(tmp_path / "art", {"version": "3"}, dtype=dtype)
    m2 = load_model(tmp_path / "art")
    assert m2.labels == labels and m2.version == "3"
    texts = ["hello world", "你好", "", "the quick brown fox jumps"]
    p, p2 = m.predict_proba(texts), m2.predict_proba(texts)
    np.testing.assert_allclose(p2.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, p2, atol=0.05)
