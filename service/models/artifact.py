"""Model artifacts on disk and the loaders that turn them into :class:`TextModel` s.

An artifact is a directory holding ``model.json``::

    {"kind": "<loader name>", "name": "sentiment", "labels": ["negative", ...], ...}

plus whatever files its kind needs. ``kind`` picks the loader registered with
:func:`register_loader`; the rest of the JSON is the kind's own. In the Triton model
repository an artifact sits at ``model_repo/<model>/<version>/artifact/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from yujing.service.models import TextModel

MODEL_JSON = "model.json"
_LOADERS: dict[str, Callable[[Path, dict], TextModel]] = {}


class ArtifactError(ValueError):
    """An artifact directory that cannot be loaded; the message says why."""


def register_loader(kind: str):
    """Decorator: ``@register_loader("linear-ngram") def load(path, meta) -> TextModel``."""
    def deco(fn: Callable[[Path, dict], TextModel]):
        _LOADERS[kind] = fn
        return fn
    return deco


def _import_builtin_kinds() -> None:
    # Each module registers its kinds on import; a missing optional one is skipped.
    import importlib
    for mod in ("yujing.service.models.lexicon", "yujing.service.models.textclf", "yujing.service.models.encoder_clf"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / MODEL_JSON
    if not meta_file.is_file():
        raise ArtifactError(f"{path}: no {MODEL_JSON}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_file}: not valid JSON ({exc})") from exc
    for key in ("kind", "name", "labels"):
        if key not in meta:
            raise ArtifactError(f"{meta_file}: missing '{key}'")
    return meta


def write_meta(path: str | Path, meta: dict) -> None:
    """Write ``model.json`` (UTF-8, indented, non-ASCII kept readable)."""
    (Path(path) / MODEL_JSON).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")


def read_weights(path: str | Path, meta: dict, default: str = "weights.npz") -> dict:
    """All arrays of the artifact's weights file (``meta["weights_file"]``, else ``default``)."""
    import numpy as np
    wfile = Path(path) / meta.get("weights_file", default)
    if not wfile.is_file():
        raise ArtifactError(f"{path}: missing {wfile.name}")
    with np.load(wfile) as z:
        return {k: z[k] for k in z.files}


def load_model(path: str | Path, version: str | None = None) -> TextModel:
    """Load the artifact at ``path``; ``version`` overrides the one in model.json."""
    path = Path(path)
    meta = read_meta(path)
    _import_builtin_kinds()
    loader = _LOADERS.get(meta["kind"])
    if loader is None:
        raise ArtifactError(f"{path}: unknown model kind {meta['kind']!r}; known: {sorted(_LOADERS)}")
    model = loader(path, meta)
    if version is not None:
        model.version = str(version)
    return model
