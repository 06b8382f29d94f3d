"""``yujing eval conversations``: risk measured on whole conversations, the task users have.

Each dialogue (:mod:`yujing.training.dialogues`) is played through a running service
over gRPC, turn by turn in order (one ``ScoreBatch`` per dialogue: applied in order, one
answer per turn), as one session with a calm, steady clock. From the answers:

per turn (customer turns the set labels): the confusion matrix of the answer's sentiment
label against the gold label, 3-class macro-F1, and the share of gold-neutral turns
called negative;

per dialogue (sets with an outcome): the AUC of the dialogue's highest risk score for a
dissatisfied outcome (against every other outcome) with a 95 % bootstrap interval
(:func:`auc_interval`), the share of satisfied dialogues that
reach YELLOW or RED (false alarms), the share of dissatisfied ones that do (detection),
and the lead time: customer turns from the first YELLOW to the end of the dialogue.

``--in-process`` starts a service in this process (in-process models, the given policy)
instead of talking to ``--target``. ``--keep-turns`` stores every answer's indicators, which
is what ``yujing policy fit`` fits the policy on.

    yujing eval conversations --target 127.0.0.1:50051 --sets jddc stc3 sgd mwoz --split test \\
        --json conv.json --png conv.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from yujing.service.contract import pb
from yujing.training import evaluate
from yujing.training.dialogues import AGENT_DELAY_S, CUSTOMER_GAP_S, Dialogue

SENTIMENTS = ("negative", "neutral", "positive")
LEVEL_NAMES = {v: pb.Level.Name(v) for v in pb.Level.values() if v != pb.LEVEL_UNSPECIFIED}
YELLOW = pb.YELLOW


@dataclass
class PlayedTurn:
    speaker: str
    gold: str | None
    sentiment: str
    score: float
    level: int
    intent: str = ""
    emotion: str = ""
    indicators: dict[str, float] | None = None


@dataclass
class PlayedDialogue:
    id: str
    source: str
    language: str
    outcome: str | None
    turns: list[PlayedTurn] = field(default_factory=list)

    @property
    def max_score(self) -> float:
        return max((t.score for t in self.turns), default=0.0)

    @property
    def max_level(self) -> int:
        return max((t.level for t in self.turns), default=1)

    def first_alarm_lead(self) -> int | None:
        """Customer turns from the first YELLOW-or-above answer to the end (inclusive)."""
        cust = [t for t in self.turns if t.speaker == "customer"]
        for k, t in enumerate(cust):
            if t.level >= YELLOW:
                return len(cust) - k
        return None


# -- playing -----------------------------------------------------------------------------
def _turn_messages(pb, d: Dialogue, session: str, tenant: str, t0_ms: int) -> list:
    msgs, t_ms = [], t0_ms
    speakers = {"customer": pb.CUSTOMER, "agent": pb.AGENT, "bot": pb.BOT}
    for k, turn in enumerate(d.turns):
        if turn.speaker == "customer":
            t_ms += int(CUSTOMER_GAP_S * 1000) if k else 0
        else:
            t_ms += int(AGENT_DELAY_S * 1000)
        msgs.append(pb.Turn(tenant_id=tenant, session_id=session, turn_id=str(k), timestamp_ms=t_ms,
                            speaker=speakers[turn.speaker], channel=pb.CHAT, text=turn.text[:4000],
                            agent_id=f"{d.source}-agent" if turn.speaker == "agent" else ""))
    return msgs


def play(dialogues: Iterable[Dialogue], stub, tenant: str = "eval", keep_indicators: bool = False,
         run_id: str | None = None) -> list[PlayedDialogue]:
    """Every dialogue as its own session, its turns in one ScoreBatch, in order."""
    run_id = run_id or f"{int(time.time() * 1000):x}"
    out = []
    for d in dialogues:
        if not d.turns:
            continue
        n_ms = int((CUSTOMER_GAP_S + AGENT_DELAY_S) * 1000) * len(d.turns)
        t0 = int(time.time() * 1000) - n_ms - 60_000   # the conversation ends a minute ago
        msgs = _turn_messages(pb, d, f"{run_id}-{d.source}-{d.id}", tenant, t0)
        res = stub.ScoreBatch(pb.TurnBatch(turns=msgs), timeout=120)
        pd = PlayedDialogue(d.id, d.source, d.language, d.outcome)
        for turn, r in zip(d.turns, res.results):
            if r.WhichOneof("result") != "risk":
                raise RuntimeError(f"dialogue {d.id}: turn refused: {r.error.message}")
            risk = r.risk
            pd.turns.append(PlayedTurn(
                speaker=turn.speaker, gold=turn.gold, sentiment=risk.sentiment.label, score=risk.risk_score,
                level=risk.level, intent=risk.intent.label, emotion=getattr(getattr(risk, "emotion", None), "label", ""),
                indicators=dict(risk.indicators) if keep_indicators else None))
        out.append(pd)
    return out


# -- metrics -----------------------------------------------------------------------------
def confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] = SENTIMENTS) -> np.ndarray:
    """:func:`yujing.training.evaluate.confusion` over label names; pairs with a label
    outside ``labels`` (e.g. no sentiment) are left out."""
    idx = {l: i for i, l in enumerate(labels)}
    pairs = [(idx[g], idx[p]) for g, p in zip(gold, pred) if g in idx and p in idx]
    g, p = (np.array(x, np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
    return evaluate.confusion(g, p, len(labels))


def macro_f1(cm: np.ndarray) -> float:
    """Over all classes, a class never predicted nor present counting 0."""
    return evaluate.macro_f1(cm, present_only=False)


def auc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float | None:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney)."""
    if not len(scores_pos) or not len(scores_neg):
        return None
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auc_interval(scores_pos: Sequence[float], scores_neg: Sequence[float], n: int = 2000,
                 seed: int = 0) -> tuple[float, float] | None:
    """A 95 % bootstrap interval for :func:`auc`: the positives and the negatives resampled
    apart (each side keeps its size), the 2.5th and 97.5th percentiles. With 5 positives it
    is about 0.5 wide: a figure to read with it."""
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    if len(pos) < 2 or len(neg) < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = [auc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))])
            for _ in range(n)]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return round(float(lo), 3), round(float(hi), 3)


def roc_points(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> list[tuple[float, float]]:
    thresholds = sorted(set(scores_pos) | set(scores_neg), reverse=True)
    pts = [(0.0, 0.0)]
    for th in thresholds:
        tpr = float(np.mean(np.asarray(scores_pos) >= th)) if len(scores_pos) else 0.0
        fpr = float(np.mean(np.asarray(scores_neg) >= th)) if len(scores_neg) else 0.0
        pts.append((fpr, tpr))
    return pts


def turn_metrics(played: Sequence[PlayedDialogue]) -> dict:
    pairs = [(t.gold, t.sentiment) for d in played for t in d.turns if t.speaker == "customer" and t.gold]
    if not pairs:
        return {"turns": 0}
    cm = confusion([g for g, _ in pairs], [p for _, p in pairs])
    neutral = cm[1].sum()
    return {"turns": int(cm.sum()), "labels": list(SENTIMENTS), "confusion": cm.tolist(),
            "macro_f1": round(macro_f1(cm), 4),
            "neutral_called_negative": round(float(cm[1, 0] / neutral), 4) if neutral else None,
            "accuracy": round(float(np.trace(cm) / cm.sum()), 4)}


def dialogue_metrics(played: Sequence[PlayedDialogue]) -> dict:
    rated = [d for d in played if d.outcome]
    if not rated:
        return {"dialogues": 0}
    pos = [d for d in rated if d.outcome == "dissatisfied"]
    neg = [d for d in rated if d.outcome != "dissatisfied"]
    sat = [d for d in rated if d.outcome == "satisfied"]
    leads = [d.first_alarm_lead() for d in pos]
    leads = [x for x in leads if x is not None]
    a = auc([d.max_score for d in pos], [d.max_score for d in neg])
    return {
        "dialogues": len(rated), "dissatisfied": len(pos), "satisfied": len(sat),
        "auc_max_risk_dissatisfied": round(a, 4) if a is not None else None,
        "auc_95_interval": auc_interval([d.max_score for d in pos], [d.max_score for d in neg]),
        "satisfied_reaching_yellow": round(float(np.mean([d.max_level >= YELLOW for d in sat])), 4) if sat else None,
        "dissatisfied_reaching_yellow": round(float(np.mean([d.max_level >= YELLOW for d in pos])), 4) if pos else None,
        "lead_turns_median": float(np.median(leads)) if leads else None,
        "max_level_counts": {LEVEL_NAMES[k]: int(sum(d.max_level == k for d in rated)) for k in LEVEL_NAMES},
        "roc": roc_points([d.max_score for d in pos], [d.max_score for d in neg]),
    }


def report(played: Sequence[PlayedDialogue]) -> dict:
    """Figures per set and per language, and for everything together."""
    groups: dict[str, list[PlayedDialogue]] = {}
    for d in played:
        groups.setdefault(f"set:{d.source}", []).append(d)
        groups.setdefault(f"language:{d.language}", []).append(d)
    groups["all"] = list(played)
    return {name: {"turn": turn_metrics(ds), "dialogue": dialogue_metrics(ds)} for name, ds in sorted(groups.items())}


# -- output ------------------------------------------------------------------------------
def to_json(played: Sequence[PlayedDialogue], rep: dict, settings: dict) -> dict:
    return {"settings": settings, "report": rep, "dialogues": [
        {"id": d.id, "source": d.source, "language": d.language, "outcome": d.outcome,
         "turns": [{k: v for k, v in vars(t).items() if v is not None} for t in d.turns]} for d in played]}


def plot(played: Sequence[PlayedDialogue], rep: dict, path: str | Path, thresholds: dict, n_examples: int = 6) -> None:
    """``thresholds``: the policy's ``[levels]`` (blue, yellow, red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_roc) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.7, 1]})
    picks = [d for d in played if d.outcome == "dissatisfied"][: n_examples // 2]
    picks += [d for d in played if d.outcome == "satisfied"][: n_examples - len(picks)]
    for d in picks:
        ys = [t.score for t in d.turns if t.speaker == "customer"]
        ax_r.plot(range(1, len(ys) + 1), ys, marker=".", color="tab:red" if d.outcome == "dissatisfied" else "tab:blue",
                  alpha=0.8, label=f"{d.source} {d.id[:14]} ({d.outcome})")
    for name in ("blue", "yellow", "red"):
        th = thresholds[name]
        ax_r.axhline(th, color="grey", lw=0.8, ls="--")
        ax_r.text(0.5, th + 1, name.upper(), color="grey", fontsize=8)
    ax_r.set(xlabel="customer turn", ylabel="risk score", ylim=(0, 100), title="risk over the conversation")
    ax_r.legend(fontsize=7, loc="upper left")
    for name, g in rep.items():
        roc = g["dialogue"].get("roc")
        if name.startswith("set:") and roc and g["dialogue"].get("auc_max_risk_dissatisfied") is not None:
            xs, ys = zip(*roc)
            ax_roc.plot(xs, ys, label=f"{name[4:]} AUC {g['dialogue']['auc_max_risk_dissatisfied']:.2f}")
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax_roc.set(xlabel="false alarms (not dissatisfied)", ylabel="detected (dissatisfied)",
               title="highest risk of a dialogue vs a dissatisfied outcome", xlim=(0, 1), ylim=(0, 1))
    ax_roc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_lines(rep: dict) -> list[str]:
    lines = []
    for name, g in rep.items():
        t, d = g["turn"], g["dialogue"]
        parts = [f"{name:<14}"]
        if t.get("turns"):
            parts.append(f"turns {t['turns']:>5}  macro-F1 {t['macro_f1']:.3f}  neutral->negative "
                         f"{t['neutral_called_negative'] if t['neutral_called_negative'] is not None else float('nan'):.1%}")
        if d.get("dialogues"):
            def pct(x):
                return "n/a" if x is None else f"{x:.0%}"
            ci = d.get("auc_95_interval")
            parts.append(f"dialogues {d['dialogues']:>4}  AUC {d['auc_max_risk_dissatisfied'] or float('nan'):.3f}"
                         + (f" [{ci[0]:.2f}-{ci[1]:.2f}, {d['dissatisfied']} dissatisfied]" if ci else "")
                         + f"  satisfied>=YELLOW {pct(d['satisfied_reaching_yellow'])}  "
                         f"dissatisfied>=YELLOW {pct(d['dissatisfied_reaching_yellow'])}")
        lines.append("  ".join(parts))
    return lines


# -- command -----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import grpc

    from yujing.service.contract import pb_grpc
    from yujing.training import dialogues as D
    from yujing.training.indomain import data as split_rule

    split_rule.set_fold(args.fold)
    ds = D.load(args.sets, split=None if args.split == "all" else args.split, root=args.data_dir)
    if args.limit:
        ds = ds[: args.limit]
    settings = {"sets": args.sets, "split": args.split, "dialogues": len(ds), "policy": str(args.policy or "default"),
                "target": "in-process" if args.in_process else args.target, "fold": args.fold}
    if args.in_process:
        from yujing.service.background import ServiceThread
        from yujing.service.config import Config

        cfg = Config(port=0, models="in-process", policy=args.policy, capacity=max(4096, 2 * len(ds)),
                     max_batch_turns=4096, **({"model_repo": args.model_repo} if args.model_repo else {}))
        with ServiceThread(cfg.validate()) as svc:
            played = play(ds, svc.stub(), keep_indicators=args.keep_turns)
    else:
        with grpc.insecure_channel(args.target) as ch:
            played = play(ds, pb_grpc.RiskScorerStub(ch), keep_indicators=args.keep_turns)
    rep = report(played)
    for line in summary_lines(rep):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(played, rep, settings), ensure_ascii=False))
    if args.png:
        from yujing.service.paths import DEFAULT_POLICY
        from yujing.training.policy_fit import read_policy

        plot(played, rep, args.png, read_policy(args.policy or DEFAULT_POLICY)["levels"])
    return 0


def add_subcommand(sub) -> None:
    from yujing.training.dialogues import SETS

    p = sub.add_parser("conversations", help="play whole dialogues through the service and measure risk on them",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running service (default: %(default)s)")
    p.add_argument("--in-process", action="store_true", help="start a service in this process instead (in-process models)")
    p.add_argument("--policy", type=Path, default=None, help="with --in-process: the risk policy TOML (default: packaged)")
    p.add_argument("--model-repo", type=Path, default=None, help="with --in-process: the model repository")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="dialogue sets (default: all)")
    p.add_argument("--split", default="test", choices=("train", "dev", "test", "all"), help="which side of the split (default: test)")
    p.add_argument("--fold", type=int, default=0,
                   help="cross-fitting: play JDDC / USS fold K's side (default 0: the shipped split; see crossfit)")
    p.add_argument("--data-dir", default=None, help="the shared data sets (default: ../shared/data or $YUJING_DATA_DIR)")
    p.add_argument("--limit", type=int, default=0, help="at most this many dialogues (default: all)")
    p.add_argument("--keep-turns", action="store_true", help="keep every answer's indicators in the JSON (for policy fit)")
    p.add_argument("--json", default=None, help="write the figures (and the played dialogues) here")
    p.add_argument("--png", default=None, help="write a picture: risk over a few dialogues, the ROC curves")
    p.set_defaults(func=run)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m yujing.training.conversations")
    add_subcommand(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
