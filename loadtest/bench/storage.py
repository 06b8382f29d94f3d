"""Benchmark of the segment log (:mod:`yujing.service.storage.segment_log`).

    python -m yujing.loadtest.bench.storage [--records 200000] [--payload 400] [--group 256]
                                            [--seconds 3] [--modes none batch fsync]
                                            [--dir DIR] [--json PATH]

For each durability mode, two write points on a fresh log in ``--dir`` (default: the
system temp directory; the table names its filesystem):

* ``group``: ``--group`` records (``--payload`` bytes each) appended, then one ``commit()``;
* ``single``: one record, one ``commit()`` (the worst case: a commit per record).

Each point runs until ``--records`` records or ``--seconds`` seconds, whichever comes first,
and reports appends/s, payload MB/s, commits/s and the commit latency (p50/p99 of the
``commit()`` call alone). Then, on the largest log written: the time to reopen it (the
recovery scan), sequential reads from a cursor in the middle (``read(cursor, 1000)`` to the
end) and random-cursor reads (``read(random, 100)``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from yujing.service.storage.segment_log import RECORD_HEADER_SIZE, SegmentLog

MODES = ("none", "batch", "fsync")


def _filesystem(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts; '?' elsewhere)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def _payloads(size: int, n: int = 1024, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def bench_write(directory: Path, mode: str, group: int, records: int, seconds: float,
                payloads: list[bytes]) -> dict:
    """Append ``group`` records per commit into a fresh log until ``records`` or ``seconds``."""
    shutil.rmtree(directory, ignore_errors=True)
    commit_s: list[float] = []
    done, npay = 0, len(payloads)
    with SegmentLog(directory, durability=mode) as log:
        t0 = time.perf_counter()
        while done < records and time.perf_counter() - t0 < seconds:
            k = min(group, records - done)
            for j in range(done, done + k):
                log.append(payloads[j % npay], j)
            t1 = time.perf_counter()
            log.commit()
            commit_s.append(time.perf_counter() - t1)
            done += k
        elapsed = time.perf_counter() - t0
    commit_s.sort()
    size = len(payloads[0])
    return {"mode": mode, "group": group, "records": done, "seconds": elapsed,
            "appends_per_s": done / elapsed, "payload_mb_per_s": done * size / elapsed / 1e6,
            "disk_mb_per_s": done * (size + RECORD_HEADER_SIZE) / elapsed / 1e6,
            "commits_per_s": len(commit_s) / elapsed,
            "commit_p50_us": 1e6 * _pct(commit_s, 0.50), "commit_p99_us": 1e6 * _pct(commit_s, 0.99)}


def bench_read(directory: Path, random_reads: int = 300, seed: int = 1) -> dict:
    """Reopen the log in ``directory`` and read it from the middle, then at random cursors."""
    t0 = time.perf_counter()
    log = SegmentLog(directory)
    open_s = time.perf_counter() - t0
    try:
        first, last = log.first_id, log.last_id
        cursor, n, nbytes = (first + last) // 2, 0, 0
        t0 = time.perf_counter()
        while recs := log.read(cursor, 1000):
            n += len(recs)
            nbytes += sum(len(r.payload) for r in recs)
            cursor = recs[-1].id
        seq_s = time.perf_counter() - t0
        rng = random.Random(seed)
        t0 = time.perf_counter()
        for _ in range(random_reads):
            log.read(rng.randrange(first - 1, last), 100)
        rand_s = time.perf_counter() - t0
        stats = log.stats
    finally:
        log.close()
    return {"records_in_log": last - first + 1, "log_bytes": stats["bytes"], "segments": stats["segments"],
            "open_s": open_s, "open_mb_per_s": stats["bytes"] / open_s / 1e6,
            "seq_records": n, "seq_records_per_s": n / seq_s, "seq_payload_mb_per_s": nbytes / seq_s / 1e6,
            "random_reads": random_reads, "random_read_100_us": 1e6 * rand_s / random_reads}


def run(args: argparse.Namespace) -> dict:
    base = Path(tempfile.mkdtemp(prefix="yujing-bench-storage-", dir=args.dir))
    payloads = _payloads(args.payload)
    out = {"config": {"records": args.records, "payload_bytes": args.payload, "group": args.group,
                      "seconds_cap": args.seconds, "directory": str(base),
                      "filesystem": _filesystem(base), "python": sys.version.split()[0]},
           "write": [], "read": None}
    try:
        biggest = None
        for mode in args.modes:
            for group in (args.group, 1):
                d = base / f"{mode}-{group}"
                row = bench_write(d, mode, group, args.records, args.seconds, payloads)
                out["write"].append(row)
                if biggest is None or row["records"] > biggest[1]:
                    biggest = (d, row["records"])
                if d != biggest[0]:
                    shutil.rmtree(d, ignore_errors=True)
        if biggest is not None:
            out["read"] = bench_read(biggest[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"segment log: {c['payload_bytes']} B payloads, up to {c['records']} records or "
             f"{c['seconds_cap']} s per point, {c['directory']} ({c['filesystem']})", "",
             f"{'mode':<6} {'commit':>12} {'records':>9} {'appends/s':>11} {'MB/s':>8} "
             f"{'commits/s':>10} {'p50 us':>9} {'p99 us':>9}"]
    for r in result["write"]:
        commit = f"{r['group']} rec" if r["group"] > 1 else "1 rec"
        lines.append(f"{r['mode']:<6} {commit:>12} {r['records']:>9} {r['appends_per_s']:>11,.0f} "
                     f"{r['payload_mb_per_s']:>8.1f} {r['commits_per_s']:>10,.0f} "
                     f"{r['commit_p50_us']:>9.1f} {r['commit_p99_us']:>9.1f}")
    rd = result["read"]
    if rd:
        lines += ["", f"read ({rd['records_in_log']} records, {rd['log_bytes'] / 1e6:.1f} MB, "
                      f"{rd['segments']} segments): open {rd['open_s'] * 1e3:.0f} ms "
                      f"({rd['open_mb_per_s']:.0f} MB/s scan); from the middle "
                      f"{rd['seq_records_per_s']:,.0f} records/s ({rd['seq_payload_mb_per_s']:.1f} MB/s); "
                      f"random read(cursor, 100) {rd['random_read_100_us']:.0f} us"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m yujing.loadtest.bench.storage",
                                description="appends/s and bytes/s of the segment log per durability mode")
    p.add_argument("--records", type=int, default=200_000, help="records per write point (cap)")
    p.add_argument("--payload", type=int, default=400, help="payload bytes per record")
    p.add_argument("--group", type=int, default=256, help="records per commit in the group point")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per write point (cap)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--dir", default=None, help="where the logs are written (default: the temp dir)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
