"""Opt-in soak (issue 14): ``yujing serve`` (embedded Triton, the default models, a turn
log in ``batch`` mode) under 70 % of its measured ScoreBatch capacity for
``$YUJING_SOAK_S`` seconds (default 1,800); the resident memory of the service and its
Triton children must stay flat: after the warm-up (a fifth of the run, at least 120 s:
the idempotency window and the alert log's memory fill up) no sample exceeds the one at
the end of the warm-up by more than 10 %. Every turn sent is answered or refused with a
defined status.

    YUJING_SOAK_S=1800 python -m pytest -q --run-slow tests/functional/test_soak.py -s
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from tests.service_harness import ServeProcess


def _rss_kib(pid: int) -> int:
    """Resident set of ``pid`` and all its descendants, KiB (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_soak_rss_stays_flat_at_70_percent_of_capacity():
    from yujing.loadtest.bench.e2e import capacity
    from yujing.loadtest.runner import RunSpec, run_load

    seconds = float(os.environ.get("YUJING_SOAK_S", "1800"))
    warm = max(120.0, seconds / 5)
    p = ServeProcess("--durability", "batch")
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, _rss_kib(p.proc.pid)))
            stop.wait(5.0)

    try:
        target = f"127.0.0.1:{p.port}"
        cap = capacity(target, "batch", 5.0, "soak-cap", max_steps=7)["capacity_turns_per_s"]
        rate = 0.7 * cap
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results, t_end = [], time.monotonic() + seconds
        while time.monotonic() < t_end:
            chunk = min(60.0, t_end - time.monotonic())
            if chunk < 1:
                break
            r = run_load(RunSpec(target=target, mode="batch", rate=rate, duration=chunk, sessions=20_000,
                                 batch_size=256, batch_linger_ms=100.0, timeout_s=10.0, drain_s=5.0,
                                 progress=False, seed=len(results) + 1).validate())
            results.append(r)
        stop.set()
        sampler.join(10)
    finally:
        stop.set()
        code = p.stop()
    assert code == 0, p.output()[-3000:]
    at_warm = next(kib for t, kib in samples if t >= warm)
    after = [kib for t, kib in samples if t >= warm]
    answered = sum(r["answered"] for r in results)
    print(f"\nsoak: {seconds:.0f} s at {rate:,.0f} turns/s (capacity {cap:,.0f}); {answered:,} answered; "
          f"RSS at warm-up end {at_warm / 1024:.0f} MiB, max after {max(after) / 1024:.0f} MiB, "
          f"last {after[-1] / 1024:.0f} MiB")
    for r in results:
        bad = {k: v for k, v in r["errors"].items()
               if k not in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")}
        assert not bad, bad
    assert max(after) <= 1.10 * at_warm, (at_warm, max(after), samples[::12])
