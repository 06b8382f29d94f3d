"""Training parts (subset name, lang, items) of the three models, from dialogue_data."""
from __future__ import annotations

from yujing.training.indomain import data as D

# in-domain dev sets: held out of every fit, used for class-bias offsets and the temperature
# (stc3's dev side stays out too: the dialogue-level dev split of `yujing eval conversations`)
# sentiment v3: STC-3 customer turns with their dialogue's satisfaction (data.stc3_sentiment)
STC3 = True
CALIB = {"sentiment": ["jddc", "uss", "stc3"], "emotion": ["smp2020", "cped"], "intent": ["jddc"]}


def sentiment_parts(root=None, final=False):
    """final=False: train sides only (tuning fits, dev sides scored); final=True: train + dev
    of every source except the calibration sets (JDDC, SGD/MWOZ), whose dev stays held out."""
    def tr(d, name):
        return d["train"] + (d["dev"] if final and name not in CALIB["sentiment"] else [])
    parts = []
    parts.append(("jddc", "zh", tr(D.jddc_sentiment(root), "jddc")))
    parts.append(("uss", "en", tr(D.uss_sentiment(root), "uss")))
    parts.append(("crosswoz", "zh", tr(D.crosswoz(root, "sentiment"), "crosswoz")))
    if STC3:
        parts.append(("stc3", "zh", tr(D.stc3_sentiment(root), "stc3")))
    parts.append(("smp2020", "zh", tr(D.smp2020(root, D.SMP_TO_SENT), "smp2020")))
    parts.append(("cped", "zh", tr(D.cped(root, "sentiment"), "cped")))
    parts.append(("airline", "en", tr(D.airline(root), "airline")))
    parts.append(("tweeteval", "en", tr(D.tweeteval(root, D.TE_TO_SENT), "tweeteval")))
    for name, d in D.zh_reviews(root).items():
        parts.append((name, "zh", tr(d, name)))
    parts.append(("bitext", "en", tr(D.bitext_as("sentiment", root), "bitext")))
    b = D.banking77(root)
    parts.append(("banking77", "en", [D.Item(x.text, "neutral") for x in tr(b, "banking77")]))
    return parts


def sentiment_dev(root=None):
    """Dev sides for tuning (name -> (items, binary))."""
    out = {"jddc": (D.jddc_sentiment(root)["dev"], False), "uss": (D.uss_sentiment(root)["dev"], False),
           "crosswoz": (D.crosswoz(root, "sentiment")["dev"], False), "airline": (D.airline(root)["dev"], False),
           "smp2020": (D.smp2020(root, D.SMP_TO_SENT)["dev"], False),
           "cped": (D.cped(root, "sentiment")["dev"], False)}
    for name, d in D.zh_reviews(root).items():
        out[name] = (d["dev"], True)
    return out


def sentiment_test(root=None):
    out = {"jddc": (D.jddc_sentiment(root)["test"], False), "uss": (D.uss_sentiment(root)["test"], False),
           "crosswoz": (D.crosswoz(root, "sentiment")["test"], False), "airline": (D.airline(root)["test"], False),
           "smp2020_usual": (D.smp2020(root, D.SMP_TO_SENT)["test_usual"], False),
           "cped": (D.cped(root, "sentiment")["test"], False)}
    for name, d in D.zh_reviews(root).items():
        out[name] = (d["test"], True)
    return out


def emotion_parts(root=None, final=False):
    def tr(d, name):
        return d["train"] + (d["dev"] if final and name not in CALIB["emotion"] else [])
    parts = [("smp2020", "zh", tr(D.smp2020(root, D.SMP_TO_EMO), "smp2020")),
             ("cped", "zh", tr(D.cped(root, "emotion"), "cped")),
             ("tweeteval", "en", tr(D.tweeteval(root, D.TE_TO_EMO), "tweeteval")),
             ("crosswoz", "zh", tr(D.crosswoz(root, "emotion"), "crosswoz")),
             ("bitext", "en", tr(D.bitext_as("emotion", root), "bitext"))]
    j = D.jddc_sentiment(root)
    parts.append(("jddc_neutral", "zh", [D.Item(x.text, "neutral") for x in tr(j, "jddc") if x.label == "neutral"]))
    u = D.uss_turns(root)
    uss = [D.Item(r["user"], "neutral") for r in u["train"] + (u["dev"] if final else [])]
    parts.append(("uss_neutral", "en", uss))
    a = D.airline(root)
    parts.append(("airline_neutral", "en", [D.Item(x.text, "neutral") for x in tr(a, "airline") if x.label == "neutral"]))
    return parts


def emotion_dev(root=None):
    return {"smp2020": D.smp2020(root, D.SMP_TO_EMO)["dev"], "cped": D.cped(root, "emotion")["dev"],
            "tweeteval": D.tweeteval(root, D.TE_TO_EMO)["dev"]}


def emotion_test(root=None):
    s = D.smp2020(root, D.SMP_TO_EMO)
    return {"smp2020_usual": s["test_usual"], "smp2020_virus": s["test_virus"],
            "cped": D.cped(root, "emotion")["test"], "tweeteval": D.tweeteval(root, D.TE_TO_EMO)["test"]}


def intent_parts(root=None, final=False):
    def tr(d, name):
        return d["train"] + (d["dev"] if final and name not in CALIB["intent"] else [])
    bt = D.bitext(root)
    parts = [("bitext", "en", tr(bt, "bitext")),
             ("jddc", "zh", tr(D.jddc_intent(root), "jddc")),
             ("crosswoz", "zh", tr(D.crosswoz(root, "intent"), "crosswoz"))]
    u = D.uss_turns(root)
    parts.append(("uss_none", "en", [D.Item(r["user"], "none") for r in u["train"] + (u["dev"] if final else [])]))
    return parts
