"""Customer requests no default model trained on, each played as a one-turn conversation:
how many are called negative and how many reach BLUE (score >= 25) on their own.

The 40 hand-written plain questions (``training/indomain/plain_questions.txt``) are what the
issue's target counts; this is the same check on thousands of real requests, to see whether
that figure holds beyond 40 texts:

- ``bitext``: Bitext's test rows that are neither complaints nor marked as written in anger
  (``data.bitext_as("sentiment")`` labels them neutral);
- ``banking77``: BANKING77's official test set (customer banking requests; some are
  complaints, so not all of it is calm);
- ``crosswoz``: CrossWOZ's test user turns (polite Chinese task requests).

    NUMBA_NUM_THREADS=1 python -m yujing.training.indomain.calm_requests [--json out.json]

In-process models and the shipped policy (or ``--policy``). About 2 minutes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from yujing.training import conversations as C
from yujing.training.dialogues import Dialogue, DialogueTurn
from yujing.training.indomain import data as D

BLUE = 25.0


def request_sets() -> dict[str, list[str]]:
    return {"bitext": [x.text for x in D.bitext_as("sentiment")["test"] if x.label == "neutral"],
            "banking77": [x.text for x in D.banking77()["test"]],
            "crosswoz": [x.text for x in D.crosswoz()["test"]]}


def one_turn_dialogues(name: str, texts: list[str]) -> list[Dialogue]:
    return [Dialogue(id=f"{name}-{i}", source=name, language="", outcome="satisfied", split="test",
                     turns=[DialogueTurn("customer", t, "neutral")]) for i, t in enumerate(texts)]


def figures(played: list[C.PlayedDialogue], texts: list[str], top: int = 5) -> dict:
    score = np.array([d.max_score for d in played])
    negative = np.array([d.turns[0].sentiment == "negative" for d in played])
    order = np.argsort(-score)[:top]
    return {"requests": len(played), "negative": round(float(negative.mean()), 4),
            "at_blue_or_above": round(float((score >= BLUE).mean()), 4), "p99_score": round(float(np.percentile(score, 99)), 1),
            "highest": [(round(float(score[i]), 1), texts[i]) for i in order]}


def main(argv: list[str] | None = None) -> int:
    from yujing.service.background import ServiceThread
    from yujing.service.config import Config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    out = {}
    cfg = Config(port=0, models="in-process", policy=a.policy, capacity=65536, max_batch_turns=4096)
    with ServiceThread(cfg.validate()) as svc:
        for name, texts in request_sets().items():
            played = C.play(one_turn_dialogues(name, texts), svc.stub(), run_id=f"requests-{name}")
            out[name] = f = figures(played, texts)
            print(f"{name:<10} {f['requests']:>5} requests  negative {f['negative']:.1%}  "
                  f"at BLUE or above {f['at_blue_or_above']:.2%}  p99 score {f['p99_score']}")
            for s, t in f["highest"]:
                print(f"    {s:5.1f}  {t[:80]}")
    if a.json:
        a.json.write_text(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
