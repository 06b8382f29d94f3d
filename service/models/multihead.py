"""Several text models over one batch in one pass: the texts are featurised once.

The default sentiment, emotion and intent models are hashed n-gram classifiers
(:mod:`yujing.service.models.textclf`) with the same :class:`~yujing.service.models.textclf.FeatureConfig`:
normalising, tokenising and hashing a text (most of their work) is the same for all
three. :func:`predict_heads` does that once per distinct config and lets each model do
only its own part (its TF-IDF column map, its heads, its softmax). Any other
:class:`~yujing.service.models.TextModel` is scored with its own ``predict_proba``.

The answer is the same as each model's ``predict_proba`` on the same texts (the same
code, in the same order; ``tests/test_multihead.py``). The embedded Triton's ``heads``
model (:mod:`yujing.service.triton.heads`) and the router's in-process fallback both use it.

    >>> import numpy as np
    >>> from yujing.service.models.lexicon import LexiconSentiment
    >>> models = {"sentiment": LexiconSentiment()}
    >>> probs = predict_heads(models, ["thanks, great help", "我要投诉"])
    >>> probs["sentiment"].shape, bool(np.allclose(probs["sentiment"].sum(axis=1), 1))
    ((2, 3), True)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from yujing.service.models import TextModel

__all__ = ["predict_heads", "shares_features"]


def _feature_config(model: TextModel):
    """The model's FeatureConfig when it can take shared hashed counts, else None."""
    from yujing.service.models.textclf import HashedNgramClassifier

    if isinstance(model, HashedNgramClassifier):
        return model.cfg
    return None


def shares_features(models: Mapping[str, TextModel]) -> dict[object, list[str]]:
    """The names of the models that share one featurisation pass, by FeatureConfig
    (models scored on their own are left out)."""
    groups: dict[object, list[str]] = {}
    for name, model in models.items():
        cfg = _feature_config(model)
        if cfg is not None:
            groups.setdefault(cfg, []).append(name)
    return groups


def predict_heads(models: Mapping[str, TextModel], texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``{name: float32 [len(texts), len(model.labels)]}`` for every model in ``models``,
    equal to ``model.predict_proba(texts)``, with the texts featurised once per distinct
    feature configuration."""
    from yujing.service.models.textclf import hash_features

    texts = list(texts)
    out: dict[str, np.ndarray] = {}
    if not texts:
        return {name: np.zeros((0, len(m.labels)), np.float32) for name, m in models.items()}
    groups = shares_features(models)
    for cfg, names in groups.items():
        counts = hash_features(texts, cfg) if len(names) > 1 else None
        for name in names:
            model = models[name]
            if counts is None:  # alone with its config: nothing to share
                out[name] = np.asarray(model.predict_proba(texts), np.float32)
            else:
                out[name] = model.softmax(model.logits_from_counts(texts, counts))
    for name, model in models.items():
        if name not in out:
            out[name] = np.asarray(model.predict_proba(texts), np.float32)
    return {name: out[name] for name in models}
