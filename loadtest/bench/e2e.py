"""``yujing bench e2e``: the whole service against a bare gRPC echo server, same load.

    yujing bench e2e [--duration 10] [--client-processes 1] [--out FILE] [--quick]

In one run, on this machine:

* the service: ``yujing serve`` as a child process with the embedded Triton server and
  the default models (``--models embedded``), Prometheus metrics on, default batching;
* the echo server: ``python -m yujing.loadtest.bench.e2e echo``, a bare ``grpc.aio`` server on
  uvloop implementing the same ``RiskScorer`` service with the same channel options and
  no interceptor, answering every Turn with a canned TurnRisk captured from the service
  in this run (realistic size: indicators, reasons, model versions), ids copied in;
* the load generator (:mod:`yujing.loadtest.runner`, open loop, latency from the intended send
  time, one client process on uvloop) drives each in unary ``Score``, ``ScoreStream``
  (4 streams) and ``ScoreBatch`` (256 turns a call; a partial batch leaves after 100 ms),
  with a rate ladder (x1.6 a step)
  until the target stops keeping up; the capacity is the highest steady answered rate
  (answers per second of completion in the middle of the step, not counting the
  drain), and each point says whether the generator was the bottleneck;
* a unary knee (highest rate with p99 <= 10 ms) for both, and the service at half its
  unary capacity.

Server, Triton and client share the machine's cores (2 here): every figure is a
whole-machine figure, and the echo ceiling is the ceiling of Python gRPC *with this
client on the same cores*.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("unary", "stream", "batch")
START_RATE = {"unary": 400.0, "stream": 1500.0, "batch": 3000.0}


# --- the echo server -----------------------------------------------------------------------
async def _echo_serve(port: int, canned_path: str | None) -> None:
    import grpc

    from yujing.service.contract import pb, pb_grpc

    canned = pb.TurnRisk()
    if canned_path:
        canned.ParseFromString(Path(canned_path).read_bytes())

    def answer(turn):
        r = pb.TurnRisk()
        r.CopyFrom(canned)
        r.tenant_id, r.session_id, r.turn_id = turn.tenant_id, turn.session_id, turn.turn_id
        return r

    class Echo(pb_grpc.RiskScorerServicer):
        async def Score(self, request, context):
            return answer(request)

        async def ScoreStream(self, request_iterator, context):
            async for turn in request_iterator:
                yield answer(turn)

        async def ScoreBatch(self, request, context):
            return pb.TurnRiskBatch(results=[pb.TurnResult(risk=answer(t)) for t in request.turns])

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4096 * (16384 + 1024)),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_RiskScorerServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo serving on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


class Child:
    """A server child process whose ready line carries its port."""

    def __init__(self, cmd: list[str], pattern: str, timeout_s: float = 240.0, cwd=None):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="yujing-bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd or ROOT)
        deadline = time.monotonic() + timeout_s
        self.port = self.metrics_port = None
        while time.monotonic() < deadline:
            text = Path(self.log.name).read_text()
            m = re.search(pattern, text)
            if m:
                self.port = int(m.group(1))
                mm = re.search(r"metrics on http://[\d.]+:(\d+)", text)
                self.metrics_port = int(mm.group(1)) if mm else None
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{cmd} not ready in {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Service(Child):
    """``yujing serve`` (embedded Triton; the default durability, the turn log on) in a child
    process with a data directory of its own, removed when it stops: benchmark runs' turn
    logs add up (they once filled this machine's disk), and the default directory is the
    user's own service's."""

    def __init__(self, py: str = sys.executable, cwd=None, extra: tuple = ()):
        self.state_dir = tempfile.mkdtemp(prefix="yujing-bench-state-")
        try:
            super().__init__([py, "-m", "yujing.cli", "serve", "--port", "0", "--triton-port", "0",
                              "--data-dir", self.state_dir, *extra], r"yujing serving on [\d.]+:(\d+)", cwd=cwd)
        except BaseException:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            raise

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


# --- load points -----------------------------------------------------------------------------
CLIENT_PROCESSES = 1


def _spec(target: str, mode: str, rate: float, duration: float, run_id: str):
    from yujing.loadtest.runner import RunSpec

    return RunSpec(target=target, mode=mode, rate=rate, duration=duration, sessions=20_000,
                   processes=CLIENT_PROCESSES,
                   batch_size=256, batch_linger_ms=100.0, streams=4, drain_s=5.0, timeout_s=5.0,
                   run_id=run_id, progress=False, seed=7).validate()


def _point(target: str, mode: str, rate: float, duration: float, run_id: str, metrics_url=None) -> dict:
    from yujing.loadtest import report as R
    from yujing.loadtest.runner import run_load

    before = R.scrape(metrics_url) if metrics_url else None
    rep = R.summarize(run_load(_spec(target, mode, rate, duration, run_id)), before,
                      R.scrape(metrics_url) if metrics_url else None)
    # steady rate: answers completed in whole seconds 1 .. duration-1 (no warm-up, no drain)
    secs = [s for s in rep["per_second"] if 1 <= s["second"] < max(2, int(duration))]
    steady = sum(s["answered"] for s in secs) / len(secs) if secs else rep["throughput"]["answered_per_s"]
    err = rep["errors"] / rep["sent"] if rep["sent"] else 1.0
    return {"mode": mode, "target_rate": rate, "steady_answered_per_s": round(steady, 1),
            "answered_per_s": rep["throughput"]["answered_per_s"], "sent": rep["sent"],
            "errors": rep["errors"], "error_rate": round(err, 5), "latency_ms": rep["latency_ms"],
            "generator_bottleneck": rep["generator"]["bottleneck"],
            "generator_warnings": rep["generator"]["warnings"],
            "client_cpu": rep["generator"]["client_cpu_max_fraction"],
            "server_batches": rep.get("server_batches")}


SETTLE_S = 10.0   # after an overloaded step, let the server drain before the next measurement


def capacity(target: str, mode: str, duration: float, tag: str, max_steps: int = 9, step: float = 1.6,
             metrics_url=None) -> dict:
    """Rate ladder until the target stops keeping up; capacity = best steady answered rate."""
    time.sleep(SETTLE_S)
    rate, steps = START_RATE[mode], []
    for k in range(max_steps):
        p = _point(target, mode, rate, duration, f"{tag}-{mode}-{k}", metrics_url)
        steps.append(p)
        print(f"[e2e] {tag} {mode} {rate:,.0f}/s -> {p['steady_answered_per_s']:,.0f}/s p99 "
              f"{p['latency_ms']['p99']} ms err {p['error_rate']:.2%} gen-bottleneck {p['generator_bottleneck']}",
              file=sys.stderr, flush=True)
        kept_up = (p["steady_answered_per_s"] >= 0.9 * rate and p["error_rate"] <= 0.01
                   and (p["latency_ms"]["p99"] or 1e9) < 1000)
        if not kept_up:
            break
        rate *= step
    ok = [s for s in steps if s["error_rate"] <= 0.01] or steps
    best = max(ok, key=lambda s: s["steady_answered_per_s"])
    return {"mode": mode, "capacity_turns_per_s": best["steady_answered_per_s"],
            "at_target_rate": best["target_rate"], "p99_ms_at_capacity": best["latency_ms"]["p99"],
            "generator_bottleneck_at_capacity": best["generator_bottleneck"], "steps": steps}


def knee(target: str, duration: float, tag: str, p99_ms: float = 10.0, start: float = 50.0,
         step: float = 1.4, max_steps: int = 12) -> dict:
    time.sleep(SETTLE_S)
    rate, steps, best = start, [], None
    for k in range(max_steps):
        p = _point(target, "unary", rate, duration, f"{tag}-knee-{k}")
        held = (p["latency_ms"]["p99"] is not None and p["latency_ms"]["p99"] <= p99_ms
                and p["error_rate"] <= 0.01 and p["steady_answered_per_s"] >= 0.9 * rate)
        p["held"] = held
        steps.append(p)
        print(f"[e2e] {tag} knee {rate:,.0f}/s p99 {p['latency_ms']['p99']} ms -> {'held' if held else 'FAILED'}",
              file=sys.stderr, flush=True)
        if not held:
            break
        best = rate
        if p["generator_bottleneck"]:
            break
        rate *= step
    return {"p99_target_ms": p99_ms, "knee_rate": best, "steps": steps}


def _capture_answer(port: int, path: str) -> int:
    import grpc

    from yujing.service.contract import pb, pb_grpc

    stub = pb_grpc.RiskScorerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    ans = None
    for i, text in enumerate(["我真的很生气！这已经是第三次了！", "叫你们经理来跟我说！",
                              "If this isn't fixed today I'm filing a complaint with the regulator."]):
        ans = stub.Score(pb.Turn(tenant_id="acme-bank", session_id="bench-capture-0001", turn_id=str(i),
                                 text=text, speaker=pb.CUSTOMER, agent_id="agent-007"), timeout=30)
    data = ans.SerializeToString()
    Path(path).write_bytes(data)
    return len(data)


def bench_e2e(args) -> dict:
    global CLIENT_PROCESSES
    CLIENT_PROCESSES = int(getattr(args, "client_processes", 1) or 1)
    duration = 3.0 if getattr(args, "quick", False) else float(getattr(args, "duration", 10.0) or 10.0)
    out: dict = {"duration_s_per_point": duration, "cores_shared": os.cpu_count(),
                 "client_processes": CLIENT_PROCESSES,
                 "note": "server(s), Triton and the load generator share the same cores"}
    py = sys.executable
    t = time.perf_counter()
    svc = Service(py, extra=("--metrics-port", "0"))
    out["service_start_s"] = time.perf_counter() - t
    canned = tempfile.NamedTemporaryFile(prefix="yujing-canned-", suffix=".bin", delete=False).name
    try:
        out["canned_turnrisk_bytes"] = _capture_answer(svc.port, canned)
        metrics = f"http://127.0.0.1:{svc.metrics_port}/metrics" if svc.metrics_port else None
        out["service"] = {m: capacity(f"127.0.0.1:{svc.port}", m, duration, "svc", metrics_url=metrics)
                          for m in MODES}
        out["service"]["knee_unary"] = knee(f"127.0.0.1:{svc.port}", duration, "svc")
        half = out["service"]["unary"]["capacity_turns_per_s"] / 2
        time.sleep(SETTLE_S)
        out["service"]["half_capacity_unary"] = _point(f"127.0.0.1:{svc.port}", "unary", half,
                                                       2 * duration, "svc-half", metrics)
    finally:
        svc.stop()
    echo = Child([py, "-m", "yujing.loadtest.bench.e2e", "echo", "--port", "0", "--canned", canned],
                 r"echo serving on [\d.]+:(\d+)")
    try:
        out["echo"] = {m: capacity(f"127.0.0.1:{echo.port}", m, duration, "echo") for m in MODES}
        out["echo"]["knee_unary"] = knee(f"127.0.0.1:{echo.port}", duration, "echo")
    finally:
        echo.stop()
    out["ratios_service_over_echo"] = {
        m: out["service"][m]["capacity_turns_per_s"] / out["echo"][m]["capacity_turns_per_s"] for m in MODES}
    sk, ek = out["service"]["knee_unary"]["knee_rate"], out["echo"]["knee_unary"]["knee_rate"]
    out["ratios_service_over_echo"]["knee_unary"] = (sk / ek) if sk and ek else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m yujing.loadtest.bench.e2e")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo", help="run the bare echo RiskScorer server")
    e.add_argument("--port", type=int, default=0)
    e.add_argument("--canned", default=None, help="a serialized TurnRisk to answer with")
    a = ap.parse_args(argv)
    import uvloop

    uvloop.run(_echo_serve(a.port, a.canned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
