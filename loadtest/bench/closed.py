"""``yujing bench closed``: closed-loop throughput and the service's own CPU per turn,
the service against the bare echo server, in one run (issue 13's table).

    yujing bench closed [--duration 10] [--modes batch unary stream sequential] [--out bench_results/closed.json]

Closed loop: a fixed number of callers, each sending its next call as soon as the last
answer came, every turn a fresh (session, turn id), so nothing is answered from the
idempotency window. One client process on uvloop, on the same two cores as the server
(and, for the service, its embedded Triton). Per mode and target:

* ``batch``: 4 callers of ScoreBatch with 256 turns each;
* ``unary``: 64 callers of Score;
* ``stream``: 4 ScoreStream calls, each keeping 64 turns unanswered;
* ``sequential``: one caller of Score, one call at a time: the latency floor (p50, p99).

For the service, the CPU seconds of the ``yujing serve`` process alone (``/proc``; its
Triton children are reported apart) divided by the turns answered: the service's CPU
per turn. The echo server answers with a TurnRisk captured from the service in this run.

``--baseline DIR``: also the service of another checkout (``DIR``, with its own
``.venv``; e.g. the main branch's), both services up at once and measured mode by mode
under the same load: ``ratios_service_over_baseline``. With ``--rounds N`` there are N
rounds; each starts both services afresh, the baseline first in even rounds and the
service first in odd ones (the first-started server had an 8-11 % ScoreBatch advantage in
session 15's runs), and measures each mode on both in the same alternating order, with
fresh session and turn ids (a repeated id would be answered from the idempotency window).
The ratio is of the medians, and every round is kept. Use an even N so that each side is
started first equally often. On a shared machine one round apart can differ by 10-20 %: a
ratio from one round is not a figure.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from yujing.loadtest.bench.e2e import Child, Service, _capture_answer

MODES = ("batch", "unary", "stream", "sequential")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for c in _children(pid):
        try:
            total += _cpu_s(c) + _tree_cpu_s(c)
        except OSError:
            pass
    return total


async def _drive(target: str, mode: str, duration: float, tag: str) -> dict:
    import grpc

    from yujing.service.contract import pb, pb_grpc

    texts = ["请问会员积分怎么查？", "What are your opening hours on Sunday?", "我要投诉，三天了还没发货！",
             "This is unacceptable, I want a refund now!", "thanks, that fixed it", "我想修改收货地址。"]
    counter = [0]

    def fresh() -> pb.Turn:
        counter[0] += 1
        n = counter[0]
        return pb.Turn(session_id=f"{tag}-{mode}-{n % 20000}", turn_id=f"{n}", speaker=pb.CUSTOMER,
                       text=texts[n % len(texts)], agent_id=f"agent-{n % 50}")

    answered, refused, lat = 0, 0, []
    end = time.monotonic() + duration
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.RiskScorerStub(ch)

        async def batch_caller():
            nonlocal answered, refused
            while time.monotonic() < end:
                try:
                    r = await stub.ScoreBatch(pb.TurnBatch(turns=[fresh() for _ in range(256)]), timeout=30)
                except grpc.aio.AioRpcError as err:      # overload refusals are counted, then retried
                    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    refused += 256
                    continue
                answered += sum(1 for x in r.results if x.HasField("risk"))

        async def unary_caller():
            nonlocal answered, refused
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await stub.Score(fresh(), timeout=30)
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    refused += 1
                    continue
                lat.append(time.perf_counter() - t0)
                answered += 1

        async def stream_caller():
            nonlocal answered
            call = stub.ScoreStream(timeout=duration + 30)
            room = asyncio.Semaphore(64)

            async def writer():
                while time.monotonic() < end:
                    await room.acquire()
                    await call.write(fresh())
                await call.done_writing()

            w = asyncio.ensure_future(writer())
            async for _ in call:
                answered += 1
                room.release()
            await w

        callers = {"batch": [batch_caller] * 4, "unary": [unary_caller] * 64, "stream": [stream_caller] * 4,
                   "sequential": [unary_caller]}[mode]
        t0 = time.perf_counter()
        await asyncio.gather(*(c() for c in callers))
        wall = time.perf_counter() - t0
    lat.sort()
    out = {"turns": answered, "refused": refused, "seconds": round(wall, 3), "turns_per_s": round(answered / wall, 1)}
    if mode == "sequential" and lat:
        out["p50_ms"] = round(lat[len(lat) // 2] * 1e3, 3)
        out["p99_ms"] = round(lat[int(len(lat) * 0.99)] * 1e3, 3)
    return out


def _measure(target: str, pid: int, duration: float, tag: str, modes=MODES) -> dict:
    import uvloop

    res = {}
    for mode in modes:
        uvloop.run(_drive(target, mode, 2.0, tag + "-warm"))         # warm: compile, connect, batch estimate
        c0, t0 = _cpu_s(pid), _tree_cpu_s(pid)
        r = uvloop.run(_drive(target, mode, duration, tag))
        r["server_cpu_s"] = round(_cpu_s(pid) - c0, 3)
        r["server_cpu_us_per_turn"] = round(r["server_cpu_s"] / max(r["turns"], 1) * 1e6, 2)
        r["children_cpu_us_per_turn"] = round((_tree_cpu_s(pid) - t0) / max(r["turns"], 1) * 1e6, 2)
        print(f"[closed] {tag} {mode}: {r['turns_per_s']:,.0f} turns/s, server CPU "
              f"{r['server_cpu_us_per_turn']} us/turn (+ children {r['children_cpu_us_per_turn']})"
              + (f", p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms" if "p50_ms" in r else ""),
              file=sys.stderr, flush=True)
        res[mode] = r
    return res


def _median_round(rounds: list[dict]) -> dict:
    """The round with the median throughput (the lower middle one for an even count)."""
    return sorted(rounds, key=lambda r: r["turns_per_s"])[(len(rounds) - 1) // 2]


def _start_pair(py: str, root: Path, first: str) -> dict:
    """Both services, ``first`` ("baseline" or "service") started first."""
    order = ("baseline", "service") if first == "baseline" else ("service", "baseline")
    started: dict = {}
    try:
        for side in order:
            started[side] = (Service(str(root / ".venv" / "bin" / "python"), cwd=root) if side == "baseline"
                             else Service(py))
    except BaseException:
        for child in started.values():
            child.stop()
        raise
    return started


def _against_baseline(py: str, root: Path, modes, duration: float, rounds: int) -> dict:
    """Each round starts both services afresh, the one started first alternating (in two-
    server runs the first-started had an 8-11 % ScoreBatch advantage, BENCHMARKS.md section
    8, session 15), and measures every mode on both, the order alternating too."""
    out: dict = {"baseline_checkout": str(root), "rounds": rounds, "started_first": [],
                 "baseline": {}, "service": {},
                 "baseline_rounds": {m: [] for m in modes}, "service_rounds": {m: [] for m in modes}}
    for r in range(rounds):
        first = "baseline" if r % 2 == 0 else "service"
        out["started_first"].append(first)
        sides = _start_pair(py, root, first)
        try:
            for mode in modes:
                for side in (("baseline", "service") if r % 2 == 0 else ("service", "baseline")):
                    s = sides[side]
                    got = _measure(f"127.0.0.1:{s.port}", s.proc.pid, duration, f"{side[:4]}-r{r}", (mode,))
                    out[f"{side}_rounds"][mode].append(got[mode])
        finally:
            for child in sides.values():
                child.stop()
    for mode in modes:
        for side in ("baseline", "service"):
            out[side][mode] = _median_round(out[f"{side}_rounds"][mode])
    out["ratios_service_over_baseline"] = {
        m: round(out["service"][m]["turns_per_s"] / out["baseline"][m]["turns_per_s"], 3) for m in modes}
    return out


def bench_closed(args) -> dict:
    duration = float(getattr(args, "duration", 10.0) or 10.0)
    baseline = getattr(args, "baseline", None)
    modes = tuple(m for m in MODES if m in (getattr(args, "modes", None) or MODES))
    py = sys.executable
    out: dict = {"duration_s_per_point": duration, "cores_shared": os.cpu_count(),
                 "note": "closed loop, fresh turn ids; server, Triton and the client share the cores"}
    canned = tempfile.NamedTemporaryFile(prefix="yujing-canned-", suffix=".bin", delete=False).name
    svc = Service(py)
    try:
        out["canned_turnrisk_bytes"] = _capture_answer(svc.port, canned)
        if baseline is None:
            out["service"] = _measure(f"127.0.0.1:{svc.port}", svc.proc.pid, duration, "svc", modes)
    finally:
        svc.stop()
    if baseline is not None:
        out.update(_against_baseline(py, Path(baseline).resolve(), modes, duration,
                                     max(1, int(getattr(args, "rounds", 1) or 1))))
    echo = Child([py, "-m", "yujing.loadtest.bench.e2e", "echo", "--port", "0", "--canned", canned],
                 r"echo serving on [\d.]+:(\d+)")
    try:
        out["echo"] = _measure(f"127.0.0.1:{echo.port}", echo.proc.pid, duration, "echo", modes)
    finally:
        echo.stop()
    out["ratios_service_over_echo"] = {m: round(out["service"][m]["turns_per_s"] / out["echo"][m]["turns_per_s"], 3)
                                       for m in modes if m != "sequential"}
    return out
