"""Lexicon models: the last-resort sentiment and intent models, Chinese and English.

When no trained model can be loaded (no Triton, no artifact), the service still needs
probabilities for every turn. These two models need nothing but the word lists in
``service/lexicons/`` and run in-process at tens of thousands of short texts per second.
They are honest baselines, not replacements for trained models: they know only the
words on their lists and read no context beyond a few tokens.

``LexiconSentiment`` (labels ``negative, neutral, positive``)
    Sums the weights of the polarity terms found in a text (``sentiment_zh.txt``,
    ``sentiment_en.txt``; weights in [-2.5, 2]). Where terms overlap the longest wins,
    so ``不错`` (positive) beats ``不``, ``不满意`` beats ``满意`` and ``没问题`` beats ``问题``.
    Modifiers act on the next term if it follows within a short window (4 characters
    for Chinese, 24 for English) in the same clause:

    * a negator (``不 没 没有 别 无 未 并不 不太``, ``not no never n't``...) flips the term:
      a positive one to ``-0.8 * w`` ("not happy", ``不开心``), a negative one to
      ``-0.5 * w`` ("not terrible" is mildly positive; the idioms "not bad" and ``不错``
      are terms of their own);
    * an intensifier multiplies it (``非常 太 很 特别``, ``very so really extremely``:
      1.3-1.8; ``有点 稍微``, "a bit", "slightly": 0.6);
    * a contrast word (``但是 可是 不过``, "but", "however") halves everything before it.

    The net polarity ``s`` is boosted by exclamation marks, ``s *= 1 + 0.15 *
    min(n_exclamations, 4)``, and mapped to probabilities with a softmax over the logits
    ``(-2 s, 0.8, 2 s)`` (negative, neutral, positive): no evidence gives neutral 0.53,
    one term of weight 1 gives its side 0.76, two strong ones more than 0.99.
``LexiconIntent`` (labels: 15 Bitext customer-service intents and ``none``)
    An intent scores the sum of the weights of its distinct cues found in the text
    (``intents.txt``); logits are ``6 * score - 4`` for an intent and 0 for ``none``, so a
    text with no cue is ``none`` (0.78), and one decisive cue (weight 1.0) gives its
    intent about 0.85. Negation is ignored ("I don't want to cancel" is still
    cancel_order).

Artifacts: a directory with ``model.json`` of kind ``lexicon`` loads through
:func:`yujing.service.models.artifact.load_model`::

    {"kind": "lexicon", "name": "sentiment", "task": "sentiment",
     "labels": ["negative", "neutral", "positive"], "version": "1",
     "terms": {"拉胯": -1.5, "lifesaver": 1.5}}

``task`` is ``sentiment`` or ``intent`` (inferred from the labels when left out).
``labels`` fixes the order of the output columns; for ``intent`` it may be a subset of
:data:`INTENT_LABELS` that contains ``none``, and the probability of every intent left out
goes to ``none``. ``terms`` (sentiment: term -> weight) and ``cues`` (intent: intent ->
{cue: weight}) extend or override the built-in lists, in the syntax of the files.

Measured on ``../shared/data`` (``python -m yujing.service.models.lexicon --evaluate``; no
training, so every row is held out; argmax accuracy, and the majority-class baseline):

    =====================================================  ========  =========
    set                                                    accuracy  majority
    =====================================================  ========  =========
    zh waimai_10k, binary (20 % predicted neutral = wrong)   0.71      0.67
    zh chnsenticorp_htl_all, binary (14 % neutral)           0.72      0.69
    en airline_sentiment_tweets, 3 classes                   0.59      0.63
    en Bitext, 4,575 utterances of the 15 covered intents    0.76      0.07
    en Bitext, other intents predicted ``none``              0.83
    =====================================================  ========  =========

Sentiment is barely above (English: below) always answering the majority class: the
seeds ask for >= 92 %, which only the trained models can approach. Use this model to keep
serving, not to judge.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from yujing.service.featurize import TOKEN_MARK, compile_cues, english_cues, mark_tokens
from yujing.service.models.artifact import ArtifactError, register_loader
from yujing.service.paths import LEXICON_DIR

__all__ = [
    "INTENT_LABELS",
    "SENTIMENT_LABELS",
    "LexiconIntent",
    "LexiconSentiment",
    "load_lexicon",
    "write_artifact",
]

SENTIMENT_LABELS = ("negative", "neutral", "positive")
INTENT_LABELS = (
    "complaint", "contact_human_agent", "contact_customer_service", "get_refund",
    "track_refund", "cancel_order", "change_order", "change_shipping_address",
    "delivery_period", "track_order", "payment_issue", "check_invoice", "get_invoice",
    "delete_account", "recover_password", "none",
)
VERSION = "1"

_CJK_RE = re.compile("[\u3400-\u9fff\uf900-\ufaff]")
_ENDING_RE = re.compile(r"(?<=[a-z])\*")
_GAP = TOKEN_MARK + "~" + r"\s+" + TOKEN_MARK


def _cue_source(cue: str) -> str:
    """A cue in the lexicon-file syntax -> regex source for :func:`compile_cues`."""
    if _CJK_RE.search(cue):
        return cue
    (source,) = english_cues(_ENDING_RE.sub("[a-z]*", cue))
    return source.replace(_GAP, r"(?:\S+\s+){0,3}" + TOKEN_MARK)


def _read_table(path: Path) -> Iterable[list[str]]:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) < 2:
                raise ValueError(f"{path}:{n}: expected tab-separated fields: {line!r}")
            yield fields


# ---------------------------------------------------------------------------------------
# sentiment
# ---------------------------------------------------------------------------------------

_TERM, _NEGATOR, _INTENSIFIER, _CONTRAST = range(4)

_NEGATORS = [
    "不", "没", "没有", "别", "无", "未", "并不", "并没有", "毫无", "从不", "从没", "从未", "决不",
    "绝不", "不是", "不太", "不怎么", "不够", "不算", "不会",
    *english_cues("not", "no", "never", "nothing", "without", "hardly", "barely", "neither",
                  "nor", "cannot", "dont", "doesnt", "didnt", "isnt", "wasnt", "arent",
                  "werent", "cant", "couldnt", "wont", "wouldnt", "havent", "hasnt", "aint"),
    TOKEN_MARK + r"[a-z]+n['’]t(?![a-z0-9])",
]
_INTENSIFIERS = {
    "非常": 1.6, "太": 1.5, "很": 1.3, "特别": 1.5, "超": 1.4, "超级": 1.6, "极其": 1.8,
    "极": 1.6, "十分": 1.5, "相当": 1.3, "真": 1.2, "真的": 1.3, "最": 1.5, "越来越": 1.3,
    "实在": 1.4, "简直": 1.5, "巨": 1.5, "贼": 1.4, "好不": 1.4,
    "有点": 0.6, "有些": 0.7, "稍微": 0.6, "略": 0.7, "一点": 0.7,
    **{s: w for phrases, w in (
        (("very", "so", "really", "too", "quite", "pretty", "such"), 1.4),
        (("extremely", "absolutely", "incredibly", "utterly", "totally", "completely",
          "super", "highly", "truly", "most"), 1.7),
        (("a bit", "a little", "slightly", "somewhat", "kinda", "kind of", "sort of",
          "rather"), 0.6),
    ) for s in english_cues(*phrases)},
}
_CONTRASTS = ["但是", "但", "可是", "不过", "然而", "就是",
              *english_cues("but", "however", "although", "though", "yet")]
_CLAUSE_BREAK = frozenset(",.;:!?，。；：！？\n、")
_WINDOW_ZH, _WINDOW_EN = 4, 24
_FLIP_POSITIVE, _FLIP_NEGATIVE = -0.8, -0.5
_CONTRAST_DAMPING = 0.5
_EXCLAMATION_BOOST, _EXCLAMATION_CAP = 0.15, 4
_MAX_MULTIPLIER = 3.0
_SENTIMENT_SLOPE, _NEUTRAL_LOGIT = 2.0, 0.8


@dataclass(frozen=True)
class _Entry:
    kind: int
    value: float
    english: bool


def _sentiment_entries(extra_terms: Mapping[str, float] | None) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for cue in _NEGATORS:
        entries[cue] = _Entry(_NEGATOR, 0.0, cue.startswith(TOKEN_MARK))
    for cue, w in _INTENSIFIERS.items():
        entries[cue] = _Entry(_INTENSIFIER, w, cue.startswith(TOKEN_MARK))
    for cue in _CONTRASTS:
        entries[cue] = _Entry(_CONTRAST, 0.0, cue.startswith(TOKEN_MARK))
    terms: dict[str, float] = {}
    for name in ("sentiment_zh.txt", "sentiment_en.txt"):
        for fields in _read_table(LEXICON_DIR / name):
            terms[fields[0]] = float(fields[1])
    terms.update(extra_terms or {})
    for term, w in terms.items():
        source = _cue_source(term)
        entries[source] = _Entry(_TERM, float(w), source.startswith(TOKEN_MARK))
    return entries


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class LexiconSentiment:
    """Weighted zh/en polarity lexicon with negation, intensifiers and contrast.

    >>> m = LexiconSentiment()
    >>> p = m.predict_proba(["太差了，我要投诉！", "谢谢，服务很好", "not bad at all", "我不满意"])
    >>> [m.labels[i] for i in p.argmax(axis=1)]
    ['negative', 'positive', 'positive', 'negative']
    """

    def __init__(self, *, name: str = "lexicon-sentiment", version: str = VERSION,
                 labels: Sequence[str] | None = None,
                 extra_terms: Mapping[str, float] | None = None):
        self.name = name
        self.version = str(version)
        labels = tuple(labels) if labels is not None else SENTIMENT_LABELS
        if sorted(labels) != sorted(SENTIMENT_LABELS):
            raise ValueError(f"sentiment labels must be a permutation of {SENTIMENT_LABELS}, "
                             f"got {labels}")
        self.labels = labels
        self._columns = [SENTIMENT_LABELS.index(lab) for lab in labels]
        entries = _sentiment_entries(extra_terms)
        sources = list(entries)
        # tags are bit sets; where two entries spell the same cue the later one wins
        self._pattern, tags = compile_cues((s, 1 << i) for i, s in enumerate(sources))
        self._by_group = [entries[sources[t.bit_length() - 1]] for t in tags]

    def polarity(self, texts: Sequence[str]) -> np.ndarray:
        """Net polarity of each text (float64; < 0 negative, 0 no evidence, > 0 positive)."""
        marked, starts = mark_tokens(texts)
        ends = np.append(starts[1:] - 1, len(marked))
        out = np.zeros(len(starts), np.float64)
        text_idx, score = 0, 0.0
        neg_end = mult_end = -1
        neg_en = mult_en = False
        mult = 1.0

        def close(i: int, s: float) -> None:
            seg = marked[starts[i]:ends[i]]
            boost = 1 + _EXCLAMATION_BOOST * min(seg.count("!"), _EXCLAMATION_CAP)
            out[i] = s * boost

        def in_reach(end: int, english: bool, start: int) -> bool:
            if end < 0 or start - end > (_WINDOW_EN if english else _WINDOW_ZH):
                return False
            return not any(c in _CLAUSE_BREAK for c in marked[end:start])

        for m in self._pattern.finditer(marked):
            start = m.start()
            while start > ends[text_idx]:
                close(text_idx, score)
                text_idx, score, neg_end, mult_end, mult = text_idx + 1, 0.0, -1, -1, 1.0
            e = self._by_group[m.lastindex]
            if e.kind == _TERM:
                w = e.value
                if in_reach(mult_end, mult_en, start):
                    w *= mult
                if in_reach(neg_end, neg_en, start):
                    w *= _FLIP_POSITIVE if w > 0 else _FLIP_NEGATIVE
                score += w
                neg_end = mult_end = -1
                mult = 1.0
            elif e.kind == _NEGATOR:
                neg_end, neg_en = m.end(), e.english
            elif e.kind == _INTENSIFIER:
                mult = min(mult * e.value, _MAX_MULTIPLIER) if mult_end >= 0 else e.value
                mult_end, mult_en = m.end(), e.english
            else:
                score *= _CONTRAST_DAMPING
                neg_end = mult_end = -1
        for i in range(text_idx, len(starts)):
            close(i, score if i == text_idx else 0.0)
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        s = _SENTIMENT_SLOPE * self.polarity(texts)
        logits = np.stack([-s, np.full_like(s, _NEUTRAL_LOGIT), s], axis=1)
        return _softmax(logits)[:, self._columns]


# ---------------------------------------------------------------------------------------
# intent
# ---------------------------------------------------------------------------------------

_INTENT_SLOPE, _INTENT_OFFSET = 6.0, 4.0


def _intent_cues(extra: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    cues: dict[str, dict[str, float]] = {}
    for intent, weight, cue in _read_table(LEXICON_DIR / "intents.txt"):
        cues.setdefault(_cue_source(cue), {})[intent] = float(weight)
    for intent, table in (extra or {}).items():
        for cue, weight in table.items():
            cues.setdefault(_cue_source(cue), {})[intent] = float(weight)
    unknown = {i for t in cues.values() for i in t} - set(INTENT_LABELS)
    if unknown:
        raise ValueError(f"unknown intents in cue lists: {sorted(unknown)}")
    return cues


class LexiconIntent:
    """Keyword cues for Bitext customer-service intents, Chinese and English.

    >>> m = LexiconIntent()
    >>> p = m.predict_proba(["我要取消订单", "where is my package?", "转人工", "hello"])
    >>> [m.labels[i] for i in p.argmax(axis=1)]
    ['cancel_order', 'track_order', 'contact_human_agent', 'none']
    """

    def __init__(self, *, name: str = "lexicon-intent", version: str = VERSION,
                 labels: Sequence[str] | None = None,
                 extra_cues: Mapping[str, Mapping[str, float]] | None = None):
        self.name = name
        self.version = str(version)
        labels = tuple(labels) if labels is not None else INTENT_LABELS
        unknown = set(labels) - set(INTENT_LABELS)
        if unknown or "none" not in labels or len(set(labels)) != len(labels):
            raise ValueError(f"intent labels must be distinct names from {INTENT_LABELS} "
                             f"including 'none', got {labels}")
        self.labels = labels
        cues = _intent_cues(extra_cues)
        sources = list(cues)
        self._pattern, tags = compile_cues((s, 1 << i) for i, s in enumerate(sources))
        index = {lab: j for j, lab in enumerate(INTENT_LABELS)}
        self._by_group = [[(index[i], w) for i, w in cues[sources[t.bit_length() - 1]].items()]
                          for t in tags]
        self._columns = [index[lab] for lab in labels]
        self._folded = [index[lab] for lab in INTENT_LABELS if lab not in labels]
        self._none_column = labels.index("none")

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Cue score of every intent of :data:`INTENT_LABELS` (float64, ``none`` is 0)."""
        marked, starts = mark_tokens(texts)
        out = np.zeros((len(starts), len(INTENT_LABELS)), np.float64)
        hits = [(m.start(), m.lastindex) for m in self._pattern.finditer(marked)]
        if hits:
            owner = np.searchsorted(starts, [h[0] for h in hits], side="right") - 1
            seen = set()
            for i, (_, group) in zip(owner.tolist(), hits):
                if (i, group) not in seen:
                    seen.add((i, group))
                    for j, w in self._by_group[group]:
                        out[i, j] += w
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        logits = _INTENT_SLOPE * self.scores(texts) - _INTENT_OFFSET
        logits[:, INTENT_LABELS.index("none")] = 0.0
        p = _softmax(logits)
        out = p[:, self._columns]
        if self._folded:
            out[:, self._none_column] += p[:, self._folded].sum(axis=1)
        return out


# ---------------------------------------------------------------------------------------
# artifact kind "lexicon"
# ---------------------------------------------------------------------------------------


@register_loader("lexicon")
def load_lexicon(path: Path, meta: dict):
    """Loader of artifact kind ``lexicon`` (see the module docstring for model.json)."""
    labels = tuple(meta["labels"])
    task = meta.get("task")
    if task is None:
        task = "sentiment" if sorted(labels) == sorted(SENTIMENT_LABELS) else "intent"
    common = dict(name=str(meta["name"]), version=str(meta.get("version", VERSION)),
                  labels=labels)
    try:
        if task == "sentiment":
            return LexiconSentiment(**common, extra_terms=meta.get("terms"))
        if task == "intent":
            return LexiconIntent(**common, extra_cues=meta.get("cues"))
    except (ValueError, TypeError, re.error) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    raise ArtifactError(f"{path}: unknown lexicon task {task!r}; known: sentiment, intent")


def write_artifact(path: str | Path, task: str, name: str | None = None,
                   labels: Sequence[str] | None = None, **extra) -> Path:
    """Write a ``lexicon`` artifact directory (``model.json`` only) and return its path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    default = SENTIMENT_LABELS if task == "sentiment" else INTENT_LABELS
    meta = {"kind": "lexicon", "name": name or task, "task": task,
            "labels": list(labels or default), "version": VERSION, **extra}
    (path / "model.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n",
                                     encoding="utf-8")
    return path


def _evaluate(data_dir: Path) -> None:   # pragma: no cover - a report, run by hand
    import csv

    sent = LexiconSentiment()
    for rel, text_col in (("zh/waimai_10k.csv", "review"),
                          ("zh/chnsenticorp_htl_all.csv", "review")):
        rows = list(csv.DictReader(open(data_dir / rel, encoding="utf-8")))
        pred = sent.predict_proba([r[text_col] for r in rows]).argmax(axis=1)
        truth = np.array([2 if r["label"] == "1" else 0 for r in rows])
        print(f"{rel}: accuracy {np.mean(pred == truth):.3f} "
              f"(neutral {np.mean(pred == 1):.3f}) n={len(rows)}")
    rows = list(csv.DictReader(open(data_dir / "en/airline_sentiment_tweets.csv",
                                    encoding="utf-8")))
    pred = sent.predict_proba([r["text"] for r in rows]).argmax(axis=1)
    truth = np.array([SENTIMENT_LABELS.index(r["airline_sentiment"]) for r in rows])
    print(f"airline: accuracy {np.mean(pred == truth):.3f} n={len(rows)}")
    intent = LexiconIntent()
    rows = [r for r in csv.DictReader(open(data_dir / "en/bitext_customer_service_8k.csv",
                                           encoding="utf-8"))]
    covered = [r for r in rows if r["intent"] in INTENT_LABELS]
    pred = intent.predict_proba([r["utterance"] for r in covered]).argmax(axis=1)
    truth = np.array([INTENT_LABELS.index(r["intent"]) for r in covered])
    print(f"bitext covered intents: accuracy {np.mean(pred == truth):.3f} n={len(covered)}")
    other = [r["utterance"] for r in rows if r["intent"] not in INTENT_LABELS]
    none = intent.predict_proba(other).argmax(axis=1) == INTENT_LABELS.index("none")
    print(f"bitext other intents predicted none: {np.mean(none):.3f}")


if __name__ == "__main__":   # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description="Evaluate the lexicon models.")
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[3] / "shared" / "data")
    args = parser.parse_args()
    if args.evaluate:
        _evaluate(args.data)
