"""The generated gRPC/protobuf code for ``proto/yujing/v1/risk.proto``.

The generated modules are a build product: they are (re)built from ``proto/`` into
``service/_generated/`` the first time this module is imported after the .proto
changed (a hash of the .proto is kept beside them), and never edited by hand.

    >>> from service.contract import pb
    >>> pb.Turn(session_id="s1", speaker=pb.CUSTOMER).session_id
    's1'
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = _ROOT / "proto"
PROTO_FILES = ("yujing/v1/risk.proto",)
GENERATED_DIR = Path(__file__).resolve().parent / "_generated"


def _proto_hash() -> str:
    h = hashlib.sha256()
    for rel in PROTO_FILES:
        h.update((PROTO_DIR / rel).read_bytes())
    return h.hexdigest()


def generate(out_dir: Path = GENERATED_DIR) -> None:
    """Run protoc (from grpcio-tools) on proto/ into ``out_dir``; atomic per file set."""
    from grpc_tools import protoc  # build-time only dependency
    import grpc_tools

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        include = str(Path(grpc_tools.__file__).parent / "_proto")
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *PROTO_FILES]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_FILES}")
        for dirpath, _, files in os.walk(tmp):
            rel = Path(dirpath).relative_to(tmp)
            (out_dir / rel).mkdir(parents=True, exist_ok=True)
            for name in files:
                os.replace(Path(dirpath) / name, out_dir / rel / name)
        (out_dir / "PROTO_SHA256").write_text(_proto_hash())


def _ensure_generated() -> None:
    stamp = GENERATED_DIR / "PROTO_SHA256"
    if not stamp.exists() or stamp.read_text() != _proto_hash():
        generate()
    if str(GENERATED_DIR) not in sys.path:
        # the generated grpc module imports its messages as ``yujing.v1.risk_pb2``
        sys.path.insert(0, str(GENERATED_DIR))


_ensure_generated()
pb = importlib.import_module("yujing.v1.risk_pb2")
pb_grpc = importlib.import_module("yujing.v1.risk_pb2_grpc")
SERVICE_NAME = "yujing.v1.RiskScorer"

__all__ = ["pb", "pb_grpc", "SERVICE_NAME", "generate"]
