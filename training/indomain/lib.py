"""Shared helpers: metrics (macro-F1, confusion, ECE), fitting on the repo's features,
bias offsets and temperature, artifact writing with the repo's writer."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


from yujing.training.data import Dataset, Subset  # noqa: E402
from yujing.service.models.textclf import FeatureConfig, HashedNgramClassifier, Head  # noqa: E402
from yujing.training import train as T  # noqa: E402


def log(msg):
    print(f"[indomain {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ metrics

def confusion(y, p, n):
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(y), np.asarray(p)), 1)
    return m


def macro_f1(cm, present_only=True):
    tp = np.diag(cm).astype(float)
    sup, pred = cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pr = np.where(pred > 0, tp / np.maximum(pred, 1), 0.0)
        rc = np.where(sup > 0, tp / np.maximum(sup, 1), 0.0)
        f = np.where(pr + rc > 0, 2 * pr * rc / np.maximum(pr + rc, 1e-12), 0.0)
    keep = sup > 0 if present_only else np.ones_like(sup, bool)
    return float(f[keep].mean())


def ece(probs, y, bins=15):
    conf = probs.max(1)
    pred = probs.argmax(1)
    acc = (pred == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            e += m.mean() * abs(acc[m].mean() - conf[m].mean())
    return float(e)


def nll(probs, y, sample_weight=None):
    return float(-np.average(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)), weights=sample_weight))


def class_balance(y, n_classes):
    """Per-class weights giving every class the same total (sklearn's class_weight="balanced")."""
    y = np.asarray(y)
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return len(y) / (n_classes * np.maximum(counts, 1))


def balanced_weights(y, n_classes):
    """Per-row weights of :func:`class_balance`."""
    return class_balance(y, n_classes)[np.asarray(y)]


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def without_temperature(probs, temp):
    """The probabilities a model calibrated with temperature ``temp`` gave before it (its
    log-probabilities times ``temp``, renormalised): the "before" of a calibration."""
    return softmax(np.log(np.clip(probs, 1e-30, 1)) * temp)


def fit_temperature(z, y, grid=None, sample_weight=None):
    """Temperature minimising NLL of softmax(z / T) on (z, y) (grid then golden refine);
    ``sample_weight``: per-row weights of the NLL (e.g. :func:`balanced_weights`)."""
    grid = grid if grid is not None else np.exp(np.linspace(np.log(0.2), np.log(5), 81))
    w = sample_weight
    losses = [nll(softmax(z / t), y, w) for t in grid]
    t0 = float(grid[int(np.argmin(losses))])
    lo, hi = t0 / 1.06, t0 * 1.06
    for _ in range(40):
        a, b = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        if nll(softmax(z / a), y, w) < nll(softmax(z / b), y, w):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


def score(probs, y, labels, among=None):
    """Metrics on label indices y; ``among``: restrict the argmax to these label indices."""
    n = len(labels)
    if among is not None:
        among = np.asarray(among)
        pred = among[probs[:, among].argmax(1)]
    else:
        pred = probs.argmax(1)
    cm = confusion(y, pred, n)
    out = {"n": int(len(y)), "accuracy": round(float((pred == y).mean()), 4), "macro_f1": round(macro_f1(cm), 4)}
    if among is not None:
        sub = cm[np.ix_(among, among)]
        out["macro_f1"] = round(macro_f1(sub), 4)
        out["decision"] = "argmax over " + ",".join(labels[i] for i in among)
        if n <= 5:
            out["confusion_labels"] = [labels[i] for i in among]
            out["confusion"] = sub.tolist()
    elif n <= 6:
        out["confusion_labels"] = list(labels)
        out["confusion"] = cm.tolist()
    return out


def sentiment_score(probs, y, labels=("negative", "neutral", "positive")):
    out = score(probs, y, labels)
    neu, neg = labels.index("neutral"), labels.index("negative")
    pred = probs.argmax(1)
    m = y == neu
    out["neutral_called_negative"] = round(float((pred[m] == neg).mean()), 4) if m.any() else None
    return out


# ------------------------------------------------------------------ training

def make_ds(name, labels, train_parts, langs=None):
    """train_parts: list of (subset_name, lang, items) -> Dataset (no test)."""
    subs = [Subset(n, lang, [x.text for x in items], [x.label for x in items]) for n, lang, items in train_parts]
    return Dataset(name, tuple(labels), subs, [], [], "")


def train(name, labels, parts, weights, heads, min_df=2, class_weight=None, features=None):
    """Fit with the repo's train_model; weights: per subset name; class_weight: per label multiplier."""
    ds = make_ds(name, labels, parts)
    recipe = {"features": features or T.NGRAMS, "min_df": min_df, "heads": heads,
              "subset_weight": {n: weights.get(n, 1.0) for n, _, _ in parts}}
    if class_weight:
        # fold class weights into per-example weights: split each subset by label is not needed,
        # patch sample_weights via a wrapper
        orig = T.sample_weights

        def sw(ds_, recipe_):
            w = orig(ds_, recipe_)
            labs = [l for s in ds_.train for l in s.labels]
            cw = np.array([class_weight.get(l, 1.0) for l in labs])
            w = (w if w is not None else np.ones(len(labs))) * cw
            return w * (len(w) / w.sum())
        T.sample_weights = sw
        try:
            clf, ds, info = T.train_model(name, recipe=recipe, ds=ds)
        finally:
            T.sample_weights = orig
    else:
        clf, ds, info = T.train_model(name, recipe=recipe, ds=ds)
    info["recipe"] = recipe
    info["class_weight"] = class_weight or {}
    return clf, ds, info


def raw_logits(clf, texts, bs=4096):
    """Logits with the head weight(s) as stored (the model's logits())."""
    return np.concatenate([clf.logits(texts[k:k + bs]) for k in range(0, len(texts), bs)]) if texts else \
        np.zeros((0, len(clf.labels)), np.float32)


def fold_bias_and_temperature(clf, offsets, temp):
    """b += offsets, head weight = 1/temp: probs = softmax((xW + b + offsets) / temp)."""
    assert len(clf.heads) == 1 and clf.heads[0].kind == "linear"
    h = clf.heads[0]
    h.params["b"] = (h.params["b"] + np.asarray(offsets, np.float32)).astype(np.float32)
    h.weight = float(h.weight / temp)
    return clf


def items_xy(items, labels):
    return [x.text for x in items], np.array([labels.index(x.label) for x in items], np.int64)
