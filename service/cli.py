"""The ``yujing`` command.

    yujing serve [--host H] [--port P] [--models embedded|external|in-process] ...
    yujing models train | eval | deploy ...
    yujing loadtest ...        (the SRE load generator)
    yujing bench ...           (the benchmark suites)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.config import Config
from service.errors import ConfigError


def _add_serve(sub) -> None:
    d = Config()
    p = sub.add_parser("serve", help="run the gRPC scoring service",
                       description="Run the RiskScorer gRPC service. By default it starts an embedded "
                                   "Triton server on model_repo/ and scores with it.")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port (default %(default)s; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--models", choices=("embedded", "external", "in-process"), default=None,
                   help="where the models run: an embedded Triton server (default), an external "
                        "one (--triton-url), or in-process only")
    p.add_argument("--triton-url", default=None, help="host:port of an external Triton (implies --models external)")
    p.add_argument("--triton-port", type=int, default=d.triton_port,
                   help="gRPC port of the embedded Triton (default %(default)s, what `yujing models deploy` "
                        "talks to; 0 = any free port)")
    p.add_argument("--model-repo", type=Path, default=d.model_repo, help="Triton model repository")
    p.add_argument("--sentiment-model", default=d.sentiment_model)
    p.add_argument("--intent-model", default=d.intent_model,
                   help="intent model name (default %(default)s; e.g. intent_banking77)")
    p.add_argument("--triton-timeout-ms", type=float, default=d.triton_timeout_ms,
                   help="deadline of one Triton call before the in-process fallback answers")
    p.add_argument("--policy", type=Path, default=None, help="risk policy TOML (default: the packaged one)")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu"), default=d.backend, help="kernel backend")
    p.add_argument("--capacity", type=int, default=d.capacity, help="session table slots (default %(default)s)")
    p.add_argument("--agent-capacity", type=int, default=d.agent_capacity)
    p.add_argument("--ttl-s", type=float, default=d.ttl_s, help="idle session TTL (default %(default)s s)")
    p.add_argument("--evict-min-idle-s", type=float, default=d.evict_min_idle_s)
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="turns per batch (default %(default)s)")
    p.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms, help="batch gathering delay")
    p.add_argument("--max-pending-turns", type=int, default=d.max_pending_turns,
                   help="admission control: refuse unary/batch calls (RESOURCE_EXHAUSTED) while this many "
                        "turns wait to be answered (default %(default)s)")
    p.add_argument("--max-pending-rpcs", type=int, default=d.max_pending_rpcs,
                   help="calls gRPC core may queue before the service picks them up (default %(default)s)")
    p.add_argument("--max-text-bytes", type=int, default=d.max_text_bytes)
    p.add_argument("--max-batch-turns", type=int, default=d.max_batch_turns)
    p.add_argument("--idempotency-window", type=int, default=d.idempotency_window)
    p.add_argument("--grace-s", type=float, default=d.grace_s, help="shutdown grace period")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from service.server import serve

    models = args.models or ("external" if args.triton_url else "embedded")
    cfg = Config(host=args.host, port=args.port, metrics_port=args.metrics_port, models=models,
                 triton_url=args.triton_url, triton_port=args.triton_port, model_repo=args.model_repo,
                 sentiment_model=args.sentiment_model, intent_model=args.intent_model,
                 triton_timeout_ms=args.triton_timeout_ms, policy=args.policy, backend=args.backend,
                 capacity=args.capacity, agent_capacity=args.agent_capacity, ttl_s=args.ttl_s,
                 evict_min_idle_s=args.evict_min_idle_s, max_batch=args.max_batch,
                 max_delay_ms=args.max_delay_ms, max_text_bytes=args.max_text_bytes,
                 max_pending_turns=args.max_pending_turns, max_pending_rpcs=args.max_pending_rpcs,
                 max_batch_turns=args.max_batch_turns, idempotency_window=args.idempotency_window,
                 grace_s=args.grace_s)
    serve(cfg.validate())
    return 0


def _add_optional(sub, module: str, func: str) -> None:
    """Subcommands contributed by other modules (models, loadtest, bench)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    getattr(mod, func)(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yujing", description="Real-time risk scoring for contact centers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    models = sub.add_parser("models", help="train, evaluate and deploy the text models")
    msub = models.add_subparsers(dest="models_command", required=True)
    _add_optional(msub, "service.models.cli", "add_subcommands")
    _add_optional(msub, "service.triton.deploy", "add_deploy_subcommand")
    _add_optional(sub, "loadtest.cli", "add_subcommand")
    _add_optional(sub, "service.bench", "add_subcommand")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"yujing: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
