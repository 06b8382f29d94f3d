"""Text models: sentiment and intent, texts in, probabilities out.

Every model the service can use (the Triton-served ones, their in-process twins used as
the degraded fallback, the lexicon model) has the same small interface,
:class:`TextModel`. The label set comes from the model, never from the code.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextModel(Protocol):
    """Texts in, class probabilities out.

    ``predict_proba(texts)`` returns a float32 array of shape ``(len(texts), len(labels))``
    whose rows sum to 1; column ``j`` is the probability of ``labels[j]``.
    """

    name: str
    version: str
    labels: tuple[str, ...]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


# The tensor contract of every text model in the Triton repository:
# input TEXT (TYPE_STRING, dims [1], batched), output PROBABILITIES (TYPE_FP32, dims [-1]).
TRITON_INPUT = "TEXT"
TRITON_OUTPUT = "PROBABILITIES"


class SoftmaxModel:
    """Base of the models whose probabilities are ``softmax(logits(texts) / temperature)``."""

    labels: tuple[str, ...]
    temperature: float = 1.0

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.softmax(self.logits(texts))

    def softmax(self, logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / temperature)`` row by row, float32 (the last step of
        :meth:`predict_proba`; :mod:`yujing.service.models.multihead` calls it too)."""
        z = np.asarray(logits, np.float32) / np.float32(self.temperature)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
