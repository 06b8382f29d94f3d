"""The ``yujing`` command.

    yujing serve [--host H] [--port P] [--models embedded|external|in-process] ...
    yujing score [--target H:P] "text" ... | --file conversation.jsonl
    yujing alerts [--target H:P] [--queue Q] ...  (follow the alert stream; --ack ID --by NAME)
    yujing tokens add|list|revoke|quota --file F ... (the bearer tokens of --tokens F)
    yujing models train | eval | deploy ...
    yujing eval conversations ...  (risk measured on whole dialogues)
    yujing policy fit ...          (a candidate policy fitted to dialogue outcomes)
    yujing loadtest ...        (the SRE load generator)
    yujing bench ...           (the benchmark suites)
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import yujing
from yujing.service.config import Config
from yujing.service.errors import ConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One option per :class:`Config` field, with the field's help text and default."""
    for f in dataclasses.fields(Config):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        default = meta["cli_default"]() if meta.get("cli_default") else f.default
        kind = meta.get("type") or type(default)
        help_text = meta.get("help", "")
        if kind is bool:        # a switch: --insecure-no-auth, --metrics-tls
            p.add_argument(_flag(f.name), dest=f.name, action="store_true", default=default, help=help_text)
            continue
        if default is not None:
            help_text += " (default: %(default)s)"
        p.add_argument(_flag(f.name), dest=f.name, type=kind, default=None if f.name == "models" else default,
                       choices=meta.get("choices"), help=help_text,
                       metavar=None if meta.get("choices") else f.name.upper())


def config_from_args(args: argparse.Namespace) -> Config:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.metadata.get("flag", True)}
    if values["models"] is None:
        values["models"] = "external" if values["triton_url"] else "embedded"
    return Config(**values)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC scoring service",
                       description="Run the RiskScorer gRPC service. By default it starts an embedded "
                                   "Triton server on the packaged model repository and scores with it.")
    add_config_arguments(p)
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from yujing.service.server import serve

    serve(config_from_args(args).validate())
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
    parser.add_argument("--version", action="version", version=f"yujing {yujing.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    models = sub.add_parser("models", help="train, evaluate and deploy the text models")
    msub = models.add_subparsers(dest="models_command", required=True)
    _add_optional(msub, "yujing.training.cli", "add_subcommands")
    _add_optional(msub, "yujing.service.triton.deploy", "add_deploy_subcommand")
    ev = sub.add_parser("eval", help="measure risk on whole conversations (the train extra)")
    _add_optional(ev.add_subparsers(dest="eval_command", required=True), "yujing.training.conversations",
                  "add_subcommand")
    pol = sub.add_parser("policy", help="fit the risk policy to dialogue outcomes (the train extra)")
    _add_optional(pol.add_subparsers(dest="policy_command", required=True), "yujing.training.policy_fit",
                  "add_subcommand")
    _add_optional(sub, "yujing.client", "add_subcommand")
    _add_optional(sub, "yujing.alerts", "add_subcommand")
    _add_optional(sub, "yujing.tokens", "add_subcommand")
    _add_optional(sub, "yujing.loadtest.cli", "add_subcommand")
    _add_optional(sub, "yujing.loadtest.bench", "add_subcommand")
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
