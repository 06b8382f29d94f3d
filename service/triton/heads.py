"""The Triton Python-backend model ``heads``: sentiment, emotion, intent and dissatisfaction in one call.

Per micro-batch the router used to send one request per model, each a round trip with
its own ~2 ms floor on a CPU, and each model featurised the same texts again. ``heads``
takes the texts once, featurises them once where the models share a feature
configuration (:func:`yujing.service.models.multihead.predict_heads`) and answers every
model's probabilities in one response. ``model_repo/heads/1/model.py`` is one line,
``from yujing.service.triton.heads import TritonPythonModel``.

Members and versions (how a deploy reaches it):

* the members are the config's ``members`` parameter (``sentiment,emotion,intent,dissatisfaction``); each
  has an output of its own name (``TYPE_FP32`` dims [-1]: row i holds the member's class
  probabilities of text i, in the order of its artifact's labels). A member without a
  ``config.pbtxt`` in the repository is skipped (logged); none at all fails the load.
* ``heads`` has no artifact of its own. At load it reads each member's
  ``serving_version`` (:func:`yujing.service.triton.client.serving_version`) and loads
  that version's artifact from ``model_repo/<member>/<version>/artifact`` -- the same
  artifact and loader as the member's own backend (:mod:`yujing.service.triton.backend`)
  -- plus the member's newest version when it is newer: the one ``yujing models deploy``
  is about to check. Deploy reloads ``heads`` after it wrote the new version (and again
  when it removes a refused one), checks the new version through ``heads``, and only then
  rewrites ``serving_version``; the router then asks ``heads`` for the new version.
* a request names the versions it wants in its request parameters, ``{member: version}``
  (a member not named: its serving version at load), and the heads it wants by its
  requested outputs (none requested: every member loaded). A version ``heads`` did not
  load is refused (``NOT_FOUND``: reload ``heads``); the other requests still get answers.
* output ``MODELS`` (``TYPE_STRING`` dims [-1]): per text, ``"<member>:<version>"`` of each
  member answered, in the order of ``members``, so the caller can check what served it.

``execute`` groups the dynamic batcher's requests by the (member, version) set they ask
for, scores each group in one :func:`predict_heads` pass and returns exactly one response
per request; a request that cannot be served gets an error response (as in the per-model
backend).
"""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import numpy as np

from yujing.service.models import TRITON_INPUT
from yujing.service.triton.backend import (
    LOADER_MODULES_ENV, WARM_UP_TEXTS, TritonPythonModel as _PerModelBackend, _extend_path_from_env, _pb_utils,
    predict_requests,
)

__all__ = ["TritonPythonModel", "MODELS_OUTPUT", "MEMBERS_PARAMETER", "VERSION_SEP", "member_versions",
           "members_of"]

MODELS_OUTPUT = "MODELS"
MEMBERS_PARAMETER = "members"
VERSION_SEP = ":"


def members_of(model_dir: str | Path) -> list[str]:
    """The ``members`` parameter in ``model_dir/config.pbtxt``: the models a combined model
    answers ([] for a model that is not one, or has no config)."""
    try:
        text = (Path(model_dir) / "config.pbtxt").read_text(encoding="utf-8")
    except OSError:
        return []
    match = re.search(r'key:\s*"%s"\s*value:\s*{\s*string_value:\s*"([^"]*)"' % MEMBERS_PARAMETER, text)
    return [m.strip() for m in match.group(1).split(",") if m.strip()] if match else []


def member_versions(model_repository: str | Path, member: str) -> list[str]:
    """The versions of ``member`` that ``heads`` loads: its serving version, and its
    newest version with an artifact when that is newer (a deploy in progress)."""
    from yujing.service.triton.client import repository_versions, serving_version

    serving = serving_version(model_repository, member)
    if serving is None:
        return []
    model_dir = Path(model_repository) / member
    newest = [v for v in repository_versions(model_repository, member)
              if (model_dir / str(v) / "artifact" / "model.json").is_file()]
    versions = [serving]
    if newest and newest[-1] > int(serving):
        versions.append(str(newest[-1]))
    return versions


class TritonPythonModel(_PerModelBackend):
    """Python-backend model: texts in once, every member model's probabilities out."""

    def initialize(self, args: dict) -> None:
        from yujing.service.models.artifact import load_model

        pb = _pb_utils()
        self._pb = pb
        self._logger = getattr(pb, "Logger", None)
        self.model_config = config = json.loads(args["model_config"])
        in_cfg = pb.get_input_config_by_name(config, TRITON_INPUT)
        if in_cfg is None or in_cfg["data_type"] != "TYPE_STRING":
            raise ValueError(f"model {args.get('model_name')}: config needs input {TRITON_INPUT!r} TYPE_STRING")
        members = [m.strip() for m in config.get("parameters", {}).get(MEMBERS_PARAMETER, {})
                   .get("string_value", "").split(",") if m.strip()]
        if not members:
            raise ValueError(f"model {args.get('model_name')}: parameter {MEMBERS_PARAMETER!r} names no models")
        outputs = {o["name"]: o for o in config.get("output", [])}
        for name in members + [MODELS_OUTPUT]:
            if name not in outputs:
                raise ValueError(f"model {args.get('model_name')}: member {name!r} has no output of its name")
        self._declared_members = members
        self.output_dtype = {m: pb.triton_string_to_numpy(outputs[m]["data_type"]) for m in members}
        self.device_kind = args.get("model_instance_kind", "CPU")
        self.device_id = int(args.get("model_instance_device_id", 0) or 0)

        _extend_path_from_env()
        for module in filter(None, (m.strip() for m in os.environ.get(LOADER_MODULES_ENV, "").split(","))):
            importlib.import_module(module)
        repository = Path(args["model_repository"]).parent  # args give this model's own folder
        self.members: list[str] = []
        self.models: dict[tuple[str, str], object] = {}
        self.default_version: dict[str, str] = {}
        for member in members:
            if not (repository / member / "config.pbtxt").is_file():
                self._log(f"heads: no model {member!r} in {repository}; serving without it")
                continue
            versions = member_versions(repository, member)
            if not versions:
                raise ValueError(f"heads: model {member!r} has no version with an artifact in {repository}")
            for version in versions:
                model = load_model(repository / member / version / "artifact", version=version)
                use_device = getattr(model, "use_device", None)
                if callable(use_device):
                    use_device(self.device_kind, self.device_id)
                self.models[(member, version)] = model
            self.members.append(member)
            self.default_version[member] = versions[0]
        if not self.members:
            raise ValueError(f"heads: none of its members {members} is in {repository}")
        # Score once now, every loaded version: JIT compilation at load, and a member that
        # cannot score fails the load instead of the first request.
        self._predict(tuple(self.models), list(WARM_UP_TEXTS))
        loaded = ", ".join(f"{m} v{v}" for m, v in self.models)
        self._log(f"heads: loaded {loaded} ({self.device_kind}:{self.device_id})")

    def execute(self, requests: list) -> list:
        pb = self._pb
        asks: list[tuple[tuple[tuple[str, str], ...], bool, list[str]] | None] = []
        errors: list[tuple[str, str] | None] = []
        for request in requests:
            try:
                asks.append(self._ask(request))
                errors.append(None)
            except LookupError as exc:
                asks.append(None)
                errors.append((str(exc.args[0]), "NOT_FOUND"))
            except Exception as exc:  # one bad request must not sink the batch
                asks.append(None)
                errors.append((str(exc), "INVALID_ARG"))

        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i, ask in enumerate(asks):
            if ask is not None and ask[2]:
                groups.setdefault(ask[0], []).append(i)
        probs_of: dict[int, dict[tuple[str, str], np.ndarray]] = {}
        for keys, members_of_group in groups.items():
            probs_of.update(predict_requests(lambda texts, keys=keys: self._predict(keys, texts),
                                             {i: asks[i][2] for i in members_of_group}, errors))

        responses = []
        for i, ask in enumerate(asks):
            if errors[i] is not None:
                responses.append(pb.InferenceResponse(output_tensors=[], error=self._error(*errors[i])))
                continue
            keys, want_models, texts = ask
            tensors = []
            for key in keys:
                member = key[0]
                out = probs_of[i][key] if i in probs_of else np.zeros((0, len(self.models[key].labels)))
                tensors.append(pb.Tensor(member, np.ascontiguousarray(out, dtype=self.output_dtype[member])))
            if want_models:
                row = [f"{m}{VERSION_SEP}{v}".encode() for m, v in keys]
                names = np.empty((len(texts), len(row)), dtype=np.object_)
                names[:] = row
                tensors.append(pb.Tensor(MODELS_OUTPUT, names))
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.models = {}

    # -- helpers ----------------------------------------------------------------------
    def _ask(self, request) -> tuple[tuple[tuple[str, str], ...], bool, list[str]]:
        """What a request asks for: ((member, version) of each head, in member order),
        whether it wants MODELS, its texts."""
        texts = self._texts(request)
        wanted = set(request.requested_output_names() or ())
        if not wanted:
            wanted = set(self.members) | {MODELS_OUTPUT}
        raw = request.parameters() if hasattr(request, "parameters") else "{}"
        params = json.loads(raw or "{}")
        known = set(self._declared_members)
        unknown = sorted(wanted - known - {MODELS_OUTPUT})
        if unknown:
            raise ValueError(f"heads has no output {unknown[0]!r} (members: {', '.join(self.members)})")
        keys = []
        for member in self.members:
            if member not in wanted:
                continue
            version = str(params.get(member, self.default_version[member]))
            if (member, version) not in self.models:
                have = sorted(v for m, v in self.models if m == member)
                raise LookupError(f"heads has not loaded {member} v{version} (it has v{', v'.join(have)}; "
                                  "reload heads after a new version is written)")
            keys.append((member, version))
        absent = sorted(wanted - set(self.members) - {MODELS_OUTPUT})
        if absent and not known <= wanted:  # all outputs (none named): the loaded members
            raise LookupError(f"heads serves no {absent[0]!r}: it was not in the repository at load")
        return tuple(keys), MODELS_OUTPUT in wanted, texts

    def _predict(self, keys, texts: list[str]) -> dict[tuple[str, str], np.ndarray]:
        from yujing.service.models.multihead import predict_heads

        named = {f"{m}{VERSION_SEP}{v}": self.models[(m, v)] for m, v in keys}
        probs = predict_heads(named, texts)
        out = {}
        for key in keys:
            p = np.asarray(probs[f"{key[0]}{VERSION_SEP}{key[1]}"])
            n_labels = len(self.models[key].labels)
            if p.shape != (len(texts), n_labels):
                raise ValueError(f"{key[0]} v{key[1]} returned shape {p.shape}, expected {(len(texts), n_labels)}")
            if not np.all(np.isfinite(p)):
                raise ValueError(f"{key[0]} v{key[1]} returned non-finite probabilities")
            out[key] = p
        return out
