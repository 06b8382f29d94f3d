"""Readers for the reference data sets and the deterministic train/test splits.

The data sets live outside the repository (``shared/data`` beside it, see its SOURCES.md);
nothing here copies them. The data directory is, in order: an explicit ``data_dir``
argument (the CLI's ``--data-dir``), ``$YUJING_DATA_DIR``, ``<repo root>/../shared/data``.

Split rules (also stated in MODELS.md):

* English airline sentiment: test iff ``tweet_id % 5 == 0``.
* Chinese sentiment (each of the three files): test iff the 0-based data row index
  (header excluded, counted before empty reviews are dropped) ``% 5 == 0``.
* Bitext intent: test iff the 0-based data row index ``% 5 == 0``.
* For both: training rows whose text also occurs in a test split are dropped (the hotel
  category of online_shopping_10_cats repeats ChnSentiCorp: without this about 900 of
  ChnSentiCorp's 1,554 test reviews would be in the training data).
* BANKING77: the official ``banking77_train.csv`` / ``banking77_test.csv``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from yujing.service.paths import DATA_DIR_ENV, data_dir  # noqa: F401 (re-exported)


SENTIMENT_LABELS = ("negative", "neutral", "positive")

# file (relative to the data dir) -> short name used in reports
ZH_SENTIMENT_FILES = {
    "zh/online_shopping_10_cats.csv": "zh_online_shopping",
    "zh/waimai_10k.csv": "zh_waimai",
    "zh/chnsenticorp_htl_all.csv": "zh_chnsenticorp_htl",
}
EN_SENTIMENT_FILE = "en/airline_sentiment_tweets.csv"
BITEXT_FILE = "en/bitext_customer_service_8k.csv"
BANKING_TRAIN = "en/banking77_train.csv"
BANKING_TEST = "en/banking77_test.csv"
BANKING_CATEGORIES = "en/banking77_categories.json"

MODEL_NAMES = ("sentiment", "intent", "intent_banking77", "intent_banking77_minilm", "sentiment_e5")

SPLIT_RULES = {
    "sentiment": (
        "en/airline_sentiment_tweets.csv: test iff tweet_id % 5 == 0; "
        "zh/online_shopping_10_cats.csv, zh/waimai_10k.csv, zh/chnsenticorp_htl_all.csv: "
        "test iff the 0-based data row index (header excluded, empty reviews dropped after "
        "indexing) % 5 == 0; the rest is training data, less every row whose text "
        "(whitespace-normalised) also occurs in any of the four test splits (the hotel "
        "category of online_shopping_10_cats repeats ChnSentiCorp reviews)"),
    "intent": ("en/bitext_customer_service_8k.csv: test iff the 0-based data row index % 5 == 0 "
               "(rows are grouped by intent, so this is stratified); the rest is training data, less "
               "rows whose text (whitespace-normalised) also occurs in the test split"),
    "intent_banking77": "official split: en/banking77_train.csv for training, en/banking77_test.csv for test",
}


class DataMissing(FileNotFoundError):
    """The data directory or one of its files is absent."""




@dataclass
class Subset:
    """One named evaluation/training slice: texts, label strings, language tag."""
    name: str
    lang: str                 # "zh" or "en"
    texts: list[str]
    labels: list[str]
    binary: bool = False      # labels only negative/positive (no neutral class in the data)


@dataclass
class Dataset:
    model: str
    labels: tuple[str, ...]
    train: list[Subset]
    test: list[Subset]
    files: list[str] = field(default_factory=list)   # relative paths read
    split_rule: str = ""

    def test_sample(self, every: int) -> "Dataset":
        """The same data set with only every ``every``-th row of each test subset."""
        test = [Subset(s.name, s.lang, s.texts[::every], s.labels[::every], s.binary) for s in self.test]
        return Dataset(self.model, self.labels, self.train, test, self.files,
                       f"{self.split_rule}; test rows 0, {every}, {2 * every}, ... of each test subset")

    def train_texts(self) -> tuple[list[str], list[str]]:
        texts: list[str] = []
        labels: list[str] = []
        for s in self.train:
            texts += s.texts
            labels += s.labels
        return texts, labels


def _need(root: Path, rel: str) -> Path:
    p = root / rel
    if not p.is_file():
        raise DataMissing(f"data file missing: {p} (set ${DATA_DIR_ENV} or --data-dir)")
    return p


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _clean(text: str | None) -> str:
    return (text or "").replace("\ufeff", "").strip()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _zh_sentiment(root: Path, rel: str) -> tuple[Subset, Subset]:
    name = ZH_SENTIMENT_FILES[rel]
    tr = Subset(name, "zh", [], [], binary=True)
    te = Subset(name, "zh", [], [], binary=True)
    for i, row in enumerate(_rows(_need(root, rel))):
        text = _clean(row.get("review"))
        lab = (row.get("label") or "").strip()
        if not text or lab not in ("0", "1"):
            continue
        dst = te if i % 5 == 0 else tr
        dst.texts.append(text)
        dst.labels.append("positive" if lab == "1" else "negative")
    return tr, te


def _en_sentiment(root: Path) -> tuple[Subset, Subset]:
    tr = Subset("en_airline", "en", [], [])
    te = Subset("en_airline", "en", [], [])
    for row in _rows(_need(root, EN_SENTIMENT_FILE)):
        text = _clean(row.get("text"))
        lab = (row.get("airline_sentiment") or "").strip()
        if not text or lab not in SENTIMENT_LABELS:
            continue
        dst = te if int(row["tweet_id"]) % 5 == 0 else tr
        dst.texts.append(text)
        dst.labels.append(lab)
    return tr, te


def _drop_test_duplicates(train: list[Subset], test: list[Subset]) -> int:
    """Remove training rows whose text (whitespace-normalised) is in any test subset."""
    def key(t: str) -> str:
        return " ".join(t.split())
    seen = {key(t) for s in test for t in s.texts}
    dropped = 0
    for s in train:
        keep = [i for i, t in enumerate(s.texts) if key(t) not in seen]
        dropped += len(s.texts) - len(keep)
        s.texts = [s.texts[i] for i in keep]
        s.labels = [s.labels[i] for i in keep]
    return dropped


def load_sentiment(root: Path) -> Dataset:
    train, test = [], []
    tr, te = _en_sentiment(root)
    train.append(tr)
    test.append(te)
    for rel in ZH_SENTIMENT_FILES:
        tr, te = _zh_sentiment(root, rel)
        train.append(tr)
        test.append(te)
    _drop_test_duplicates(train, test)
    return Dataset("sentiment", SENTIMENT_LABELS, train, test,
                   [EN_SENTIMENT_FILE, *ZH_SENTIMENT_FILES], SPLIT_RULES["sentiment"])


def load_bitext(root: Path) -> Dataset:
    tr = Subset("en_bitext", "en", [], [])
    te = Subset("en_bitext", "en", [], [])
    intents: list[str] = []
    for i, row in enumerate(_rows(_need(root, BITEXT_FILE))):
        text = _clean(row.get("utterance"))
        lab = (row.get("intent") or "").strip()
        if not lab:
            continue
        if lab not in intents:
            intents.append(lab)
        if not text:
            continue
        dst = te if i % 5 == 0 else tr
        dst.texts.append(text)
        dst.labels.append(lab)
    _drop_test_duplicates([tr], [te])
    return Dataset("intent", tuple(sorted(intents)), [tr], [te], [BITEXT_FILE], SPLIT_RULES["intent"])


def load_banking77(root: Path) -> Dataset:
    cats = json.loads(_need(root, BANKING_CATEGORIES).read_text(encoding="utf-8"))
    subsets = []
    for rel in (BANKING_TRAIN, BANKING_TEST):
        s = Subset("en_banking77", "en", [], [])
        for row in _rows(_need(root, rel)):
            text = _clean(row.get("text"))
            lab = (row.get("category") or "").strip()
            if not text or not lab:
                continue
            if lab not in cats:
                raise ValueError(f"{rel}: category {lab!r} not in {BANKING_CATEGORIES}")
            s.texts.append(text)
            s.labels.append(lab)
        subsets.append(s)
    return Dataset("intent_banking77", tuple(cats), [subsets[0]], [subsets[1]],
                   [BANKING_TRAIN, BANKING_TEST, BANKING_CATEGORIES], SPLIT_RULES["intent_banking77"])


LOADERS = {"sentiment": load_sentiment, "intent": load_bitext, "intent_banking77": load_banking77,
           "intent_banking77_minilm": load_banking77, "sentiment_e5": load_sentiment}


def load_dataset(model: str, root: str | Path | None = None) -> Dataset:
    if model not in LOADERS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODEL_NAMES)}")
    r = data_dir(root)
    if not r.is_dir():
        raise DataMissing(f"data directory not found: {r} (set ${DATA_DIR_ENV} or --data-dir)")
    return LOADERS[model](r)
