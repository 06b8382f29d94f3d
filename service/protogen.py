"""protoc for the contract, with no imports from the package: both the service (at first
import in a checkout, :mod:`yujing.service.contract`) and ``setup.py`` (when a wheel is
built) call :func:`generate`.

protoc writes the gRPC stub's import of its messages as an absolute import of the proto
package (``from yujing.v1 import risk_pb2``); it is rewritten to a relative one, so the
generated modules live in one ordinary subpackage, ``yujing.service._generated``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

STAMP = "PROTO_SHA256"
# the contract's files, relative to proto/
PROTO_FILES = ("yujing/v1/risk.proto",)


def proto_hash(proto_dir: Path, proto_files: Sequence[str]) -> str:
    h = hashlib.sha256()
    for rel in proto_files:
        h.update((Path(proto_dir) / rel).read_bytes())
    return h.hexdigest()


def ensure(proto_dir: Path, proto_files: Sequence[str], out_dir: Path) -> None:
    """:func:`generate` unless ``out_dir`` already holds code of these exact .proto files."""
    stamp = Path(out_dir) / STAMP
    if not (stamp.is_file() and stamp.read_text() == proto_hash(proto_dir, proto_files)):
        generate(proto_dir, proto_files, out_dir)


def generate(proto_dir: Path, proto_files: Sequence[str], out_dir: Path) -> None:
    """Messages, type stubs and gRPC stubs of ``proto_files`` into ``out_dir`` (flat);
    each file is moved into place whole, the stamp (the .proto hash) last."""
    from grpc_tools import protoc
    import grpc_tools

    proto_dir, out_dir = Path(proto_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        include = str(Path(grpc_tools.__file__).parent / "_proto")
        args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *proto_files]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {list(proto_files)} in {proto_dir}")
        for rel in proto_files:
            stem = Path(rel).with_suffix("")
            module, package = stem.name, ".".join(stem.parent.parts)
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                text = (Path(tmp) / stem.parent / f"{module}{suffix}").read_text()
                text = text.replace(f"from {package} import {module}_pb2", f"from . import {module}_pb2")
                dst = out_dir / f"{module}{suffix}"
                part = dst.with_name(dst.name + ".part")
                part.write_text(text)
                os.replace(part, dst)
    (out_dir / "__init__.py").write_text('"""Generated from proto/ (yujing.service.protogen); do not edit."""\n')
    (out_dir / STAMP).write_text(proto_hash(proto_dir, proto_files))
