"""Route each batch's texts to Triton, or score them in-process when Triton cannot.

The micro-batcher calls :meth:`ModelRouter.classify` once per batch::

    router = ModelRouter("model_repo", triton_url="127.0.0.1:8001")   # doctest: +SKIP
    await router.start()
    result = await router.classify(["我要投诉你们", "thanks, that fixed it"])
    result.sentiment.probs        # float32 [2, len(result.sentiment.labels)]
    result.intent.model_version   # "3"
    result.served_by, result.degraded   # "triton", False
    await router.close()

By default a batch is one request to Triton's combined model ``heads``
(:mod:`yujing.service.triton.heads`), which featurises the texts once and answers every
model's probabilities at the versions the router pinned; ``combined_model=None`` (the
service's ``--combined-model ''``) sends one request per model instead, concurrently. When
``heads`` is not loaded, or does not have one of the router's models (a
``--sentiment-model sentiment_e5``, say), the router says so once and calls per model. The
in-process fallback likewise scores the batch in one pass
(:func:`yujing.service.models.multihead.predict_heads`), or model by model without a
combined model; the answers are the same either way (``tests/test_multihead.py``).

All calls of a batch go to Triton under one deadline (``deadline_s``). When
Triton is unreachable, too slow, answers with an error, or breaks the contract, the batch
is scored by the same artifacts loaded in-process
(``model_repo/<model>/<version>/artifact`` through :func:`yujing.service.models.artifact.load_model`)
and marked ``degraded``. That also opens a circuit breaker: later batches go straight
in-process, without waiting on Triton, while a background probe (every
``probe_interval_s``) scores a one-text batch on Triton; once that succeeds, batches go
to Triton again. A batch never fails because Triton went away.

Without ``triton_url`` the router is purely in-process (``served_by="in-process"``, not
degraded).

Which version is used: the router pins each model to
:func:`yujing.service.triton.client.serving_version` (``model_repo/<model>/serving_version``,
written by ``yujing models deploy`` after the new version loaded and passed its smoke
check; else the newest version folder) and re-reads it every ``version_poll_s``, so a
deploy switches the running service within about a second, without a restart. Triton is
asked for exactly that version (the configs load the newest two). Labels are the
version's own (its ``artifact/model.json``), so a new label set needs no code change.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from yujing.service.triton.client import (
    TritonClientError, TritonModelClient, read_labels, read_languages, serving_version,
)

__all__ = ["ModelRouter", "ClassifyResult", "ModelScores", "RouterError", "TRITON", "IN_PROCESS",
           "DEFAULT_COMBINED_MODEL"]

log = logging.getLogger(__name__)

TRITON = "triton"
IN_PROCESS = "in-process"
DEFAULT_COMBINED_MODEL = "heads"


class RouterError(RuntimeError):
    """Neither Triton nor the in-process models can score (e.g. no artifact at all)."""


@dataclass(frozen=True)
class ModelScores:
    """One model's answer for a batch: ``probs[i, j]`` = P(``labels[j]`` | text i)."""

    model_name: str
    model_version: str
    labels: tuple[str, ...]
    probs: np.ndarray
    served_by: str
    # the languages the model was trained on (model.json); None: not stated, trusted for all
    languages: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ClassifyResult:
    """Sentiment, intent (and emotion, dissatisfaction) of one batch of texts, in the order given."""

    sentiment: ModelScores
    intent: ModelScores
    served_by: str  # "triton" or "in-process"
    degraded: bool  # True when Triton is configured but the batch was scored in-process
    emotion: ModelScores | None = None  # None when no emotion model is configured
    # P(other), P(dissatisfied) under equal priors; None when no dissatisfaction model is configured
    dissatisfaction: ModelScores | None = None


@dataclass
class RouterStats:
    batches_triton: int = 0
    batches_in_process: int = 0
    triton_failures: int = 0
    breaker_opened: int = 0
    breaker_closed: int = 0
    last_error: str | None = None
    last_change_monotonic: float = field(default_factory=time.monotonic)


def _load_and_warm_up(path: Path, version: str):
    from yujing.service.models.artifact import load_model
    from yujing.service.triton.backend import WARM_UP_TEXTS
    model = load_model(path, version)
    model.predict_proba(list(WARM_UP_TEXTS))  # JIT compilation now, not in a degraded batch
    return model


class ModelRouter:
    """Sentiment + intent for a batch, from Triton or in-process (see the module doc).

    Args:
        model_repository: the Triton model repository (``model_repo/``); the in-process
            fallback loads its artifacts, labels and served versions come from it.
        triton_url: Triton's gRPC ``host:port``; None: in-process only.
        sentiment_model, intent_model: model names in the repository.
        emotion_model: the emotion model's name, or None for none.
        dissatisfaction_model: the dissatisfaction model's name, or None for none.
        deadline_s: how long a batch may wait for Triton before it is scored in-process.
        probe_interval_s: how often, while the breaker is open, Triton is probed.
        probe_timeout_s: the deadline of one probe.
        version_poll_s: how often ``serving_version`` is re-read.
        preload: load the in-process models at start (so the first fallback is fast).
        on_state_change: ``callback(old, new, reason)`` when batches switch between
            "triton" and "in-process" (for logs and metrics).
        client: a ready :class:`TritonModelClient` to use instead of creating one.
        triton_headers: sent with every Triton call (an external Triton's key).
        triton_http_url: the same Triton's HTTP ``host:port``: inference requests go there
            (:class:`TritonModelClient`'s ``http_url``); None: over gRPC.
        triton_http_headers: sent with every HTTP request (the key's HTTP form).
        combined_model: Triton's model that answers all the models in one call
            (``heads``); None: one call per model, and in-process one model at a time.
    """

    def __init__(
        self,
        model_repository: str | Path,
        triton_url: str | None = None,
        *,
        sentiment_model: str = "sentiment",
        intent_model: str = "intent",
        emotion_model: str | None = None,
        dissatisfaction_model: str | None = None,
        deadline_s: float = 0.2,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 1.0,
        version_poll_s: float = 1.0,
        preload: bool = True,
        in_process_threads: int = 2,
        on_state_change: Callable[[str, str, str], None] | None = None,
        client: TritonModelClient | None = None,
        triton_headers: dict[str, str] | None = None,
        triton_http_url: str | None = None,
        triton_http_headers: dict[str, str] | None = None,
        combined_model: str | None = DEFAULT_COMBINED_MODEL,
    ) -> None:
        self.model_repository = Path(model_repository)
        self.sentiment_model = sentiment_model
        self.intent_model = intent_model
        self.emotion_model = emotion_model or None
        self.dissatisfaction_model = dissatisfaction_model or None
        self.combined_model = combined_model or None
        self._combined_usable = False  # whether Triton's combined model serves all our models
        self._combined_warned: str | None = None
        self.deadline_s = deadline_s
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.version_poll_s = version_poll_s
        self.preload = preload
        self.on_state_change = on_state_change
        self.stats = RouterStats()
        self._own_client = client is None and bool(triton_url)
        if client is None and triton_url:
            client = TritonModelClient(triton_url, self.model_repository, headers=triton_headers,
                                       http_url=triton_http_url, http_headers=triton_http_headers)
        self.client = client
        self._executor = ThreadPoolExecutor(max_workers=in_process_threads,
                                            thread_name_prefix="yujing-in-process")
        self._versions: dict[str, str] = {}
        self._labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._languages: dict[tuple[str, str], tuple[str, ...] | None] = {}
        self._local: dict[tuple[str, str], object] = {}
        self._local_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._breaker_open = True  # until the first probe says Triton is fine
        self._state_event: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._preload_task: asyncio.Task | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> "ModelRouter":
        """Pin the served versions, probe Triton once, start the background probe.

        In-process only, the models are loaded before this returns; with Triton they
        load in the background."""
        self._state_event = asyncio.Event()
        self.refresh_versions()
        for model in self.models:
            if model not in self._versions:
                raise RouterError(f"model {model!r} has no version with an artifact in {self.model_repository}")
        if self.client is None:
            await self._preload()
        else:
            if self.preload:
                self._preload_task = asyncio.create_task(self._preload(), name="yujing-router-preload")
            if await self._probe():
                self._set_breaker(False, "Triton ready at start")
            else:
                log.warning("Triton not ready at start (%s): scoring in-process, degraded, until it is",
                            self.stats.last_error)
        self._task = asyncio.create_task(self._maintain(), name="yujing-router-maintenance")
        return self

    async def close(self) -> None:
        self._closed = True
        for task in (self._task, self._preload_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        if self.client is not None and self._own_client:
            await self.client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> "ModelRouter":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- the per-batch call -----------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        """The :class:`ClassifyResult` field each of :attr:`models` answers, in that order."""
        return ("sentiment", "intent") + (("emotion",) if self.emotion_model else ()) + \
            (("dissatisfaction",) if self.dissatisfaction_model else ())

    @property
    def models(self) -> tuple[str, ...]:
        """Sentiment, intent and (when configured) emotion and dissatisfaction, in that order."""
        return tuple(getattr(self, f"{role}_model") for role in self.roles)

    @property
    def served_by(self) -> str:
        """Where the next batch goes: "triton" or "in-process"."""
        return TRITON if self.client is not None and not self._breaker_open else IN_PROCESS

    @property
    def triton_calls(self) -> str:
        """How a batch is sent to Triton: "combined:<model>" (one call) or "per-model"."""
        return f"combined:{self.combined_model}" if self._combined_usable else "per-model"

    @property
    def model_calls_per_batch(self) -> int:
        """Model calls the next batch costs where it goes: 1 through the combined model (one
        Triton request, or one in-process pass), else one per model."""
        if self.served_by == TRITON:
            return 1 if self._combined_usable else len(self.models)
        return 1 if self.combined_model else len(self.models)

    @property
    def versions(self) -> dict[str, str]:
        """The pinned version of each model."""
        return dict(self._versions)

    async def classify(self, texts: Sequence[str]) -> ClassifyResult:
        """Sentiment and intent probabilities of ``texts`` (see :class:`ClassifyResult`)."""
        texts = list(texts)
        versions = {m: self._versions[m] for m in self.models}
        if self.client is not None and not self._breaker_open:
            try:
                result = await self._classify_triton(texts, versions)
                self.stats.batches_triton += 1
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._trip(exc)
        result = await self._classify_in_process(texts, versions, degraded=self.client is not None)
        self.stats.batches_in_process += 1
        return result

    async def _classify_triton(self, texts: list[str], versions: dict[str, str],
                               deadline_s: float | None = None) -> ClassifyResult:
        deadline = self.deadline_s if deadline_s is None else deadline_s
        if not texts:
            return self._empty(versions, TRITON, degraded=False)
        if self._combined_usable:
            try:
                async with asyncio.timeout(deadline):     # no task of its own, as wait_for makes
                    heads = await self.client.infer_heads(self.combined_model, texts, versions, timeout_s=deadline)
            except TritonClientError as exc:
                if exc.status != "NOT_FOUND":
                    raise
                # heads lacks a pinned version (serving_version changed without a deploy,
                # which reloads heads): the models themselves still serve it.
                self._use_combined(False, f"it has not loaded the pinned versions ({exc})")
                return await self._classify_triton(texts, versions, deadline_s)
            answers = [heads[m] for m in self.models]
        else:
            answers = await asyncio.wait_for(
                asyncio.gather(*(self.client.infer(m, texts, timeout_s=deadline, model_version=versions[m])
                                 for m in self.models)),
                timeout=deadline)
        scores = []
        for model, (probs, version) in zip(self.models, answers):
            if version != versions[model]:
                raise RouterError(f"{model}: asked for version {versions[model]}, Triton answered {version}")
            labels = self._labels_of(model, version)
            if probs.shape != (len(texts), len(labels)):
                raise RouterError(f"{model} v{version}: Triton returned shape {probs.shape}, "
                                  f"expected {(len(texts), len(labels))} for labels {labels}")
            scores.append(ModelScores(model, version, labels, probs, TRITON, self._languages_of(model, version)))
        return self._result(scores, TRITON, degraded=False)

    async def _classify_in_process(self, texts: list[str], versions: dict[str, str],
                                   degraded: bool) -> ClassifyResult:
        if not texts:
            return self._empty(versions, IN_PROCESS, degraded)
        models = await asyncio.gather(*(self._local_model(m, versions[m]) for m in self.models))
        loop = asyncio.get_running_loop()
        if self.combined_model:
            from yujing.service.models.multihead import predict_heads

            by_name = await loop.run_in_executor(self._executor, predict_heads, dict(zip(self.models, models)),
                                                 texts)
            probs = [by_name[m] for m in self.models]
        else:
            probs = await asyncio.gather(*(loop.run_in_executor(self._executor, model.predict_proba, texts)
                                           for model in models))
        scores = []
        for name, model, p in zip(self.models, models, probs):
            p = np.asarray(p, dtype=np.float32)
            labels = tuple(model.labels)
            if p.shape != (len(texts), len(labels)):
                raise RouterError(f"{name} v{versions[name]} (in-process): shape {p.shape}, "
                                  f"expected {(len(texts), len(labels))}")
            scores.append(ModelScores(name, versions[name], labels, p, IN_PROCESS,
                                      self._languages_of(name, versions[name])))
        return self._result(scores, IN_PROCESS, degraded)

    def _empty(self, versions: dict[str, str], served_by: str, degraded: bool) -> ClassifyResult:
        scores = []
        for model in self.models:
            labels = self._labels_of(model, versions[model])
            scores.append(ModelScores(model, versions[model], labels,
                                      np.zeros((0, len(labels)), np.float32), served_by,
                                      self._languages_of(model, versions[model])))
        return self._result(scores, served_by, degraded)

    def _result(self, scores: list[ModelScores], served_by: str, degraded: bool) -> ClassifyResult:
        return ClassifyResult(served_by=served_by, degraded=degraded, **dict(zip(self.roles, scores)))

    # -- versions, labels, in-process models ------------------------------------------
    def refresh_versions(self) -> dict[str, str]:
        """Re-read which version of each model to use (``serving_version``); returns them.

        Called every ``version_poll_s`` by the background task; call it yourself (e.g.
        from an admin endpoint) to switch at once."""
        for model in self.models:
            version = serving_version(self.model_repository, model)
            old = self._versions.get(model)
            if version is None or version == old:
                continue
            self._versions[model] = version
            if old is not None:
                log.info("model %s: switching from version %s to %s", model, old, version)
                if self.preload and not self._closed:
                    try:
                        asyncio.get_running_loop().create_task(self._local_model(model, version))
                    except RuntimeError:
                        pass
        live = {(m, v) for m, v in self._versions.items()}
        for key in [k for k in self._local if k not in live]:
            del self._local[key]
        return dict(self._versions)

    def _languages_of(self, model: str, version: str) -> tuple[str, ...] | None:
        key = (model, version)
        if key not in self._languages:
            self._languages[key] = read_languages(self.model_repository, model, version)
        return self._languages[key]

    def _labels_of(self, model: str, version: str) -> tuple[str, ...]:
        key = (model, version)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = read_labels(self.model_repository, model, version)
        return labels

    async def _local_model(self, model: str, version: str):
        key = (model, version)
        if key in self._local:
            return self._local[key]
        lock = self._local_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._local:
                path = self.model_repository / model / version / "artifact"
                loop = asyncio.get_running_loop()
                try:
                    loaded = await loop.run_in_executor(self._executor, _load_and_warm_up, path, version)
                except Exception as exc:
                    raise RouterError(f"cannot load {model} v{version} in-process from {path}: {exc}") from exc
                if self._versions.get(model) == version:
                    self._local[key] = loaded
                else:
                    return loaded
        return self._local[key]

    async def _preload(self) -> None:
        await asyncio.gather(*(self._local_model(m, self._versions[m]) for m in self.models))

    # -- circuit breaker --------------------------------------------------------------
    def _trip(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"Triton slower than the {self.deadline_s * 1000:.0f} ms deadline"
        self.stats.triton_failures += 1
        self.stats.last_error = reason
        if not self._breaker_open:
            self._set_breaker(True, reason)

    def _set_breaker(self, open_: bool, reason: str) -> None:
        if open_ == self._breaker_open:
            return
        old = self.served_by
        self._breaker_open = open_
        if open_:
            self.stats.breaker_opened += 1
            log.warning("Triton unavailable (%s): scoring in-process, degraded", reason)
        else:
            first = self.stats.breaker_closed == 0 and self.stats.breaker_opened == 0
            self.stats.breaker_closed += 1
            if first:
                log.info("Triton ready: scoring on Triton")
            else:
                log.info("Triton healthy again (%s): scoring on Triton", reason)
        self.stats.last_change_monotonic = time.monotonic()
        self._notify(old, self.served_by, reason)

    def _notify(self, old: str, new: str, reason: str) -> None:
        if self._state_event is not None:
            self._state_event.set()
            self._state_event = asyncio.Event()
        if self.on_state_change is not None:
            try:
                self.on_state_change(old, new, reason)
            except Exception:
                log.exception("on_state_change callback failed")

    async def wait_for(self, served_by: str, timeout_s: float) -> bool:
        """Wait until batches go to ``served_by`` ("triton" / "in-process"); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.served_by != served_by:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._state_event is None:
                return self.served_by == served_by
            try:
                await asyncio.wait_for(self._state_event.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return True

    async def _check_combined(self) -> None:
        """Whether Triton's combined model is there and answers all our models (asked at
        every probe, so a ``heads`` loaded or reloaded later is picked up). Raises when
        Triton itself does not answer."""
        if not self.combined_model:
            return
        why = None
        try:
            cfg = await self.client.model_config(self.combined_model, timeout_s=self.probe_timeout_s)
            outputs = {o.get("name") for o in cfg.get("output", [])}
            missing = [m for m in self.models if m not in outputs]
            if missing:
                why = f"it has no {', '.join(missing)}"
            else:
                await self.client.infer_heads(self.combined_model, ["ping"], dict(self._versions),
                                              timeout_s=self.probe_timeout_s)
        except TritonClientError as exc:
            if not await self.client.is_server_ready(timeout_s=self.probe_timeout_s):
                raise
            why = f"Triton does not serve it at the pinned versions ({exc})"
        self._use_combined(why is None, why)

    def _use_combined(self, usable: bool, why: str | None) -> None:
        self._combined_usable = usable
        if why is not None and why != self._combined_warned:
            log.warning("combined model %s not used, %s: one Triton call per model", self.combined_model, why)
        elif why is None and self._combined_warned is not None:
            log.info("combined model %s serves %s: one Triton call per batch", self.combined_model,
                     ", ".join(self.models))
        self._combined_warned = why

    async def _probe(self) -> bool:
        """One small batch on Triton at the pinned versions, within ``probe_timeout_s``."""
        try:
            await self._check_combined()
            versions = {m: self._versions[m] for m in self.models}
            await self._classify_triton(["ping"], versions, deadline_s=self.probe_timeout_s)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.last_error = f"probe: {type(exc).__name__}: {exc}"
            return False

    async def _maintain(self) -> None:
        next_poll = time.monotonic() + self.version_poll_s
        while True:
            await asyncio.sleep(min(self.probe_interval_s, self.version_poll_s))
            try:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.version_poll_s
                    self.refresh_versions()
                    if self.combined_model and not self._combined_usable and not self._breaker_open:
                        try:  # back to one call per batch once heads serves the pinned versions
                            await self._check_combined()
                        except Exception:
                            pass  # Triton itself failing: the next batch trips the breaker
                if self.client is not None and self._breaker_open and await self._probe():
                    self._set_breaker(False, "probe succeeded")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router maintenance step failed")
