"""``yujing models deploy PATH --name NAME``: put a new model version into service.

Steps, each of which must pass before the next:

1. The artifact at ``PATH`` loads in-process (:func:`yujing.service.models.artifact.load_model`)
   and answers the smoke set validly: probabilities in [0, 1], rows summing to 1, one
   column per label. (The in-process fallback must be able to load it too.)
2. It is copied as version ``max(existing) + 1`` into ``model_repo/NAME/<version>/``
   (``artifact/`` + the one-line ``model.py``), staged under a hidden name and renamed, so
   Triton never sees half a version.
3. Triton is asked to load ``NAME`` (explicit model control: Triton rescans the folder; the
   config's ``version_policy: latest 2`` serves the new version beside the current one),
   and the new version must become READY.
4. The smoke set runs on Triton against exactly the new version and must match the
   in-process answers.
4b. Every combined model of the repository that has ``NAME`` among its members
   (``heads``, :mod:`yujing.service.triton.heads`) and that Triton serves is reloaded:
   it loads the serving version and the new one. The smoke set runs through it, asking
   for the new version, and must match the in-process answers too: the service's batches
   go through ``heads``.
5. Only then ``model_repo/NAME/serving_version`` is rewritten (atomically). The running
   service's :class:`~yujing.service.triton.router.ModelRouter` re-reads it every second and
   switches; no admin call, no restart.

If any step fails, the new version folder is removed, Triton is asked to reload ``NAME``
and its combined models (back to the versions they served before), ``serving_version`` is
untouched, so the old
version keeps serving, and :class:`DeployError` says what failed.

    >>> deploy_model("runs/sentiment-2025-06-01", "sentiment",                    # doctest: +SKIP
    ...              model_repository="model_repo", triton_url="127.0.0.1:8001")
    DeployResult(model_name='sentiment', version='4', previous_version='3', ...)

Without Triton (``triton_url=None``, ``--no-triton``) steps 3-4 are skipped.

Steps 3 and 5's reload use Triton's model-repository API, which the embedded Triton opens
only to callers with its per-start key (:mod:`yujing.service.triton.access`). The CLI reads
it from ``--triton-key-file``, else ``$YUJING_TRITON_KEY_FILE``, else ``triton.key`` in the
service's default data directory (``yujing serve`` writes it there at every start, 0600);
a service with its own ``--data-dir`` has it in ``DATA_DIR/triton.key``. An external Triton
locked down the same way takes a file holding ``<header-key>=<value>``.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from yujing.service.paths import default_state_dir
from yujing.service.triton.access import KEY_FILE_NAME, TritonKey, read_key_file
from yujing.service.triton.client import (
    TritonClientError, TritonModelClient, repository_versions, serving_version, set_serving_version,
)

__all__ = ["deploy_model", "deploy_model_async", "DeployError", "DeployResult",
           "add_deploy_subcommand", "run_deploy_command", "SMOKE_TEXTS", "MODEL_PY"]

SMOKE_TEXTS: tuple[str, ...] = (
    "您好，我想查一下这个月的账单。",
    "你们的服务太差了，我要投诉！",
    "我要注销这个账号，马上退订。",
    "Thanks, that solved my problem.",
    "I want to cancel my subscription right now.",
    "Why was I charged twice this month?",
    "ok",
)

MODEL_PY = '''\
# Triton Python-backend entry point: the generic model is yujing.service.triton.backend.
from yujing.service.triton.backend import TritonPythonModel  # noqa: F401
'''

RELOAD_PARAMETER = "reload"  # set on a combined model's config to force its reload

# The Triton beside the service (Dockerfile.gpu sets $YUJING_TRITON_URL).
DEFAULT_TRITON_URL = os.environ.get("YUJING_TRITON_URL", "127.0.0.1:8001")
TRITON_KEY_FILE_ENV = "YUJING_TRITON_KEY_FILE"


class DeployError(RuntimeError):
    """The new version was refused; the message says at which step and why. The version
    that served before still serves."""


@dataclass(frozen=True)
class DeployResult:
    model_name: str
    version: str
    previous_version: str | None
    labels: tuple[str, ...]
    checked_on_triton: bool
    path: Path


def check_probabilities(probs: np.ndarray, n_texts: int, labels: Sequence[str], where: str) -> np.ndarray:
    """Raise :class:`DeployError` unless ``probs`` is a valid [n_texts, len(labels)] answer."""
    probs = np.asarray(probs)
    expected = (n_texts, len(labels))
    if probs.shape != expected:
        raise DeployError(f"{where}: probabilities have shape {probs.shape}, expected {expected} "
                          f"(labels {list(labels)})")
    if not np.all(np.isfinite(probs)):
        raise DeployError(f"{where}: non-finite probabilities")
    if probs.min() < -1e-5 or probs.max() > 1 + 1e-5:
        raise DeployError(f"{where}: probabilities outside [0, 1] (min {probs.min()}, max {probs.max()})")
    sums = probs.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        raise DeployError(f"{where}: rows do not sum to 1 (sums {np.round(sums, 4).tolist()})")
    return probs


@contextmanager
def _model_lock(model_dir: Path):
    """One deploy per model at a time (several CLIs on one host)."""
    lock_path = model_dir / ".deploy.lock"
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployError(f"another deploy of {model_dir.name} is running ({lock_path})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _smoke_in_process(artifact: Path, smoke_texts: Sequence[str]):
    from yujing.service.models.artifact import load_model
    try:
        model = load_model(artifact)
    except Exception as exc:
        raise DeployError(f"artifact {artifact} does not load: {type(exc).__name__}: {exc}") from exc
    labels = tuple(model.labels)
    if not labels:
        raise DeployError(f"artifact {artifact} has no labels")
    try:
        probs = model.predict_proba(list(smoke_texts))
    except Exception as exc:
        raise DeployError(f"artifact {artifact} fails on the smoke set: {type(exc).__name__}: {exc}") from exc
    return labels, check_probabilities(probs, len(smoke_texts), labels, f"{artifact} (in-process)")


async def deploy_model_async(
    artifact_path: str | Path,
    name: str,
    *,
    model_repository: str | Path = "model_repo",
    triton_url: str | None = DEFAULT_TRITON_URL,
    smoke_texts: Sequence[str] = SMOKE_TEXTS,
    load_timeout_s: float = 120.0,
    switch: bool = True,
    triton_key: TritonKey | None = None,
) -> DeployResult:
    """Deploy the artifact dir ``artifact_path`` as the next version of model ``name``
    (see the module doc). ``switch=False`` stops before rewriting ``serving_version``;
    ``triton_key`` opens Triton's model-repository API when it is restricted."""
    artifact = Path(artifact_path)
    repo = Path(model_repository)
    model_dir = repo / name
    if not (model_dir / "config.pbtxt").is_file():
        raise DeployError(f"{model_dir}/config.pbtxt does not exist: {name!r} is not a model of {repo}")
    if not artifact.is_dir():
        raise DeployError(f"{artifact} is not a directory")

    labels, local_probs = await asyncio.get_running_loop().run_in_executor(
        None, _smoke_in_process, artifact, list(smoke_texts))

    with _model_lock(model_dir):
        previous = serving_version(repo, name)
        version = str(max(repository_versions(repo, name), default=0) + 1)
        target = model_dir / version
        staging = model_dir / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(artifact, staging / "artifact", ignore=shutil.ignore_patterns("__pycache__"))
            (staging / "model.py").write_text(MODEL_PY, encoding="utf-8")
            staging.rename(target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise DeployError(f"cannot write {target}: {exc}") from exc

        checked_on_triton = False
        if triton_url:
            combined: list[str] = []  # the combined models Triton serves with NAME in them
            try:
                combined += await _served_combined(triton_url, combined_models_of(repo, name), triton_key)
                await _load_and_smoke(triton_url, name, version, labels, local_probs,
                                      list(smoke_texts), load_timeout_s, triton_key, combined)
                checked_on_triton = True
            except BaseException as exc:
                shutil.rmtree(target, ignore_errors=True)
                restore = await _restore(triton_url, [name, *combined], triton_key)
                if isinstance(exc, DeployError):
                    raise DeployError(f"{exc}; version {version} removed, {restore}") from exc
                raise
        if switch:
            set_serving_version(repo, name, version)
    return DeployResult(name, version, previous, labels, checked_on_triton, target)


def combined_models_of(model_repository: str | Path, name: str) -> list[str]:
    """The combined models of the repository (``heads``) with ``name`` among their members."""
    from yujing.service.triton.heads import members_of

    return [cfg.parent.name for cfg in sorted(Path(model_repository).glob("*/config.pbtxt"))
            if name in members_of(cfg.parent)]


async def _served_combined(url: str, names: Sequence[str], key: TritonKey | None) -> list[str]:
    """Those of the combined models ``names`` that Triton serves now (a service with
    ``--combined-model ''`` does not load ``heads``: it calls each model itself)."""
    if not names:
        return []
    async with TritonModelClient(url, headers=_headers(key)) as client:
        return [n for n in names if await client.is_model_ready(n, timeout_s=5.0)]


def _headers(key: TritonKey | None) -> dict[str, str] | None:
    return key.grpc_headers() if key is not None else None


async def _load_and_smoke(url: str, name: str, version: str, labels: tuple[str, ...],
                          local_probs: np.ndarray, texts: list[str], load_timeout_s: float,
                          key: TritonKey | None, combined: Sequence[str] = ()) -> None:
    async with TritonModelClient(url, headers=_headers(key)) as client:
        if not await client.is_server_ready(timeout_s=5.0):
            raise DeployError(f"Triton at {url} is not reachable or not ready "
                              "(use --no-triton if the service runs without Triton)")
        try:
            await client.load_model(name, timeout_s=load_timeout_s)
        except TritonClientError as exc:
            hint = ""
            if "restricted" in str(exc):
                hint = (" (its model-repository API needs the key: --triton-key-file, the service writes "
                        f"DATA_DIR/{KEY_FILE_NAME})" if key is None else " (the key was refused: stale key file?)")
            raise DeployError(f"Triton refused to load {name} v{version}: {exc}{hint}") from exc
        if not await client.is_model_ready(name, version, timeout_s=5.0):
            raise DeployError(f"Triton loaded {name} but version {version} is not ready "
                              "(is the config's version_policy serving the newest versions?)")
        try:
            probs, served = await client.infer(name, texts, timeout_s=30.0, model_version=version)
        except TritonClientError as exc:
            raise DeployError(f"{name} v{version} fails the smoke set on Triton: {exc}") from exc
        _check_smoke_answer(probs, served, name, version, labels, local_probs, len(texts))
        for heads in combined:
            await _reload_and_smoke_combined(client, heads, name, version, labels, local_probs, texts,
                                             load_timeout_s)


async def _reload_and_smoke_combined(client: TritonModelClient, heads: str, name: str, version: str,
                                     labels: tuple[str, ...], local_probs: np.ndarray, texts: list[str],
                                     load_timeout_s: float) -> None:
    """Step 4b for one combined model that Triton serves."""
    try:
        await reload_combined(client, heads, f"deploy {name} v{version}", timeout_s=load_timeout_s)
    except TritonClientError as exc:
        raise DeployError(f"Triton refused to reload {heads} with {name} v{version}: {exc}") from exc
    try:
        answers = await client.infer_heads(heads, texts, {name: version}, timeout_s=30.0)
    except TritonClientError as exc:
        raise DeployError(f"{name} v{version} fails the smoke set through {heads} on Triton: {exc}") from exc
    probs, served = answers[name]
    _check_smoke_answer(probs, served, name, version, labels, local_probs, len(texts), heads=heads)


def _check_smoke_answer(probs, served: str, name: str, version: str, labels: tuple[str, ...],
                        local_probs: np.ndarray, n_texts: int, heads: str | None = None) -> None:
    """Triton's answer to the smoke set (from ``name`` itself, or through the combined model
    ``heads``) is from the version asked for, well formed, and the in-process answer."""
    if served != version:
        raise DeployError(f"asked {heads or 'Triton'} for {name} v{version}, got v{served}")
    where = "Triton" if heads is None else f"Triton, through {heads}"
    probs = check_probabilities(probs, n_texts, labels, f"{name} v{version} ({where})")
    if not np.allclose(probs, local_probs, atol=1e-3):
        worst = float(np.abs(probs - local_probs).max())
        who = "Triton" if heads is None else f"{heads} on Triton"
        raise DeployError(f"{name} v{version}: {who} and in-process answers differ (max {worst:.4f})")


async def reload_combined(client: TritonModelClient, heads: str, reason: str, timeout_s: float = 120.0) -> None:
    """Make Triton load the combined model ``heads`` again, so it reads its members' versions
    anew. Its folder does not change when a member gets a version, and Triton skips the
    reload of a model it thinks unchanged (seen with the wheel's Triton: a second plain
    reload within a run was skipped); so it is loaded with its own config plus a
    ``reload`` parameter that is new each time."""
    config = await client.model_config(heads, timeout_s=10.0)
    params = dict(config.get("parameters") or {})
    params[RELOAD_PARAMETER] = {"string_value": f"{reason} ({uuid.uuid4().hex[:12]})"}
    await client.load_model(heads, timeout_s=timeout_s, config={**config, "parameters": params})


async def _restore(url: str, names: Sequence[str], key: TritonKey | None) -> str:
    """Reload ``names[0]`` (the member) and the combined models after it."""
    failed = []
    async with TritonModelClient(url, headers=_headers(key)) as client:
        for i, name in enumerate(names):
            try:
                if i:
                    await reload_combined(client, name, "restore after a refused deploy")
                else:
                    await client.load_model(name, timeout_s=120.0)
            except Exception as exc:  # the old version may still be loaded; say what we know
                failed.append(f"reloading {name} on Triton failed too ({exc})")
    return "; ".join(failed) if failed else "Triton reloaded the previous versions"


def deploy_model(artifact_path: str | Path, name: str, **kwargs) -> DeployResult:
    """Blocking :func:`deploy_model_async` (for the CLI and scripts without a loop)."""
    return asyncio.run(deploy_model_async(artifact_path, name, **kwargs))


# -- CLI ------------------------------------------------------------------------------
def add_deploy_subcommand(models_subparsers) -> argparse.ArgumentParser:
    """Add ``deploy`` to the ``yujing models`` subparsers; the parser's ``func`` default is
    :func:`run_deploy_command` (``args.func(args)`` returns the exit code)."""
    p = models_subparsers.add_parser(
        "deploy", help="deploy an artifact dir as the next version of a model",
        description=__doc__.split("\n\n")[0] + " See service/triton/deploy.py for the steps.")
    p.add_argument("path", type=Path, help="artifact directory (holds model.json)")
    p.add_argument("--name", required=True, help="model name in the repository (sentiment, intent, ...)")
    p.add_argument("--model-repository", type=Path, default=Path("model_repo"),
                   help="Triton model repository (default: %(default)s)")
    p.add_argument("--triton-url", default=DEFAULT_TRITON_URL,
                   help="Triton gRPC host:port to load and check the version on (default: %(default)s)")
    p.add_argument("--triton-key-file", type=Path, default=None,
                   help="file with the key of Triton's restricted model-repository API (<header-key>=<value>); "
                        f"default: ${TRITON_KEY_FILE_ENV}, else {KEY_FILE_NAME} in the service's default "
                        f"data directory if it is there (a service with --data-dir D: D/{KEY_FILE_NAME})")
    p.add_argument("--no-triton", action="store_true",
                   help="the service runs without Triton: check in-process only")
    p.add_argument("--no-switch", action="store_true",
                   help="load and check, but leave serving_version (the service) as it is")
    p.add_argument("--load-timeout", type=float, default=120.0, help="seconds (default: %(default)s)")
    p.set_defaults(func=run_deploy_command)
    return p


def triton_key_for(key_file: Path | None) -> TritonKey | None:
    """The key the CLI sends: ``key_file`` (must be readable), else ``$YUJING_TRITON_KEY_FILE``
    (must be readable), else the default data directory's ``triton.key`` if it exists, else
    None. Raises :class:`DeployError` for a named file that cannot be read."""
    named = key_file or os.environ.get(TRITON_KEY_FILE_ENV)
    path = Path(named) if named else default_state_dir() / KEY_FILE_NAME
    if not named and not path.is_file():
        return None
    try:
        return read_key_file(path)
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the Triton key file {path}: {exc}") from exc


def run_deploy_command(args: argparse.Namespace) -> int:
    try:
        key = None if args.no_triton else triton_key_for(args.triton_key_file)
        result = deploy_model(
            args.path, args.name, model_repository=args.model_repository,
            triton_url=None if args.no_triton else args.triton_url,
            load_timeout_s=args.load_timeout, switch=not args.no_switch, triton_key=key)
    except DeployError as exc:
        print(f"yujing models deploy: refused: {exc}", file=sys.stderr)
        return 1
    where = "Triton and in-process" if result.checked_on_triton else "in-process"
    action = "the service switches within a second" if not args.no_switch else "serving_version unchanged"
    print(f"deployed {result.model_name} v{result.version} (was v{result.previous_version}), "
          f"{len(result.labels)} labels, smoke set passed on {where}; {action}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yujing models")
    add_deploy_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
