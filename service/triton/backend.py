"""The Triton Python-backend model behind every text model in ``model_repo/``.

Each ``model_repo/<model>/<version>/model.py`` is one line,
``from yujing.service.triton.backend import TritonPythonModel``; this class does the work:

* ``initialize`` reads the tensor dtypes from the model config, the device kind from the
  instance (``KIND_CPU`` here, ``KIND_GPU`` in the GPU image), and loads the artifact at
  ``<model dir>/<version>/artifact`` with :func:`yujing.service.models.artifact.load_model`,
  the same loader the in-process fallback uses.
* ``initialize`` then scores a two-text warm-up batch, so JIT compilation happens at
  load time and a model that cannot score fails its load instead of its first request.
* ``execute`` gets the requests the dynamic batcher gathered, scores all their texts in
  one ``predict_proba`` call and returns exactly one response per request. A request that
  cannot be served (no TEXT, bad UTF-8, the model fails on it) gets an error response;
  the others in the batch still get their answers.

The contract (``yujing.service.models``): input ``TEXT`` TYPE_STRING dims [1], output
``PROBABILITIES`` TYPE_FP32 dims [-1], batched; row i of the output holds the class
probabilities of text i, in the order of the artifact's ``labels``.

Artifact kinds registered outside ``yujing.service.models`` (tests, plug-ins) are imported from
``$YUJING_LOADER_MODULES`` (comma-separated module names) before the artifact is loaded.

``triton_python_backend_utils`` only exists inside Triton's Python stub; it is imported
when a model is initialised, so importing this module elsewhere is harmless.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np

from yujing.service.models import TRITON_INPUT, TRITON_OUTPUT

LOADER_MODULES_ENV = "YUJING_LOADER_MODULES"
WARM_UP_TEXTS = ("warm-up, thanks", "预热一下，谢谢")


def _extend_path_from_env() -> None:
    """The stub's embedded Python runs isolated and ignores ``PYTHONPATH``; the launcher
    passes the folders plug-in loaders live in that way, so they are applied here."""
    import sys

    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = extra


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # provided by the Python backend stub
    return pb_utils


def predict_requests(predict, texts_of: dict, errors: list) -> dict:
    """Score the texts of several requests (``texts_of``: request index -> its texts) in one
    ``predict`` call and split the answer back by request; its rows are an array, or a dict
    of arrays. If that call fails, score request by request so that only the culprit fails:
    its ``errors[i]`` becomes ``(message, "INTERNAL")`` and it has no entry in the result."""
    def rows(out, a: int, b: int):
        return {k: p[a:b] for k, p in out.items()} if isinstance(out, dict) else out[a:b]

    result: dict = {}
    if not texts_of:
        return result
    try:
        out = predict([text for texts in texts_of.values() for text in texts])
        start = 0
        for i, texts in texts_of.items():
            result[i] = rows(out, start, start + len(texts))
            start += len(texts)
    except Exception:
        for i, texts in texts_of.items():
            try:
                result[i] = predict(texts)
            except Exception as exc:
                errors[i] = (f"{type(exc).__name__}: {exc}", "INTERNAL")
    return result


class TritonPythonModel:
    """Generic Python-backend model: one artifact, texts in, probabilities out."""

    def initialize(self, args: dict) -> None:
        from yujing.service.models.artifact import load_model

        pb = _pb_utils()
        self._pb = pb
        self.model_config = config = json.loads(args["model_config"])
        in_cfg = pb.get_input_config_by_name(config, TRITON_INPUT)
        out_cfg = pb.get_output_config_by_name(config, TRITON_OUTPUT)
        if in_cfg is None or out_cfg is None:
            raise ValueError(
                f"model {args.get('model_name')}: config needs input {TRITON_INPUT!r} and "
                f"output {TRITON_OUTPUT!r}")
        if in_cfg["data_type"] != "TYPE_STRING":
            raise ValueError(f"input {TRITON_INPUT} must be TYPE_STRING, not {in_cfg['data_type']}")
        self.output_dtype = pb.triton_string_to_numpy(out_cfg["data_type"])
        self.device_kind = args.get("model_instance_kind", "CPU")
        self.device_id = int(args.get("model_instance_device_id", 0) or 0)

        _extend_path_from_env()
        for module in filter(None, (m.strip() for m in os.environ.get(LOADER_MODULES_ENV, "").split(","))):
            importlib.import_module(module)
        version = str(args["model_version"])
        artifact_dir = Path(args["model_repository"]) / version / "artifact"
        self.model = load_model(artifact_dir, version=version)
        use_device = getattr(self.model, "use_device", None)
        if callable(use_device):  # optional hook for artifacts that can run on a GPU
            use_device(self.device_kind, self.device_id)
        self.n_labels = len(self.model.labels)
        self._logger = getattr(pb, "Logger", None)
        # Score once now: JIT compilation and lazy set-up happen at load, not on the first
        # request, and a model that cannot score never becomes READY.
        self._predict(list(WARM_UP_TEXTS))
        self._log(f"loaded {artifact_dir} ({self.model.name} v{version}, {self.n_labels} labels, "
                  f"{self.device_kind}:{self.device_id})")

    def execute(self, requests: list) -> list:
        pb = self._pb
        texts_per_request: list[list[str] | None] = []
        errors: list[tuple[str, str] | None] = []
        for request in requests:
            try:
                texts_per_request.append(self._texts(request))
                errors.append(None)
            except Exception as exc:  # one bad request must not sink the batch
                texts_per_request.append(None)
                errors.append((str(exc), "INVALID_ARG"))

        probs_per_request = predict_requests(
            self._predict, {i: t for i, t in enumerate(texts_per_request) if t}, errors)

        responses = []
        for i, texts in enumerate(texts_per_request):
            if errors[i] is not None:
                responses.append(pb.InferenceResponse(output_tensors=[], error=self._error(*errors[i])))
                continue
            if i in probs_per_request:
                out = probs_per_request[i]
            else:  # an empty request: zero rows
                out = np.zeros((0, self.n_labels), dtype=self.output_dtype)
            tensor = pb.Tensor(TRITON_OUTPUT, np.ascontiguousarray(out, dtype=self.output_dtype))
            responses.append(pb.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        self.model = None

    # -- helpers ----------------------------------------------------------------------
    def _texts(self, request) -> list[str]:
        tensor = self._pb.get_input_tensor_by_name(request, TRITON_INPUT)
        if tensor is None:
            raise ValueError(f"request has no {TRITON_INPUT} input")
        raw = tensor.as_numpy().reshape(-1)
        texts = []
        for j, item in enumerate(raw):
            if isinstance(item, bytes):
                try:
                    texts.append(item.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{TRITON_INPUT}[{j}] is not valid UTF-8 ({exc})") from None
            else:
                texts.append(str(item))
        return texts

    def _predict(self, texts: list[str]) -> np.ndarray:
        probs = np.asarray(self.model.predict_proba(texts))
        if probs.shape != (len(texts), self.n_labels):
            raise ValueError(f"model returned shape {probs.shape}, expected {(len(texts), self.n_labels)}")
        if not np.all(np.isfinite(probs)):
            raise ValueError("model returned non-finite probabilities")
        return probs

    def _error(self, message: str, code_name: str):
        pb = self._pb
        code = getattr(getattr(pb, "TritonError", None), code_name, None)
        if code is not None:
            return pb.TritonError(message, code)
        return pb.TritonError(message)

    def _log(self, message: str) -> None:
        logger = self._logger
        if logger is not None:
            logger.log_info(message)
        else:
            print(message, flush=True)
