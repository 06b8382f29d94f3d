"""Atomic, checksummed snapshots of named numpy arrays plus a small JSON metadata dict.

Used for the session and agent tables (issue 14): written atomically, restored at start.
Standard library + numpy only; no pickle. One writer per directory.

Usage::

    path = write_snapshot(d, {"state": state, "keys": keys}, {"sessions": [["t", "s"]]},
                          layout_version="sessions-v3")
    got = read_latest_snapshot(d, layout_version="sessions-v3")   # None if there is none
    if got is not None:
        arrays, meta, path = got

Files in the directory
----------------------
``snapshot-<sequence, 20 digits>.snap``   snapshots; the newest has the highest sequence.
``snapshot-<sequence>.snap.tmp``          a snapshot being written; a leftover one (crash)
                                          is ignored by readers and deleted by the next
                                          :func:`write_snapshot` / :func:`read_latest_snapshot`.

File format (version 1, little-endian)
--------------------------------------
``magic b"YJSNAP\\0\\0"`` (8) | ``format u16`` (= 1) | ``reserved u16`` (0) | ``header_len u32``
| header: ``header_len`` bytes of UTF-8 JSON ``{"layout_version", "created_ms", "meta",
"arrays": [{"name", "dtype", "shape", "offset", "length", "crc32"}, ...]}``
| zero padding to a 64-byte boundary (the data start) | the raw C-order bytes of each array
at ``data start + offset`` (offsets 64-byte aligned, zero padding between)
| trailer ``crc32 u32`` of the 16-byte prefix + header (the file's last 4 bytes).
The file's size must be exactly data start + end of the last array + 4, and all padding must
be zero; any mismatch, a bad magic, or a crc mismatch (header or any array) makes the
snapshot corrupt -- so every byte of the file is checked.

Writing: temp file in the same directory, write, flush, fsync, ``os.replace``, fsync of the
directory, then retention (the newest ``keep`` snapshots stay). Each array is written from a
memoryview of its own buffer (no copy of C-contiguous arrays). Reading: each array is
allocated once with ``np.empty`` and filled with ``readinto``.

Refusals: a corrupt snapshot is logged as a warning and the previous one is tried. The
newest *valid* snapshot having another ``layout_version`` (or an unknown format version)
raises :class:`SnapshotLayoutError` -- there is no silent fall back to an older snapshot in
that case, since the older one would be of a stale layout or would lose state.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "SnapshotError",
    "SnapshotLayoutError",
    "read_latest_snapshot",
    "write_snapshot",
]

log = logging.getLogger(__name__)

MAGIC = b"YJSNAP\0\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHI")  # magic, format, reserved, header_len
_TRAILER = struct.Struct("<I")  # crc32 of prefix + header
_ALIGN = 64
_CHUNK = 64 << 20  # readinto in pieces of at most 64 MiB (a single read() caps near 2 GiB)

_NAME_RE = re.compile(r"^snapshot-(\d{20})\.snap$")
_TMP_RE = re.compile(r"^\.?snapshot-\d{20}\.snap\.tmp$")


class SnapshotError(RuntimeError):
    """Base class of snapshot errors."""


class SnapshotLayoutError(SnapshotError):
    """The newest valid snapshot has another layout version (or an unknown file format)."""


class _Corrupt(Exception):
    """Internal: the file is not a complete, intact snapshot."""


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _byte_view(arr: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array's buffer (no copy)."""
    return arr.reshape(-1).view(np.uint8)


def _list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    out.sort()
    return out


def _clean_temps(directory: Path) -> None:
    for p in directory.iterdir():
        if _TMP_RE.match(p.name):
            log.warning("snapshot: removing leftover temp file %s", p)
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    directory: Path,
    arrays: dict[str, np.ndarray],
    meta: dict,
    *,
    layout_version: str,
    keep: int = 2,
) -> Path:
    """Write a new snapshot atomically and return its path; keep the newest ``keep``.

    ``meta`` must be JSON-serialisable (tuples come back as lists). Arrays may have any
    plain dtype (numbers, bool, fixed-width bytes/str); object and structured dtypes are
    refused with ``ValueError``. Non-contiguous arrays are copied to C order first.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if not isinstance(layout_version, str) or not layout_version:
        raise ValueError("layout_version must be a non-empty str")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _clean_temps(directory)

    prepared: list[tuple[str, np.ndarray]] = []
    entries = []
    offset = 0
    for name, a in arrays.items():
        if not isinstance(name, str):
            raise ValueError(f"array names must be str, got {name!r}")
        a = np.asarray(a)
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            a = a.copy(order="C")
        if a.dtype.hasobject or a.dtype.fields is not None or a.dtype.subdtype is not None:
            raise ValueError(f"array {name!r}: dtype {a.dtype} is not supported")
        view = _byte_view(a)
        entries.append({
            "name": name,
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "offset": offset,
            "length": int(view.nbytes),
            "crc32": zlib.crc32(view),
        })
        prepared.append((name, view))
        offset = _align(offset + view.nbytes)

    header = json.dumps({
        "layout_version": layout_version,
        "created_ms": time.time_ns() // 1_000_000,
        "meta": meta,
        "arrays": entries,
    }, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header))
    header_crc = zlib.crc32(header, zlib.crc32(prefix))
    data_start = _align(len(prefix) + len(header))

    existing = _list_snapshots(directory)
    seq = existing[-1][0] + 1 if existing else 1
    final = directory / f"snapshot-{seq:020d}.snap"
    tmp = directory / f"snapshot-{seq:020d}.snap.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(prefix)
            f.write(header)
            pos = len(prefix) + len(header)
            for (_, view), e in zip(prepared, entries):
                at = data_start + e["offset"]
                if at > pos:
                    f.write(b"\0" * (at - pos))
                f.write(memoryview(view))
                pos = at + e["length"]
            f.write(_TRAILER.pack(header_crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)

    for _, old in _list_snapshots(directory)[:-keep]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return final


def _readinto_exact(f, buf: np.ndarray) -> None:
    mv = memoryview(buf)
    n = len(mv)
    got = 0
    while got < n:
        r = f.readinto(mv[got:min(n, got + _CHUNK)])
        if not r:
            raise _Corrupt(f"truncated: {n - got} bytes of array data missing")
        got += r


def _read_one(path: Path, layout_version: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read and fully verify one snapshot. Raises _Corrupt or SnapshotLayoutError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(_PREFIX.size)
        if len(raw) < _PREFIX.size:
            raise _Corrupt(f"truncated: {size} bytes, shorter than the file prefix")
        magic, fmt, _reserved, header_len = _PREFIX.unpack(raw)
        if magic != MAGIC:
            raise _Corrupt(f"bad magic {magic!r}")
        if fmt != FORMAT_VERSION:
            raise SnapshotLayoutError(
                f"snapshot {path} has file format version {fmt}; this build reads only "
                f"format version {FORMAT_VERSION}. Refusing to restore from it (and not "
                "falling back to an older snapshot)."
            )
        if _PREFIX.size + header_len + _TRAILER.size > size:
            raise _Corrupt(f"truncated: {size} bytes, header claims {header_len}")
        header = f.read(header_len)
        f.seek(size - _TRAILER.size)
        (want_crc,) = _TRAILER.unpack(f.read(_TRAILER.size))
        if zlib.crc32(header, zlib.crc32(raw)) != want_crc:
            raise _Corrupt("header crc32 mismatch (or truncated file)")
        try:
            h = json.loads(header.decode("utf-8"))
            entries = h["arrays"]
            file_layout = h["layout_version"]
            meta = h["meta"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Corrupt(f"unreadable header: {exc}") from None

        data_start = _align(_PREFIX.size + header_len)
        end = data_start
        for e in entries:
            end = max(end, data_start + e["offset"] + e["length"])
        if end + _TRAILER.size != size:
            raise _Corrupt(f"size {size} bytes, expected {end + _TRAILER.size} (truncated?)")
        if end == data_start:  # no array data: the header padding is checked here
            f.seek(_PREFIX.size + header_len)
            pad = f.read(end - _PREFIX.size - header_len)
            if pad.count(0) != len(pad):
                raise _Corrupt("non-zero padding after the header")

        out: dict[str, np.ndarray] = {}
        pos = _PREFIX.size + header_len
        f.seek(pos)
        for e in sorted(entries, key=lambda e: e["offset"]):
            dtype = np.dtype(e["dtype"])
            arr = np.empty(tuple(e["shape"]), dtype=dtype)
            view = _byte_view(arr)
            if view.nbytes != e["length"]:
                raise _Corrupt(f"array {e['name']!r}: length does not match dtype and shape")
            at = data_start + e["offset"]
            if at < pos:
                raise _Corrupt(f"array {e['name']!r}: overlaps the previous one")
            if at > pos and f.read(at - pos).count(0) != at - pos:
                raise _Corrupt(f"non-zero padding before array {e['name']!r}")
            _readinto_exact(f, view)
            pos = at + e["length"]
            if zlib.crc32(view) != e["crc32"]:
                raise _Corrupt(f"array {e['name']!r}: crc32 mismatch")
            out[e["name"]] = arr

    if file_layout != layout_version:
        raise SnapshotLayoutError(
            f"snapshot {path} has layout version {file_layout!r}, but this build expects "
            f"layout version {layout_version!r}. Refusing to restore from it (and not "
            "falling back to an older snapshot); migrate it or move it aside to start empty."
        )
    return out, meta


def read_latest_snapshot(
    directory: Path, *, layout_version: str
) -> tuple[dict[str, np.ndarray], dict, Path] | None:
    """Return ``(arrays, meta, path)`` of the newest valid snapshot, or None if none.

    Corrupt snapshots are skipped with a warning (the previous one is tried). If the newest
    valid one has another layout version, :class:`SnapshotLayoutError` is raised.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    _clean_temps(directory)
    for _, path in reversed(_list_snapshots(directory)):
        try:
            arrays, meta = _read_one(path, layout_version)
        except _Corrupt as exc:
            log.warning("snapshot: %s is damaged (%s); trying the previous one", path, exc)
            continue
        except FileNotFoundError:
            continue
        return arrays, meta, path
    return None
