"""Loaders for the dialogue / emotion / intent sets in ../shared/data (SOURCES.md), with
deterministic splits and the label mappings used by the v2 default models.

Pure Python (csv, json, hashlib); nothing is copied. ``root`` defaults to $YUJING_DATA_DIR,
else ../shared/data.

Splits ("dev" is a part of the training side, held out only while choosing settings,
class-bias offsets and the temperature; the final models are refitted on train + dev):

* JDDC-USS (zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv, the `valid` file only, customer
  turns with is_overall == 0): b = int(sha1(dialogue_id).hexdigest(), 16) % 5;
  b == 0 -> test, b == 1 -> dev, else train.  Every dialogue stays on one side.
* SGD + MultiWOZ (en/uss_sgd_mwoz/{sgd,mwoz}_valid_dialogues.csv): the same rule on
  dialogue_id; rated user turns (sat not empty, user != "OVERALL") are the sentiment rows,
  every user turn of a train/dev dialogue may serve as neutral-emotion / `none`-intent material.
* STC-3 (zh/stc3_customer_helpdesk): int(dialogue_id) % 10 == 5 -> test, else train (ids
  % 10 == 0 are held back by the project and absent); inside train, == 6 is dev (held out of
  every fit: the dialogue-level choices are made on it). Dialogue-level S (satisfaction) means
  only; the sentiment model (v3) trains on the train side's customer turns with the
  dialogue's S as a weak turn label (see (a)).
* SMP2020-EWECT: train = virus_train + usual_eval_labeled, dev = virus_eval_labeled,
  test = usual_test_labeled (+ virus_test_labeled). The official usual train set is missing.
* CPED: train (and dev) = cped_valid_split (dev = sha1(Dialogue_ID) % 5 == 1 inside it),
  test = cped_test_split (official split, different TV series).
* CrossWOZ: train (and dev) = val user turns (dev = sha1(dialogue_id) % 5 == 1 inside it),
  test = test user turns (official split).
* TweetEval emotion: official train / val (dev) / test.
* Airline tweets (repo rule): test iff tweet_id % 5 == 0; dev iff tweet_id % 5 == 1.
* zh review sets (repo rule): test iff 0-based data row % 5 == 0; dev iff row % 5 == 1;
  training rows whose text occurs in a review test split are dropped (repo rule).
* Bitext (repo rule): test iff 0-based data row % 5 == 0; dev iff row % 5 == 1.
* BANKING77: official train / test (dev = every 5th train row, offset 1).

Label mappings

(a) 3-class sentiment (negative / neutral / positive):
* JDDC sat 0 dissatisfied -> negative, 1 neutral -> neutral, 2 satisfied -> positive (the
  satisfaction the annotators read into the rated customer turn; noisy: 谢谢 is both 1 and 2,
  "?" / 在吗 after a bad answer are 0).
* SGD/MWOZ sat: the same 0/1/2 -> negative/neutral/positive.
* CrossWOZ user turns: a turn whose intents are only General-thank / General-bye (with at
  least one thank) -> positive ("好的，谢谢！"); every other turn (requests, informs, selects,
  greetings, also requests ending in 谢谢) -> neutral.
* SMP2020-EWECT: happy -> positive; angry, sad, fear -> negative; neutral -> neutral;
  surprise -> dropped (read: mixed, mostly neither polarity).
* CPED: its own Sentiment column (negative / neutral / positive).
* STC-3 customer turns: the dialogue's mean satisfaction S (19 annotators): S < -0.5 ->
  negative, S > 0.5 -> positive, else neutral (a weak label: the satisfaction with the
  exchange, like JDDC's; sentiment v3 only).
* Airline tweets: airline_sentiment as is. TweetEval: anger, sadness -> negative; joy,
  optimism -> positive (no neutral class).
* zh reviews: 0 -> negative, 1 -> positive (binary).
* Bitext utterances: neutral (calm customer requests), except those flagged W (offensive
  register: "reset my bloody password") -> negative, and intent `complaint` -> dropped.
* BANKING77 queries: neutral (calm banking requests and problem reports).

(b) emotion (neutral / angry / anxious / sad / happy; DOMAIN.md asks angry / anxious / normal
to choose the reply; sad and happy are kept apart because the data has them and "normal"
would otherwise mix satisfaction and sadness):
* SMP2020: neutral, angry, fear -> anxious, sad, happy; surprise dropped.
* CPED Emotion: neutral; anger, disgust -> angry; worried, fear -> anxious; depress,
  sadness -> sad; happy, grateful, relaxed, positive-other -> happy; astonished and
  negative-other dropped (no single target).
* TweetEval: anger -> angry, sadness -> sad, joy, optimism -> happy.
* Neutral-register customer material: Bitext (non-W, non-complaint) -> neutral, W -> angry;
  CrossWOZ requests -> neutral, thank-only turns -> happy; SGD/MWOZ user turns -> neutral;
  JDDC turns with sat == 1 -> neutral; airline neutral tweets -> neutral.

(c) intent: the 27 Bitext intents plus `none`; JDDC actions mapped with JDDC_ACTION_TO_INTENT
(see intent_mapping.md); JDDC OTHER / unmapped actions, CrossWOZ and SGD/MWOZ user turns ->
`none`.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SENTIMENT = ("negative", "neutral", "positive")
EMOTION = ("neutral", "angry", "anxious", "sad", "happy")


def data_root(root=None) -> Path:
    """The shared data sets: the one rule of :func:`yujing.service.paths.data_dir`."""
    from yujing.service.paths import data_dir

    return data_dir(root)


def rows(path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def bucket(key: str, mod: int = 5) -> int:
    return int(hashlib.sha1(str(key).encode("utf-8")).hexdigest(), 16) % mod


# Cross-fitting (training/indomain/crossfit.py): fold k makes bucket k the test side and
# bucket k + 1 the dev side of every set split by ``hash_split`` (JDDC-USS, SGD / MultiWOZ).
# 0, the default, is the split every shipped model and figure uses.
FOLDS = 5
FOLD = 0


def set_fold(k: int) -> None:
    global FOLD
    if not 0 <= k < FOLDS:
        raise ValueError(f"fold must be 0..{FOLDS - 1}, got {k}")
    FOLD = k


def relative_bucket(key: str) -> int:
    """The bucket of ``key`` counted from the fold's test bucket: 0 test, 1 dev, 2-4 train."""
    return (bucket(key) - FOLD) % FOLDS


def hash_split(key: str) -> str:
    b = relative_bucket(key)
    return "test" if b == 0 else ("dev" if b == 1 else "train")


@dataclass
class Item:
    text: str
    label: str
    group: str = ""             # dialogue id (or "")
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ JDDC-USS

JDDC_FILE = "zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv"
SAT3 = {"0": "negative", "1": "neutral", "2": "positive"}


def jddc_turns(root=None) -> dict[str, list[dict]]:
    """Customer turns (is_overall == 0) by split; each row keeps every CSV column."""
    out = {"train": [], "dev": [], "test": []}
    for r in rows(data_root(root) / JDDC_FILE):
        if r["is_overall"] != "0":
            continue
        out[hash_split(r["dialogue_id"])].append(r)
    return out


def jddc_overall(root=None) -> dict[str, list[dict]]:
    out = {"train": [], "dev": [], "test": []}
    for r in rows(data_root(root) / JDDC_FILE):
        if r["is_overall"] == "1":
            out[hash_split(r["dialogue_id"])].append(r)
    return out


def jddc_sentiment(root=None) -> dict[str, list[Item]]:
    return {s: [Item(r["text"], SAT3[r["sat"]], r["dialogue_id"], {"action": r["action"], "prev": r["prev_system"]})
                for r in v if r["sat"] in SAT3 and r["text"].strip()]
            for s, v in jddc_turns(root).items()}


# JDDC customer `action` -> Bitext intent (anything not here -> "none")
JDDC_ACTION_TO_INTENT = {
    "保修返修及退换货政策": "check_refund_policy",
    "返回方式": "check_refund_policy",
    "售后运费": "check_refund_policy",
    "价保条件": "check_refund_policy",
    "返回地址": "check_refund_policy",
    "返修退换货拆包装": "check_refund_policy",
    "运费险咨询": "check_refund_policy",
    "配送周期": "delivery_period",
    "什么时间出库": "delivery_period",
    "订单状态解释": "track_order",
    "物流全程跟踪": "track_order",
    "下单后无记录": "track_order",
    "订单签收异常": "track_order",
    "订单历史记录查询": "track_order",
    "微信订单查询": "track_order",
    "订单无故取消": "track_order",
    "修改订单": "change_order",
    "订单合并": "change_order",
    "拆分订单": "change_order",
    "下单备注": "change_order",
    "恢复订单": "change_order",
    "发票退换修改": "get_invoice",
    "增票相关": "get_invoice",
    "是否提供发票": "get_invoice",
    "填写发票信息": "get_invoice",
    "电子发票": "get_invoice",
    "补发票": "get_invoice",
    "返修退换货发票": "get_invoice",
    "查看发票": "check_invoice",
    "正常退款周期": "track_refund",
    "返修退换货处理周期": "track_refund",
    "价保记录查询": "track_refund",
    "退款到哪儿": "track_refund",
    "在哪里查询退款": "track_refund",
    "退款异常": "track_refund",
    "价保申请流程": "get_refund",
    "申请退款": "get_refund",
    "联系客服": "contact_customer_service",
    "联系商家": "contact_customer_service",
    "联系售后": "contact_customer_service",
    "如何取消订单": "cancel_order",
    "查询取消是否成功": "cancel_order",
    "取消订单受理时间": "cancel_order",
    "拒收": "cancel_order",
    "配送方式": "delivery_options",
    "预约配送时间": "delivery_options",
    "能否自提": "delivery_options",
    "是否送货上门": "delivery_options",
    "能否配送": "delivery_options",
    "售前运费多少": "delivery_options",
    "支付方式": "check_payment_methods",
    "在线支付": "check_payment_methods",
    "货到付款": "check_payment_methods",
    "公司转账": "check_payment_methods",
    "支付异常": "payment_issue",
    "支付到账时间": "payment_issue",
    "无法购买提交": "place_order",
    "购物流程": "place_order",
    "下单地址填写": "set_up_shipping_address",
    "查看评价晒单": "review",
    "删除修改评价晒单": "review",
    "如何评价晒单": "review",
    "评价晒单异常": "review",
    "发错货": "complaint",
    "物流损": "complaint",
    "纠纷单申请": "complaint",
    "催促处理纠纷单": "complaint",
    "找回密码": "recover_password",
    "支付密码": "recover_password",
    "实名认证与解除": "edit_account",
    "手机邮件相关问题": "edit_account",
}


def jddc_intent(root=None) -> dict[str, list[Item]]:
    return {s: [Item(r["text"], JDDC_ACTION_TO_INTENT.get(r["action"], "none"), r["dialogue_id"],
                     {"action": r["action"]})
                for r in v if r["text"].strip()]
            for s, v in jddc_turns(root).items()}


# ------------------------------------------------------------------ SGD + MultiWOZ (USS)

USS_FILES = {"sgd": "en/uss_sgd_mwoz/sgd_valid_dialogues.csv", "mwoz": "en/uss_sgd_mwoz/mwoz_valid_dialogues.csv"}


def uss_turns(root=None) -> dict[str, list[dict]]:
    """All user turns (OVERALL rows dropped) by split; `corpus` added."""
    out = {"train": [], "dev": [], "test": []}
    for corpus, rel in USS_FILES.items():
        for r in rows(data_root(root) / rel):
            if r["user"].strip() == "OVERALL" or not r["user"].strip():
                continue
            r = dict(r, corpus=corpus)
            out[hash_split(r["dialogue_id"])].append(r)
    return out


def uss_sentiment(root=None) -> dict[str, list[Item]]:
    return {s: [Item(r["user"], SAT3[r["sat"]], r["dialogue_id"], {"corpus": r["corpus"]})
                for r in v if r["sat"] in SAT3]
            for s, v in uss_turns(root).items()}


# ------------------------------------------------------------------ STC-3

def stc3(root=None) -> dict[str, dict]:
    """{"train"/"test": {dialogue_id: {"S_mean", "A_mean", "E_mean", "turns": [(sender, text)]}}}."""
    base = data_root(root) / "zh/stc3_customer_helpdesk"
    dlg = {}
    for r in rows(base / "stc3_train_cn_dialogues.csv"):
        dlg[r["dialogue_id"]] = {k: float(r[k]) for k in ("A_mean", "S_mean", "E_mean")} | {"turns": []}
    for r in rows(base / "stc3_train_cn_turns.csv"):
        if r["dialogue_id"] in dlg:
            dlg[r["dialogue_id"]]["turns"].append((int(r["turn"]), r["sender"], r["text"]))
    out = {"train": {}, "test": {}}
    for k, d in dlg.items():
        d["turns"] = [(s, t) for _, s, t in sorted(d["turns"])]
        out["test" if int(k) % 10 == 5 else "train"][k] = d
    return out


def stc3_split(dialogue_id: str) -> str:
    """test: int(id) % 10 == 5; dev: == 6 (the dialogue-level choices are made there); else train."""
    b = int(dialogue_id) % 10
    return "test" if b == 5 else ("dev" if b == 6 else "train")


def stc3_sentiment(root=None) -> dict[str, list[Item]]:
    """STC-3 customer turns with their dialogue's satisfaction as a weak turn label, read the
    way JDDC's turn satisfaction is: S < -0.5 -> negative, S > 0.5 -> positive, else neutral
    (19 annotators' satisfaction with the whole exchange; the closest this set has to a turn
    label). By :func:`stc3_split`."""
    out = {"train": [], "dev": [], "test": []}
    for split in ("train", "test"):
        for did, d in stc3(root)[split].items():
            lab = "negative" if d["S_mean"] < -0.5 else "positive" if d["S_mean"] > 0.5 else "neutral"
            for sender, text in d["turns"]:
                if sender == "customer" and text.strip():
                    out[stc3_split(did)].append(Item(text.strip(), lab, did))
    return out


# ------------------------------------------------------------------ dissatisfaction (dialogue outcome)

DISSATISFACTION = ("other", "dissatisfied")


def dissatisfaction(root=None) -> dict[str, list[Item]]:
    """Customer turns with text, labelled with their dialogue's outcome: ``dissatisfied``
    (STC-3: the 19 annotators' mean satisfaction S < -0.5; JDDC-USS: the ``OVERALL`` rating
    0) or ``other`` (neutral and satisfied dialogues). By dialogue, with the splits of
    :mod:`yujing.training.dialogues` (STC-3 :func:`stc3_split`, JDDC :func:`hash_split`):
    the test and dev dialogues are never trained on. ``group`` is the dialogue id,
    ``extra["source"]`` ``stc3`` or ``jddc``."""
    out = {"train": [], "dev": [], "test": []}
    for part in stc3(root).values():
        for did, d in part.items():
            lab = DISSATISFACTION[1] if d["S_mean"] < -0.5 else DISSATISFACTION[0]
            for sender, text in d["turns"]:
                if sender == "customer" and text.strip():
                    out[stc3_split(did)].append(Item(text.strip(), lab, did, {"source": "stc3"}))
    by_dialogue: dict[str, list[dict]] = {}
    overall: dict[str, str] = {}
    for r in rows(data_root(root) / JDDC_FILE):
        if r["is_overall"] == "1":
            overall[r["dialogue_id"]] = r["sat"]
        else:
            by_dialogue.setdefault(r["dialogue_id"], []).append(r)
    for did, rs in by_dialogue.items():
        if did not in overall:
            continue
        lab = DISSATISFACTION[1] if overall[did] == "0" else DISSATISFACTION[0]
        for r in sorted(rs, key=lambda r: int(r["turn"])):
            if r["text"].strip():
                out[hash_split(did)].append(Item(r["text"].strip(), lab, did, {"source": "jddc"}))
    return out


# ------------------------------------------------------------------ SMP2020-EWECT

SMP_DIR = "zh/smp2020_ewect"
SMP_SPLITS = {"train": ["virus_train.csv", "usual_eval_labeled.csv"], "dev": ["virus_eval_labeled.csv"],
              "test_usual": ["usual_test_labeled.csv"], "test_virus": ["virus_test_labeled.csv"]}
SMP_TO_SENT = {"happy": "positive", "angry": "negative", "sad": "negative", "fear": "negative", "neutral": "neutral"}
SMP_TO_EMO = {"happy": "happy", "angry": "angry", "sad": "sad", "fear": "anxious", "neutral": "neutral"}


def smp2020(root=None, mapping=SMP_TO_EMO) -> dict[str, list[Item]]:
    out = {}
    for split, files in SMP_SPLITS.items():
        out[split] = [Item(r["content"].strip(), mapping[r["label"]], f"{f}:{r['id']}", {"orig": r["label"]})
                      for f in files for r in rows(data_root(root) / SMP_DIR / f)
                      if r["label"] in mapping and r["content"].strip()]
    return out


# ------------------------------------------------------------------ CPED

CPED_TO_EMO = {"neutral": "neutral", "anger": "angry", "disgust": "angry", "worried": "anxious", "fear": "anxious",
               "depress": "sad", "sadness": "sad", "happy": "happy", "grateful": "happy", "relaxed": "happy",
               "positive-other": "happy"}


def cped(root=None, task="emotion") -> dict[str, list[Item]]:
    base = data_root(root) / "zh/cped"
    out = {"train": [], "dev": [], "test": []}
    for f, split in (("cped_valid_split.csv", "train"), ("cped_test_split.csv", "test")):
        for r in rows(base / f):
            t = r["Utterance"].strip()
            if not t:
                continue
            lab = CPED_TO_EMO.get(r["Emotion"]) if task == "emotion" else r["Sentiment"]
            if lab is None or (task != "emotion" and lab not in SENTIMENT):
                continue
            s = split
            if split == "train" and bucket(r["Dialogue_ID"]) == 1:
                s = "dev"
            out[s].append(Item(t, lab, r["Dialogue_ID"], {"orig": r["Emotion"]}))
    return out


# ------------------------------------------------------------------ CrossWOZ

def crosswoz(root=None, task="sentiment") -> dict[str, list[Item]]:
    """task: sentiment (thank-only -> positive, else neutral), emotion (thank-only -> happy,
    else neutral) or intent (all -> none)."""
    base = data_root(root) / "zh/crosswoz"
    out = {"train": [], "dev": [], "test": []}
    for f, split in (("crosswoz_val_user_turns.csv", "train"), ("crosswoz_test_user_turns.csv", "test")):
        for r in rows(base / f):
            t = r["text"].strip()
            if not t:
                continue
            ints = set(filter(None, r["intents"].split(";")))
            thank_only = "General-thank" in ints and ints <= {"General-thank", "General-bye"}
            if task == "intent":
                lab = "none"
            elif task == "emotion":
                lab = "happy" if thank_only else "neutral"
            else:
                lab = "positive" if thank_only else "neutral"
            s = "dev" if split == "train" and bucket(r["dialogue_id"]) == 1 else split
            out[s].append(Item(t, lab, r["dialogue_id"], {"intents": r["intents"]}))
    return out


# ------------------------------------------------------------------ English sets

TWEETEVAL = {0: "anger", 1: "joy", 2: "optimism", 3: "sadness"}
TE_TO_EMO = {"anger": "angry", "joy": "happy", "optimism": "happy", "sadness": "sad"}
TE_TO_SENT = {"anger": "negative", "joy": "positive", "optimism": "positive", "sadness": "negative"}


def tweeteval(root=None, mapping=TE_TO_EMO) -> dict[str, list[Item]]:
    base = data_root(root) / "en/tweeteval_emotion"
    out = {}
    for split, f in (("train", "train"), ("dev", "val"), ("test", "test")):
        texts = (base / f"{f}_text.txt").read_text(encoding="utf-8").splitlines()
        labs = (base / f"{f}_labels.txt").read_text(encoding="utf-8").split()
        out[split] = [Item(t.strip(), mapping[TWEETEVAL[int(l)]], "", {"orig": TWEETEVAL[int(l)]})
                      for t, l in zip(texts, labs) if t.strip()]
    return out


def airline(root=None) -> dict[str, list[Item]]:
    out = {"train": [], "dev": [], "test": []}
    for r in rows(data_root(root) / "en/airline_sentiment_tweets.csv"):
        t, lab = r["text"].strip(), r["airline_sentiment"].strip()
        if not t or lab not in SENTIMENT:
            continue
        m = int(r["tweet_id"]) % 5
        out["test" if m == 0 else "dev" if m == 1 else "train"].append(Item(t, lab, "", {"reason": r.get("negativereason", "")}))
    return out


def bitext(root=None) -> dict[str, list[Item]]:
    """Intent items (label = Bitext intent); extra['flags'] has the register flags."""
    out = {"train": [], "dev": [], "test": []}
    for i, r in enumerate(rows(data_root(root) / "en/bitext_customer_service_8k.csv")):
        t = r["utterance"].strip()
        if not t or not r["intent"].strip():
            continue
        out["test" if i % 5 == 0 else "dev" if i % 5 == 1 else "train"].append(
            Item(t, r["intent"].strip(), "", {"flags": r["flags"]}))
    test = {" ".join(x.text.split()) for x in out["test"]}
    for s in ("train", "dev"):
        out[s] = [x for x in out[s] if " ".join(x.text.split()) not in test]
    return out


def bitext_as(task: str, root=None) -> dict[str, list[Item]]:
    """Bitext as sentiment (neutral / W -> negative) or emotion (neutral / W -> angry);
    complaint utterances dropped."""
    bad = "negative" if task == "sentiment" else "angry"
    return {s: [Item(x.text, bad if "W" in x.extra["flags"] else "neutral") for x in v if x.label != "complaint"]
            for s, v in bitext(root).items()}


def banking77(root=None) -> dict[str, list[Item]]:
    base = data_root(root) / "en"
    tr = [Item(r["text"].strip(), r["category"].strip()) for r in rows(base / "banking77_train.csv") if r["text"].strip()]
    te = [Item(r["text"].strip(), r["category"].strip()) for r in rows(base / "banking77_test.csv") if r["text"].strip()]
    return {"train": [x for i, x in enumerate(tr) if i % 5 != 1], "dev": tr[1::5], "test": te}


ZH_REVIEWS = {"zh/online_shopping_10_cats.csv": "zh_online_shopping", "zh/waimai_10k.csv": "zh_waimai",
              "zh/chnsenticorp_htl_all.csv": "zh_chnsenticorp_htl"}


def zh_reviews(root=None) -> dict[str, dict[str, list[Item]]]:
    """{name: {train, dev, test}} with the repo's rule (row % 5 == 0 test) and dev = row % 5 == 1;
    training/dev rows whose text is in any review test split are dropped."""
    out = {}
    for rel, name in ZH_REVIEWS.items():
        d = {"train": [], "dev": [], "test": []}
        for i, r in enumerate(rows(data_root(root) / rel)):
            t, lab = (r.get("review") or "").replace("\ufeff", "").strip(), (r.get("label") or "").strip()
            if not t or lab not in ("0", "1"):
                continue
            d["test" if i % 5 == 0 else "dev" if i % 5 == 1 else "train"].append(
                Item(t, "positive" if lab == "1" else "negative"))
        out[name] = d
    seen = {" ".join(x.text.split()) for d in out.values() for x in d["test"]}
    for d in out.values():
        for s in ("train", "dev"):
            d[s] = [x for x in d[s] if " ".join(x.text.split()) not in seen]
    return out


if __name__ == "__main__":
    import collections
    for name, fn in [("jddc_sentiment", jddc_sentiment), ("uss_sentiment", uss_sentiment),
                     ("jddc_intent", jddc_intent), ("smp2020", smp2020), ("cped", cped),
                     ("crosswoz", crosswoz), ("tweeteval", tweeteval), ("airline", airline),
                     ("bitext_sent", lambda: bitext_as("sentiment")), ("banking77", banking77)]:
        d = fn()
        print(name, {s: (len(v), dict(collections.Counter(x.label for x in v).most_common(6))) for s, v in d.items()})
    st = stc3()
    print("stc3", {s: len(v) for s, v in st.items()})
    print("reviews", {n: {s: len(v) for s, v in d.items()} for n, d in zh_reviews().items()})
