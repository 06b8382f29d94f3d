"""``yujing loadtest``: run the open-loop load generator and write its report.

    yujing loadtest --target 127.0.0.1:50051 --mode unary|stream|batch --rate R --duration S
                    [--sessions N] [--processes P] [--batch-size B] [--streams K]
                    [--turns-file F] [--out DIR] [--metrics-url URL] [--p99-target-ms X]
                    [--knee --p99-target-ms X [--knee-step 1.5] [--knee-max-steps 12]]
                    [--token T | $YUJING_TOKEN] [--tls-ca ca.pem [--tls-cert c.pem --tls-key c.key]]

Writes DIR/report.json and DIR/report.png (knee: DIR/knee.json, DIR/knee.png and one
report per step). The PNG: the run's settings and commit in the title, throughput per
whole second against the target rate, latency percentiles per second and the latency CDF
(with the --p99-target-ms line), errors by gRPC status, server batch sizes (--metrics-url)
and whether the generator kept up. Exit status 0; 3 when the generator was the bottleneck
(the numbers then describe the client, not the service; report.json: generator_kept_up).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from yujing.loadtest import report as R
from yujing.loadtest.runner import RunSpec, run_load
from yujing.service.security.client import token_from

KNEE_P99_TARGET_MS = 50.0  # --knee without --p99-target-ms


def add_subcommand(subparsers) -> None:
    d = RunSpec()
    p = subparsers.add_parser("loadtest", help="open-loop load generator (latency from intended send time)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=d.target, help="host:port of the service (default %(default)s)")
    p.add_argument("--mode", choices=("unary", "stream", "batch"), default=d.mode)
    p.add_argument("--rate", type=float, default=d.rate, help="turns per second, all processes (default %(default)s)")
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of sending (default %(default)s)")
    p.add_argument("--sessions", type=int, default=d.sessions, help="distinct session ids (default %(default)s)")
    p.add_argument("--concurrent", type=int, default=None, help="conversations live at once (default min(sessions, 2000))")
    p.add_argument("--processes", type=int, default=d.processes, help="client processes (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="turns per ScoreBatch (batch mode)")
    p.add_argument("--batch-linger-ms", type=float, default=d.batch_linger_ms,
                   help="a partial batch leaves after this long (default %(default)s ms)")
    p.add_argument("--streams", type=int, default=d.streams, help="ScoreStream calls (stream mode)")
    p.add_argument("--turns-file", default=None, help="CSV or Parquet of turns (columns: Turn field names)")
    p.add_argument("--arrival", choices=("poisson", "constant"), default=d.arrival)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--run-id", default=None, help="session id prefix (default: unique per run)")
    p.add_argument("--max-turns", type=int, default=None, help="stop after this many turns")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="deadline of one RPC")
    p.add_argument("--drain-s", type=float, default=d.drain_s, help="wait for answers after the last send")
    p.add_argument("--max-lag-ms", type=float, default=d.max_lag_ms,
                   help="p99 send lag above this flags the generator as the bottleneck")
    p.add_argument("--metrics-url", default=None, help="the service's Prometheus /metrics (server batch sizes)")
    p.add_argument("--out", type=Path, default=Path("loadtest-out"), help="report directory")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--knee", action="store_true", help="step the rate up until p99 passes --p99-target-ms")
    p.add_argument("--p99-target-ms", type=float, default=None,
                   help="p99 latency target: a line in the plot, p99_target_met in report.json; "
                        f"the knee's pass mark (default {KNEE_P99_TARGET_MS:g} with --knee)")
    p.add_argument("--knee-step", type=float, default=1.5, help="rate multiplier per step")
    p.add_argument("--knee-max-steps", type=int, default=12)
    p.add_argument("--knee-max-error-rate", type=float, default=0.01,
                   help="a step with more errors than this share fails too")
    from yujing.service.security.client import add_client_arguments

    add_client_arguments(p)
    p.set_defaults(func=main)


def spec_from_args(a) -> RunSpec:
    return RunSpec(target=a.target, mode=a.mode, rate=a.rate, duration=a.duration, sessions=a.sessions,
                   concurrent=a.concurrent, processes=a.processes, batch_size=a.batch_size,
                   batch_linger_ms=a.batch_linger_ms, streams=a.streams, turns_file=a.turns_file, seed=a.seed,
                   arrival=a.arrival, max_turns=a.max_turns, timeout_s=a.timeout_s, drain_s=a.drain_s,
                   max_lag_ms=a.max_lag_ms, run_id=a.run_id, progress=not a.quiet,
                   token=token_from(a.token), tls_ca=a.tls_ca, tls_cert=a.tls_cert, tls_key=a.tls_key,
                   tls_server_name=a.tls_server_name).validate()


def _scrape(url):
    if not url:
        return None
    try:
        return R.scrape(url)
    except Exception as e:  # noqa: BLE001 - a report without server batches beats no report
        print(f"[loadtest] cannot scrape {url}: {e}", file=sys.stderr)
        return None


def run_once(spec: RunSpec, out: Path, metrics_url: str | None = None, name: str = "report",
             p99_target_ms: float | None = None) -> dict:
    before = _scrape(metrics_url)
    raw = run_load(spec)
    after = _scrape(metrics_url)
    rep = R.summarize(raw, before, after, p99_target_ms=p99_target_ms, metrics_url=metrics_url)
    out.mkdir(parents=True, exist_ok=True)
    rep["json"] = str(R.write_json(rep, out / f"{name}.json"))
    rep["png"] = str(R.plot_run(rep, out / f"{name}.png"))
    R.write_json(rep, out / f"{name}.json")
    return rep


def run_knee(spec: RunSpec, out: Path, p99_target_ms: float, step: float = 1.5, max_steps: int = 12,
             max_error_rate: float = 0.01, metrics_url: str | None = None) -> dict:
    """Step the rate up from ``spec.rate`` until p99 > target (or errors, or a client limit)."""
    steps, best, reason = [], None, "max steps reached"
    rate = spec.rate
    base_id = spec.run_id or f"knee{spec.seed}-{int(time.time() * 1000) % 10**9:09d}"
    for k in range(max_steps):
        s = RunSpec(**{**spec.__dict__, "rate": rate, "run_id": f"{base_id}-k{k}"})
        rep = run_once(s, out, metrics_url, name=f"step{k:02d}_{rate:g}", p99_target_ms=p99_target_ms)
        p99 = rep["latency_ms"]["p99"]
        err_rate = rep["errors"] / rep["sent"] if rep["sent"] else 1.0
        held = p99 is not None and p99 <= p99_target_ms and err_rate <= max_error_rate
        steps.append({"step": k, "target_rate": rate, "answered_per_s": rep["throughput"]["answered_per_s"],
                      "latency_ms": rep["latency_ms"], "errors": rep["errors"], "error_rate": round(err_rate, 5),
                      "held": held, "generator_bottleneck": rep["generator"]["bottleneck"],
                      "report": rep["json"]})
        print(f"[knee] step {k}: {rate:g}/s p99 {p99} ms errors {err_rate:.2%} -> "
              f"{'held' if held else 'FAILED'}", file=sys.stderr)
        if not held:
            reason = f"p99 {p99} ms > {p99_target_ms:g} ms" if (p99 is None or p99 > p99_target_ms) \
                else f"error rate {err_rate:.2%} > {max_error_rate:.2%}"
            break
        best = rate
        if rep["generator"]["bottleneck"]:
            reason = "the generator became the bottleneck before the service did: add --processes"
            break
        rate = rate * step
    knee = {"mode": spec.mode, "p99_target_ms": p99_target_ms, "knee_rate": best, "stopped_because": reason,
            "steps": steps}
    R.write_json(knee, out / "knee.json")
    knee["png"] = str(R.plot_knee(knee, out / "knee.png"))
    R.write_json(knee, out / "knee.json")
    return knee


def main(args) -> int:
    spec = spec_from_args(args)
    if args.knee:
        target = KNEE_P99_TARGET_MS if args.p99_target_ms is None else args.p99_target_ms
        knee = run_knee(spec, args.out, target, args.knee_step, args.knee_max_steps,
                        args.knee_max_error_rate, args.metrics_url)
        best = knee["knee_rate"]
        print(f"knee: highest rate holding p99 <= {target:g} ms: "
              f"{'none (the first step failed)' if best is None else f'{best:g} turns/s'} "
              f"({knee['stopped_because']}); {args.out / 'knee.json'}")
        return 0
    rep = run_once(spec, args.out, args.metrics_url, p99_target_ms=args.p99_target_ms)
    print(R.format_text(rep))
    print(f"report: {rep['json']}  plot: {rep['png']}")
    return 3 if rep["generator"]["bottleneck"] else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="loadtest")
    add_subcommand(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
