"""SegmentLog (service/storage/segment_log.py) on real files: round trip, cursors across
segments, reopen, a SIGKILLed writer, torn and corrupt tails, retention, the lock, fsync."""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from yujing.service.storage import segment_log as sl
from yujing.service.storage.segment_log import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    LogCorrupt,
    LogError,
    LogLocked,
    Record,
    SegmentLog,
    UnsupportedFormat,
)

ROOT = Path(__file__).resolve().parents[1]


def payload(i: int) -> bytes:
    """A deterministic payload of varying length for record ``i``."""
    return (f"<{i}>" * (1 + i % 23)).encode()


def fill(log: SegmentLog, n: int, group: int = 10, ts=lambda i: 1_000 + i) -> None:
    """Append payload(id) for ids next_id .. next_id+n-1, committing every ``group``."""
    for _ in range(n):
        i = log.next_id
        assert log.append(payload(i), ts(i)) == i
        if i % group == 0:
            log.commit()
    log.commit()


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def seg_first_ids(d: Path) -> list[int]:
    return [int(p.stem) for p in segments(d)]


def assert_contiguous(recs: list[Record], first: int, last: int) -> None:
    assert [r.id for r in recs] == list(range(first, last + 1))
    for r in recs:
        assert r.payload == payload(r.id), r.id


def read_all(log: SegmentLog, after: int = 0) -> list[Record]:
    out, cur = [], after
    while recs := log.read(cur, 97):
        out += recs
        cur = recs[-1].id
    return out


def run_child(code: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# -- round trip, cursors -----------------------------------------------------------------

def test_round_trip_ids_from_one(tmp_path):
    with SegmentLog(tmp_path) as log:
        assert (log.first_id, log.last_id, log.next_id) == (1, 0, 1)
        assert log.read(0) == []
        first, last = log.append_many([payload(i) for i in range(1, 6)], ts_ms=42)
        assert (first, last) == (1, 5)
        assert log.read(0) == []                 # not committed yet: not visible
        assert log.commit() == 5
        recs = log.read(0)
        assert all(isinstance(r, Record) and r.ts_ms == 42 for r in recs)
        assert_contiguous(recs, 1, 5)
        assert log.append(b"", -7) == 6           # empty payload, negative timestamp
        log.commit()
        assert log.read(5) == [Record(6, -7, b"")]
        assert (log.first_id, log.last_id, log.next_id) == (1, 6, 7)


def test_append_many_with_timestamps_and_bad_input(tmp_path):
    with SegmentLog(tmp_path) as log:
        assert log.append_many([b"a", b"b"], [10, 20]) == (1, 2)
        assert log.append_many([], 5) == (3, 2)
        log.commit()
        assert [(r.id, r.ts_ms) for r in log.read(0)] == [(1, 10), (2, 20)]
        with pytest.raises(ValueError):
            log.append_many([b"a"], [1, 2])
        with pytest.raises(ValueError):
            log.append(b"x", 1 << 63)             # not an int64
        assert log.next_id == 3


def test_cursor_in_the_middle_across_segments(tmp_path):
    with SegmentLog(tmp_path, segment_bytes=2048) as log:
        fill(log, 1000)
        assert len(segments(tmp_path)) > 20
        starts = seg_first_ids(tmp_path)
        for after in (0, 1, 15, 16, 17, 63, 64, 65, 499, starts[7] - 2, starts[7] - 1, starts[7], 998, 999):
            for limit in (1, 5, 64, 200):
                recs = log.read(after, limit)
                assert_contiguous(recs, after + 1, min(after + limit, 1000))
        assert log.read(1000) == [] and log.read(5000) == []
        assert_contiguous(log.read(-10, 3), 1, 3)
        assert log.read(10, 0) == []
        assert_contiguous(read_all(log), 1, 1000)


def test_read_uses_the_sparse_index(tmp_path, monkeypatch):
    with SegmentLog(tmp_path) as log:                    # one big segment, ~4 MB
        for _ in range(10):
            log.append_many([b"p" * 400] * 1000, 1)
        log.commit()
        size = segments(tmp_path)[0].stat().st_size
        assert size > 4_000_000
        calls = []
        real = os.pread
        monkeypatch.setattr(os, "pread", lambda fd, n, off: calls.append((n, off)) or real(fd, n, off))
        recs = log.read(7_000, 10)
        assert [r.id for r in recs] == list(range(7_001, 7_011))
        assert sum(n for n, _ in calls) < 64 << 10
        assert min(off for _, off in calls) > size // 2


def test_uncommitted_records_are_invisible_then_visible(tmp_path):
    for mode in ("none", "batch", "fsync"):
        d = tmp_path / mode
        with SegmentLog(d, durability=mode, segment_bytes=1024) as log:
            fill(log, 30)
            for i in range(31, 41):
                log.append(payload(i), 0)          # crosses a segment boundary, uncommitted
            assert log.last_id == 30
            assert_contiguous(read_all(log), 1, 30)
            log.commit()
            assert_contiguous(read_all(log), 1, 40)


# -- reopen ------------------------------------------------------------------------------

def test_reopen_keeps_committed_and_continues_ids(tmp_path):
    with SegmentLog(tmp_path, segment_bytes=4096) as log:
        fill(log, 300)
    with SegmentLog(tmp_path, segment_bytes=4096) as log:
        assert (log.first_id, log.last_id, log.next_id) == (1, 300, 301)
        assert log.stats["truncated_bytes"] == 0
        fill(log, 50)
        assert_contiguous(read_all(log), 1, 350)
    with SegmentLog(tmp_path, segment_bytes=1 << 20) as log:     # another segment size: fine
        assert_contiguous(read_all(log, 290), 291, 350)
        assert log.append(b"z", 0) == 351


def test_none_mode_in_process_buffer_lost_log_intact(tmp_path):
    log = SegmentLog(tmp_path, durability="none")
    fill(log, 100)
    log.flush()
    for i in range(101, 121):
        log.append(payload(i), 0)
    log.commit()
    assert_contiguous(read_all(log), 1, 120)   # visible although not all written
    for i in range(121, 131):
        log.append(payload(i), 0)
    log.commit()
    assert log.stats["pending_bytes"] > 0
    # a crash: the process loses its buffer (dropped here) and the lock fd
    log._buf.clear()
    os.close(log._lock_fd)
    log._lock_fd = -1
    with SegmentLog(tmp_path) as again:
        n = again.last_id
        assert n == 120                        # 121..130 were only in the lost buffer
        assert_contiguous(read_all(again), 1, n)
        assert again.stats["truncated_bytes"] == 0
        assert again.append(b"after", 0) == n + 1


def test_none_mode_close_writes_everything(tmp_path):
    with SegmentLog(tmp_path, durability="none") as log:
        fill(log, 50)
        log.append(payload(51), 0)                 # appended, not committed: close commits it
        assert log.stats["pending_bytes"] > 0
    with SegmentLog(tmp_path, durability="none") as log:
        assert_contiguous(read_all(log), 1, 51)


_CHILD = """
    import sys
    from yujing.service.storage.segment_log import SegmentLog
    d, mode = sys.argv[1], sys.argv[2]
    def payload(i):
        return (f"<{i}>" * (1 + i % 23)).encode()
    with SegmentLog(d, segment_bytes=16384, durability=mode) as log:
        print("open", flush=True)
        for g in range(20000):
            n = log.next_id
            log.append_many([payload(i) for i in range(n, n + 37)], 1000 + g)
            print(log.commit(), flush=True)
"""


def _kill_after(tmp_path: Path, mode: str, lines: int) -> list[int]:
    child = run_child(_CHILD, str(tmp_path), mode)
    try:
        assert child.stdout.readline().strip() == "open", child.stderr.read()
        got = [child.stdout.readline() for _ in range(lines)]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    got += child.stdout.read().splitlines(keepends=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    return [int(x) for x in got if x.endswith("\n")]


def test_sigkill_mid_way_loses_no_committed_record(tmp_path):
    reported = _kill_after(tmp_path, "batch", 150)
    assert len(reported) >= 150 and reported == sorted(reported)
    with SegmentLog(tmp_path, segment_bytes=16384) as log:   # the dead child's lock is gone
        assert log.last_id >= reported[-1]
        assert_contiguous(read_all(log), 1, log.last_id)
        assert len(segments(tmp_path)) > 5
        nxt = log.last_id + 1
        assert log.append(b"after", 0) == nxt
        log.commit()
    with SegmentLog(tmp_path) as log:
        assert log.read(nxt - 1) == [Record(nxt, 0, b"after")]


def test_sigkill_in_none_mode_never_corrupts(tmp_path):
    _kill_after(tmp_path, "none", 100)
    with SegmentLog(tmp_path) as log:
        # what reached the OS before the kill survives, the rest is lost, nothing is broken
        assert_contiguous(read_all(log), 1, log.last_id)
        n = log.last_id
        assert log.append(b"x", 0) == n + 1


# -- torn tails, corruption --------------------------------------------------------------

def _last_segment_layout(d: Path, ids: range) -> tuple[Path, int, list[int]]:
    """(last segment, its first id, end offset of each of its records)."""
    last = segments(d)[-1]
    first = int(last.stem)
    ends, off = [], FILE_HEADER_SIZE
    for i in ids:
        if i >= first:
            off += RECORD_HEADER_SIZE + len(payload(i))
            ends.append(off)
    assert ends[-1] == last.stat().st_size
    return last, first, ends


N = 200                                   # records in the pristine log


def _pristine(tmp_path: Path, n: int = N) -> Path:
    d = tmp_path / "pristine"
    with SegmentLog(d, segment_bytes=4096) as log:
        fill(log, n)
    return d


def test_torn_tail_at_many_offsets(tmp_path, caplog):
    src = _pristine(tmp_path)
    last, first, ends = _last_segment_layout(src, range(1, N + 1))
    assert len(ends) > 5
    rng = random.Random(7)
    boundaries = [FILE_HEADER_SIZE] + ends
    cuts = {0, 7, FILE_HEADER_SIZE + 3, ends[0] + 1, ends[0] + RECORD_HEADER_SIZE + 2, ends[-1] - 1}
    cuts |= {rng.randrange(1, ends[-1]) for _ in range(12)}
    for cut in sorted(cuts):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        os.truncate(d / last.name, cut)
        good = sum(1 for e in ends if e <= cut)
        good_end = max([b for b in boundaries if b <= cut], default=0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sl.__name__):
            log = SegmentLog(d, segment_bytes=4096)
        with log:
            assert log.next_id == first + good, cut
            removed = cut if cut < FILE_HEADER_SIZE else cut - good_end
            assert log.stats["truncated_bytes"] == removed
            if removed:
                assert f"truncated {removed} bytes" in caplog.text
            assert_contiguous(read_all(log), 1, first + good - 1)
            fill(log, 3)
        with SegmentLog(d) as log:
            assert log.stats["truncated_bytes"] == 0
            assert_contiguous(read_all(log), 1, first + good + 2)


@pytest.mark.parametrize("where", ["last_payload", "last_crc", "last_id", "middle_magic"])
def test_flipped_byte_in_last_segment(tmp_path, where):
    src = _pristine(tmp_path)
    last, first, ends = _last_segment_layout(src, range(1, N + 1))
    k = {"last_payload": len(ends) - 1, "last_crc": len(ends) - 1,
         "last_id": len(ends) - 1, "middle_magic": len(ends) // 2}[where]
    start = FILE_HEADER_SIZE if k == 0 else ends[k - 1]
    pos = {"last_payload": ends[k] - 1, "last_crc": start + 9,
           "last_id": start + 12, "middle_magic": start}[where]
    d = tmp_path / "d"
    shutil.copytree(src, d)
    data = bytearray((d / last.name).read_bytes())
    data[pos] ^= 0x41
    (d / last.name).write_bytes(bytes(data))
    with SegmentLog(d) as log:
        assert log.stats["truncated_bytes"] == ends[-1] - start > 0
        assert log.next_id == first + k
        assert_contiguous(read_all(log), 1, first + k - 1)
        assert log.append(payload(first + k), 0) == first + k
        log.commit()
    with SegmentLog(d) as log:
        assert_contiguous(read_all(log), 1, first + k)


def test_replayed_record_at_the_tail(tmp_path):
    """A well-formed record (good crc) with an unexpected id, e.g. a write replayed at
    the end, is a corrupt tail too."""
    src = _pristine(tmp_path)
    last, first, ends = _last_segment_layout(src, range(1, N + 1))
    data = last.read_bytes()
    frame = data[ends[-2]:ends[-1]]
    last.write_bytes(data + frame)
    with SegmentLog(src) as log:
        assert log.stats["truncated_bytes"] == len(frame)
        assert log.next_id == N + 1
        assert_contiguous(read_all(log), 1, N)


def test_corrupt_record_in_a_closed_segment(tmp_path, caplog):
    src = _pristine(tmp_path)
    starts = seg_first_ids(src)
    victim = segments(src)[1]
    n_in_victim = starts[2] - starts[1]
    off = FILE_HEADER_SIZE + sum(RECORD_HEADER_SIZE + len(payload(i)) for i in range(starts[1], starts[1] + 3))
    data = bytearray(victim.read_bytes())
    data[off + RECORD_HEADER_SIZE] ^= 0xFF             # payload of its 4th record
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=sl.__name__):
        log = SegmentLog(src, segment_bytes=4096)
    with log:
        assert "closed segment" in caplog.text and victim.name in caplog.text
        assert log.stats["truncated_bytes"] == 0
        assert log.stats["skipped_bytes"] == len(data) - off
        assert log.next_id == N + 1
        ids = [r.id for r in read_all(log)]
        lost = set(range(starts[1] + 3, starts[2]))
        assert len(lost) == n_in_victim - 3
        assert ids == [i for i in range(1, N + 1) if i not in lost]
        assert [r.id for r in log.read(starts[1] + 2, 2)] == [starts[2], starts[2] + 1]
    assert victim.stat().st_size == len(data)            # a closed segment is left as it is


def test_unknown_segment_version_is_refused(tmp_path):
    with SegmentLog(tmp_path) as log:
        fill(log, 3)
    seg = segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[6:8] = (99).to_bytes(2, "little")
    seg.write_bytes(bytes(data))
    with pytest.raises(UnsupportedFormat, match="version 99"):
        SegmentLog(tmp_path)
    data[0:6] = b"NOTSEG"
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="not a segment file"):
        SegmentLog(tmp_path)
    seg.unlink()                                  # the failed opens released the lock
    with SegmentLog(tmp_path) as log:
        assert log.next_id == 1


# -- retention ---------------------------------------------------------------------------

def _seg_ranges(d: Path, next_id: int) -> list[tuple[int, int]]:
    starts = seg_first_ids(d)
    return list(zip(starts, [s - 1 for s in starts[1:]] + [next_id - 1]))


def test_retention_by_bytes(tmp_path):
    with SegmentLog(tmp_path, segment_bytes=2048, retention_bytes=6000) as log:
        fill(log, 400)
        before = _seg_ranges(tmp_path, log.next_id)
        total = sum(p.stat().st_size for p in segments(tmp_path))
        assert log.stats["bytes"] == total > 6000
        dropped = log.enforce_retention(0)
        after = _seg_ranges(tmp_path, log.next_id)
        assert after == before[len(before) - len(after):]          # only whole, oldest segments
        assert sum(p.stat().st_size for p in segments(tmp_path)) <= 6000
        assert dropped == log.dropped_records == after[0][0] - 1 > 0
        assert log.dropped_segments == len(before) - len(after)
        assert log.first_id == after[0][0]
        assert_contiguous(read_all(log), after[0][0], 400)
        assert log.enforce_retention(0) == 0                       # idempotent
        # over the limit with the active segment alone: it stays
        log.retention_bytes = 1
        log.enforce_retention(0)
        assert len(segments(tmp_path)) == 1 and log.next_id == 401


def test_retention_by_time(tmp_path):
    with SegmentLog(tmp_path, segment_bytes=2048, retention_ms=100) as log:
        fill(log, 300, ts=lambda i: 10 * i)                        # record i at ts 10 i
        before = _seg_ranges(tmp_path, log.next_id)
        now = 10 * 150 + 100                                       # cutoff: ts 1500 (record 150)
        keep = [r for r in before if 10 * r[1] >= 1500]
        assert 0 < len(keep) < len(before)
        assert log.enforce_retention(now) == keep[0][0] - 1
        assert _seg_ranges(tmp_path, log.next_id) == keep
        assert log.first_id == keep[0][0] <= 150
        assert log.dropped_segments == len(before) - len(keep)
        # everything is old: all closed segments go, the active one stays
        log.enforce_retention(10 ** 9)
        assert len(segments(tmp_path)) == 1 and log.last_id == 300
        assert log.read(0)[0].id == seg_first_ids(tmp_path)[0]


def test_ids_never_restart_after_everything_old_is_dropped(tmp_path):
    with SegmentLog(tmp_path, segment_bytes=1024, retention_ms=0) as log:
        fill(log, 200)
        ranges = _seg_ranges(tmp_path, log.next_id)
        whole = [r for r in ranges if r[1] <= 10]
        assert log.drop_through(10) == sum(hi - lo + 1 for lo, hi in whole)
        assert _seg_ranges(tmp_path, log.next_id) == ranges[len(whole):]
        first_after = log.first_id
        log.drop_through(log.last_id)
        assert len(segments(tmp_path)) == 1                        # the active segment stays
        assert log.first_id > first_after
        log.enforce_retention(10 ** 12)
        assert log.dropped_records == log.first_id - 1
    with SegmentLog(tmp_path) as log:
        assert log.next_id == 201 and log.last_id == 200
        assert log.append(b"x", 0) == 201
    # even with every segment gone, META keeps the floor of the last deletion
    for p in segments(tmp_path):
        p.unlink()
    with SegmentLog(tmp_path) as log:
        assert log.next_id == 201                                  # META's floor, not 1
        assert seg_first_ids(tmp_path) == [log.next_id]


def test_drop_through_only_whole_segments(tmp_path):
    with SegmentLog(tmp_path, segment_bytes=2048) as log:
        fill(log, 300)
        ranges = _seg_ranges(tmp_path, log.next_id)
        cut = ranges[3][1] - 1                                     # inside the 4th segment
        assert log.drop_through(cut) == ranges[2][1]
        assert log.first_id == ranges[3][0]
        assert log.drop_through(ranges[3][1]) == ranges[3][1] - ranges[3][0] + 1
        assert log.first_id == ranges[4][0]


# -- lock, fsync -------------------------------------------------------------------------

def test_lock_same_process_and_other_process(tmp_path):
    log = SegmentLog(tmp_path)
    with pytest.raises(LogLocked, match=rf"pid {os.getpid()}") as exc:
        SegmentLog(tmp_path)
    assert str(tmp_path) in str(exc.value) and isinstance(exc.value, RuntimeError)
    child = run_child("""
        import sys
        from yujing.service.storage.segment_log import SegmentLog, LogLocked
        try:
            SegmentLog(sys.argv[1])
        except LogLocked as e:
            print("locked:", e)
    """, str(tmp_path))
    out, err = child.communicate(timeout=30)
    assert f"locked:" in out and f"pid {os.getpid()}" in out, err
    log.close()
    with SegmentLog(tmp_path) as again:
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
        assert again.next_id == 1


def test_fsync_mode(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    with SegmentLog(tmp_path / "b", durability="batch") as log:
        fill(log, 50)
    assert calls == []
    with SegmentLog(tmp_path / "f", durability="fsync", segment_bytes=1024) as log:
        calls.clear()
        log.append(b"a", 1)
        log.commit()
        assert len(calls) == 1
        log.commit()                                              # nothing new: no sync
        assert len(calls) == 1
        fill(log, 100)
        n_segs = len(segments(tmp_path / "f"))
        assert n_segs > 3 and len(calls) >= 10 + n_segs
    with SegmentLog(tmp_path / "f", durability="fsync") as log:
        assert log.last_id == 101
        assert [r.id for r in read_all(log)] == list(range(1, 102))


def test_closed_log_refuses_work(tmp_path):
    log = SegmentLog(tmp_path)
    log.close()
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.append(b"x", 0)
    with pytest.raises(RuntimeError, match="closed"):
        log.read(0)
    with pytest.raises(ValueError):
        SegmentLog(tmp_path, durability="sometimes")


def _fail_writes_past(size: int):
    """Writes beyond ``size`` bytes of any file fail with EFBIG (a real refusal by the
    kernel: RLIMIT_FSIZE, SIGXFSZ ignored), as a full disk refuses them; returns the undo."""
    import resource

    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))

    def undo():
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)

    return undo


def test_after_a_failed_write_the_log_refuses_then_writes_again_by_itself_once_it_can(tmp_path):
    import errno

    log_ = SegmentLog(tmp_path / "log", segment_bytes=1 << 20)
    for i in range(3):
        log_.append(b"kept %d" % i, i)
        log_.commit()
    active = sorted((tmp_path / "log").glob("*.seg"))[-1]
    undo = _fail_writes_past(active.stat().st_size + 10)
    try:
        log_.append(b"refused" * 10, 3)
        with pytest.raises(OSError) as failed:
            log_.commit()
    finally:
        undo()
    assert failed.value.errno == errno.EFBIG
    log_.RETRY_AFTER_FAILURE_S = 3600.0
    log_._retry_at = float("inf")                    # the next try is not due yet: refused at once
    with pytest.raises(LogError, match="tries again"):
        log_.append(b"too early", 4)
    log_._retry_at = 0.0                              # due: it opens itself again and writes
    rid = log_.append(b"after", 5)
    log_.commit()
    assert rid == 4                                   # the refused record's id, never committed, given again
    assert [r.payload for r in log_.read(0)] == [b"kept 0", b"kept 1", b"kept 2", b"after"]
    log_.close()
    again = SegmentLog(tmp_path / "log")
    assert [r.payload for r in again.read(0)] == [b"kept 0", b"kept 1", b"kept 2", b"after"]
    again.close()
