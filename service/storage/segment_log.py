"""A checksummed, segmented, append-only record log with group commit.

One :class:`SegmentLog` owns one directory. It hands out record ids (64-bit, strictly
increasing by 1 from 1, never reused for a committed record), buffers appended records in
user space, makes them durable at :meth:`SegmentLog.commit` according to its durability
mode, serves them back from any cursor, and deletes whole old segments for retention.
Standard library only.

Usage (one writer; call ``commit()`` once per group of appends, e.g. once per micro-batch)::

    with SegmentLog(path, durability="batch", retention_ms=7 * 86_400_000) as log:
        first, last = log.append_many(payloads, ts_ms=now_ms)
        log.commit()                      # one write() for the whole group
        for rec in log.read(after_id=cursor, limit=1000):
            ...                           # rec.id, rec.ts_ms, rec.payload

Files in the directory
----------------------
``<first id, 20 digits>.seg``   segments, e.g. ``00000000000000000001.seg``; the file name
                                is the id of the segment's first record (authoritative).
``LOCK``                        ``flock``-ed exclusively by the owner, holds its pid.
``META``                        ``{"format": 1, "next_id": N}``: a floor for the next id,
                                written atomically (temp file, fsync, rename, fsync of the
                                directory) before any segment is deleted.

Segment format (version 1, little-endian)
-----------------------------------------
File header, 16 bytes: ``magic b"YJSEG\\0"`` (6), ``version u16`` (= 1), ``first_id u64``.
Then records back to back, each a 28-byte header and the payload::

    magic u16 (0xA1E7) | flags u16 (0) | length u32 | crc32 u32 | id u64 | ts_ms i64 | payload

``crc32`` is ``zlib.crc32`` over ``magic, flags, length, id, ts_ms`` (packed as above,
without the crc) followed by the payload. Within a segment the ids are contiguous from the
segment's first id, so the sparse in-memory index is just the file offset of every
``INDEX_EVERY``-th record (record ``first_id + k * INDEX_EVERY`` starts at ``index[k]``);
a read seeks there and parses at most ``INDEX_EVERY - 1`` records before its cursor.
A new segment starts when the next record would take the active one past
``segment_bytes`` (a record larger than that gets a segment of its own). Segment files of
an unknown version are refused (:class:`UnsupportedFormat`).

Durability modes and their loss windows
---------------------------------------
``"none"``   ``commit()`` only makes the records visible to :meth:`read`. The buffer goes to
             the OS (``os.write``) when it passes ``BUFFER_BYTES`` (1 MiB), on ``flush()``,
             on a segment roll and on ``close()``. Loss window: a process crash (SIGKILL)
             loses what is still in the buffer (up to 1 MiB plus whatever was appended since
             the last ``flush()``; the owner may call ``flush()`` periodically); a power
             loss also loses what the OS has not written back yet.
``"batch"``  (default) every ``commit()`` writes the whole buffer to the OS. Committed
             records survive a process crash (SIGKILL, OOM kill); a power loss or kernel
             crash may lose what the OS had not yet written back (on Linux, typically up
             to ~30 s of commits).
``"fsync"``  every ``commit()`` also ``fdatasync``-s the active segment (a segment closed
             by a roll is synced at the roll, a new segment and its directory entry are
             synced when it is created). Committed records survive a power loss, given a
             disk that honours flushes. Costs one device flush per commit.
In every mode, records appended but not yet committed may or may not survive a crash
(they may already have reached the OS at a buffer overflow or a roll); a reopened log
serves every intact record it finds. An id handed out for a record that did not survive a
crash may be handed out again; a committed id is never reused.

Recovery at open
----------------
* The segments are listed and sorted by first id; each one is scanned once to build its
  index (open time is linear in the retained bytes: ~150 MB/s on one core here).
* The last segment is scanned to its end. Its tail from the first bad record on (short
  header, short payload, bad magic, bad crc, unexpected id) is truncated away; the bytes
  removed are added to ``truncated_bytes`` and logged as a warning. A last segment whose
  16-byte file header is short or all zeros (a segment created at the instant of a crash)
  is re-initialised from its file name.
* A bad record inside an older (closed) segment ends that segment there: a warning is
  logged, the bytes after it are counted in ``skipped_bytes`` (left on disk), and ids go
  on from the next segment's first id (the records in between are lost: a gap).
* The next id is ``max(last good id + 1, META's next_id)``; an empty directory starts a
  fresh log at id 1.
* Ids never restart: retention never deletes the active (newest) segment, whose file name
  carries the next id even when it holds no record, and ``META`` keeps a floor for the
  next id in case the segments are gone anyway.

Retention
---------
:meth:`SegmentLog.enforce_retention` and :meth:`SegmentLog.drop_through` delete whole closed
segments, oldest first and only as a prefix (a cursor never meets a hole made by
retention); the active segment is never deleted. The owner calls them when it sees fit
(e.g. once a minute); nothing is deleted behind its back.

Concurrency
-----------
One owner per directory: an exclusive ``fcntl.flock`` on ``LOCK`` (released on close, and by
the OS when the process dies); a second open, from this process or another, raises
:class:`LogLocked`. Not thread-safe: one writer (the event loop); reads and appends from
that same thread interleave correctly (a read sees exactly the committed records).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import time
import zlib
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

__all__ = ["SegmentLog", "Record", "LogError", "LogLocked", "LogCorrupt", "UnsupportedFormat",
           "FILE_HEADER_SIZE", "RECORD_HEADER_SIZE", "FORMAT_VERSION"]

FORMAT_VERSION = 1
FILE_MAGIC = b"YJSEG\x00"
_FILE_HEADER = struct.Struct("<6sHQ")            # magic, version, first_id
FILE_HEADER_SIZE = _FILE_HEADER.size             # 16

REC_MAGIC = 0xA1E7
_REC_HEADER = struct.Struct("<HHIIQq")           # magic, flags, length, crc32, id, ts_ms
_CRC_FIELDS = struct.Struct("<HHIQq")            # the header without its crc
RECORD_HEADER_SIZE = _REC_HEADER.size            # 28

INDEX_EVERY = 16                                 # records between two sparse-index entries
BUFFER_BYTES = 1 << 20                           # the user-space buffer goes to the OS past this
MAX_PAYLOAD = (1 << 31) - 1
_SCAN_CHUNK = 1 << 20
_MIN_READ = 16 << 10
_SEG_NAME = re.compile(r"^(\d{20})\.seg$")
_DURABILITY = ("none", "batch", "fsync")
_NO_TS = -(1 << 63)


class LogError(RuntimeError):
    """A segment log cannot do what was asked."""


def write_failure(exc: BaseException) -> str:
    """The words for a failed write: the OS error's text (``No space left on device``), also
    behind the :class:`LogError` a log raises while it still cannot write."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return str(getattr(cause, "strerror", None) or cause or exc)


class LogLocked(RuntimeError):
    """The directory is owned by another SegmentLog (this process or another one)."""


class LogCorrupt(LogError):
    """The files in the directory are not a log this module can recover."""


class UnsupportedFormat(LogCorrupt):
    """A segment file of a format version this module does not read."""


class Record(NamedTuple):
    id: int
    ts_ms: int
    payload: bytes


class _Segment:
    """One segment file: its records' id range, valid byte size and sparse index."""

    __slots__ = ("path", "first_id", "count", "size", "last_ts", "index")

    def __init__(self, path: Path, first_id: int) -> None:
        self.path = path
        self.first_id = first_id
        self.count = 0
        self.size = FILE_HEADER_SIZE          # valid bytes (for the active one: incl. buffered)
        self.last_ts = _NO_TS                 # newest ts_ms of its records
        self.index = array("q")               # offset of record first_id + k * INDEX_EVERY

    @property
    def end_id(self) -> int:
        """One past its last record's id."""
        return self.first_id + self.count

    def add(self, offset: int, length: int, ts_ms: int) -> None:
        if self.count % INDEX_EVERY == 0:
            self.index.append(offset)
        self.count += 1
        self.size = offset + RECORD_HEADER_SIZE + length
        if ts_ms > self.last_ts:
            self.last_ts = ts_ms


class _FrameReader:
    """Parses records from ``fd`` between two offsets, reading in chunks.

    Iterating yields ``(offset, id, ts_ms, payload memoryview)`` for each well-formed record
    and stops at the end or at the first bad one; ``error`` then says why (None at a clean
    end) and ``bad_offset`` where.
    """

    def __init__(self, fd: int, offset: int, end: int, first_chunk: int = _SCAN_CHUNK) -> None:
        self.fd, self.start, self.end, self.first_chunk = fd, offset, end, first_chunk
        self.error: str | None = None
        self.bad_offset = offset
        self.bytes_read = 0

    def _fill(self, buf: bytes, pos: int, base: int, need: int, chunk: int) -> tuple[bytes, int, int]:
        keep = buf[pos:]
        base += pos
        at = base + len(keep)
        n = min(max(need - len(keep), chunk), self.end - at)
        data = os.pread(self.fd, n, at) if n > 0 else b""
        self.bytes_read += len(data)
        return keep + data, 0, base

    def __iter__(self) -> Iterator[tuple[int, int, int, memoryview]]:
        H = RECORD_HEADER_SIZE
        buf, pos, base, chunk = b"", 0, self.start, self.first_chunk
        while base + pos < self.end:
            off = base + pos
            if len(buf) - pos < H:
                buf, pos, base = self._fill(buf, pos, base, H, chunk)
                chunk = _SCAN_CHUNK
                if len(buf) < H:
                    self._fail(off, f"short record header ({len(buf)} of {H} bytes)")
                    return
            magic, flags, length, crc, rid, ts = _REC_HEADER.unpack_from(buf, pos)
            if magic != REC_MAGIC or flags != 0:
                self._fail(off, f"bad record magic/flags {magic:#06x}/{flags:#06x}")
                return
            if length > self.end - off - H:
                self._fail(off, f"short payload (record {rid} claims {length} bytes, "
                                f"{self.end - off - H} left)")
                return
            if len(buf) - pos < H + length:
                buf, pos, base = self._fill(buf, pos, base, H + length, chunk)
                chunk = _SCAN_CHUNK
                if len(buf) < H + length:
                    self._fail(off, f"short payload ({len(buf) - H} of {length} bytes)")
                    return
            payload = memoryview(buf)[pos + H:pos + H + length]
            if zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(magic, flags, length, rid, ts))) != crc:
                self._fail(off, f"bad crc32 in record {rid}")
                return
            yield off, rid, ts, payload
            pos += H + length

    def _fail(self, offset: int, why: str) -> None:
        self.error, self.bad_offset = why, offset


def _seg_path(directory: Path, first_id: int) -> Path:
    return directory / f"{first_id:020d}.seg"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class SegmentLog:
    """An append-only record log in ``directory`` (see the module docstring).

    ``segment_bytes``: a segment's target size. ``retention_bytes`` / ``retention_ms``: what
    :meth:`enforce_retention` keeps (None: no limit). ``durability``: ``"none"``,
    ``"batch"`` or ``"fsync"``.

    A write that fails (a full disk) fails its commit, and the log refuses to write until it
    has opened itself again, which it tries at most every ``RETRY_AFTER_FAILURE_S``: once the
    disk has room, writing goes on by itself, without a restart.
    """

    RETRY_AFTER_FAILURE_S = 1.0

    def __init__(self, directory: str | os.PathLike, *, segment_bytes: int = 64 << 20,
                 retention_bytes: int | None = None, retention_ms: int | None = None,
                 durability: str = "batch") -> None:
        if durability not in _DURABILITY:
            raise ValueError(f"durability must be one of {_DURABILITY}, not {durability!r}")
        if segment_bytes < 256:
            raise ValueError(f"segment_bytes must be >= 256, not {segment_bytes}")
        self.directory = Path(directory)
        self.segment_bytes = int(segment_bytes)
        self.retention_bytes = retention_bytes
        self.retention_ms = retention_ms
        self.durability = durability
        self.dropped_records = 0
        self.dropped_segments = 0
        self.truncated_bytes = 0              # removed from the last segment's tail at open
        self.skipped_bytes = 0                # past a bad record in a closed segment at open
        self._segments: list[_Segment] = []
        self._buf = bytearray()               # records of the active segment not yet written
        self._fd = -1                         # the active segment (O_RDWR | O_APPEND)
        self._dirty = False                   # written since the last fdatasync
        self._rfd, self._rfd_seg = -1, None   # one cached read fd for a closed segment
        self._failed: BaseException | None = None
        self._retry_at = 0.0                  # monotonic time of the next try to write again after a failure
        self._closed = True
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_lock()
        try:
            self._recover()
        except BaseException:
            self._release()
            raise
        self._closed = False

    # -- properties ---------------------------------------------------------------------

    @property
    def first_id(self) -> int:
        """The oldest retained record's id (``next_id`` when no record is retained)."""
        for seg in self._segments:
            if seg.count:
                return seg.first_id
        return self._next_id

    @property
    def last_id(self) -> int:
        """The newest committed id (0 when none ever was)."""
        return self._committed_next - 1

    @property
    def next_id(self) -> int:
        """The id the next :meth:`append` returns."""
        return self._next_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def bytes_on_disk(self) -> int:
        """Bytes of all segments (the active one counted with its buffered records)."""
        return sum(seg.size for seg in self._segments)

    @property
    def stats(self) -> dict:
        """Figures for metrics."""
        return {"durability": self.durability, "segments": len(self._segments),
                "bytes": self.bytes_on_disk, "pending_bytes": len(self._buf),
                "first_id": self.first_id, "last_id": self.last_id, "next_id": self._next_id,
                "dropped_records": self.dropped_records, "dropped_segments": self.dropped_segments,
                "truncated_bytes": self.truncated_bytes, "skipped_bytes": self.skipped_bytes}

    def __repr__(self) -> str:
        return (f"SegmentLog({str(self.directory)!r}, durability={self.durability!r}, "
                f"ids {self.first_id}..{self.last_id}, {len(self._segments)} segments)")

    # -- writing ------------------------------------------------------------------------

    def append(self, payload: bytes, ts_ms: int) -> int:
        """Buffer one record; return its id. Visible to :meth:`read` after :meth:`commit`."""
        self._check_writable()
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise ValueError(f"payload of {n} bytes is over the limit ({MAX_PAYLOAD})")
        seg = self._segments[-1]
        if seg.count and seg.size + RECORD_HEADER_SIZE + n > self.segment_bytes:
            seg = self._roll()
        rid = self._next_id
        try:
            fields = _CRC_FIELDS.pack(REC_MAGIC, 0, n, rid, ts_ms)
        except struct.error:
            raise ValueError(f"ts_ms must be an int64, not {ts_ms!r}") from None
        crc = zlib.crc32(payload, zlib.crc32(fields))
        buf = self._buf
        buf += _REC_HEADER.pack(REC_MAGIC, 0, n, crc, rid, ts_ms)
        buf += payload
        seg.add(seg.size, n, ts_ms)
        self._next_id = rid + 1
        if len(buf) >= BUFFER_BYTES:
            self._write_out(len(buf))
        return rid

    def append_many(self, payloads: Sequence[bytes], ts_ms: int | Sequence[int]) -> tuple[int, int]:
        """Buffer several records (one ``ts_ms`` for all, or one each); return
        ``(first_id, last_id)`` (``(next_id, next_id - 1)`` for none)."""
        first = self._next_id
        if not hasattr(ts_ms, "__len__"):
            for p in payloads:
                self.append(p, ts_ms)
        else:
            if len(ts_ms) != len(payloads):
                raise ValueError(f"{len(payloads)} payloads but {len(ts_ms)} timestamps")
            for p, t in zip(payloads, ts_ms):
                self.append(p, t)
        return first, self._next_id - 1

    def commit(self) -> int:
        """Make every appended record visible, and durable as the mode says; return
        :attr:`last_id`. Call it once per group of appends (group commit)."""
        self._check_writable()
        if self._buf and self.durability != "none":
            self._write_out(len(self._buf))
        if self.durability == "fsync" and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
        self._committed_next = self._next_id
        self._committed_end = self._segments[-1].size
        return self.last_id

    def flush(self) -> None:
        """Write the buffer to the OS now (no fsync); for ``"none"``, the periodic flush."""
        self._check_writable()
        if self._buf:
            self._write_out(len(self._buf))

    # -- reading ------------------------------------------------------------------------

    def read(self, after_id: int, limit: int = 1000) -> list[Record]:
        """Up to ``limit`` committed records with id > ``after_id``, in id order."""
        self._check_open()
        out: list[Record] = []
        start = max(after_id + 1, 1)
        segs = self._segments
        i = self._segment_at(start)
        while i < len(segs) and len(out) < limit:
            seg = segs[i]
            lo = max(start, seg.first_id)
            hi = min(seg.end_id, self._committed_next, lo + limit - len(out))
            if lo < hi:
                self._read_range(seg, lo, hi, out)
            if seg.end_id >= self._committed_next:
                break
            i += 1
        return out

    def _segment_at(self, rid: int) -> int:
        """Index of the segment that holds (or would hold) ``rid``: the last one whose first
        id is <= rid, or 0."""
        lo, hi = 0, len(self._segments)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._segments[mid].first_id <= rid:
                lo = mid + 1
            else:
                hi = mid
        return max(lo - 1, 0)

    def _read_range(self, seg: _Segment, lo: int, hi: int, out: list[Record]) -> None:
        k = (lo - seg.first_id) // INDEX_EVERY
        offset, expect = seg.index[k], seg.first_id + k * INDEX_EVERY
        active = seg is self._segments[-1]
        end = self._committed_end if active else seg.size
        if active:
            self._ensure_written(end)
        avg = (seg.size - FILE_HEADER_SIZE) / max(seg.count, 1)
        first_chunk = max(_MIN_READ, int(avg * (hi - expect) * 1.05) + RECORD_HEADER_SIZE)
        reader = _FrameReader(self._fd if active else self._read_fd(seg), offset, end, first_chunk)
        for _off, rid, ts, payload in reader:
            if rid != expect:
                raise LogCorrupt(f"{seg.path}: record {rid} where {expect} was expected")
            if rid >= lo:
                out.append(Record(rid, ts, bytes(payload)))
            expect += 1
            if expect >= hi:
                return
        raise LogCorrupt(f"{seg.path}: record {expect} unreadable at offset "
                         f"{reader.bad_offset}: {reader.error or 'end of data'}")

    def _read_fd(self, seg: _Segment) -> int:
        if self._rfd_seg is not seg:
            self._close_read_fd()
            self._rfd, self._rfd_seg = os.open(seg.path, os.O_RDONLY), seg
        return self._rfd

    def _close_read_fd(self) -> None:
        if self._rfd >= 0:
            os.close(self._rfd)
        self._rfd, self._rfd_seg = -1, None

    # -- retention ----------------------------------------------------------------------

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete the oldest closed segments whose newest record is older than
        ``now_ms - retention_ms``, then while the log is over ``retention_bytes``; never the
        active segment. Returns the records dropped. ``now_ms`` defaults to the wall clock."""
        self._check_writable()
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        cutoff = None if self.retention_ms is None else now_ms - self.retention_ms
        total, n = self.bytes_on_disk, 0
        for seg in self._segments[:-1]:
            too_old = cutoff is not None and seg.last_ts < cutoff
            too_big = self.retention_bytes is not None and total > self.retention_bytes
            if not (too_old or too_big):
                break
            total -= seg.size
            n += 1
        return self._drop_oldest(n)

    def drop_through(self, rid: int) -> int:
        """Delete the oldest closed segments whose records all have ids <= ``rid`` (e.g. the
        turn log after a snapshot); returns the records dropped."""
        self._check_writable()
        n = 0
        for seg in self._segments[:-1]:
            if seg.end_id - 1 > rid:
                break
            n += 1
        return self._drop_oldest(n)

    def _drop_oldest(self, n: int) -> int:
        if n <= 0:
            return 0
        victims = self._segments[:n]
        self._write_meta()
        for seg in victims:
            if self._rfd_seg is seg:
                self._close_read_fd()
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
        del self._segments[:n]
        if self.durability == "fsync":
            _fsync_dir(self.directory)
        records = sum(seg.count for seg in victims)
        self.dropped_records += records
        self.dropped_segments += n
        return records

    def _write_meta(self) -> None:
        """Record the next id as a floor, atomically: temp file, fsync, rename, fsync dir."""
        tmp = self.directory / "META.tmp"
        data = json.dumps({"format": FORMAT_VERSION, "next_id": self._next_id}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / "META")
        _fsync_dir(self.directory)

    def _read_meta(self) -> int:
        path = self.directory / "META"
        try:
            meta = json.loads(path.read_bytes())
            return int(meta["next_id"])
        except FileNotFoundError:
            return 1
        except (ValueError, KeyError, TypeError) as e:
            raise LogCorrupt(f"{path}: unreadable metadata ({e})") from None

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what was appended, close the files and release the lock."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.flush()
                self.commit()
        finally:
            self._closed = True
            self._close_read_fd()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._release()

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals: lock ----------------------------------------------------------------

    def _acquire_lock(self) -> int:
        path = self.directory / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LogLocked(f"segment log {str(self.directory)!r} is already open "
                            f"(LOCK held by pid {holder})") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)               # closing the fd releases the flock
            self._lock_fd = -1

    # -- internals: recovery ------------------------------------------------------------

    def _recover(self) -> None:
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        names = sorted((int(m.group(1)), p) for p in self.directory.iterdir()
                       if (m := _SEG_NAME.match(p.name)))
        floor = self._read_meta()
        for i, (first_id, path) in enumerate(names):
            seg = self._load(path, first_id, last=i == len(names) - 1)
            if self._segments and self._segments[-1].end_id > seg.first_id:
                raise LogCorrupt(f"{path}: starts at id {seg.first_id} but the previous segment "
                                 f"runs to id {self._segments[-1].end_id - 1}")
            self._segments.append(seg)
        if not self._segments:
            self._create_segment(floor)
        else:
            self._fd = os.open(self._segments[-1].path, os.O_RDWR | os.O_APPEND)
            last = self._segments[-1]
            if last.size == 0 or os.fstat(self._fd).st_size != last.size:
                self._repair_tail(last)
            if floor > last.end_id:
                self._restart_at(floor)
        self._next_id = self._committed_next = self._segments[-1].end_id
        self._committed_end = self._segments[-1].size

    def _load(self, path: Path, first_id: int, *, last: bool) -> _Segment:
        """Scan one segment file, build its index, stop at its first bad record."""
        seg = _Segment(path, first_id)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if not self._header_ok(fd, path, first_id, last=last):
                seg.size = 0                      # re-initialised by _repair_tail
                return seg
            reader = _FrameReader(fd, FILE_HEADER_SIZE, size)
            why = None
            for off, rid, ts, payload in reader:
                if rid != seg.end_id:
                    why, bad = f"record id {rid} where {seg.end_id} was expected", off
                    break
                seg.add(off, len(payload), ts)
            else:
                why, bad = reader.error, reader.bad_offset
        finally:
            os.close(fd)
        if why is not None and not last:
            self.skipped_bytes += size - bad
            log.warning("segment log %s: closed segment %s ends at a bad record at offset %d (%s); "
                        "%d bytes after it ignored, ids go on at %d", self.directory, path.name,
                        bad, why, size - bad, seg.end_id)
        elif why is not None:
            log.warning("segment log %s: torn/corrupt tail of %s at offset %d (%s): "
                        "%d bytes will be truncated", self.directory, path.name, bad, why, size - bad)
        return seg

    @staticmethod
    def _header_ok(fd: int, path: Path, first_id: int, *, last: bool) -> bool:
        """Check a segment's file header; False for a torn header of the last segment."""
        raw = os.pread(fd, FILE_HEADER_SIZE, 0)
        if len(raw) < FILE_HEADER_SIZE or raw == bytes(FILE_HEADER_SIZE):
            if last:
                return False
            raise LogCorrupt(f"{path}: segment file header is short or blank ({len(raw)} bytes)")
        magic, version, hdr_first = _FILE_HEADER.unpack(raw)
        if magic != FILE_MAGIC:
            raise LogCorrupt(f"{path}: not a segment file (magic {magic!r})")
        if version != FORMAT_VERSION:
            raise UnsupportedFormat(f"{path}: segment format version {version}; this build reads "
                                    f"version {FORMAT_VERSION} only")
        if hdr_first != first_id:
            raise LogCorrupt(f"{path}: header says first id {hdr_first}, file name says {first_id}")
        return True

    def _repair_tail(self, seg: _Segment) -> None:
        """Truncate the active segment to its last good record (or rewrite its header)."""
        size = os.fstat(self._fd).st_size
        if seg.size == 0:
            os.ftruncate(self._fd, 0)
            _write_all(self._fd, _FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, seg.first_id))
            seg.size = FILE_HEADER_SIZE
            removed = size
        else:
            os.ftruncate(self._fd, seg.size)
            removed = size - seg.size
        os.fsync(self._fd)
        self.truncated_bytes += removed
        log.warning("segment log %s: truncated %d bytes of torn/corrupt tail from %s; "
                    "next id %d", self.directory, removed, seg.path.name, seg.end_id)

    def _restart_at(self, floor: int) -> None:
        """The metadata says ids up to ``floor - 1`` were handed out: continue from there."""
        last = self._segments[-1]
        if last.count == 0:
            os.close(self._fd)
            os.unlink(last.path)
            self._segments.pop()
        else:
            os.close(self._fd)
        self._fd = -1
        self._create_segment(floor)

    # -- internals: writing -------------------------------------------------------------

    def _create_segment(self, first_id: int) -> _Segment:
        seg = _Segment(_seg_path(self.directory, first_id), first_id)
        self._fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        _write_all(self._fd, _FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, first_id))
        if self.durability == "fsync":
            os.fdatasync(self._fd)
            _fsync_dir(self.directory)
        self._segments.append(seg)
        return seg

    def _roll(self) -> _Segment:
        """Close the active segment (all its bytes to the OS, synced in fsync mode), start
        a new one at the next id."""
        if self._buf:
            self._write_out(len(self._buf))
        if self.durability == "fsync" and self._dirty:
            os.fdatasync(self._fd)
        self._dirty = False
        os.close(self._fd)
        self._fd = -1
        seg = self._create_segment(self._next_id)
        self._committed_end = FILE_HEADER_SIZE
        return seg

    def _ensure_written(self, end: int) -> None:
        """Make the active segment's bytes up to ``end`` readable from the file."""
        written = self._segments[-1].size - len(self._buf)
        if end > written:
            self._write_out(end - written)

    def _write_out(self, n: int) -> None:
        """Write the first ``n`` buffered bytes to the active segment."""
        seg = self._segments[-1]
        good = seg.size - len(self._buf)
        try:
            _write_all(self._fd, memoryview(self._buf)[:n])
        except BaseException as e:
            self._failed = e
            try:
                os.ftruncate(self._fd, good)     # no half record left behind
            except OSError:
                pass
            raise
        del self._buf[:n]
        self._dirty = True

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"segment log {str(self.directory)!r} is closed")

    def _check_writable(self) -> None:
        """Raise :class:`LogError` while a failed write (a full disk, say) keeps the log from
        writing; every ``RETRY_AFTER_FAILURE_S`` it tries to open itself again first."""
        self._check_open()
        if self._failed is None:
            return
        now = time.monotonic()
        if now >= self._retry_at:
            self._retry_at = now + self.RETRY_AFTER_FAILURE_S
            failed = self._failed
            try:
                self._reopen()
            except OSError as exc:
                self._failed = exc
            else:
                log.warning("segment log %s: writing again after a failed write (%r)", self.directory, failed)
                return
        raise LogError(f"segment log {str(self.directory)!r} failed a write ({self._failed!r}); it tries "
                       f"again every {self.RETRY_AFTER_FAILURE_S:g} s") from self._failed

    def _reopen(self) -> None:
        """After a failed write: drop what was appended and not committed, and open the
        directory again as at start (its lock kept). The failed write was cut back
        (:meth:`_write_out`), so the files hold whole records; the active segment is cut to
        its committed end too, and ids not committed are given again, as after a crash."""
        self._close_read_fd()
        if self._fd >= 0:
            try:
                if self._segments:
                    os.ftruncate(self._fd, self._committed_end)
            finally:
                os.close(self._fd)
                self._fd = -1
        self._segments = []
        self._buf = bytearray()
        self._dirty = False
        self._recover()
        self._failed = None
