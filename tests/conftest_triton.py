"""Test helpers for the Triton tests: a tiny artifact kind and temporary model repositories.

``test-keyword`` is a test-only artifact kind, registered on import, so the Triton tests do
not depend on the trainer's artifacts. It is imported both here (for the in-process
fallback) and inside Triton's Python stub, through ``$YUJING_LOADER_MODULES=conftest_triton``
with this folder on the stub's ``PYTHONPATH``.

model.json of a ``test-keyword`` artifact::

    {"kind": "test-keyword", "name": "sentiment", "labels": ["negative", "neutral", "positive"],
     "keywords": {"negative": ["angry", "生气"], "positive": ["thanks", "谢谢"]},
     "bias": 1.0,              # added to every label's keyword count
     "fail_on": "BOOM",        # optional: predict_proba raises on a text containing it
     "fail_load": false}       # optional: the loader refuses the artifact
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from service.models.artifact import ArtifactError, register_loader

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
COMMITTED_REPO = REPO_ROOT / "model_repo"
LOADER_MODULE = "conftest_triton"

SENTIMENT_LABELS = ("negative", "neutral", "positive")
SENTIMENT_KEYWORDS = {
    "negative": ["angry", "terrible", "cancel", "生气", "投诉", "太差"],
    "positive": ["thanks", "great", "谢谢", "满意"],
}
INTENT_LABELS = ("billing", "cancel", "complaint", "other")
INTENT_KEYWORDS = {
    "billing": ["bill", "charge", "账单", "扣费"],
    "cancel": ["cancel", "退订", "注销"],
    "complaint": ["complain", "投诉"],
}


@dataclass
class KeywordModel:
    name: str
    version: str
    labels: tuple[str, ...]
    keywords: dict[str, list[str]] = field(default_factory=dict)
    bias: float = 1.0
    fail_on: str | None = None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        scores = np.full((len(texts), len(self.labels)), self.bias, dtype=np.float64)
        for i, text in enumerate(texts):
            if self.fail_on and self.fail_on in text:
                raise RuntimeError(f"test-keyword model told to fail on {self.fail_on!r}")
            low = text.lower()
            for j, label in enumerate(self.labels):
                scores[i, j] += sum(low.count(w) for w in self.keywords.get(label, ()))
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


@register_loader("test-keyword")
def _load_keyword(path: Path, meta: dict) -> KeywordModel:
    if meta.get("fail_load"):
        raise ArtifactError(f"{path}: test-keyword artifact marked fail_load")
    return KeywordModel(name=meta["name"], version=str(meta.get("version", "0")),
                        labels=tuple(meta["labels"]), keywords=dict(meta.get("keywords", {})),
                        bias=float(meta.get("bias", 1.0)), fail_on=meta.get("fail_on"))


def write_keyword_artifact(path: Path, name: str, labels: Sequence[str],
                           keywords: dict[str, list[str]], **extra) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "test-keyword", "name": name, "labels": list(labels), "keywords": keywords, **extra}
    (path / "model.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return path


def make_model_repo(root: Path, models: dict[str, dict] | None = None) -> Path:
    """A model repository under ``root`` with the committed config.pbtxt and model.py of each
    model and a ``test-keyword`` artifact as version 1. ``models`` maps a model name to
    ``write_keyword_artifact`` keyword arguments; default: sentiment and intent."""
    if models is None:
        models = {
            "sentiment": dict(labels=SENTIMENT_LABELS, keywords=SENTIMENT_KEYWORDS),
            "intent": dict(labels=INTENT_LABELS, keywords=INTENT_KEYWORDS),
        }
    repo = root / "model_repo"
    for name, spec in models.items():
        committed = COMMITTED_REPO / name
        model_dir = repo / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(committed / "config.pbtxt", model_dir / "config.pbtxt")
        shutil.copy2(committed / "1" / "model.py", model_dir / "1" / "model.py")
        write_keyword_artifact(model_dir / "1" / "artifact", name=name, **spec)
        (model_dir / "labels.txt").write_text("\n".join(spec["labels"]) + "\n", encoding="utf-8")
    return repo
