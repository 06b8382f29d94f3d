"""Inference requests over Triton's HTTP endpoint: the hot path's transport to the models.

:class:`TritonModelClient` sends its inference requests here when it is given Triton's HTTP
``host:port``; health, metadata, model configs and the repository API stay on gRPC.
Why: one ``heads`` request for one text cost the asyncio gRPC client about 500 us of CPU
and 1.2 ms p50 on this project's 2-core machine, against about 160 us and 0.75 ms for the
same request as one HTTP/1.1 POST on a kept-alive connection, and Triton spent less on it
too (BENCHMARKS.md section 8, session 18). A turn pays for one such request per
micro-batch.

The protocol is KServe v2 inference with Triton's binary tensor extension. A request is

    POST /v2/models/<model>[/versions/<version>]/infer HTTP/1.1
    Inference-Header-Content-Length: <bytes of the JSON header>
    Content-Length: <JSON header + tensor bytes>

    {"inputs": [{"name": "TEXT", "shape": [n, 1], "datatype": "BYTES",
                 "parameters": {"binary_data_size": N}}],
     "outputs": [{"name": ..., "parameters": {"binary_data": true}}, ...],
     "parameters": {...}}<the N tensor bytes>

where each element of a BYTES tensor is a 4-byte little-endian length and the element's
bytes. The answer is a JSON header (``Inference-Header-Content-Length`` bytes) naming each
output's datatype, shape and ``binary_data_size``, followed by those outputs' bytes in the
order listed. An error is a non-200 status with ``{"error": "..."}``; its status maps to a
gRPC status name (404: ``NOT_FOUND``, as the router expects from a version ``heads`` has not
loaded).

Connections: HTTP/1.1 carries one request at a time on a connection, so requests take a
kept-alive connection from a pool of at most ``max_connections`` (more wait their turn,
within their deadline). A connection whose request failed, timed out or was cancelled is
closed, never reused: its answer may still be on the way. A request that fails on a reused
connection before any byte of its answer came (Triton closed the idle connection, e.g. when
it restarted) is sent once more on a new connection; inference changes nothing on the
server, so a second send is safe.
"""
from __future__ import annotations

import asyncio
import json
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from yujing.service.models import TRITON_INPUT

__all__ = ["HttpInference", "HttpInferenceError", "BytesOutput", "encode_bytes_tensor", "decode_bytes_elements"]

# Triton's HTTP statuses, named as the gRPC statuses TritonClientError carries.
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
           501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_MAX_HEADER_BYTES = 64 * 1024
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}


class HttpInferenceError(Exception):
    """A request that got no answer: ``status`` is a gRPC status name (``NOT_FOUND``,
    ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...)."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


def encode_bytes_tensor(items: Sequence[bytes]) -> bytes:
    """A BYTES tensor's wire form: each element's 4-byte little-endian length, then it.

    >>> encode_bytes_tensor([b"hi", b""])
    b'\\x02\\x00\\x00\\x00hi\\x00\\x00\\x00\\x00'
    """
    out = bytearray()
    for item in items:
        out += len(item).to_bytes(4, "little")
        out += item
    return bytes(out)


def decode_bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """The first ``count`` elements of a BYTES tensor's wire form (:func:`encode_bytes_tensor`).

    >>> decode_bytes_elements(b'\\x02\\x00\\x00\\x00hi\\x00\\x00\\x00\\x00', 2)
    [b'hi', b'']
    """
    items, at = [], 0
    for _ in range(count):
        if at + 4 > len(raw):
            raise ValueError(f"BYTES tensor ends after {len(items)} of {count} elements")
        size = int.from_bytes(raw[at:at + 4], "little")
        if at + 4 + size > len(raw):
            raise ValueError(f"BYTES tensor element {len(items)} runs past the end")
        items.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    return items


class BytesOutput(NamedTuple):
    """A BYTES output as it came: its shape and its wire form (:func:`decode_bytes_elements`)."""

    shape: tuple[int, ...]
    raw: bytes


class _Stale(Exception):
    """A reused connection failed before any byte of the answer came."""


class HttpInference:
    """Inference requests to one Triton's HTTP ``host:port`` over a pool of kept-alive
    connections. Use it from one event loop (a pool made on another loop is dropped)."""

    def __init__(self, url: str, *, max_connections: int = 16, headers: Mapping[str, str] | None = None) -> None:
        host, sep, port = url.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"Triton HTTP address {url!r}: expected host:port")
        self.url = url
        self._host_header = host
        self.host = host.strip("[]")
        self.port = int(port)
        self.max_connections = max_connections
        self._extra_headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def infer(self, model: str, texts: Sequence[str], outputs: Sequence[str], *, version: str = "",
                    parameters: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> tuple[dict, str]:
        """``texts`` as the BYTES input ``TEXT`` [n, 1] (``TRITON_INPUT``), ``outputs`` asked for by name;
        returns ({output: value}, the version that answered). Numeric outputs come as
        read-only arrays of their shape, BYTES outputs as :class:`BytesOutput`. ``version``
        "" lets Triton pick; ``parameters`` are the request's (``heads`` reads the versions
        it should answer with there). Raises :class:`HttpInferenceError`."""
        body = encode_bytes_tensor([t.encode("utf-8") for t in texts])
        header = {"inputs": [{"name": TRITON_INPUT, "shape": [len(texts), 1], "datatype": "BYTES",
                              "parameters": {"binary_data_size": len(body)}}],
                  "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs]}
        if parameters:
            header["parameters"] = dict(parameters)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        request = self._request(path, json.dumps(header, separators=(",", ":")).encode(), body)
        try:
            async with asyncio.timeout(timeout_s):
                meta, data = await self._exchange(request)
        except TimeoutError:
            raise HttpInferenceError(f"no answer from Triton within {timeout_s:g} s", "DEADLINE_EXCEEDED") from None
        return self._outputs(meta, data), str(meta.get("model_version", ""))

    async def close(self) -> None:
        self._closed = True
        self._drop_idle()

    # -- one request ------------------------------------------------------------------
    def _request(self, path: str, header: bytes, body: bytes) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: {self._host_header}\r\nContent-Type: application/octet-stream\r\n"
                f"Inference-Header-Content-Length: {len(header)}\r\n"
                f"Content-Length: {len(header) + len(body)}\r\n").encode() + self._extra_headers + b"\r\n" + header + body

    async def _exchange(self, request: bytes) -> tuple[dict, bytes]:
        async with self._pool():
            conn = self._take_idle()
            reused = conn is not None
            while True:
                if conn is None:
                    conn = await self._connect()
                try:
                    status, headers, data = await self._roundtrip(conn, request, reused)
                    break
                except _Stale:           # Triton closed it while idle: so it did the others
                    conn[1].close()
                    self._drop_idle()
                    conn, reused = None, False
                except BaseException:
                    conn[1].close()      # mid-request (failed, timed out, cancelled): never reused
                    raise
            if self._closed or headers.get(b"connection", b"").lower() == b"close":
                conn[1].close()
            else:
                self._idle.append(conn)
        return self._answer(status, headers, data)

    def _take_idle(self):
        while self._idle:
            reader, writer = self._idle.pop()
            if not (reader.at_eof() or writer.is_closing()):
                return reader, writer
            writer.close()
        return None

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            try:
                writer.close()
            except RuntimeError:     # its event loop is already closed: nothing left to close
                pass

    def _pool(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:      # a new loop: the old one's connections are unusable
            self._drop_idle()
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
        return self._slots

    async def _connect(self):
        try:
            return await asyncio.open_connection(self.host, self.port, limit=_MAX_HEADER_BYTES)
        except OSError as exc:
            raise HttpInferenceError(f"cannot connect to Triton at {self.url}: {exc}", "UNAVAILABLE") from None

    async def _roundtrip(self, conn, request: bytes, reused: bool) -> tuple[int, dict, bytes]:
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if reused and not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise _Stale() from None
            raise HttpInferenceError(f"Triton at {self.url} dropped the connection: {exc!r}", "UNAVAILABLE") from None
        except asyncio.LimitOverrunError:
            raise HttpInferenceError("Triton's answer has an oversized header", "INTERNAL") from None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpInferenceError(f"not an HTTP answer: {lines[0][:80]!r}", "INTERNAL")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name:
                headers[name.strip().lower()] = value.strip()
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            raise HttpInferenceError("Triton's answer has no Content-Length", "INTERNAL")
        try:
            data = await reader.readexactly(int(length))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise HttpInferenceError(f"Triton at {self.url} dropped the connection: {exc!r}", "UNAVAILABLE") from None
        return int(parts[1]), headers, data

    def _answer(self, status: int, headers: dict, data: bytes) -> tuple[dict, bytes]:
        if status != 200:
            try:
                message = json.loads(data).get("error") or data.decode("utf-8", "replace")
            except (ValueError, AttributeError):
                message = data[:200].decode("utf-8", "replace")
            raise HttpInferenceError(message, _STATUS.get(status, "UNKNOWN"))
        size = headers.get(b"inference-header-content-length")
        size = int(size) if size is not None and size.isdigit() else len(data)
        try:
            meta = json.loads(data[:size])
        except ValueError:
            raise HttpInferenceError("Triton's answer has no JSON header", "INTERNAL") from None
        return meta, data[size:]

    @staticmethod
    def _outputs(meta: dict, data: bytes) -> dict:
        out, at = {}, 0
        for output in meta.get("outputs", []):
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is None or at + size > len(data):
                raise HttpInferenceError(f"output {output.get('name')} is not in the answer's binary part", "INTERNAL")
            raw = data[at:at + size]
            at += size
            dtype = output.get("datatype")
            if dtype == "BYTES":
                out[output["name"]] = BytesOutput(tuple(output.get("shape", ())), raw)
            elif dtype in _DTYPES:
                out[output["name"]] = np.frombuffer(raw, _DTYPES[dtype]).reshape(output.get("shape", [-1]))
            else:
                raise HttpInferenceError(f"output {output.get('name')} has datatype {dtype}", "INTERNAL")
        return out
