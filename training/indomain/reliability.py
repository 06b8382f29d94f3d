"""The sentiment model's reliability diagram on the in-domain test turns (issue 11: "report the
expected calibration error and a reliability plot").

    python -m yujing.training.indomain.reliability [--repo model_repo] [--json FILE] [--png FILE]

The turns are the held-out sides of JDDC and SGD/MultiWOZ (``data.jddc_sentiment()["test"]``,
``data.uss_sentiment()["test"]``: the same turns as ``ece15_indomain_test`` in
``measure.py``). For each of 15 equal-width confidence bins: how many turns, their mean
confidence (the top class's probability) and how often the top class was right; the
model as served and, for comparison, the same model with its temperature taken out
(:func:`lib.without_temperature`, as ``measure.py`` reports it), so the plot shows what the
temperature changed. The expected calibration error is :func:`lib.ece` over the same bins.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from yujing.service.models.artifact import load_model, read_meta
from yujing.service.paths import DEFAULT_MODEL_REPO
from yujing.training.indomain import data as D
from yujing.training.indomain import lib as L
from yujing.training.indomain.train import VERSIONS

BINS = 15


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict:
    """Per bin (right-closed, as :func:`lib.ece`): n, mean confidence, accuracy; and the ECE."""
    conf, right = probs.max(1), (probs.argmax(1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        n = int(m.sum())
        rows.append({"lo": round(float(lo), 4), "hi": round(float(hi), 4), "n": n,
                     "confidence": round(float(conf[m].mean()), 4) if n else None,
                     "accuracy": round(float(right[m].mean()), 4) if n else None})
    return {"n": int(len(y)), "ece": round(L.ece(probs, y, bins), 4), "bins": rows}


def indomain_test_turns(labels) -> tuple[list[str], np.ndarray]:
    texts, ys = [], []
    for items in (D.jddc_sentiment()["test"], D.uss_sentiment()["test"]):
        t, y = L.items_xy(items, labels)
        texts += list(t)
        ys.append(y)
    return texts, np.concatenate(ys)


def plot(served: dict, untempered: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    for rep, name, mark in ((untempered, "without temperature", "s"), (served, "as served", "o")):
        pts = [(r["confidence"], r["accuracy"]) for r in rep["bins"] if r["n"] >= 10]
        ax.plot(*zip(*pts), marker=mark, label=f"{name} (ECE {rep['ece']:.3f})")
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.3, 1.0)
    ax.set_ylim(0.3, 1.0)
    ax.set_title(f"sentiment, in-domain test turns (n = {served['n']})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(DEFAULT_MODEL_REPO))
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    a = ap.parse_args(argv)
    art = Path(a.repo) / "sentiment" / VERSIONS["sentiment"] / "artifact"
    model = load_model(art)
    temp = read_meta(art).get("training", {}).get("calibration", {}).get("temperature")
    texts, y = indomain_test_turns(list(model.labels))
    p = np.concatenate([model.predict_proba(texts[k:k + 2048]) for k in range(0, len(texts), 2048)])
    out = {"model": f"sentiment v{VERSIONS['sentiment']}", "temperature": temp, "served": reliability(p, y)}
    if temp:
        out["without_temperature"] = reliability(L.without_temperature(p, temp), y)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    if a.png and temp:
        plot(out["served"], out["without_temperature"], a.png)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
