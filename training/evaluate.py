"""Evaluation of text models on the deterministic test splits.

Metrics per test subset (one per data file) and per language: accuracy, macro-F1, the
confusion matrix and the most frequent confusions, plus throughput in texts/s on one core.

Chinese sentiment data is binary (negative/positive, no neutral), while the model has
three outputs. Those subsets are scored as ``argmax(p_negative, p_positive)`` (the
"binary" decision, the headline figure); how often the 3-way argmax says ``neutral`` on
them is reported beside it as ``neutral_rate``, and the 3-way accuracy as ``accuracy_3way``.

The scorer is any callable ``texts -> probabilities`` so the same code measures the
in-process model and the model behind Triton (:func:`triton_scorer`).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

from yujing.training.data import Dataset, Subset

Scorer = Callable[[Sequence[str]], np.ndarray]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def macro_f1(cm: np.ndarray, present_only: bool = True) -> float:
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(pred > 0, tp / pred, 0.0)
        r = np.where(support > 0, tp / support, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    keep = support > 0 if present_only else np.ones_like(support, bool)
    return float(f[keep].mean()) if keep.any() else 0.0


def top_confusions(cm: np.ndarray, labels: Sequence[str], k: int = 5) -> list[dict]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        out.append({"true": labels[t], "pred": labels[p], "count": int(off[t, p])})
    return out


def decide(scores: np.ndarray, among: Sequence[int] | None = None) -> np.ndarray:
    """The label index each row of ``scores`` (probabilities or logits) is given: the argmax
    over all labels, or, for a binary set scored by a model with more labels, the argmax over
    the label indices ``among`` only (a tie goes to the first of them). The one decision rule
    of the test metrics and of the fine-tuning's per-epoch validation."""
    if among is None:
        return scores.argmax(axis=1)
    among = np.asarray(among)
    return among[scores[:, among].argmax(axis=1)]


def score_subset(probs: np.ndarray, subset: Subset, labels: Sequence[str]) -> dict:
    labels = list(labels)
    y = np.array([labels.index(l) for l in subset.labels], np.int64)
    pred3 = decide(probs)
    res: dict = {"name": subset.name, "lang": subset.lang, "n": int(len(y))}
    if subset.binary and "neutral" in labels:
        keep = [labels.index("negative"), labels.index("positive")]
        pred = decide(probs, keep)
        cm = confusion(y, pred, len(labels))[np.ix_(keep, keep)]
        res.update({
            "decision": "binary argmax(negative, positive)",
            "accuracy": float((pred == y).mean()),
            "macro_f1": macro_f1(cm),
            "accuracy_3way": float((pred3 == y).mean()),
            "neutral_rate": float((pred3 == labels.index("neutral")).mean()),
            "confusion_labels": [labels[i] for i in keep],
            "confusion": cm.tolist(),
            "top_confusions": top_confusions(cm, [labels[i] for i in keep]),
        })
    else:
        cm = confusion(y, pred3, len(labels))
        res.update({
            "decision": "argmax over all labels",
            "accuracy": float((pred3 == y).mean()),
            "macro_f1": macro_f1(cm),
            "top_confusions": top_confusions(cm, labels),
        })
        if len(labels) <= 5:
            res["confusion_labels"] = labels
            res["confusion"] = cm.tolist()
    return res


def _aggregate(rows: list[dict]) -> dict:
    n = sum(r["n"] for r in rows)
    return {"n": n,
            "accuracy": sum(r["accuracy"] * r["n"] for r in rows) / max(n, 1),
            "macro_f1_mean": float(np.mean([r["macro_f1"] for r in rows])) if rows else 0.0,
            "subsets": [r["name"] for r in rows]}


def throughput(scorer: Scorer, texts: Sequence[str], batch_sizes=(1, 32, 256),
               max_texts: int = 4000, min_seconds: float = 0.5) -> dict:
    """texts/s for each batch size (wall clock, on the calling thread)."""
    texts = list(texts)[:max_texts]
    out = {}
    scorer(texts[:8])  # warm-up (JIT compile, caches)
    for bs in batch_sizes:
        batches = [texts[k:k + bs] for k in range(0, len(texts), bs)]
        n_done = 0
        t0 = time.perf_counter()
        el = 0.0
        while el < min_seconds:
            for b in batches:
                scorer(b)
                n_done += len(b)
                if n_done % 256 < len(b) and time.perf_counter() - t0 >= min_seconds:
                    break
            el = time.perf_counter() - t0
        out[str(bs)] = round(n_done / el, 1)
    return out


def evaluate(scorer: Scorer, ds: Dataset, labels: Sequence[str] | None = None,
             batch: int = 1024, subsets: list[Subset] | None = None) -> dict:
    """Metrics of ``scorer`` on ``ds.test`` (or the given subsets)."""
    labels = tuple(labels or ds.labels)
    rows = []
    for s in subsets or ds.test:
        probs = np.concatenate([np.asarray(scorer(s.texts[k:k + batch]), np.float32)
                                for k in range(0, len(s.texts), batch)] or
                               [np.zeros((0, len(labels)), np.float32)])
        if probs.shape != (len(s.texts), len(labels)):
            raise ValueError(f"scorer returned {probs.shape} for {len(s.texts)} texts and {len(labels)} labels")
        rows.append(score_subset(probs, s, labels))
    langs = sorted({r["lang"] for r in rows})
    return {"model": ds.model, "labels": list(labels), "subsets": rows,
            "languages": {lg: _aggregate([r for r in rows if r["lang"] == lg]) for lg in langs},
            "overall": _aggregate(rows)}


def triton_scorer(url: str, model: str, timeout_s: float = 60.0) -> Scorer:
    """A synchronous scorer sending texts to Triton over gRPC (one request per max batch).
    The texts go in order of length and the answers come back in the caller's order: a
    transformer pads each request to its longest text, so this sends far less padding than
    the caller's order would (rows are scored independently; the result does not change)."""
    import tritonclient.grpc as grpcclient

    from yujing.service.models import TRITON_INPUT, TRITON_OUTPUT

    client = grpcclient.InferenceServerClient(url=url)
    cfg = client.get_model_config(model, as_json=True)["config"]
    max_bs = int(cfg.get("max_batch_size", 0) or 1024)

    def score(texts: Sequence[str]) -> np.ndarray:
        outs = []
        order = np.argsort([len(t) for t in texts], kind="stable")
        texts = [texts[i] for i in order]
        for k in range(0, len(texts), max_bs):
            chunk = texts[k:k + max_bs]
            arr = np.array([[t.encode("utf-8")] for t in chunk], dtype=object)
            inp = grpcclient.InferInput(TRITON_INPUT, list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            res = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(TRITON_OUTPUT)],
                               client_timeout=timeout_s)
            outs.append(res.as_numpy(TRITON_OUTPUT).astype(np.float32))
        if not outs:
            return np.zeros((0, 0), np.float32)
        z = np.concatenate(outs)
        probs = np.empty_like(z)
        probs[order] = z
        return probs

    return score


def limit_threads() -> None:
    """Pin numba/BLAS to one thread so throughput is per core."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
