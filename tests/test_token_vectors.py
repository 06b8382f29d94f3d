"""Pooled pretrained token vectors (service/models/token_vectors.py) and the models that use them.

The pooling kernel is checked against plain NumPy on a real ``tokenizers`` tokenizer (a small
word-level one built here), the artifact round trip with both storage types, and the
committed intent_banking77 against its own weights read by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from yujing.service.models.artifact import ArtifactError, load_model, read_meta
from yujing.training.pretrained import read_safetensors
from yujing.service.models.textclf import FeatureConfig, HashedNgramClassifier, Head
from yujing.service.models.token_vectors import TokenVectors

REPO = Path(__file__).resolve().parents[1]
WORDS = ["[UNK]", "my", "card", "has", "not", "arrived", "where", "is", "refund", "the", "still"]


def word_tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok.to_str()


def reference_pool(id_lists, table, scale):
    out = np.zeros((len(id_lists), 2 * table.shape[1]))
    for i, ids in enumerate(id_lists):
        if not ids:
            continue
        rows = table[ids].astype(np.float64)
        mean, mx = rows.mean(0), rows.max(0)
        out[i, :table.shape[1]] = scale * mean / np.linalg.norm(mean)
        out[i, table.shape[1]:] = scale * mx / np.linalg.norm(mx)
    return out


@pytest.fixture(scope="module")
def tv():
    rng = np.random.default_rng(1)
    return TokenVectors(word_tokenizer_json(), rng.normal(size=(len(WORDS), 6)), scale=0.7)


def test_pooling_matches_numpy(tv):
    texts = ["my card has not arrived", "where is the refund", "", "card card card",
             "zebra", "   ", "still not arrived arrived"]
    ids, ptr = tv.token_ids(texts)
    id_lists = [ids[ptr[i]:ptr[i + 1]].tolist() for i in range(len(texts))]
    assert id_lists[0] == [1, 2, 3, 4, 5] and id_lists[2] == [] and id_lists[4] == [0]
    got = tv.encode(texts)
    assert got.shape == (len(texts), tv.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_pool(id_lists, tv.table, 0.7), atol=1e-5)
    assert not got[2].any() and not got[5].any()           # no token: zeros, not NaN


def test_long_texts_are_clipped_and_token_capped():
    t = TokenVectors(word_tokenizer_json(), np.eye(len(WORDS)), max_tokens=4, max_chars=40)
    ids, ptr = t.token_ids(["my " * 30 + "refund"])
    assert ptr.tolist() == [0, 4]                           # at most max_tokens tokens
    ids, _ = t.token_ids(["card " * 30 + "refund"])
    assert ids.tolist() == [2, 2, 2, 2]
    ids, ptr = TokenVectors(word_tokenizer_json(), np.eye(len(WORDS)), max_chars=40).token_ids(
        ["card " * 30 + "refund"])
    assert ids[-1] == WORDS.index("refund")                 # the tail is kept when clipping


def test_table_smaller_than_vocabulary_is_refused():
    with pytest.raises(ValueError, match="tokenizer has"):
        TokenVectors(word_tokenizer_json(), np.zeros((3, 4)))


def toy_model(tv, heads_kind="linear"):
    rng = np.random.default_rng(0)
    cfg = FeatureConfig(hash_bits=12)
    buckets = np.sort(rng.choice(1 << 12, 300, replace=False))
    idf = rng.uniform(1, 3, 300).astype(np.float32)
    rows = 300 + tv.dim
    if heads_kind == "linear":
        heads = [Head("linear", 1.0, {"W": rng.normal(size=(rows, 3)), "b": rng.normal(size=3)})]
    else:
        heads = [Head("mlp", 1.0, {"W1": rng.normal(size=(rows, 5)), "b1": np.zeros(5),
                                   "W2": rng.normal(size=(5, 3)), "b2": np.zeros(3)})]
    return HashedNgramClassifier("toy", ("a", "b", "c"), cfg, buckets, idf, heads, vectors=tv)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_dense_block_meets_the_last_rows_of_the_first_matrix(tv, kind):
    m = toy_model(tv, kind)
    texts = ["my card has not arrived", "where is the refund ?", ""]
    ptr, cols, vals = m.features(texts)
    x = np.zeros((len(texts), len(m.buckets)))
    for i in range(len(texts)):
        x[i, cols[ptr[i]:ptr[i + 1]]] = vals[ptr[i]:ptr[i + 1]]
    full = np.hstack([x, tv.encode(texts)])
    p = m.heads[0].params
    if kind == "linear":
        want = full @ p["W"] + p["b"]
    else:
        want = np.maximum(full @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]
    np.testing.assert_allclose(m.logits(texts), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("int8", 2e-2)])
def test_artifact_roundtrip_with_vectors(tmp_path, tv, dtype, tol):
    m = toy_model(tv)
    m.save(tmp_path / "art", {"version": "2", "token_vectors": {"provenance": {"source": "test"}}},
           dtype=dtype)
    meta = read_meta(tmp_path / "art")
    assert meta["token_vectors"]["provenance"] == {"source": "test"}
    assert meta["token_vectors"]["dim"] == tv.table.shape[1]
    m2 = load_model(tmp_path / "art")
    assert m2.vectors is not None and m2.version == "2"
    texts = ["my card has not arrived", "refund", "where is my card", ""]
    np.testing.assert_allclose(m2.predict_proba(texts), m.predict_proba(texts), atol=tol)

    (tmp_path / "art" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        load_model(tmp_path / "art")


def test_head_not_matching_the_features_is_refused(tv):
    m = toy_model(tv)
    with pytest.raises(ArtifactError, match="input rows"):
        HashedNgramClassifier("toy", m.labels, m.cfg, m.buckets, m.idf, m.heads, vectors=None)


def test_read_safetensors_roundtrip():
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    b = np.linspace(0, 1, 5, dtype=np.float32)
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F16", "shape": [3, 4], "data_offsets": [0, a.nbytes]},
              "b": {"dtype": "F32", "shape": [5], "data_offsets": [a.nbytes, a.nbytes + b.nbytes]}}
    h = json.dumps(header).encode()
    blob = len(h).to_bytes(8, "little") + h + a.tobytes() + b.tobytes()
    got = read_safetensors(blob)
    assert sorted(got) == ["a", "b"]
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)


def test_committed_banking77_uses_the_vectors():
    art = REPO / "model_repo" / "intent_banking77" / "1" / "artifact"
    m = load_model(art)
    meta = read_meta(art)
    assert m.vectors is not None and m.vectors.dim == 512
    assert len(meta["token_vectors"]["provenance"]["sha256"]) == 64
    # the dense block matters: without it the same head gives other logits
    texts = ["my card still has not arrived", "I was charged twice for one purchase"]
    ptr, cols, vals = m.features(texts)
    sparse_only = m.heads[0].logits(ptr, cols, vals, None)
    assert np.abs(m.logits(texts) - sparse_only).max() > 0.1
    assert m.labels[m.predict_proba(texts)[0].argmax()] == "card_arrival"
