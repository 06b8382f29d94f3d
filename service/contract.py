"""The generated gRPC/protobuf code for ``proto/yujing/v1/risk.proto``.

The generated modules are a build product, never edited by hand and never committed:
``service/_generated/risk_pb2.py`` and ``risk_pb2_grpc.py``. A wheel carries them, built
by ``setup.py``'s build step; in a checkout they are (re)built the first time this
module is imported after the .proto changed (a hash of the .proto is kept beside them).
protoc writes the stub's import of its messages as ``from yujing.v1 import risk_pb2``;
:func:`generate` makes it a relative import, so the generated pair is an ordinary
subpackage of ``yujing.service`` and nothing is added to ``sys.path``.

    >>> from yujing.service.contract import pb
    >>> pb.Turn(session_id="s1", speaker=pb.CUSTOMER).session_id
    's1'
"""
from __future__ import annotations

from pathlib import Path

from yujing.service import protogen
from yujing.service.paths import GENERATED_DIR, PROTO_DIR, PROTO_FILES


def generate(out_dir: Path = GENERATED_DIR, proto_dir: Path = PROTO_DIR) -> None:
    """Run protoc on ``proto_dir`` into ``out_dir`` (see :mod:`yujing.service.protogen`)."""
    protogen.generate(proto_dir, PROTO_FILES, out_dir)


def _ensure_generated() -> None:
    if not PROTO_DIR.is_dir():
        return  # an installed wheel: the generated modules came with it
    protogen.ensure(PROTO_DIR, PROTO_FILES, GENERATED_DIR)


_ensure_generated()
from yujing.service._generated import risk_pb2 as pb  # noqa: E402
from yujing.service._generated import risk_pb2_grpc as pb_grpc  # noqa: E402

SERVICE_NAME = "yujing.v1.RiskScorer"

__all__ = ["pb", "pb_grpc", "SERVICE_NAME", "generate"]
