"""The key that opens a Triton's restricted protocols: made, written, read, sent.

Why: Triton's model-repository API has no authentication of its own. Anything that can
reach its port can load a model with files uploaded in the request (``load_model(name,
config=..., files={"file:1/model.py": ...})``) and so run Python as the server's user, or
unload the models the service depends on. Triton can demand a header on chosen protocols
(``--grpc-restricted-protocol=<protocols>:<key>=<value>``, ``--http-restricted-api`` the
same for HTTP); the embedded Triton is started that way with a random value per start,
known to the service and written to a file only its user can read (``triton.key`` in the
data directory), so a local operator's ``yujing models deploy`` can send it.

The file holds one line, ``<key>=<value>``, exactly the part after the colon in the
Triton flag; for an external Triton started with ``--grpc-restricted-protocol=
model-repository:admin-key=s3cret`` the file is ``admin-key=s3cret``.

On the wire (Triton 2.51): gRPC wants the header ``triton-grpc-protocol-<key>`` (Triton
adds that prefix to the key it was given), HTTP the key as it is.

    >>> key = TritonKey("yujing-triton-key", "abc")
    >>> key.grpc_headers()
    {'triton-grpc-protocol-yujing-triton-key': 'abc'}
    >>> key.grpc_flag(["model-repository", "shared-memory"])
    '--grpc-restricted-protocol=model-repository,shared-memory:yujing-triton-key=abc'
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["TritonKey", "RESTRICTED", "KEY_NAME", "KEY_FILE_NAME", "new_key", "read_key_file",
           "write_key_file"]

KEY_NAME = "yujing-triton-key"
KEY_FILE_NAME = "triton.key"
# What the embedded Triton refuses without the key: the repository (load with uploaded
# files, unload), shared-memory registration, and trace / logging settings (they name
# files the server writes). Health, metadata, model config, statistics and inference stay
# open: the router and the tools read and infer without the key.
RESTRICTED = ("model-repository", "shared-memory", "trace", "logging")
_GRPC_PREFIX = "triton-grpc-protocol-"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class TritonKey:
    """A header name (lower case, as gRPC metadata must be) and its expected value."""

    name: str
    value: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"Triton key name {self.name!r}: expected lower-case letters, digits and '-'")
        if not self.value or any(c.isspace() or c in ",:=" for c in self.value):
            raise ValueError("Triton key value: expected a non-empty value without spaces, ',', ':' or '='")

    def grpc_headers(self) -> dict[str, str]:
        return {_GRPC_PREFIX + self.name: self.value}

    def http_headers(self) -> dict[str, str]:
        return {self.name: self.value}

    def grpc_flag(self, protocols: Sequence[str] = RESTRICTED) -> str:
        return f"--grpc-restricted-protocol={','.join(protocols)}:{self.name}={self.value}"

    def http_flag(self, apis: Sequence[str] = RESTRICTED) -> str:
        return f"--http-restricted-api={','.join(apis)}:{self.name}={self.value}"

    def __repr__(self) -> str:  # never the value in a log or a traceback
        return f"TritonKey({self.name!r}, '***')"


def new_key() -> TritonKey:
    """A fresh random key (256 bits)."""
    return TritonKey(KEY_NAME, secrets.token_hex(32))


def write_key_file(path: str | Path, key: TritonKey) -> Path:
    """Write ``<name>=<value>`` to ``path``, readable by this user only (0600), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{key.name}={key.value}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_key_file(path: str | Path) -> TritonKey:
    """The key in ``path`` (``<name>=<value>``). Raises ``ValueError`` on a malformed file,
    ``OSError`` when it cannot be read."""
    text = Path(path).read_text(encoding="utf-8").strip()
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{path}: expected one line '<header-key>=<value>'")
    return TritonKey(name.strip().lower(), value.strip())
