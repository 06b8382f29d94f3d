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
     "sleep_on": "SLOW",       # optional: predict_proba sleeps sleep_s on a text containing it
     "sleep_in_triton_only": false,  # optional: ... only inside Triton's Python stub
     "fail_load": false,       # optional: the loader refuses the artifact
     "fail_in_triton": false,  # optional: ... only inside Triton's Python stub
     "fail_in_heads": false}   # optional: ... only inside the stub of the combined model heads
"""
from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from yujing.service.models.artifact import ArtifactError, register_loader

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
    sleep_on: str | None = None
    sleep_s: float = 1.0
    sleep_in_triton_only: bool = False

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        scores = np.full((len(texts), len(self.labels)), self.bias, dtype=np.float64)
        for i, text in enumerate(texts):
            if self.fail_on and self.fail_on in text:
                raise RuntimeError(f"test-keyword model told to fail on {self.fail_on!r}")
            if self.sleep_on and self.sleep_on in text and (
                    not self.sleep_in_triton_only or _in_triton()):
                time.sleep(self.sleep_s)
            low = text.lower()
            for j, label in enumerate(self.labels):
                scores[i, j] += sum(low.count(w) for w in self.keywords.get(label, ()))
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


def _in_triton() -> bool:
    return "triton_python_backend_utils" in sys.modules  # only Triton's Python stub has it


def _in_heads() -> bool:
    """Inside the stub of the combined model heads (its model.py imports this module; a
    member's own stub imports only yujing.service.triton.backend)."""
    return _in_triton() and "yujing.service.triton.heads" in sys.modules


@register_loader("test-keyword")
def _load_keyword(path: Path, meta: dict) -> KeywordModel:
    if meta.get("fail_load"):
        raise ArtifactError(f"{path}: test-keyword artifact marked fail_load")
    if meta.get("fail_in_triton") and _in_triton():
        raise ArtifactError(f"{path}: test-keyword artifact marked fail_in_triton")
    if meta.get("fail_in_heads") and _in_heads():
        raise ArtifactError(f"{path}: test-keyword artifact marked fail_in_heads")
    return KeywordModel(name=meta["name"], version=str(meta.get("version", "0")),
                        labels=tuple(meta["labels"]), keywords=dict(meta.get("keywords", {})),
                        bias=float(meta.get("bias", 1.0)), fail_on=meta.get("fail_on"),
                        sleep_on=meta.get("sleep_on"), sleep_s=float(meta.get("sleep_s", 1.0)),
                        sleep_in_triton_only=bool(meta.get("sleep_in_triton_only", False)))


def write_keyword_artifact(path: Path, name: str, labels: Sequence[str],
                           keywords: dict[str, list[str]], **extra) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "test-keyword", "name": name, "labels": list(labels), "keywords": keywords, **extra}
    (path / "model.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return path


def make_model_repo(root: Path, models: dict[str, dict] | None = None, combined: bool = True) -> Path:
    """A model repository under ``root`` with the committed config.pbtxt and model.py of each
    model and a ``test-keyword`` artifact as version 1. ``models`` maps a model name to
    ``write_keyword_artifact`` keyword arguments; default: sentiment and intent. ``combined``:
    the committed ``heads`` too (it serves those of its members that are here)."""
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
    if combined:
        (repo / "heads" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(COMMITTED_REPO / "heads" / "config.pbtxt", repo / "heads" / "config.pbtxt")
        shutil.copy2(COMMITTED_REPO / "heads" / "1" / "model.py", repo / "heads" / "1" / "model.py")
    return repo


# -- pytest fixtures (imported by tests/functional/conftest.py) ------------------------
def _triton_unavailable_reason() -> str | None:
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return f"the embedded Triton server runs on Linux x86-64 only, not {sys.platform}/{platform.machine()}"
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return "nvidia-pytriton (the embedded tritonserver) is not installed: pip install 'yujing[triton]'"
    return None


TRITON_UNAVAILABLE = _triton_unavailable_reason()
requires_triton = pytest.mark.skipif(TRITON_UNAVAILABLE is not None, reason=TRITON_UNAVAILABLE or "")


def start_triton(repo: Path, models: Sequence[str] | None = None, **kwargs):
    """A started TritonServer on ``repo`` that knows the test-only artifact kind."""
    from yujing.service.triton.launcher import TritonServer
    kwargs.setdefault("allow_http", True)       # the service's inference requests go there
    kwargs.setdefault("allow_metrics", False)
    kwargs.setdefault("startup_timeout_s", 60.0)
    server = TritonServer(repo, models, env={"YUJING_LOADER_MODULES": LOADER_MODULE},
                          extra_pythonpath=[TESTS_DIR], **kwargs)
    return server.start()


@pytest.fixture
def model_repo(tmp_path) -> Path:
    """A fresh repository: sentiment and intent, version 1, test-keyword artifacts, and heads."""
    return make_model_repo(tmp_path)


@pytest.fixture
def triton_server(model_repo):
    """Triton serving ``model_repo``, stopped (and its run dir removed) after the test."""
    if TRITON_UNAVAILABLE:
        pytest.skip(TRITON_UNAVAILABLE)
    server = start_triton(model_repo)
    try:
        yield server
    finally:
        server.close()
