"""Every path the product needs, resolved in one place.

The package keeps the repository's layout when installed: ``yujing/service``,
``yujing/kernels``, ``yujing/proto`` and ``yujing/model_repo`` sit side by side in
site-packages just as ``service/``, ``kernels/``, ``proto/`` and ``model_repo/`` sit in a
checkout. So one anchor, the folder above ``service/``, serves both.

    >>> (PACKAGE_ROOT / "service" / "paths.py").is_file()
    True
    >>> DEFAULT_POLICY.name
    'policy_default.toml'
"""
from __future__ import annotations

import os
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parent
# a checkout's root, or site-packages/yujing for an installed wheel
PACKAGE_ROOT = SERVICE_DIR.parent

PROTO_DIR = PACKAGE_ROOT / "proto"
from yujing.service.protogen import PROTO_FILES  # noqa: E402 (written once, beside the generator)
GENERATED_DIR = SERVICE_DIR / "_generated"
DEFAULT_POLICY = SERVICE_DIR / "policy_default.toml"
LEXICON_DIR = SERVICE_DIR / "lexicons"
# the packaged model repository: the default models (a wheel ships the default ones only)
DEFAULT_MODEL_REPO = PACKAGE_ROOT / "model_repo"

DATA_DIR_ENV = "YUJING_DATA_DIR"


def is_checkout() -> bool:
    """True when running from a source checkout (editable install), not a wheel."""
    return (PACKAGE_ROOT / "pyproject.toml").is_file()


def data_dir(explicit: str | Path | None = None) -> Path:
    """The shared data sets (training and evaluation only): ``explicit``, else
    ``$YUJING_DATA_DIR``, else ``../shared/data`` beside the checkout."""
    if explicit:
        return Path(explicit).resolve()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).resolve()
    return (PACKAGE_ROOT.parent / "shared" / "data").resolve()


STATE_DIR_ENV = "YUJING_STATE_DIR"


def default_state_dir() -> Path:
    """Where ``yujing serve`` keeps its state (the alert log) unless ``--data-dir`` says
    otherwise: ``$YUJING_STATE_DIR``, else ``$XDG_STATE_HOME/yujing``, else
    ``~/.local/state/yujing``."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "yujing"


def state_dir_arg(text: str) -> Path | None:
    """``--data-dir``'s value: a directory, or ``none`` for a service that keeps no state
    on disk (alerts in memory only, lost on exit)."""
    return None if text.strip().lower() in ("", "none") else Path(text)
