"""Cross-fitted figures on whole conversations: every JDDC-USS (and SGD / MultiWOZ) dialogue
scored by models that never saw it.

The shipped split holds one dialogue in five out as ``test`` (bucket 0 of
:func:`yujing.training.indomain.data.bucket`). For JDDC that is 68 dialogues, 5 of them
rated dissatisfied: an AUC over 5 positives moves by about 0.1 with a single dialogue.
Cross-fitting uses all of them: for each fold k the four default models are retrained
with bucket k as the test side and bucket k + 1 as the calibration (dev) side
(``train --fold k``), and fold k's test dialogues are played through an in-process service
with those models and the shipped policy (``yujing eval conversations --fold k``). The
played dialogues of the five folds are pooled and measured once (the AUC with its bootstrap
interval, :func:`yujing.training.conversations.auc_interval`).

    NUMBA_NUM_THREADS=1 python -m yujing.training.indomain.crossfit --out /tmp/crossfit \\
        [--folds 0,1,2,3,4] [--sets jddc sgd mwoz] [--policy POLICY.toml] [--json pooled.json]

Fold 0 is the shipped split: retrained, its sentiment model is the shipped one (v4, trained
this way), emotion and intent differ in the solver's last digits, and its JDDC figures are
the shipped test side's. The policy is the shipped one in every
fold; its one weight chosen on dev dialogues (``dissatisfaction``) saw bucket 1, which is
fold 1's test side. STC-3 has its own split (``int(id) % 10``) and is not cross-fitted.
About 35 minutes for the five folds on this 2-core machine, most of it the sentiment model's
cross-fitted calibration (three more fits per fold; 11 minutes without it). A fold's models
already in ``--out`` are not trained again, so a second run only replays.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


from yujing.training import conversations as C

MODELS = "sentiment,emotion,intent,dissatisfaction"


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def train_fold(k: int, out: Path) -> Path:
    repo = out / f"fold{k}"
    if not all((repo / m / "labels.txt").exists() for m in MODELS.split(",")):
        _run([sys.executable, "-m", "yujing.training.indomain.train", "--fold", str(k), "--out", str(repo),
              "--only", MODELS, "--no-measure"], out / f"fold{k}.train.log")
    return repo


def play_fold(k: int, repo: Path, out: Path, sets: list[str], policy: Path | None) -> Path:
    js = out / f"fold{k}.played.json"
    cmd = [sys.executable, "-m", "yujing.cli", "eval", "conversations", "--in-process", "--model-repo", str(repo),
           "--fold", str(k), "--split", "test", "--sets", *sets, "--keep-turns", "--json", str(js)]
    if policy:
        cmd += ["--policy", str(policy)]
    _run(cmd, out / f"fold{k}.play.log")
    return js


def load_played(path: Path) -> list[C.PlayedDialogue]:
    out = []
    for d in json.loads(path.read_text())["dialogues"]:
        turns = [C.PlayedTurn(**{"gold": None, **t}) for t in d.pop("turns")]
        out.append(C.PlayedDialogue(**d, turns=turns))
    return out


def pooled_report(by_fold: dict[int, list[C.PlayedDialogue]]) -> dict:
    rep = C.report([d for ds in by_fold.values() for d in ds])    # with the AUC's bootstrap interval
    rep["per_fold"] = {k: {name: v["dialogue"].get("auc_max_risk_dissatisfied")
                           for name, v in C.report(ds).items() if name.startswith("set:")}
                       for k, ds in sorted(by_fold.items())}
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="models, logs and played dialogues go here")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--sets", nargs="+", default=["jddc", "sgd", "mwoz"])
    ap.add_argument("--policy", type=Path, default=None, help="the risk policy TOML (default: the shipped one)")
    ap.add_argument("--replay-only", action="store_true", help="keep the played dialogues already in --out")
    ap.add_argument("--json", type=Path, default=None, help="the pooled figures (default: OUT/pooled.json)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    by_fold = {}
    for k in (int(x) for x in a.folds.split(",")):
        js = a.out / f"fold{k}.played.json"
        if not (a.replay_only and js.exists()):
            js = play_fold(k, train_fold(k, a.out), a.out, a.sets, a.policy)
        by_fold[k] = load_played(js)
        print(f"fold {k}: {len(by_fold[k])} dialogues", flush=True)
    rep = pooled_report(by_fold)
    for line in C.summary_lines({k: v for k, v in rep.items() if k != "per_fold"}):
        print(line)
    print("per fold AUC:", json.dumps(rep["per_fold"]))
    (a.json or a.out / "pooled.json").write_text(json.dumps(
        {"settings": {"folds": a.folds, "sets": a.sets, "policy": str(a.policy or "default")}, "report": rep},
        ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
