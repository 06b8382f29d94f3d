"""Triton Inference Server integration: launch it, talk to it, route around it.

* :mod:`yujing.service.triton.launcher` -- :class:`TritonServer`, a local ``tritonserver`` child
  process on our ``model_repo/`` (the one in the nvidia-pytriton wheel, or a given install).
* :mod:`yujing.service.triton.client` -- :class:`TritonModelClient`, an asyncio client:
  infer, readiness, metadata, labels, load/unload (gRPC; inference over HTTP when given the
  HTTP port).
* :mod:`yujing.service.triton.http_infer` -- :class:`HttpInference`, inference requests over
  Triton's HTTP endpoint (binary tensors, a pool of kept-alive connections): the hot path.
* :mod:`yujing.service.triton.router` -- :class:`ModelRouter`, what the micro-batcher calls once
  per batch: Triton when healthy, the same artifacts in-process when not.
* :mod:`yujing.service.triton.deploy` -- ``yujing models deploy``: a new model version, loaded,
  smoke-checked, then switched to.

Nothing here imports ``tritonclient`` or ``pytriton`` at package import time.
"""
