"""The models' outputs for one batch, by turn position: the first step after the model
call (:mod:`yujing.service.engine`).

A position gets zeros (no sentiment, intent -1) where the turn had no text, or a text in
a language the model was not trained on: its output there is not evidence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yujing.service.featurize import language_mask
from yujing.service.policy import IntentTable

# the intent label a model uses for "this text asks for nothing in particular"
NO_INTENT = "none"


def trusted(scores, text_languages: np.ndarray) -> np.ndarray:
    """Per text: use this model's output? Yes when the model states no languages, when the
    text has no letters (emoji, digits: the model may still know them), or when the text
    has letters of a language the model was trained on. A Chinese-only text is thus not
    given an intent by an English-only intent model."""
    if not scores.languages:
        return np.ones(len(text_languages), bool)
    mask = language_mask(scores.languages)
    return (text_languages == 0) | ((text_languages & mask) != 0)


@dataclass
class ModelOutputs:
    """Per position of the batch (``n`` turns)."""

    sentiment: np.ndarray                 # float64 [n]: P(pos) - P(neg)
    negative: np.ndarray                  # bool [n]: the sentiment label is the negative one
    has_sentiment: np.ndarray             # bool [n]: the sentiment model's output is used
    sentiment_label: list                 # str [n], "" without a sentiment
    sentiment_labels: tuple = ()          # the sentiment model's label set
    sentiment_probs: np.ndarray | None = None   # float32 [n, labels]
    intent_id: np.ndarray | None = None   # int64 [n]: label index, -1 without an intent
    intent_probs: np.ndarray | None = None      # float32 [n, labels]
    intent_table: IntentTable | None = None     # the policy's view of the intent labels
    emotion_labels: tuple = ()            # the emotion model's label set (empty: no emotion model)
    emotion_probs: np.ndarray | None = None     # float32 [n, labels], zeros where not trusted
    emotion_id: np.ndarray | None = None  # int64 [n]: label index, -1 without an emotion
    # the dissatisfaction model (None: none configured): P(dissatisfied) under equal priors,
    # 0 where not trusted, and where it is trusted (a customer text in a language it knows)
    dissatisfaction: np.ndarray | None = None       # float64 [n]
    has_dissatisfaction: np.ndarray | None = None   # bool [n]

    @classmethod
    def empty(cls, n: int) -> "ModelOutputs":
        return cls(sentiment=np.zeros(n), negative=np.zeros(n, bool), has_sentiment=np.zeros(n, bool),
                   sentiment_label=[""] * n, intent_id=np.full(n, -1, np.int64))


def read_outputs(result, with_text, n: int, languages: np.ndarray, policy, intent_table) -> ModelOutputs:
    """``result`` (the router's answer for the texts at positions ``with_text``, or None)
    spread over the ``n`` positions; ``languages`` are the texts' language bits (all
    positions), ``intent_table(labels)`` the policy's table for a label set."""
    out = ModelOutputs.empty(n)
    if result is None:
        return out
    rows = np.asarray(with_text, np.int64)
    langs = languages[rows]
    _read_sentiment(out, result.sentiment, rows, trusted(result.sentiment, langs), policy)
    _read_intent(out, result.intent, rows, trusted(result.intent, langs), intent_table)
    if getattr(result, "emotion", None) is not None:
        _read_emotion(out, result.emotion, rows, trusted(result.emotion, langs))
    if getattr(result, "dissatisfaction", None) is not None:
        _read_dissatisfaction(out, result.dissatisfaction, rows, trusted(result.dissatisfaction, langs))
    return out


def _read_sentiment(out: ModelOutputs, scores, rows, ok, policy) -> None:
    n = len(out.sentiment_label)
    labels = scores.labels
    probs = np.zeros((n, len(labels)), np.float32)
    probs[rows[ok]] = scores.probs[ok]
    out.has_sentiment[rows[ok]] = True
    neg_col = labels.index(policy.negative_label)
    pos_col = labels.index(policy.positive_label)
    out.sentiment[rows] = probs[rows, pos_col] - probs[rows, neg_col]
    best = np.argmax(scores.probs, axis=1)
    out.negative[rows] = (best == neg_col) & ok
    for r, b, good in zip(rows.tolist(), best, ok):
        if good:
            out.sentiment_label[r] = labels[b]
    out.sentiment_labels = labels
    out.sentiment_probs = probs


def _read_intent(out: ModelOutputs, scores, rows, ok, intent_table) -> None:
    n = len(out.sentiment_label)
    out.intent_table = intent_table(scores.labels)
    out.intent_probs = np.zeros((n, len(scores.labels)), np.float32)
    out.intent_probs[rows] = scores.probs
    out.intent_id[rows[ok]] = np.argmax(scores.probs[ok], axis=1)
    if NO_INTENT in scores.labels:     # the model's "no intent" is no intent: no weight, no repeat
        out.intent_id[out.intent_id == scores.labels.index(NO_INTENT)] = -1


# the dissatisfaction model's label whose probability is P(dissatisfied)
DISSATISFIED = "dissatisfied"


def _read_dissatisfaction(out: ModelOutputs, scores, rows, ok) -> None:
    n = len(out.sentiment_label)
    col = list(scores.labels).index(DISSATISFIED)
    out.dissatisfaction = np.zeros(n, np.float64)
    out.has_dissatisfaction = np.zeros(n, bool)
    out.dissatisfaction[rows[ok]] = scores.probs[ok, col]
    out.has_dissatisfaction[rows[ok]] = True


def _read_emotion(out: ModelOutputs, scores, rows, ok) -> None:
    n = len(out.sentiment_label)
    out.emotion_labels = tuple(scores.labels)
    out.emotion_probs = np.zeros((n, len(scores.labels)), np.float32)
    out.emotion_probs[rows[ok]] = scores.probs[ok]
    out.emotion_id = np.full(n, -1, np.int64)
    out.emotion_id[rows[ok]] = np.argmax(scores.probs[ok], axis=1)
