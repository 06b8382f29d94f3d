"""Asyncio gRPC client for the text models served by Triton.

    >>> client = TritonModelClient("127.0.0.1:8001", model_repository="model_repo")  # doctest: +SKIP
    >>> probs, version = await client.infer("sentiment", ["我要投诉", "thanks!"], timeout_s=0.2)  # doctest: +SKIP
    >>> probs.shape, client.labels("sentiment", version)  # doctest: +SKIP
    ((2, 3), ('negative', 'neutral', 'positive'))

Tensor contract (``yujing.service.models``): input ``TEXT`` BYTES [n, 1] (UTF-8), output
``PROBABILITIES`` FP32 [n, n_labels]. A batch larger than the model's ``max_batch_size``
(asked of Triton once per model and loaded version set, e.g. 64 for the transformer models)
is split into several requests sent concurrently.

Labels never come from code: :func:`read_labels` reads them from the model repository,
``<model>/<version>/artifact/model.json`` (the version's own label set), else
``<model>/labels.txt`` beside the config.

The underlying gRPC channel belongs to the event loop it was created on; the client
creates it on first use, so construct the client anywhere but use it from one loop.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from yujing.service.models import TRITON_INPUT, TRITON_OUTPUT
from yujing.service.triton.http_infer import BytesOutput, HttpInference, HttpInferenceError, decode_bytes_elements

__all__ = [
    "TritonModelClient", "TritonClientError", "read_labels", "read_languages", "repository_versions",
    "serving_version", "set_serving_version", "SERVING_VERSION_FILE",
]

DEFAULT_MAX_BATCH_SIZE = 1024
_MAX_MESSAGE = 2**31 - 1
# Reconnect quickly after Triton comes back (gRPC's default backoff grows to 120 s).
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def _first_row_of_strings(result, name: str, rows: int) -> list[bytes] | None:
    """Row 0 of the BYTES output ``name`` of shape [rows, k] (None when absent or of another
    shape), read from the response's raw bytes (:func:`decode_bytes_elements`). Every row of
    ``MODELS`` is the same (one request, one set of versions), so reading one row instead of
    ``as_numpy``'s ``rows * k`` elements (a Python loop in the client library) saves that
    loop on every call."""
    response = result.get_response()
    for index, output in enumerate(response.outputs):
        if output.name != name:
            continue
        if output.datatype != "BYTES":
            return None
        if index >= len(response.raw_output_contents):      # sent as contents, not raw: the slow way
            whole = result.as_numpy(name)
            if whole is None or whole.ndim != 2 or whole.shape[0] != rows:
                return None
            return [x if isinstance(x, bytes) else str(x).encode() for x in whole[0]]
        return _first_row(BytesOutput(tuple(output.shape), response.raw_output_contents[index]), rows)
    return None


def _first_row(output: BytesOutput | None, rows: int) -> list[bytes] | None:
    """Row 0 of a BYTES output of shape [rows, k]; None when it is absent, of another shape
    or cut short."""
    if not isinstance(output, BytesOutput) or len(output.shape) != 2 or output.shape[0] != rows:
        return None
    try:
        return decode_bytes_elements(output.raw, output.shape[1])
    except ValueError:
        return None


class TritonClientError(RuntimeError):
    """A Triton call failed: unreachable, deadline exceeded, an error response, or an
    answer that breaks the tensor contract. ``status`` is the gRPC status name when
    there is one (``"UNAVAILABLE"``, ``"DEADLINE_EXCEEDED"``, ...)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


def repository_versions(model_repository: str | Path, model_name: str) -> list[int]:
    """The numeric version folders of a model in the repository, ascending."""
    model_dir = Path(model_repository) / model_name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


SERVING_VERSION_FILE = "serving_version"


def _has_artifact(model_dir: Path, version: int | str) -> bool:
    return (model_dir / str(version) / "artifact" / "model.json").is_file()


def serving_version(model_repository: str | Path, model_name: str) -> str | None:
    """The version the service should use: the one named in ``<model>/serving_version``
    (written by ``yujing models deploy`` once the version passed its smoke check), else
    the newest version folder holding an artifact; None if there is none."""
    model_dir = Path(model_repository) / model_name
    marker = model_dir / SERVING_VERSION_FILE
    try:
        named = marker.read_text(encoding="utf-8").strip()
    except OSError:
        named = ""
    if named.isdigit() and _has_artifact(model_dir, named):
        return str(int(named))
    for version in reversed(repository_versions(model_repository, model_name)):
        if _has_artifact(model_dir, version):
            return str(version)
    return None


def set_serving_version(model_repository: str | Path, model_name: str, version: str | int | None) -> None:
    """Atomically name the version the service should use (None: back to "the newest")."""
    marker = Path(model_repository) / model_name / SERVING_VERSION_FILE
    if version is None:
        marker.unlink(missing_ok=True)
        return
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(f"{int(version)}\n", encoding="utf-8")
    tmp.replace(marker)


def _model_json_paths(model_repository: str | Path, model_name: str,
                      version: str | int | None) -> tuple[list[Path], list[Path]]:
    """The version's ``artifact/model.json`` (if a version is named), and those of all
    versions, newest first: where a model's metadata is looked up, in that order."""
    model_dir = Path(model_repository) / model_name
    named = [model_dir / str(version) / "artifact" / "model.json"] if version not in (None, "") else []
    newest = [model_dir / str(v) / "artifact" / "model.json"
              for v in reversed(repository_versions(model_repository, model_name))]
    return named, newest


def read_languages(model_repository: str | Path, model_name: str,
                   version: str | int | None = None) -> tuple[str, ...] | None:
    """The language codes a model was trained on (``languages`` in the version's
    ``artifact/model.json``, else the newest version's); None when it does not say."""
    named, newest = _model_json_paths(model_repository, model_name, version)
    for path in named + newest:
        if path.is_file():
            langs = json.loads(path.read_text(encoding="utf-8")).get("languages")
            return tuple(langs) if langs else None
    return None


def read_labels(model_repository: str | Path, model_name: str,
                version: str | int | None = None) -> tuple[str, ...]:
    """A model's labels from the repository: the version's ``artifact/model.json``, else
    ``labels.txt`` beside the config, else the newest version's ``model.json``."""
    named, newest = _model_json_paths(model_repository, model_name, version)
    for path in named + [Path(model_repository) / model_name / "labels.txt"] + newest:
        if not path.is_file():
            continue
        if path.suffix == ".txt":
            labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        else:
            labels = tuple(json.loads(path.read_text(encoding="utf-8")).get("labels", ()))
        if labels:
            return labels
    raise FileNotFoundError(f"no labels for model {model_name!r} (version {version}) in {model_repository}")


class TritonModelClient:
    """Talks to one Triton server over gRPC (``tritonclient.grpc.aio``), and sends its
    inference requests over HTTP when given ``http_url``.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        http_url: ``host:port`` of the same Triton's HTTP endpoint: :meth:`infer` and
            :meth:`infer_heads` go there (:mod:`yujing.service.triton.http_infer`, about a
            third of the gRPC client's CPU a request); None: everything over gRPC.
        http_headers: sent with every HTTP request (an external Triton's key in its HTTP
            form, :meth:`~yujing.service.triton.access.TritonKey.http_headers`).
        model_repository: the repository Triton serves, for :meth:`labels` (optional).
        max_batch_size: the largest request when Triton does not say a model's own
            ``max_batch_size`` (which is asked once per model); bigger batches are split.
        default_timeout_s: the deadline of calls that give none.
        headers: sent with every call: the key of a Triton's restricted protocols
            (:meth:`yujing.service.triton.access.TritonKey.grpc_headers`), if it has any.
    """

    def __init__(self, url: str, model_repository: str | Path | None = None, *,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, default_timeout_s: float = 5.0,
                 headers: Mapping[str, str] | None = None, http_url: str | None = None,
                 http_headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.http_url = http_url
        self.headers = dict(headers) if headers else None
        self.model_repository = Path(model_repository) if model_repository is not None else None
        self.max_batch_size = max_batch_size
        self.default_timeout_s = default_timeout_s
        self._model_max_batch: dict[str, int] = {}
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = HttpInference(http_url, headers=http_headers) if http_url else None

    # -- connection -------------------------------------------------------------------
    def _grpc(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import tritonclient.grpc.aio as grpcclient
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
            self._loop = loop
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> "TritonModelClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, what: str, coro):
        from tritonclient.utils import InferenceServerException
        try:
            return await coro
        except InferenceServerException as exc:
            status = (exc.status() or "").replace("StatusCode.", "") or None
            raise TritonClientError(f"{what}: {exc.message() or exc}", status) from exc

    async def _http_infer(self, what: str, model_name: str, texts: Sequence[str], outputs: Sequence[str],
                          timeout: float, version: str = "", parameters: Mapping[str, str] | None = None):
        try:
            return await self._http.infer(model_name, texts, outputs, version=version, parameters=parameters,
                                          timeout_s=timeout)
        except HttpInferenceError as exc:
            raise TritonClientError(f"{what}: {exc}", exc.status) from exc

    # -- inference --------------------------------------------------------------------
    async def infer(self, model_name: str, texts: Sequence[str], timeout_s: float | None = None,
                    model_version: str | int = "") -> tuple[np.ndarray, str]:
        """Class probabilities of ``texts``: ``(float32 [len(texts), n_labels], version)``.

        ``model_version`` "" lets Triton pick (the newest it serves)."""
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        n = len(texts)
        if n == 0:
            return np.zeros((0, 0), dtype=np.float32), str(model_version)
        step = await self._max_batch(model_name, timeout)
        chunks = [texts[i:i + step] for i in range(0, n, step)]
        parts = await asyncio.gather(*(self._infer_chunk(model_name, c, timeout, str(model_version))
                                       for c in chunks))
        versions = {v for _, v in parts}
        if len(versions) != 1:  # a new version came up between chunks
            raise TritonClientError(f"{model_name}: one batch answered by versions {sorted(versions)}")
        probs = parts[0][0] if len(parts) == 1 else np.concatenate([p for p, _ in parts])
        return probs, versions.pop()

    async def infer_heads(self, model_name: str, texts: Sequence[str], heads: Mapping[str, str | int],
                          timeout_s: float | None = None) -> dict[str, tuple[np.ndarray, str]]:
        """Several models' probabilities of ``texts`` in one request to a combined model
        (``heads``, :mod:`yujing.service.triton.heads`): ``heads`` maps each member model
        to the version wanted ("" for the one it serves); returns ``{member: (float32
        [len(texts), n_labels], version)}``, the versions as the model reported them.

        >>> answers = await client.infer_heads("heads", ["thanks!"], {"sentiment": "2", "intent": "2"})  # doctest: +SKIP
        >>> answers["intent"][1]  # doctest: +SKIP
        '2'
        """
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        heads = {m: str(v) for m, v in heads.items()}
        n = len(texts)
        if n == 0:
            return {m: (np.zeros((0, 0), dtype=np.float32), v) for m, v in heads.items()}
        step = await self._max_batch(model_name, timeout)
        if n <= step:      # one request: awaited here, without a task of its own
            parts = [await self._infer_heads_chunk(model_name, texts, heads, timeout)]
        else:
            chunks = [texts[i:i + step] for i in range(0, n, step)]
            parts = await asyncio.gather(*(self._infer_heads_chunk(model_name, c, heads, timeout) for c in chunks))
        out = {}
        for member in heads:
            versions = {p[member][1] for p in parts}
            if len(versions) != 1:
                raise TritonClientError(f"{model_name}: {member} in one batch answered by versions {sorted(versions)}")
            probs = [p[member][0] for p in parts]
            out[member] = (probs[0] if len(probs) == 1 else np.concatenate(probs), versions.pop())
        return out

    async def _infer_heads_chunk(self, model_name: str, texts: Sequence[str], heads: Mapping[str, str],
                                 timeout: float) -> dict[str, tuple[np.ndarray, str]]:
        from yujing.service.triton.heads import MODELS_OUTPUT, VERSION_SEP
        parameters = {m: v for m, v in heads.items() if v}
        if self._http is not None:
            arrays, _ = await self._http_infer(f"infer {model_name}", model_name, texts, [*heads, MODELS_OUTPUT],
                                               timeout, parameters=parameters)
            served = _first_row(arrays.get(MODELS_OUTPUT), len(texts))
            probs_of = arrays.get
        else:
            import tritonclient.grpc.aio as grpcclient
            data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
            tensor = grpcclient.InferInput(TRITON_INPUT, list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data)
            outputs = [grpcclient.InferRequestedOutput(m) for m in heads]
            outputs.append(grpcclient.InferRequestedOutput(MODELS_OUTPUT))
            result = await self._call(
                f"infer {model_name}",
                self._grpc().infer(model_name, [tensor], outputs=outputs, headers=self.headers,
                                   parameters=parameters, client_timeout=timeout))
            served = _first_row_of_strings(result, MODELS_OUTPUT, len(texts))
            probs_of = result.as_numpy
        if served is None:
            raise TritonClientError(f"{model_name}: output {MODELS_OUTPUT} is missing or not of shape "
                                    f"({len(texts)}, heads)")
        versions = {}
        for item in served:
            member, _, version = item.decode().partition(VERSION_SEP)
            versions[member] = version
        answers = {}
        for member in heads:
            probs = probs_of(member)
            if member not in versions or probs is None:
                raise TritonClientError(f"{model_name}: no answer for {member} (it answered {sorted(versions)})")
            if probs.ndim != 2 or probs.shape[0] != len(texts) or probs.shape[1] < 1:
                raise TritonClientError(f"{model_name}: output {member} has shape {probs.shape}, "
                                        f"expected ({len(texts)}, n_labels)")
            answers[member] = (np.asarray(probs, dtype=np.float32), versions[member])
        return answers

    async def _max_batch(self, model_name: str, timeout: float) -> int:
        """The model's ``max_batch_size`` from Triton (cached); the client's default when
        Triton cannot say (the request then fails or succeeds on its own)."""
        size = self._model_max_batch.get(model_name)
        if size is None:
            try:
                cfg = await self.model_config(model_name, timeout_s=timeout)
                size = int(cfg.get("max_batch_size", 0) or 0)
            except (TritonClientError, ValueError, TypeError):
                return self.max_batch_size
            size = min(size, self.max_batch_size) if size > 0 else self.max_batch_size
            self._model_max_batch[model_name] = size
        return size

    async def _infer_chunk(self, model_name: str, texts: Sequence[str], timeout: float,
                           model_version: str) -> tuple[np.ndarray, str]:
        if self._http is not None:
            arrays, version = await self._http_infer(f"infer {model_name}", model_name, texts, [TRITON_OUTPUT],
                                                     timeout, version=model_version)
            probs = arrays.get(TRITON_OUTPUT)
        else:
            import tritonclient.grpc.aio as grpcclient
            data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
            tensor = grpcclient.InferInput(TRITON_INPUT, list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data)
            result = await self._call(
                f"infer {model_name}",
                self._grpc().infer(model_name, [tensor], model_version=model_version,
                                   outputs=[grpcclient.InferRequestedOutput(TRITON_OUTPUT)],
                                   headers=self.headers, client_timeout=timeout))
            probs, version = result.as_numpy(TRITON_OUTPUT), result.get_response().model_version
        if probs is None or probs.ndim != 2 or probs.shape[0] != len(texts) or probs.shape[1] < 1:
            shape = None if probs is None else probs.shape
            raise TritonClientError(f"{model_name}: output {TRITON_OUTPUT} has shape {shape}, "
                                    f"expected ({len(texts)}, n_labels)")
        return np.asarray(probs, dtype=np.float32), version

    # -- health and metadata ----------------------------------------------------------
    async def is_server_ready(self, timeout_s: float = 1.0) -> bool:
        """True if the server answers and is ready; never raises."""
        try:
            return bool(await self._grpc().is_server_ready(headers=self.headers, client_timeout=timeout_s))
        except Exception:
            return False

    async def is_model_ready(self, model_name: str, model_version: str | int = "",
                             timeout_s: float = 1.0) -> bool:
        """True if that model (version) is loaded and ready; never raises."""
        try:
            return bool(await self._grpc().is_model_ready(model_name, str(model_version), headers=self.headers,
                                                          client_timeout=timeout_s))
        except Exception:
            return False

    async def model_metadata(self, model_name: str, model_version: str | int = "",
                             timeout_s: float | None = None) -> dict:
        """Triton's metadata: name, versions, platform, inputs, outputs (as a dict)."""
        return await self._call(f"metadata {model_name}", self._grpc().get_model_metadata(
            model_name, str(model_version), headers=self.headers, as_json=True,
            client_timeout=timeout_s or self.default_timeout_s))

    async def model_config(self, model_name: str, timeout_s: float | None = None) -> dict:
        reply = await self._call(f"config {model_name}", self._grpc().get_model_config(
            model_name, headers=self.headers, as_json=True, client_timeout=timeout_s or self.default_timeout_s))
        return reply.get("config", reply)

    async def ready_versions(self, model_name: str, timeout_s: float | None = None) -> list[str]:
        """Versions of ``model_name`` that Triton reports READY, ascending. (The repository
        index belongs to the model-repository protocol: a restricted Triton wants the key.)"""
        index = await self._call("repository index", self._grpc().get_model_repository_index(
            headers=self.headers, as_json=True, client_timeout=timeout_s or self.default_timeout_s))
        versions = [m.get("version", "") for m in index.get("models", [])
                    if m.get("name") == model_name and m.get("state") == "READY"]
        return sorted(versions, key=lambda v: (len(v), v))

    def labels(self, model_name: str, version: str | int | None = None) -> tuple[str, ...]:
        """The model's labels from the repository (see :func:`read_labels`)."""
        if self.model_repository is None:
            raise ValueError("labels need the client's model_repository")
        return read_labels(self.model_repository, model_name, version)

    # -- repository API (explicit model-control mode) ---------------------------------
    async def load_model(self, model_name: str, timeout_s: float = 120.0, config: dict | None = None) -> None:
        """(Re)load a model: Triton rescans its folder and serves the versions its
        version_policy selects. Raises :class:`TritonClientError` if the load fails.

        ``config`` (the JSON model config) replaces the one on disk for this load. Triton
        skips the reload of a model whose folder and config it thinks unchanged; a config
        that differs (a new parameter value) makes it load the model again."""
        self._model_max_batch.pop(model_name, None)      # a reload may bring a new config
        extra = {"config": json.dumps(config)} if config is not None else {}
        await self._call(f"load {model_name}",
                         self._grpc().load_model(model_name, headers=self.headers, client_timeout=timeout_s,
                                                 **extra))

    async def unload_model(self, model_name: str, timeout_s: float = 60.0) -> None:
        await self._call(f"unload {model_name}",
                         self._grpc().unload_model(model_name, headers=self.headers, client_timeout=timeout_s))
