"""All figures for the v2 default models, old models side by side, as JSON.

    NUMBA_NUM_THREADS=1 python -m yujing.training.indomain.measure [--new model_repo] [--out results.json]

Held-out sides only (dialogue_data.py); the old models are the clone's model_repo/sentiment and
model_repo/intent. The review sets and Bitext are scored on the repo's own test splits
(service.models.data.load_sentiment / load_bitext, as in MODELS.md).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402

from yujing.training.indomain import data as D  # noqa: E402
from yujing.training.indomain import lib as L  # noqa: E402
from yujing.service.models.artifact import load_model, read_meta  # noqa: E402
from yujing.training.data import load_bitext, load_sentiment  # noqa: E402
from yujing.training.indomain.train import VERSIONS  # noqa: E402

from yujing.service.paths import DEFAULT_MODEL_REPO as OLD  # version 1 of sentiment and intent: the old models


def probs(model, texts, bs=2048):
    return np.concatenate([model.predict_proba(texts[k:k + bs]) for k in range(0, len(texts), bs)])


def plain_questions():
    return [l.strip() for l in (HERE / "plain_questions.txt").read_text(encoding="utf-8").splitlines()
            if l.strip() and not l.startswith("#")]


def mixed_set():
    rows = [l.split("\t", 1) for l in (HERE / "mixed_zh_en.tsv").read_text(encoding="utf-8").splitlines()
            if l.strip() and not l.startswith("#")]
    return [D.Item(t.strip(), lab.strip()) for lab, t in rows]


def sentiment_block(model, temp=None):
    lab = list(model.labels)
    assert lab == list(D.SENTIMENT)
    out = {}
    cal_p, cal_y = [], []
    for name, items in (("jddc_test", D.jddc_sentiment()["test"]), ("sgd_mwoz_test", D.uss_sentiment()["test"]),
                        ("crosswoz_test", D.crosswoz(task="sentiment")["test"]),
                        ("smp2020_usual_test_3class", D.smp2020(mapping=D.SMP_TO_SENT)["test_usual"]),
                        ("cped_test", D.cped(task="sentiment")["test"]), ("mixed_zh_en", mixed_set())):
        t, y = L.items_xy(items, lab)
        p = probs(model, t)
        out[name] = L.sentiment_score(p, y)
        if name in ("jddc_test", "sgd_mwoz_test"):
            cal_p.append(p)
            cal_y.append(y)
            if name == "sgd_mwoz_test":
                for corpus in ("sgd", "mwoz"):
                    m = np.array([x.extra["corpus"] == corpus for x in items])
                    out[f"{name}_{corpus}"] = {k: v for k, v in L.sentiment_score(p[m], y[m]).items()
                                               if k in ("n", "macro_f1", "neutral_called_negative")}
    p, y = np.concatenate(cal_p), np.concatenate(cal_y)
    out["ece15_indomain_test"] = {"n": int(len(y)), "ece": round(L.ece(p, y), 4), "nll": round(L.nll(p, y), 4)}
    if temp is not None:
        # the same model without its temperature (head weights x T): "before"
        pb = L.without_temperature(p, temp)
        out["ece15_indomain_test"].update({"ece_before_temperature": round(L.ece(pb, y), 4),
                                           "nll_before_temperature": round(L.nll(pb, y), 4), "temperature": temp})
    # review sets, repo splits
    ds = load_sentiment(Path(D.data_root()))
    for sub in ds.test:
        t, y = sub.texts, np.array([lab.index(l) for l in sub.labels])
        p = probs(model, t)
        r = L.score(p, y, lab, among=[0, 2]) if sub.binary else L.score(p, y, lab)
        r["neutral_rate"] = round(float((p.argmax(1) == 1).mean()), 4)
        out[sub.name] = {k: v for k, v in r.items() if k not in ("confusion_labels",)}
    q = plain_questions()
    p = probs(model, q)
    neg = p.argmax(1) == 0
    out["plain_questions"] = {"n": len(q), "negative": int(neg.sum()), "negative_zh": int(neg[20:].sum()),
                              "negative_en": int(neg[:20].sum()),
                              "labelled_negative": [q[i] for i in np.flatnonzero(neg)],
                              "mean_p_neg": round(float(p[:, 0].mean()), 4)}
    return out


def emotion_block(model):
    lab = list(model.labels)
    out = {}
    for name, items in (("smp2020_usual_test", D.smp2020()["test_usual"]), ("smp2020_virus_test", D.smp2020()["test_virus"]),
                        ("cped_test", D.cped()["test"]), ("tweeteval_test", D.tweeteval()["test"])):
        t, y = L.items_xy(items, lab)
        p = probs(model, t)
        if name == "tweeteval_test":
            out[name] = L.score(p, y, lab, among=[lab.index(x) for x in ("angry", "sad", "happy")])
            out[name + "_5way"] = {k: v for k, v in L.score(p, y, lab).items() if k in ("n", "accuracy", "macro_f1")}
        else:
            out[name] = L.score(p, y, lab)
    # surprise (dropped from training) for information: where it goes
    sm = [x for x in D.smp2020(mapping={"surprise": "neutral"})["test_usual"]]
    p = probs(model, [x.text for x in sm])
    out["smp2020_usual_test_surprise_rows_predicted"] = {l: int((p.argmax(1) == i).sum()) for i, l in enumerate(lab)}
    # customer turns: how often a calm question gets angry / anxious
    q = plain_questions()
    p = probs(model, q)
    out["plain_questions_predicted"] = {l: int((p.argmax(1) == i).sum()) for i, l in enumerate(lab)}
    jt = D.jddc_sentiment()["test"]
    p = probs(model, [x.text for x in jt])
    out["jddc_test_predicted_by_sat"] = {s: {l: int(((p.argmax(1) == i) & np.array([x.label == s for x in jt])).sum())
                                             for i, l in enumerate(lab)} for s in D.SENTIMENT}
    return out


def intent_block(model):
    lab = list(model.labels)
    out = {}
    ds = load_bitext(Path(D.data_root()))
    sub = ds.test[0]
    p = probs(model, sub.texts)
    y = np.array([lab.index(l) for l in sub.labels])
    out["bitext_test"] = {"n": len(y), "accuracy": round(float((p.argmax(1) == y).mean()), 4)}
    if "none" in lab:
        among = [i for i, l in enumerate(lab) if l != "none"]
        out["bitext_test"]["accuracy_without_none"] = round(float((np.asarray(among)[p[:, among].argmax(1)] == y).mean()), 4)
        out["bitext_test"]["predicted_none"] = int((p.argmax(1) == lab.index("none")).sum())
    jt = D.jddc_intent()["test"]
    mapped = [x for x in jt if x.label != "none"]
    t = [x.text for x in mapped]
    p = probs(model, t)
    if all(x.label in lab for x in mapped):
        y = np.array([lab.index(x.label) for x in mapped])
        out["jddc_test_mapped"] = {"n": len(y), "accuracy": round(float((p.argmax(1) == y).mean()), 4)}
        if "none" in lab:
            among = [i for i, l in enumerate(lab) if l != "none"]
            out["jddc_test_mapped"]["accuracy_without_none"] = round(float((np.asarray(among)[p[:, among].argmax(1)] == y).mean()), 4)
            out["jddc_test_mapped"]["predicted_none"] = int((p.argmax(1) == lab.index("none")).sum())
            per = {}
            for l in sorted(set(x.label for x in mapped)):
                m = y == lab.index(l)
                per[l] = f"{int((p.argmax(1)[m] == y[m]).sum())}/{int(m.sum())}"
            out["jddc_test_mapped"]["per_intent_correct"] = per
            nn = [x.text for x in jt if x.label == "none"]
            pn = probs(model, nn)
            out["jddc_test_none_turns"] = {"n": len(nn), "predicted_none": int((pn.argmax(1) == lab.index("none")).sum())}
            q = plain_questions()
            pq = probs(model, q)
            out["plain_questions_intents"] = {qq: lab[int(i)] for qq, i in zip(q, pq.argmax(1))}
    else:
        out["jddc_test_mapped"] = {"n": len(mapped), "note": "English-only model: the service ignores it on Chinese text"}
    return out


def throughput(models, texts, bs=256, min_seconds=3.0):
    """texts/s of running every model on each batch (sequentially), one thread, after warm-up."""
    for m in models:
        m.predict_proba(texts[:bs])
    batches = [texts[k:k + bs] for k in range(0, len(texts) - bs + 1, bs)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        for b in batches:
            for m in models:
                m.predict_proba(b)
            n += len(b)
    return round(n / (time.perf_counter() - t0), 1)


def mix_texts():
    """A realistic zh/en mix of customer turns: JDDC, CrossWOZ, SGD/MWOZ, Bitext, airline test
    sides, interleaved (about half Chinese)."""
    zh = [x.text for x in D.jddc_sentiment()["test"]] + [x.text for x in D.crosswoz()["test"]][:1500]
    en = ([r["user"] for r in D.uss_turns()["test"]] + [x.text for x in D.bitext()["test"]][:800]
          + [x.text for x in D.airline()["test"]][:600])
    out = []
    for i in range(max(len(zh), len(en))):
        if i < len(zh):
            out.append(zh[i])
        if i < len(en):
            out.append(en[i])
    return out


class _OnePass:
    """Several models scored the service's way, one featurisation pass (predict_heads)."""

    def __init__(self, models):
        self.models = {f"m{k}": m for k, m in enumerate(models)}

    def predict_proba(self, texts):
        from yujing.service.models.multihead import predict_heads
        return predict_heads(self.models, texts)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(new_repo: Path, out_json: Path | None = None) -> dict:
    new_repo = Path(new_repo)
    old_s = load_model(OLD / "sentiment/1/artifact")
    old_i = load_model(OLD / "intent/1/artifact")
    res = {"command": "NUMBA_NUM_THREADS=1 python -m yujing.training.indomain.measure --new " + str(new_repo),
           "old": {}, "new": {}}
    res["old"]["sentiment"] = sentiment_block(old_s)
    res["old"]["intent"] = intent_block(old_i)
    new = {}
    for name in ("sentiment", "emotion", "intent", "dissatisfaction"):
        art = new_repo / name / VERSIONS[name] / "artifact"
        if art.is_dir():
            new[name] = load_model(art)
            res["new"].setdefault("artifact_bytes", {})[name] = size(art)
    if "sentiment" in new:
        cal = read_meta(new_repo / "sentiment" / VERSIONS["sentiment"] / "artifact").get("training", {}).get("calibration", {})
        res["new"]["sentiment"] = sentiment_block(new["sentiment"], temp=cal.get("temperature"))
        res["new"]["sentiment_calibration"] = cal
    if "emotion" in new:
        res["new"]["emotion"] = emotion_block(new["emotion"])
        res["new"]["emotion_calibration"] = read_meta(new_repo / "emotion" / VERSIONS["emotion"] / "artifact").get("training", {}).get("calibration", {})
    if "intent" in new:
        res["new"]["intent"] = intent_block(new["intent"])
    if "dissatisfaction" in new:
        from yujing.training.indomain.train import dissatisfaction_metrics
        sides = D.dissatisfaction()
        res["new"]["dissatisfaction"] = {s: dissatisfaction_metrics(new["dissatisfaction"], sides[s])
                                         for s in ("dev", "test")}
    texts = mix_texts()
    res["throughput_texts_per_s"] = {"setup": f"in-process, one thread (NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}), "
                                              f"batch 256, after warm-up, {len(texts)} interleaved zh/en customer turns, "
                                              "each batch through every model in turn",
                                     "old_sentiment+intent": throughput([old_s, old_i], texts)}
    if {"sentiment", "emotion", "intent"} <= set(new):
        res["throughput_texts_per_s"]["new_sentiment+emotion+intent"] = throughput(
            [new["sentiment"], new["emotion"], new["intent"]], texts)
        if "dissatisfaction" in new:
            four = [new["sentiment"], new["emotion"], new["intent"], new["dissatisfaction"]]
            res["throughput_texts_per_s"]["new_sentiment+emotion+intent+dissatisfaction"] = throughput(four, texts)
            # as the service scores them (heads, in-process fallback): featurised once for all
            res["throughput_texts_per_s"]["new_three_one_pass"] = throughput([_OnePass(four[:3])], texts)
            res["throughput_texts_per_s"]["new_four_one_pass"] = throughput([_OnePass(four)], texts)
        for k, m in new.items():
            res["throughput_texts_per_s"][f"new_{k}_alone"] = throughput([m], texts, min_seconds=1.5)
    res["old"]["artifact_bytes"] = {"sentiment": size(OLD / "sentiment/1/artifact"), "intent": size(OLD / "intent/1/artifact")}
    if out_json:
        Path(out_json).write_text(json.dumps(res, ensure_ascii=False, indent=1), encoding="utf-8")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", default="model_repo")
    ap.add_argument("--out", default="results.json")
    a = ap.parse_args()
    print(json.dumps(measure(Path(a.new), Path(a.out)), ensure_ascii=False, indent=1))
