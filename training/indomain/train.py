"""Rebuild the v2 default models (sentiment, emotion, intent, dissatisfaction) from ../shared/data.

    python -m yujing.training.indomain.train \
        [--out model_repo] [--only sentiment,emotion,intent,dissatisfaction] [--no-measure]

Writes <out>/<name>/1/artifact/{model.json,weights.npz} with the repo's writer
(yujing.training.train.write_artifact, kind hashed-ngram), <out>/<name>/labels.txt, and a
config.pbtxt + 1/model.py copied from the repo's model_repo (Triton python backend), then
runs measure.py (all figures, results.json). Deterministic on one machine: fixed hashing,
lbfgs, no random sampling (subsampling is every-k-th row); the fit's weights depend on the
BLAS kernels the CPU gets (MODELS.md, cross-fitted calibration).

Splits and label mappings: dialogue_data.py. Held out of every fit: the test sides, and the
calibration sides used to pick the per-language class-bias offsets and the temperature
(sentiment: JDDC dev, SGD/MWOZ dev; their training buckets are scored for the calibration
too, each by a fit without it, ``inner_out_of_fold_logits``; emotion: SMP2020 virus_eval, CPED dev; dissatisfaction:
STC-3 dev and JDDC dev customer turns, whose dialogue-level AUC is also written to model.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402

from yujing.training.indomain import data as D  # noqa: E402
from yujing.training.indomain import lib as L  # noqa: E402
from yujing.training.indomain import sentiment_parts as P  # noqa: E402
from yujing.service.models.textclf import Head, hash_features  # noqa: E402

SENT = D.SENTIMENT
# ---- recipes (chosen on the dev sides, see NOTES.md)
# v3: stc3 = STC-3 customer turns with their dialogue's satisfaction as a weak label (data.stc3_sentiment;
# weight 2 over 5 on the dev sides: English dev F1 0.494 vs 0.485, STC-3 dev AUC 0.813 vs 0.826).
# airline 10 (v2: 1.5): airline accuracy with its dev rows held out (--hold-out-airline-dev) was
# 0.789 at 10 (v2's recipe: 0.775); 4 -> 10 also moved every dev figure up (JDDC dev F1 0.551 -> 0.563,
# SGD/MWOZ dev F1 0.494 -> 0.498, STC-3 dev AUC of max risk 0.813 -> 0.820).
AIRLINE_WEIGHT = 10.0
SENT_WEIGHTS = {"jddc": 6, "uss": 6, "stc3": 2, "crosswoz": 1, "smp2020": 1, "cped": 0.5, "airline": AIRLINE_WEIGHT,
                "tweeteval": 0.5, "zh_online_shopping": 0.3, "zh_waimai": 0.5, "zh_chnsenticorp_htl": 0.5, "bitext": 0.5,
                "banking77": 0.9}
SENT_CLASS_BOOST = {"jddc": {"negative": 1.0, "neutral": 1.5, "positive": 2.5},
                    "uss": {"negative": 1.0, "neutral": 1.5, "positive": 1.0}}
# Chinese positive-class offset at most this (dev: +0.3 moves the review sets' binary accuracy
# by <= 0.2 points, +0.5 by up to 1 point)
ZH_POS_MAX = 0.3
SENT_EVERY = {"banking77": 3}
SENT_HEAD = [{"kind": "linear", "C": 3.0}]
MAX_NEUTRAL_TO_NEG = 0.15

EMO_WEIGHTS = {"smp2020": 1, "cped": 0.7, "tweeteval": 1, "crosswoz": 0.3, "bitext": 0.3, "jddc_neutral": 1,
               "uss_neutral": 0.5, "airline_neutral": 0.5}
EMO_HEAD = [{"kind": "linear", "C": 4.0}]

INT_WEIGHTS = {"bitext": 1, "jddc": 3, "jddc:mapped": 9, "crosswoz": 0.3, "uss_none": 0.5}
INT_HEAD = [{"kind": "linear", "C": 20.0}]

# dissatisfaction: customer turns (STC-3 + JDDC train dialogues) labelled with their dialogue's
# outcome, class-balanced. C chosen on the dev sides (min_df 2; per-turn AUC / STC-3 dev AUC of the
# max over a dialogue's customer turns): C 0.25 0.804/0.851, 0.5 0.805/0.856, 1 0.800/0.858,
# 2 0.792/0.858, 4 0.781/0.854; min_df 1 or 3 at C 1: 0.803/0.857, 0.799/0.860. JDDC dev has 5
# dissatisfied dialogues of 57 (its AUC moves 0.02 a dialogue: reported, not chosen on). The sklearn
# TF-IDF char 1-3-gram reference: 0.810/0.857 (C 1).
DIS_WEIGHTS = {"stc3": 1, "jddc": 1}
DIS_HEAD = [{"kind": "linear", "C": 0.5}]

LANG_K = 30000.0   # saturation gain of the language-bias head (see lang_bias_head)
# Cross-fitted calibration (session 18): the class-bias offsets and the temperature are chosen
# on the dev side plus each training bucket of JDDC and SGD/MWOZ scored by a model fitted
# without it (relative buckets 2, 3, 4: three more fits), about 4x the turns of the dev side,
# whose choices alone varied widely from fold to fold (MODELS.md, cross-fitted figures).
INNER_CALIBRATION = True   # --dev-only-calibration
INNER_BUCKETS = (2, 3, 4)
CALIBRATED = ("jddc", "uss")
HOLD_OUT_AIRLINE_DEV = False   # --hold-out-airline-dev


def command() -> str:
    return "python -m yujing.training.indomain.train " + " ".join(sys.argv[1:])


def cjk_column(clf) -> int:
    """Stored column of the "contains CJK" indicator feature (shared by every CJK text)."""
    _, a, _ = hash_features(["中"], clf.cfg)
    _, b, _ = hash_features(["文"], clf.cfg)
    common = set(a.tolist()) & set(b.tolist())
    assert len(common) == 1, common
    col = int(clf.remap[common.pop()])
    assert col >= 0
    return col


def lang_bias_head(clf, d_en, d_zh) -> Head:
    """An MLP head whose output is d_en for a text without CJK and d_zh for one with CJK:
    h = relu(K v), relu(K v - 1) with v the (positive) CJK-indicator feature, so
    h1 - h2 = min(K v, 1) = 1 for any CJK text (v >= ~0.005, K = 3e4) and 0 otherwise."""
    F = len(clf.buckets)
    W1 = np.zeros((F, 2), np.float32)
    W1[cjk_column(clf)] = LANG_K
    d = np.asarray(d_zh, np.float32) - np.asarray(d_en, np.float32)
    return Head("mlp", 1.0, {"W1": W1, "b1": np.array([0.0, -1.0], np.float32),
                             "W2": np.stack([d, -d]).astype(np.float32), "b2": np.asarray(d_en, np.float32)})


def split_by_class(parts, boost):
    """jddc -> jddc:negative, jddc:neutral, ... so per-class weights can be given per source."""
    out, w = [], {}
    for n, lg, items in parts:
        if n in boost:
            for lab in SENT:
                out.append((f"{n}:{lab}", lg, [x for x in items if x.label == lab]))
        else:
            out.append((n, lg, items))
    return out


def sub_weights(weights, boost):
    w = dict(weights)
    for n, b in boost.items():
        for lab, m in b.items():
            w[f"{n}:{lab}"] = weights[n] * m
    return w


def choose_offsets(zs, ys, grid_neu, grid_pos, constraint):
    """Best (macro-F1) offset [0, neu, pos] meeting constraint(offset) -> bool; falls back to
    the lowest neutral->negative share when none meets it."""
    best, fallback = None, None
    for a in grid_neu:
        for b in grid_pos:
            off = np.array([0.0, a, b], np.float32)
            r = L.sentiment_score(L.softmax(zs + off), ys)
            key = (r["macro_f1"], -abs(a) - abs(b))
            if constraint(off, r):
                if best is None or key > best[0]:
                    best = (key, off, r)
            fk = (-r["neutral_called_negative"], r["macro_f1"])
            if fallback is None or fk > fallback[0]:
                fallback = (fk, off, r)
    return (best or fallback)[1], (best or fallback)[2], best is not None


def inner_out_of_fold_logits(parts, buckets=INNER_BUCKETS):
    """Cross-fitted calibration data: for each training bucket of JDDC and SGD/MWOZ (relative
    to the fold, ``data.relative_bucket``), a sentiment model fitted without that bucket's
    dialogues scores them. Returns {"jddc": (texts, logits, y), "uss": ...} pooled over the
    buckets; the other sources stay in every fit."""
    pooled = {n: ([], [], []) for n in CALIBRATED}
    for r in buckets:
        inner = [(n, lg, [x for x in it if D.relative_bucket(x.group) != r] if n in CALIBRATED else it)
                 for n, lg, it in parts]
        held = {n: [x for x in it if D.relative_bucket(x.group) == r] for n, _, it in parts if n in CALIBRATED}
        L.log(f"sentiment calibration: bucket +{r} held out ({', '.join(f'{n} {len(v)}' for n, v in held.items())})")
        clf, _, _ = L.train("sentiment", SENT, split_by_class(inner, SENT_CLASS_BOOST),
                            sub_weights(SENT_WEIGHTS, SENT_CLASS_BOOST), SENT_HEAD)
        for n, items in held.items():
            t, y = L.items_xy(items, list(SENT))
            pooled[n][0].extend(t)
            pooled[n][1].append(L.raw_logits(clf, t))
            pooled[n][2].append(y)
    return {n: (t, np.concatenate(z), np.concatenate(y)) for n, (t, z, y) in pooled.items()}


def train_sentiment(out: Path):
    t0 = time.time()
    # final=True: the airline dev rows are trained on too (sentiment v2 held them out to
    # constrain the English offsets, and lost 4.6 points on airline test)
    parts = P.sentiment_parts(final=True)
    a = D.airline()
    if HOLD_OUT_AIRLINE_DEV:
        # the tuning run that chose AIRLINE_WEIGHT: airline dev held out, its accuracy is the estimate
        parts = [(n, lg, a["train"] if n == "airline" else it) for n, lg, it in parts]
    parts = [(n, lg, it[::SENT_EVERY.get(n, 1)]) for n, lg, it in parts]
    by_class = split_by_class(parts, SENT_CLASS_BOOST)
    L.log("sentiment parts: " + ", ".join(f"{n}={len(it)}" for n, _, it in by_class))
    clf, ds, info = L.train("sentiment", SENT, by_class, sub_weights(SENT_WEIGHTS, SENT_CLASS_BOOST), SENT_HEAD)
    # --- calibration turns (never fitted on): the dev side scored by this model, and with
    # INNER_CALIBRATION each training bucket scored by a model fitted without it
    jd, us, ad = D.jddc_sentiment()["dev"], D.uss_sentiment()["dev"], a["dev"]
    texts, ys = {}, {}
    for n, items in (("jddc", jd), ("uss", us)):
        texts[n], ys[n] = L.items_xy(items, list(SENT))
    no_head = {n: L.raw_logits(clf, texts[n]) for n in CALIBRATED}    # this model's, no language head yet
    zs = dict(no_head)
    if INNER_CALIBRATION:
        for n, (t, z, y) in inner_out_of_fold_logits(parts).items():
            texts[n], ys[n], zs[n] = texts[n] + t, np.concatenate([ys[n], y]), np.concatenate([zs[n], z])
            no_head[n] = np.concatenate([no_head[n], L.raw_logits(clf, t)])
    (zj, yj), (zu, yu) = (zs["jddc"], ys["jddc"]), (zs["uss"], ys["uss"])
    ta, ya = L.items_xy(ad, list(SENT))
    za = L.raw_logits(clf, ta)
    acc0 = float((za.argmax(1) == ya).mean())
    grid = np.round(np.arange(-0.5, 3.01, 0.1), 2)
    # Chinese: positive offset limited to ZH_POS_MAX (the review sets' binary decision barely moves)
    off_zh, r_zh, ok_zh = choose_offsets(zj, yj, grid, np.round(np.arange(0, ZH_POS_MAX + 0.01, 0.1), 2),
                                         lambda off, r: r["neutral_called_negative"] <= MAX_NEUTRAL_TO_NEG)

    # English: chosen on SGD/MWOZ alone (airline dev is trained on; its accuracy is logged only;
    # v2 also required airline dev accuracy >= before - 0.01, which did not protect airline test)
    off_en, r_en, ok_en = choose_offsets(zu, yu, grid, np.round(np.arange(-0.5, 1.51, 0.1), 2),
                                         lambda off, r: r["neutral_called_negative"] <= MAX_NEUTRAL_TO_NEG)
    acc_a = float(((za + off_en).argmax(1) == ya).mean())
    side = "dev + training buckets out of fold" if INNER_CALIBRATION else "dev"
    L.log(f"offsets zh {off_zh.tolist()} (JDDC {side} F1 {r_zh['macro_f1']}, n->neg {r_zh['neutral_called_negative']}, "
          f"constraint met {ok_zh}; {len(yj)} turns); en {off_en.tolist()} (SGD/MWOZ {side} F1 {r_en['macro_f1']}, "
          f"n->neg {r_en['neutral_called_negative']}, met {ok_en}; {len(yu)} turns; airline dev acc {acc0:.4f} -> "
          f"{acc_a:.4f})")
    clf.heads.append(lang_bias_head(clf, off_en, off_zh))
    # --- temperature on the same turns, each through the language head (its bias on a text:
    # this model's logits with the head minus without; for the dev turns, exactly this model's)
    zc = np.concatenate([(zs[n] - no_head[n]) + L.raw_logits(clf, texts[n]) for n in CALIBRATED])
    yc = np.concatenate([ys[n] for n in CALIBRATED])
    temp = L.fit_temperature(zc, yc)
    for h in clf.heads:
        h.weight = 1.0 / temp
    cal = {"offsets_zh": off_zh.tolist(), "offsets_en": off_en.tolist(), "temperature": round(temp, 4),
           "calibration_set": "JDDC dev (sha1(dialogue_id)%5==1) + SGD/MWOZ dev (same rule)"
                              + (", and each of their three training buckets scored by a model fitted without "
                                 "it (cross-fitted calibration)" if INNER_CALIBRATION else "")
                              + "; airline dev (tweet_id%5==1) "
                              + ("held out (tuning run)" if HOLD_OUT_AIRLINE_DEV else
                                 "trained on (its accuracy logged, not a constraint)"),
           "calibration_turns": {"jddc": int(len(yj)), "uss": int(len(yu))},
           "dev_ece_before": round(L.ece(L.softmax(zc), yc), 4), "dev_ece_after": round(L.ece(L.softmax(zc / temp), yc), 4),
           "dev_jddc": r_zh, "dev_uss": r_en, "airline_dev_acc_before_after_offsets": [round(acc0, 4), round(acc_a, 4)],
           "airline_dev_held_out": HOLD_OUT_AIRLINE_DEV}
    L.log(f"temperature {temp:.3f}; calibration ECE {cal['dev_ece_before']} -> {cal['dev_ece_after']}")
    info["calibration"] = cal
    info["subset_weights"] = sub_weights(SENT_WEIGHTS, SENT_CLASS_BOOST)
    info["train_seconds"] = round(time.time() - t0, 1)
    return write(clf, ds, info, out, "sentiment")


def train_emotion(out: Path):
    t0 = time.time()
    parts = P.emotion_parts(final=True)
    L.log("emotion parts: " + ", ".join(f"{n}={len(it)}" for n, _, it in parts))
    clf, ds, info = L.train("emotion", D.EMOTION, parts, EMO_WEIGHTS, EMO_HEAD, min_df=2)
    dev = P.emotion_dev()
    t, y = L.items_xy(dev["smp2020"] + dev["cped"], list(D.EMOTION))
    z = L.raw_logits(clf, t)
    temp = L.fit_temperature(z, y)
    clf.heads[0].weight = 1.0 / temp
    info["calibration"] = {"temperature": round(temp, 4), "calibration_set": "SMP2020 virus_eval + CPED dev",
                           "dev_ece_before": round(L.ece(L.softmax(z), y), 4),
                           "dev_ece_after": round(L.ece(L.softmax(z / temp), y), 4)}
    info["train_seconds"] = round(time.time() - t0, 1)
    return write(clf, ds, info, out, "emotion")


def dissatisfaction_metrics(clf, items) -> dict:
    """Per-turn AUC of P(dissatisfied) on ``items`` (all, and by source) and the per-dialogue
    AUC of its max over the dialogue's customer turns, by source (the Mann-Whitney AUC of
    ``yujing eval conversations``, ties half, as scikit-learn's: no scikit-learn needed, so the
    model quality test runs in the test install)."""
    from yujing.training.conversations import auc

    def roc_auc_score(labels, scores) -> float:
        labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
        return auc(scores[labels], scores[~labels])

    texts = [x.text for x in items]
    p = L.softmax(L.raw_logits(clf, texts))[:, 1] if texts else np.zeros(0)
    y = np.array([x.label == "dissatisfied" for x in items])
    out = {"turn_auc": round(float(roc_auc_score(y, p)), 4), "n_turns": len(items),
           "n_turns_dissatisfied": int(y.sum())}
    for src in ("stc3", "jddc"):
        m = np.array([x.extra["source"] == src for x in items])
        best: dict[str, float] = {}
        lab: dict[str, bool] = {}
        for x, pi in zip((x for x, k in zip(items, m) if k), p[m]):
            best[x.group] = max(best.get(x.group, 0.0), float(pi))
            lab[x.group] = x.label == "dissatisfied"
        ids = sorted(best)
        yd = [lab[k] for k in ids]
        out[src] = {"turn_auc": round(float(roc_auc_score(y[m], p[m])), 4),
                    "dialogue_max_auc": round(float(roc_auc_score(yd, [best[k] for k in ids])), 4),
                    "n_dialogues": len(ids), "n_dissatisfied": int(sum(yd)),
                    "dialogue_max_above_half": {"dissatisfied": round(float(np.mean([best[k] > 0.5 for k in ids if lab[k]])), 4),
                                                "other": round(float(np.mean([best[k] > 0.5 for k in ids if not lab[k]])), 4)}}
    return out


def train_dissatisfaction(out: Path):
    """P(dissatisfied) of a customer turn under equal priors: trained on the customer turns of the
    STC-3 and JDDC train dialogues labelled with their dialogue's outcome (data.dissatisfaction),
    class-balanced; temperature on the dev turns with balanced weights."""
    t0 = time.time()
    labels = list(D.DISSATISFACTION)
    d = D.dissatisfaction()
    parts = [(src, "zh", [x for x in d["train"] if x.extra["source"] == src]) for src in ("stc3", "jddc")]
    L.log("dissatisfaction parts: " + ", ".join(f"{n}={len(it)}" for n, _, it in parts))
    y = np.array([labels.index(x.label) for _, _, it in parts for x in it])
    class_weight = dict(zip(labels, L.class_balance(y, 2).tolist()))
    clf, ds, info = L.train("dissatisfaction", labels, parts, DIS_WEIGHTS, DIS_HEAD, min_df=2,
                            class_weight=class_weight)
    t, yd = L.items_xy(d["dev"], labels)
    z = L.raw_logits(clf, t)
    w = L.balanced_weights(yd, 2)
    temp = L.fit_temperature(z, yd, sample_weight=w)
    clf.heads[0].weight = clf.heads[0].weight / temp
    info["calibration"] = {"temperature": round(temp, 4), "priors": "equal (balanced class weights in the fit "
                                                                    "and in the temperature's NLL)",
                           "calibration_set": "STC-3 dev (int(id)%10==6) + JDDC dev (sha1(dialogue_id)%5==1) customer turns",
                           "dev_balanced_nll_before": round(L.nll(L.softmax(z), yd, w), 4),
                           "dev_balanced_nll_after": round(L.nll(L.softmax(z / temp), yd, w), 4),
                           "dev_ece_before": round(L.ece(L.softmax(z), yd), 4),
                           "dev_ece_after": round(L.ece(L.softmax(z / temp), yd), 4)}
    L.log(f"dissatisfaction: temperature {temp:.3f}")
    info["train_seconds"] = round(time.time() - t0, 1)
    art = write(clf, ds, info, out, "dissatisfaction")
    # the figures of the artifact as written (float16 weights), read back as the service loads it
    from yujing.service.models.artifact import load_model, read_meta, write_meta
    served = load_model(art)
    metrics = {"dev": dissatisfaction_metrics(served, d["dev"]), "test": dissatisfaction_metrics(served, d["test"])}
    L.log(f"dissatisfaction: dev {json.dumps(metrics['dev'])}")
    meta = read_meta(art)
    meta["metrics"] = metrics
    write_meta(art, meta)
    return art


def intent_labels():
    return tuple(sorted({x.label for x in D.bitext()["train"]})) + ("none",)


def train_intent(out: Path):
    t0 = time.time()
    P.CALIB["intent"] = []   # nothing to calibrate: JDDC dev joins the training data
    parts = P.intent_parts(final=True)
    j = [p for p in parts if p[0] == "jddc"][0]
    parts = [p for p in parts if p[0] != "jddc"] + [("jddc", "zh", [x for x in j[2] if x.label == "none"]),
                                                    ("jddc:mapped", "zh", [x for x in j[2] if x.label != "none"])]
    L.log("intent parts: " + ", ".join(f"{n}={len(it)}" for n, _, it in parts))
    clf, ds, info = L.train("intent", intent_labels(), parts, INT_WEIGHTS, INT_HEAD, min_df=1)
    info["train_seconds"] = round(time.time() - t0, 1)
    return write(clf, ds, info, out, "intent")


SPLIT_RULE = ("see yujing.training.indomain.data: JDDC and SGD/MWOZ by sha1(dialogue_id)%5 (0 test, 1 dev), "
              "SMP2020 train=virus_train+usual_eval, dev=virus_eval, test=usual_test/virus_test; CPED valid/test; "
              "CrossWOZ val/test; TweetEval official; airline tweet_id%5 (0 test, 1 dev); STC-3 int(id)%10 "
              "(5 test, 6 dev, sentiment only); zh reviews and Bitext row%5 "
              "(0 test, 1 dev); BANKING77 official; dissatisfaction: STC-3 int(id)%10 (5 test, 6 dev) and JDDC "
              "sha1(dialogue_id)%5 (0 test, 1 dev), by dialogue")

FILES = {"sentiment": ["zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv", "en/uss_sgd_mwoz/sgd_valid_dialogues.csv",
                       "en/uss_sgd_mwoz/mwoz_valid_dialogues.csv", "zh/crosswoz/crosswoz_val_user_turns.csv",
                       "zh/smp2020_ewect/virus_train.csv", "zh/smp2020_ewect/usual_eval_labeled.csv",
                       "zh/cped/cped_valid_split.csv", "en/airline_sentiment_tweets.csv",
                       "en/tweeteval_emotion/train_text.txt", "en/tweeteval_emotion/val_text.txt",
                       *D.ZH_REVIEWS, "en/bitext_customer_service_8k.csv", "en/banking77_train.csv"],
         "emotion": ["zh/smp2020_ewect/virus_train.csv", "zh/smp2020_ewect/usual_eval_labeled.csv",
                     "zh/cped/cped_valid_split.csv", "en/tweeteval_emotion/train_text.txt",
                     "en/tweeteval_emotion/val_text.txt", "zh/crosswoz/crosswoz_val_user_turns.csv",
                     "en/bitext_customer_service_8k.csv", "zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv",
                     "en/uss_sgd_mwoz/sgd_valid_dialogues.csv", "en/uss_sgd_mwoz/mwoz_valid_dialogues.csv",
                     "en/airline_sentiment_tweets.csv"],
         "intent": ["en/bitext_customer_service_8k.csv", "zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv",
                    "zh/crosswoz/crosswoz_val_user_turns.csv", "en/uss_sgd_mwoz/sgd_valid_dialogues.csv",
                    "en/uss_sgd_mwoz/mwoz_valid_dialogues.csv"],
         "dissatisfaction": ["zh/stc3_customer_helpdesk/stc3_train_cn_dialogues.csv",
                             "zh/stc3_customer_helpdesk/stc3_train_cn_turns.csv",
                             "zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv"]}


# the repository version each model is written as (version 1 of sentiment and intent are the
# review-trained models these replace; they stay in the repository for comparison and rollback)
VERSIONS = {"sentiment": "4", "emotion": "1", "intent": "2", "dissatisfaction": "1"}


def write(clf, ds, info, out: Path, name: str) -> Path:
    from yujing.service.paths import DEFAULT_MODEL_REPO
    from yujing.training.train import write_artifact
    ds.files = FILES[name]
    ds.split_rule = SPLIT_RULE + (f" (cross-fitting fold {D.FOLD}: bucket {D.FOLD} test)" if D.FOLD else "")
    recipe = info.pop("recipe")
    version = VERSIONS[name]
    art = write_artifact(clf, ds, info, out, version, recipe, str(D.data_root()), command(), dtype="float16")
    # emotion and dissatisfaction are served like sentiment: its config and entry point, renamed
    src = DEFAULT_MODEL_REPO / ("sentiment" if name in ("emotion", "dissatisfaction") else name)
    cfg = (src / "config.pbtxt").read_text(encoding="utf-8")
    if name in ("emotion", "dissatisfaction"):
        cfg = cfg.replace('"sentiment"', f'"{name}"')
    (out / name / "config.pbtxt").write_text(cfg, encoding="utf-8")
    shutil.copy(src / "1" / "model.py", out / name / version / "model.py")
    size = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
    L.log(f"{name}: wrote {art} ({size / 1e6:.2f} MB)")
    return art


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "model_repo"))
    ap.add_argument("--only", default="sentiment,emotion,intent")
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--hold-out-airline-dev", action="store_true",
                    help="tuning run: keep the airline dev rows out of the sentiment fit (their accuracy is logged)")
    ap.add_argument("--dev-only-calibration", action="store_true",
                    help="choose the sentiment offsets and temperature on the dev side alone (sentiment v3's way)")
    ap.add_argument("--fold", type=int, default=0,
                    help="cross-fitting: JDDC / USS bucket K is the test side, K + 1 dev (default 0: the shipped split)")
    a = ap.parse_args()
    D.set_fold(a.fold)
    global HOLD_OUT_AIRLINE_DEV, INNER_CALIBRATION
    HOLD_OUT_AIRLINE_DEV = a.hold_out_airline_dev
    INNER_CALIBRATION = not a.dev_only_calibration
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        {"sentiment": train_sentiment, "emotion": train_emotion, "intent": train_intent,
         "dissatisfaction": train_dissatisfaction}[name](out)
    if not a.no_measure:
        import measure
        res = measure.measure(out)
        print(json.dumps(res, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
