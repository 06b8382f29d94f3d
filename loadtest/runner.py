"""The open-loop load generator.

Turns are sent on a fixed arrival schedule (Poisson or constant inter-arrival times at
``rate`` turns/s), whether or not earlier turns were answered; each turn's latency is
measured from its *intended* send time, so a slow server cannot slow the generator down
and hide its own latency (no coordinated omission).

Modes:
    unary   one Score call per turn, as many in flight as the schedule makes
    stream  ``streams`` long-lived ScoreStream calls; a session always uses the same stream
    batch   ScoreBatch calls of ``batch_size`` turns (a partial batch leaves after
            ``batch_linger_ms``); a turn's latency includes its wait for the batch

``processes`` > 1 splits the rate, the sessions and the streams across spawned client
processes (each on uvloop); their HDR histograms are merged. Every run is bounded: at
most ``rate * duration`` turns (or ``max_turns``), and at most ``duration + drain_s``
seconds; whatever is still unanswered then is cancelled and counted as an error, so a
report always has ``sent == answered + errors``.

The generator checks itself: if it sent later than scheduled (``p99 send lag`` over
``max_lag_ms``), achieved less than 95 % of the target rate, or used a whole CPU, the
result says so (``generator_bottleneck``), because then the numbers measure the client.
"""
from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import grpc
from hdrh.histogram import HdrHistogram

LAT_MAX_US = 3_600_000_000  # 1 hour
SIG_DIGITS = 3
SEC_SIG_DIGITS = 2


def new_hist(digits: int = SIG_DIGITS) -> HdrHistogram:
    return HdrHistogram(1, LAT_MAX_US, digits)


async def _settle(tasks, until: float) -> None:
    """Let ``tasks`` finish until ``until`` (monotonic), then cancel what is left; a
    cancelled call is counted as an error by its own handler."""
    if tasks:
        await asyncio.wait(list(tasks), timeout=max(0.0, until - time.monotonic()))
    for t in list(tasks):
        t.cancel()
    if tasks:
        await asyncio.wait(list(tasks), timeout=2.0)


@dataclass
class RunSpec:
    target: str = "127.0.0.1:50051"
    mode: str = "unary"                 # unary | stream | batch
    rate: float = 100.0                 # turns per second, all processes together
    duration: float = 10.0              # seconds of sending
    sessions: int = 10_000              # distinct session ids
    concurrent: int | None = None       # live conversations at once (default min(sessions, 2000))
    processes: int = 1
    batch_size: int = 64
    batch_linger_ms: float = 50.0
    streams: int = 4
    turns_file: str | None = None
    seed: int = 1
    arrival: str = "poisson"            # poisson | constant
    max_turns: int | None = None
    timeout_s: float = 10.0             # deadline of one RPC (streams: duration + drain)
    drain_s: float = 10.0               # after the last send, wait at most this for answers
    max_lag_ms: float = 10.0            # p99 send lag above this: the generator was the bottleneck
    run_id: str | None = None
    progress: bool = True
    # a secured service (service/security/client.py); the token is never written to a report
    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None

    def validate(self) -> "RunSpec":
        if self.mode not in ("unary", "stream", "batch"):
            raise ValueError(f"mode {self.mode!r}: expected unary, stream or batch")
        if not (self.rate > 0 and self.duration > 0):
            raise ValueError("rate and duration must be > 0")
        if self.arrival not in ("poisson", "constant"):
            raise ValueError("arrival: poisson or constant")
        if self.processes < 1 or self.batch_size < 1 or self.streams < 1 or self.sessions < 1:
            raise ValueError("processes, batch-size, streams and sessions must be >= 1")
        return self

    def planned_turns(self) -> int:
        n = int(round(self.rate * self.duration))
        return min(n, self.max_turns) if self.max_turns else n


class Recorder:
    """Counts and histograms of one client process."""

    def __init__(self, start: float):
        self.start = start
        self.hist = new_hist()
        self.lag = new_hist()
        self.sent = 0
        self.answered = 0
        self.errors: dict[str, int] = {}
        self.sec: dict[int, dict] = {}
        self.first_send = None
        self.last_send = None
        self.last_intended = None
        self.last_done = None

    def _s(self, t: float) -> dict:
        k = max(0, int(t - self.start))
        d = self.sec.get(k)
        if d is None:
            d = self.sec[k] = {"sent": 0, "answered": 0, "errors": 0, "hist": new_hist(SEC_SIG_DIGITS)}
        return d

    def on_send(self, intended: float, now: float) -> None:
        self.sent += 1
        self.lag.record_value(max(1, int((now - intended) * 1e6)))
        self._s(intended)["sent"] += 1
        self.last_intended = intended
        if self.first_send is None:
            self.first_send = now
        self.last_send = now

    def ok(self, intended: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        us = max(1, min(LAT_MAX_US, int((now - intended) * 1e6)))
        self.answered += 1
        self.hist.record_value(us)
        d = self._s(now)
        d["answered"] += 1
        d["hist"].record_value(us)
        self.last_done = now

    def err(self, code: str, intended: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.errors[code] = self.errors.get(code, 0) + 1
        self._s(now)["errors"] += 1
        self.last_done = now

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def outstanding(self) -> int:
        return self.sent - self.answered - self.n_errors


def _code_name(code) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for sc in grpc.StatusCode:
            if sc.value[0] == code:
                return sc.name
    return str(code)


# ---- dispatchers -----------------------------------------------------------------------
class UnaryDispatcher:
    def __init__(self, stub, rec: Recorder, spec: RunSpec, hard_end: float):
        self.stub, self.rec, self.spec, self.hard_end = stub, rec, spec, hard_end
        self.tasks: set = set()

    def add(self, turn, intended: float) -> None:
        t = asyncio.ensure_future(self._one(turn, intended))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _one(self, turn, intended: float) -> None:
        timeout = max(0.05, min(self.spec.timeout_s, self.hard_end - time.monotonic()))
        try:
            await self.stub.Score(turn, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            self.rec.err(_code_name(e.code()), intended)
            return
        except asyncio.CancelledError:
            self.rec.err("CLIENT_CANCELLED", intended)
            raise
        except Exception as e:  # noqa: BLE001 - counted, never lost
            self.rec.err(f"CLIENT_{type(e).__name__}", intended)
            return
        self.rec.ok(intended)

    def deadline(self):
        return None

    def poll(self, now: float) -> None:
        pass

    async def finish(self, until: float) -> None:
        await _settle(self.tasks, until)


class _Lane:
    """One ScoreStream call (reopened if the server ends it); answers come back in order."""

    def __init__(self, stub, rec: Recorder, call_timeout: float):
        self.stub, self.rec, self.call_timeout = stub, rec, call_timeout
        self.q: asyncio.Queue = asyncio.Queue()
        self.pending: deque = deque()
        self.task = asyncio.ensure_future(self._run())

    async def _read(self, call, pending: deque) -> None:
        code = None
        try:
            async for _ in call:
                if pending:
                    self.rec.ok(pending.popleft())
        except grpc.aio.AioRpcError as e:
            code = _code_name(e.code())
        except asyncio.CancelledError:
            code = "CLIENT_CANCELLED"
        except Exception as e:  # noqa: BLE001
            code = f"CLIENT_{type(e).__name__}"
        while pending:
            self.rec.err(code or "NO_ANSWER", pending.popleft())

    async def _run(self) -> None:
        carry = None
        while True:
            call = self.stub.ScoreStream(timeout=self.call_timeout)
            pending = self.pending = deque()
            reader = asyncio.ensure_future(self._read(call, pending))
            try:
                while True:
                    item = carry if carry is not None else await self.q.get()
                    carry = None
                    if item is None:
                        try:
                            await call.done_writing()
                        except Exception:  # noqa: BLE001 - the reader accounts for the turns
                            pass
                        await reader
                        return
                    if reader.done():
                        carry = item
                        break
                    pending.append(item[1])
                    try:
                        await call.write(item[0])
                    except Exception:  # noqa: BLE001 - stream failed: reader counts pending
                        await reader
                        break
            except asyncio.CancelledError:
                reader.cancel()
                call.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                if carry is not None:
                    self.rec.err("CLIENT_CANCELLED", carry[1])
                while not self.q.empty():
                    item = self.q.get_nowait()
                    if item is not None:
                        self.rec.err("CLIENT_CANCELLED", item[1])
                raise


class StreamDispatcher:
    def __init__(self, stub, rec: Recorder, spec: RunSpec, hard_end: float, streams: int):
        call_timeout = max(1.0, hard_end - time.monotonic() + 1.0)
        self.lanes = [_Lane(stub, rec, call_timeout) for _ in range(max(1, streams))]

    def add(self, turn, intended: float) -> None:
        lane = self.lanes[hash((turn.tenant_id, turn.session_id)) % len(self.lanes)]
        lane.q.put_nowait((turn, intended))

    def deadline(self):
        return None

    def poll(self, now: float) -> None:
        pass

    async def finish(self, until: float) -> None:
        for lane in self.lanes:
            lane.q.put_nowait(None)
        tasks = [lane.task for lane in self.lanes]
        await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class BatchDispatcher:
    def __init__(self, stub, rec: Recorder, spec: RunSpec, hard_end: float):
        from yujing.service.contract import pb

        self.pb = pb
        self.stub, self.rec, self.spec, self.hard_end = stub, rec, spec, hard_end
        self.buf: list = []
        self.linger = spec.batch_linger_ms / 1000.0
        self.tasks: set = set()
        self.batches = 0

    def add(self, turn, intended: float) -> None:
        self.buf.append((turn, intended))
        if len(self.buf) >= self.spec.batch_size:
            self._flush()

    def deadline(self):
        return self.buf[0][1] + self.linger if self.buf else None

    def poll(self, now: float) -> None:
        if self.buf and now >= self.buf[0][1] + self.linger:
            self._flush()

    def _flush(self) -> None:
        items, self.buf = self.buf, []
        self.batches += 1
        t = asyncio.ensure_future(self._send(items))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _send(self, items) -> None:
        timeout = max(0.05, min(self.spec.timeout_s, self.hard_end - time.monotonic()))
        req = self.pb.TurnBatch(turns=[t for t, _ in items])
        try:
            resp = await self.stub.ScoreBatch(req, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = _code_name(e.code())
            for _, t0 in items:
                self.rec.err(code, t0)
            return
        except asyncio.CancelledError:
            for _, t0 in items:
                self.rec.err("CLIENT_CANCELLED", t0)
            raise
        except Exception as e:  # noqa: BLE001
            for _, t0 in items:
                self.rec.err(f"CLIENT_{type(e).__name__}", t0)
            return
        now = time.monotonic()
        results = list(resp.results)
        for k, (_, t0) in enumerate(items):
            if k >= len(results):
                self.rec.err("NO_ANSWER", t0, now)
            elif results[k].WhichOneof("result") == "risk":
                self.rec.ok(t0, now)
            else:
                self.rec.err(_code_name(results[k].error.code), t0, now)

    async def finish(self, until: float) -> None:
        if self.buf:
            self._flush()
        await _settle(self.tasks, until)


# ---- one client process ------------------------------------------------------------------
def _share(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


async def run_worker(spec: RunSpec, idx: int, start_wall: float, progress_cb=None) -> dict:
    """Send this process's share of the schedule; returns its (picklable) result."""
    from yujing.loadtest.traffic import make_traffic
    from yujing.service.contract import pb_grpc

    P = spec.processes
    n = _share(spec.planned_turns(), P, idx)
    rate = spec.rate / P
    traffic = make_traffic(spec.turns_file, seed=spec.seed, sessions=spec.sessions,
                           concurrent=(spec.concurrent // P if spec.concurrent else None),
                           shard=idx, shards=P, run_id=spec.run_id)
    arrivals = random.Random(spec.seed * 7919 + idx)
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    from yujing.service.security.client import open_channel

    channel = open_channel(spec.target, token=spec.token, tls_ca=spec.tls_ca, tls_cert=spec.tls_cert,
                           tls_key=spec.tls_key, server_name=spec.tls_server_name, options=options, aio=True)
    from yujing.service.contract import pb_grpc as _pg  # noqa: F401
    stub = pb_grpc.RiskScorerStub(channel)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
    except asyncio.TimeoutError:
        pass  # the calls will fail with UNAVAILABLE and be counted
    start = time.monotonic() + max(0.0, start_wall - time.time())
    hard_end = start + spec.duration + spec.drain_s
    send_end = start + spec.duration + min(spec.drain_s, max(1.0, 0.5 * spec.duration))
    rec = Recorder(start)
    if spec.mode == "unary":
        disp = UnaryDispatcher(stub, rec, spec, hard_end)
    elif spec.mode == "stream":
        disp = StreamDispatcher(stub, rec, spec, hard_end, _share(spec.streams, P, idx) or 1)
    else:
        disp = BatchDispatcher(stub, rec, spec, hard_end)

    stop_progress = asyncio.Event()

    async def progress():
        while not stop_progress.is_set():
            try:
                await asyncio.wait_for(stop_progress.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if progress_cb is not None:
                progress_cb(rec.sent, rec.answered, rec.n_errors, n)

    prog = asyncio.ensure_future(progress())
    cpu0, wall0 = time.process_time(), time.monotonic()

    def gap() -> float:
        if spec.arrival == "constant":
            return 1.0 / rate
        return arrivals.expovariate(rate)

    now = time.monotonic()
    if start > now:
        await asyncio.sleep(start - now)
    i = 0
    t_next = start + (gap() if spec.arrival == "poisson" else 0.0)
    stopped_early = False
    while i < n:
        now = time.monotonic()
        if now > send_end:
            stopped_early = True
            break
        wake = t_next
        d = disp.deadline()
        if d is not None:
            wake = min(wake, d)
        if wake > now:
            await asyncio.sleep(wake - now)
            now = time.monotonic()
        burst = 0
        while i < n and t_next <= now and burst < 512:
            turn = traffic.next_turn()
            rec.on_send(t_next, time.monotonic())
            disp.add(turn, t_next)
            i += 1
            burst += 1
            t_next += gap()
        disp.poll(now)
        if burst >= 512:
            await asyncio.sleep(0)  # let answers in while catching up
    await disp.finish(hard_end)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    stop_progress.set()
    await prog
    if rec.outstanding > 0:  # never lose a turn: whatever is still open counts as abandoned
        k = rec.outstanding
        rec.errors["CLIENT_ABANDONED"] = rec.errors.get("CLIENT_ABANDONED", 0) + k
        rec._s(time.monotonic())["errors"] += k
    await channel.close()
    send_window = (rec.last_send - start) if rec.last_send is not None else 0.0
    # the schedule this process kept: through its last intended send plus one mean gap (a
    # constant 80/s for 2 s: the last send at 1.9875 s, the schedule through 2.0 s). By count,
    # a Poisson schedule ends a little before or after ``duration``; max_turns ends it sooner.
    schedule_end = (rec.last_intended - start + 1.0 / rate) if rec.last_intended is not None else 0.0
    return {
        "idx": idx, "planned": n, "sent": rec.sent, "answered": rec.answered, "errors": dict(rec.errors),
        "stopped_early": stopped_early, "hist": rec.hist.encode(), "lag": rec.lag.encode(),
        "per_second": {k: {"sent": v["sent"], "answered": v["answered"], "errors": v["errors"],
                           "hist": v["hist"].encode()} for k, v in sorted(rec.sec.items())},
        "send_window_s": send_window, "schedule_end_s": schedule_end, "cpu_s": cpu, "wall_s": wall,
        "target_rate": rate, "batches": getattr(disp, "batches", None),
    }


def _worker_entry(spec_d: dict, idx: int, start_wall: float, shared, out_q) -> None:
    import uvloop

    spec = RunSpec(**spec_d)

    def cb(sent, answered, errors, planned):
        shared[idx * 4 + 0] = sent
        shared[idx * 4 + 1] = answered
        shared[idx * 4 + 2] = errors
        shared[idx * 4 + 3] = planned

    try:
        res = uvloop.run(run_worker(spec, idx, start_wall, cb))
        out_q.put(res)
    except BaseException as e:  # noqa: BLE001
        out_q.put({"idx": idx, "failed": f"{type(e).__name__}: {e}"})


def _progress_line(sent, answered, errors, planned, elapsed) -> str:
    rate = answered / elapsed if elapsed > 0 else 0.0
    return (f"\r[loadtest] {elapsed:6.1f}s sent {sent}/{planned} answered {answered} errors {errors} "
            f"in-flight {sent - answered - errors} ({rate:,.0f}/s)   ")


def run_load(spec: RunSpec) -> dict:
    """Run one load test (all processes); returns the merged raw result (see merge_results)."""
    spec.validate()
    if spec.run_id is None:
        spec.run_id = f"lt{spec.seed}-{int(time.time() * 1000) % 10**9:09d}"
    t_begin = time.time()
    if spec.processes == 1:
        import uvloop

        t0 = [None]

        def cb(sent, answered, errors, planned):
            if spec.progress:
                if t0[0] is None:
                    t0[0] = time.monotonic() - 1.0
                sys.stderr.write(_progress_line(sent, answered, errors, planned, time.monotonic() - t0[0]))
                sys.stderr.flush()

        results = [uvloop.run(run_worker(spec, 0, time.time() + 0.2, cb))]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        shared = ctx.Array("q", 4 * spec.processes, lock=False)
        out_q = ctx.Queue()
        start_wall = time.time() + 3.0 + 0.3 * spec.processes  # time for the children to start
        procs = [ctx.Process(target=_worker_entry, args=(asdict(spec), i, start_wall, shared, out_q), daemon=True)
                 for i in range(spec.processes)]
        for p in procs:
            p.start()
        results = []
        limit = start_wall + spec.duration + spec.drain_s + 30.0
        while len(results) < len(procs) and time.time() < limit:
            try:
                results.append(out_q.get(timeout=1.0))
            except Exception:  # queue.Empty
                pass
            if spec.progress and time.time() > start_wall:
                vals = [shared[k] for k in range(4 * spec.processes)]
                s = [sum(vals[j::4]) for j in range(4)]
                sys.stderr.write(_progress_line(s[0], s[1], s[2], s[3], time.time() - start_wall))
                sys.stderr.flush()
            if not any(p.is_alive() for p in procs) and out_q.empty() and len(results) < len(procs):
                time.sleep(0.5)
                if out_q.empty():
                    break
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
        failed = [r for r in results if "failed" in r]
        if failed or len(results) < len(procs):
            raise RuntimeError(f"client processes failed: {failed or 'no result from some processes'}")
    if spec.progress:
        sys.stderr.write("\n")
    merged = merge_results(results, spec)
    merged["started_at"] = t_begin
    return merged


def merge_results(results: list[dict], spec: RunSpec) -> dict:
    hist, lag = new_hist(), new_hist()
    per_sec: dict[int, dict] = {}
    errors: dict[str, int] = {}
    for r in results:
        hist.add(HdrHistogram.decode(r["hist"]))
        lag.add(HdrHistogram.decode(r["lag"]))
        for code, k in r["errors"].items():
            errors[code] = errors.get(code, 0) + k
        for s, v in r["per_second"].items():
            d = per_sec.setdefault(int(s), {"sent": 0, "answered": 0, "errors": 0, "hist": new_hist(SEC_SIG_DIGITS)})
            d["sent"] += v["sent"]
            d["answered"] += v["answered"]
            d["errors"] += v["errors"]
            d["hist"].add(HdrHistogram.decode(v["hist"]))
    sent = sum(r["sent"] for r in results)
    answered = sum(r["answered"] for r in results)
    windows = [r["send_window_s"] for r in results if r["sent"]]
    send_window = max(windows) if windows else 0.0
    # seconds every process kept to its schedule (from the common start): whole 1 s buckets
    # before this are whole for all of them
    ends = [r["schedule_end_s"] for r in results if r["sent"] and "schedule_end_s" in r]
    schedule_span = min(ends) if ends else None
    achieved = sent / send_window if send_window > 0 else 0.0
    planned = sum(r["planned"] for r in results)
    lag_p99_ms = lag.get_value_at_percentile(99.0) / 1000.0 if lag.get_total_count() else 0.0
    cpu_frac = max((r["cpu_s"] / r["wall_s"]) if r["wall_s"] else 0.0 for r in results) if results else 0.0
    warnings = []
    if sent < planned:
        warnings.append(f"sent only {sent} of {planned} planned turns before the time bound")
    # judge the rate over whole seconds of sending (a short run's Poisson noise is not a bottleneck)
    expected_window = (sent / spec.rate) if spec.rate else 0.0
    if sent >= 50 and send_window > 0 and send_window > expected_window * 1.05 + 0.25:
        warnings.append(f"achieved send rate {achieved:,.1f}/s is below the target {spec.rate:,.1f}/s")
    if lag_p99_ms > spec.max_lag_ms:
        warnings.append(f"sends lagged their schedule: p99 lag {lag_p99_ms:.1f} ms > {spec.max_lag_ms:g} ms")
    if cpu_frac > 0.9:
        warnings.append(f"a client process used {cpu_frac:.0%} of a CPU core (add --processes)")
    return {
        "spec": {k: v for k, v in asdict(spec).items() if k != "token"}, "sent": sent, "answered": answered, "errors": errors, "planned": planned,
        "hist": hist, "lag": lag, "per_second": per_sec, "send_window_s": send_window,
        "schedule_span_s": schedule_span,
        "achieved_send_rate": achieved, "lag_p99_ms": lag_p99_ms, "lag_max_ms": lag.get_max_value() / 1000.0,
        "client_cpu_max_fraction": cpu_frac, "generator_warnings": warnings,
        "generator_bottleneck": bool(warnings), "processes": len(results),
        "batches_sent": sum(r.get("batches") or 0 for r in results) or None,
    }
