"""The NumPy sentence encoder (service/models/sentence_encoder.py).

* On a tiny random BERT it equals a plain per-token reference written here from the
  architecture's definition (loops, no batching, no padding).
* The committed intent_banking77_minilm carries all-MiniLM-L6-v2 (int8): its vectors match
  the reference implementation's (Hugging Face ``BertModel``, fixture made once, see
  ``tests/fixtures/minilm_reference.json``) to cosine >= 0.995, token ids exactly.
* Batching and padding do not change a text's vector.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from yujing.service.models.artifact import load_model, read_meta
from yujing.service.models.sentence_encoder import SentenceEncoder, _gelu, token_ids

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "minilm_reference.json"
WORDS = ["[PAD]", "[UNK]", "my", "card", "has", "not", "arrived", "where", "is", "refund", "the", "still"]


def word_tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok.to_str()


def random_bert(rng, vocab=len(WORDS), hidden=8, heads=2, layers=2, inter=16, positions=32):
    w = {"embeddings.word_embeddings.weight": rng.normal(size=(vocab, hidden)),
         "embeddings.position_embeddings.weight": rng.normal(size=(positions, hidden)),
         "embeddings.token_type_embeddings.weight": rng.normal(size=(2, hidden)),
         "embeddings.LayerNorm.weight": rng.uniform(0.5, 1.5, hidden),
         "embeddings.LayerNorm.bias": rng.normal(size=hidden) * 0.1}
    for l in range(layers):
        p = f"encoder.layer.{l}."
        for name, (o, i) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                             "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                             "intermediate.dense": (inter, hidden), "output.dense": (hidden, inter)}.items():
            w[p + name + ".weight"] = rng.normal(size=(o, i)) / math.sqrt(i)
            w[p + name + ".bias"] = rng.normal(size=o) * 0.1
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"] = rng.uniform(0.5, 1.5, hidden)
            w[p + name + ".bias"] = rng.normal(size=hidden) * 0.1
    return {k: v.astype(np.float32) for k, v in w.items()}


def reference_vector(w, ids, heads, layers, eps=1e-12):
    """One text, token by token, in float64, straight from the definition of BERT."""
    def ln(v, g, b):
        m = sum(v) / len(v)
        var = sum((x - m) ** 2 for x in v) / len(v)
        return [(x - m) / math.sqrt(var + eps) * gg + bb for x, gg, bb in zip(v, g, b)]

    def lin(v, name):
        W, b = w[name + ".weight"], w[name + ".bias"]
        return [sum(W[o, i] * v[i] for i in range(len(v))) + b[o] for o in range(W.shape[0])]

    H = w["embeddings.word_embeddings.weight"].shape[1]
    hd = H // heads
    xs = [ln([w["embeddings.word_embeddings.weight"][t, j] + w["embeddings.position_embeddings.weight"][p, j]
              + w["embeddings.token_type_embeddings.weight"][0, j] for j in range(H)],
             w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]) for p, t in enumerate(ids)]
    for l in range(layers):
        p = f"encoder.layer.{l}."
        q = [lin(x, p + "attention.self.query") for x in xs]
        k = [lin(x, p + "attention.self.key") for x in xs]
        v = [lin(x, p + "attention.self.value") for x in xs]
        new = []
        for a in range(len(xs)):
            ctx = [0.0] * H
            for h in range(heads):
                sl = range(h * hd, (h + 1) * hd)
                scores = [sum(q[a][j] * k[b][j] for j in sl) / math.sqrt(hd) for b in range(len(xs))]
                top = max(scores)
                ex = [math.exp(s - top) for s in scores]
                for b in range(len(xs)):
                    for j in sl:
                        ctx[j] += ex[b] / sum(ex) * v[b][j]
            att = lin(ctx, p + "attention.output.dense")
            y = ln([x + d for x, d in zip(xs[a], att)], w[p + "attention.output.LayerNorm.weight"],
                   w[p + "attention.output.LayerNorm.bias"])
            f = [0.5 * z * (1 + math.erf(z / math.sqrt(2))) for z in lin(y, p + "intermediate.dense")]
            f = lin(f, p + "output.dense")
            new.append(ln([x + d for x, d in zip(y, f)], w[p + "output.LayerNorm.weight"],
                          w[p + "output.LayerNorm.bias"]))
        xs = new
    mean = [sum(x[j] for x in xs) / len(xs) for j in range(H)]
    n = math.sqrt(sum(m * m for m in mean))
    return np.array([m / n for m in mean])


def test_gelu_matches_erf():
    x = np.linspace(-6, 6, 2001).astype(np.float32)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(_gelu(x), want, atol=2e-6)


def test_tiny_random_bert_matches_the_plain_reference():
    rng = np.random.default_rng(3)
    w = random_bert(rng)
    enc = SentenceEncoder(word_tokenizer_json(), w, layers=2, heads=2, scale=2.0)
    texts = ["my card has not arrived", "where is the refund", "card", "still still still not",
             "zebra card"]
    got = enc.encode(texts)
    ids, _ = [e.ids for e in enc.tokenizer.encode_batch(texts)], None
    for i, t in enumerate(texts):
        np.testing.assert_allclose(got[i], 2.0 * reference_vector(w, ids[i], 2, 2), atol=2e-5, err_msg=t)
    # an empty text has no token: a zero vector, not NaN
    assert not enc.encode([""]).any()


def test_batching_and_padding_do_not_change_a_vector():
    rng = np.random.default_rng(4)
    enc = SentenceEncoder(word_tokenizer_json(), random_bert(rng), layers=2, heads=2)
    texts = ["my card", "where is the refund my card has not arrived still", "card"] * 30
    together = enc.encode(texts)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_texts_keep_head_and_tail_when_asked(tmp_path):
    from tokenizers import Tokenizer
    rng = np.random.default_rng(5)
    w = random_bert(rng)
    words = WORDS[2:]
    long_text = " ".join(words[i % len(words)] for i in range(40))      # 40 tokens
    all_ids = Tokenizer.from_str(word_tokenizer_json()).encode(long_text).ids
    # head + tail: the first 3 tokens and the last 5
    tail = SentenceEncoder(word_tokenizer_json(), w, layers=2, heads=2, max_tokens=8, head_tokens=3)
    assert token_ids(tail.tokenizer, [long_text, "my card"], 8, 3) == [all_ids[:3] + all_ids[-5:], all_ids[:2]]
    np.testing.assert_allclose(tail.encode([long_text])[0],
                               reference_vector(w, all_ids[:3] + all_ids[-5:], 2, 2), atol=2e-5)
    # the default: the first 8 (the tokenizer's own truncation)
    head = SentenceEncoder(word_tokenizer_json(), w, layers=2, heads=2, max_tokens=8)
    np.testing.assert_allclose(head.encode([long_text])[0], reference_vector(w, all_ids[:8], 2, 2), atol=2e-5)
    # the choice is part of the artifact's meta and comes back on load
    assert tail.meta()["head_tokens"] == 3 and head.meta()["head_tokens"] == 0
    tail.save(tmp_path)
    back = SentenceEncoder.load(tmp_path, tail.meta(), tail.arrays())
    np.testing.assert_allclose(back.encode([long_text]), tail.encode([long_text]), atol=1e-6)
    with pytest.raises(ValueError, match="head_tokens"):
        token_ids(tail.tokenizer, [long_text], 8, 8)


@pytest.fixture(scope="module")
def committed():
    return load_model(REPO / "model_repo" / "intent_banking77_minilm" / "1" / "artifact")


def test_committed_encoder_matches_the_reference_implementation(committed):
    ref = json.loads(FIXTURE.read_text(encoding="utf-8"))
    enc = committed.encoder
    assert enc is not None and enc.dim == 384 and enc.layers == 6
    ids = [e.ids for e in enc.tokenizer.encode_batch(ref["texts"])]
    assert ids == ref["ids"]
    got = enc.encode(ref["texts"]) / enc.scale
    want = np.array(ref["embeddings"])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.995, cos          # int8 weights: close, not equal


def test_committed_model_card_and_sanity(committed):
    meta = read_meta(REPO / "model_repo" / "intent_banking77_minilm" / "1" / "artifact")
    prov = meta["sentence_encoder"]["provenance"]
    assert len(prov["sha256"]) == 64 and prov["parameters"] > 20_000_000
    assert meta["languages"] == ["en"]
    p = committed.predict_proba(["my card still has not arrived", "I was charged twice for one purchase"])
    assert committed.labels[p[0].argmax()] == "card_arrival"
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_without_cupy_a_gpu_instance_keeps_the_encoder_on_the_cpu(committed):
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: this checks the fallback without it")
    except Exception:
        pass
    texts = ["my card still has not arrived"]
    before = committed.predict_proba(texts)
    committed.use_device("KIND_GPU", 0)       # what Triton's KIND_GPU instance does
    assert committed.encoder.xp is np
    np.testing.assert_array_equal(committed.predict_proba(texts), before)
