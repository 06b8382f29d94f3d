"""yujing (预警): real-time risk scoring for contact-center conversations.

One import namespace: ``yujing.service`` (the gRPC service and its model runtime),
``yujing.kernels`` (state layout and the CPU/GPU update kernels), ``yujing.training``
(data sets, fitting, evaluation; the ``train`` extra), ``yujing.loadtest`` (the load
generator and the benchmark suites) and ``yujing.cli`` (the ``yujing`` command).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("yujing")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
