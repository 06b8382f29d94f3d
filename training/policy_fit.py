"""``yujing policy fit``: the score's weights fitted to dialogue outcomes, written as a
candidate policy a person reviews as a diff before deploying it.

The score of a turn is ``min(100, sum_i w_i * clip(risk_i / saturation_i, 0, 1))`` over
the indicators (README, "The score"). The indicators of every turn do not depend on
the weights, so one replay of the training dialogues (``yujing eval conversations --split
train --keep-turns --json played.json``) gives a matrix ``X`` (turns x indicators) of
clipped, saturated risks, and any weight vector's scores are ``X @ w``: the fit searches
the weights on that matrix, no service in the loop.

What is fitted: the weights only (the saturations, thresholds, windows, escalation cues,
tier floors and SLAs are kept: they carry the domain's numbers). What is optimised, on
the dialogues with an outcome: with ``M_d`` the highest score of dialogue ``d``,

    objective = AUC(M_d; dissatisfied vs the rest)
              + detection (dissatisfied dialogues with M_d >= YELLOW)
              - 4 * max(0, false alarms - target) (satisfied dialogues with M_d >= YELLOW)
              - 20 * max(0, calm turns above BLUE - target) (hand-written calm questions)

searched by coordinate ascent over a grid of weights per indicator (several passes,
deterministic). A dialogue whose escalation cue set a YELLOW floor counts as reaching
YELLOW whatever the weights (the floors are rules, kept). ``agent_fatigue`` describes the
agent, not the customer: it is held at 0 in the score (it becomes an agent-level alert); a few
weights have domain lower bounds (:data:`MIN_WEIGHT`); and the indicators driven by the
replay's synthetic clock (``response_delay_sla``,
``unanswered_wait_sla``, ``message_rate``, ``session_minutes``), which keep their default
weights: the data sets carry no timestamps to fit them on.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yujing.kernels.layout import INDICATORS, saturated_risk
from yujing.training.conversations import auc

# an escalation cue at or above this level sets a YELLOW floor (formal complaint 0.7 and up)
YELLOW_FLOOR_CUE = 0.699
GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 17.0, 20.0, 24.0, 28.0, 34.0, 40.0)
HELD_AT_ZERO = ("agent_fatigue",)
# Domain knowledge a fit may not remove (DOMAIN.md: repeated complaints, a run of negative
# messages, a negative mood, a threat to escalate are warning signs on their own): lower
# bounds on the weights.
# The replayed sets are dominated by one-post Weibo complaints (STC-3), where repeats are rare.
MIN_WEIGHT = {"repeat_complaints": 10.0, "sentiment_ewma": 10.0, "consecutive_negative": 10.0, "escalation": 24.0,
              "intensity": 6.0, "neg_share_turns": 6.0}
KEPT = ("response_delay_sla", "unanswered_wait_sla", "message_rate", "session_minutes", "transfers",
        "bot_turns_unhandled")


@dataclass
class FitData:
    X: np.ndarray              # [turns, indicators] clip(risk / saturation, 0, 1)
    starts: np.ndarray         # first row of each dialogue
    dissatisfied: np.ndarray   # bool per dialogue
    satisfied: np.ndarray      # bool per dialogue
    floor_yellow: np.ndarray   # bool per dialogue: an escalation cue set a YELLOW floor
    source: np.ndarray | None = None   # the set of each dialogue (jddc, stc3, ...), for per-set figures


def read_policy(path: Path) -> dict:
    import tomllib

    with open(path, "rb") as f:
        return tomllib.load(f)


def risk_matrix(turn_indicators: list[dict], saturation: dict) -> np.ndarray:
    return np.array([[saturated_risk(name, t.get(name, 0.0), saturation[name]) for name in INDICATORS]
                     for t in turn_indicators], dtype=float).reshape(len(turn_indicators), len(INDICATORS))


def fit_data(played: dict, saturation: dict) -> FitData:
    """From ``yujing eval conversations --keep-turns`` JSON: the customer turns' risks of
    every dialogue with an outcome."""
    rows, starts, dis, sat, floor, source = [], [], [], [], [], []
    for d in played["dialogues"]:
        if not d.get("outcome"):
            continue
        turns = [t["indicators"] for t in d["turns"] if t.get("indicators") and t["speaker"] == "customer"]
        if not turns:
            continue
        starts.append(len(rows))
        rows.extend(turns)
        dis.append(d["outcome"] == "dissatisfied")
        sat.append(d["outcome"] == "satisfied")
        floor.append(max(t.get("escalation", 0.0) for t in turns) >= YELLOW_FLOOR_CUE)
        source.append(d.get("source", ""))
    if not starts:
        raise ValueError("no dialogue with an outcome and kept indicators: run "
                         "`yujing eval conversations --keep-turns` on a set with outcomes (jddc, stc3)")
    return FitData(risk_matrix(rows, saturation), np.array(starts), np.array(dis), np.array(sat), np.array(floor),
                   np.array(source))


def subset(data: FitData, keep: np.ndarray) -> FitData:
    """The dialogues where ``keep`` (bool per dialogue) holds."""
    ends = np.append(data.starts[1:], len(data.X))
    idx = np.flatnonzero(keep)
    rows = np.concatenate([np.arange(data.starts[i], ends[i]) for i in idx]) if len(idx) else np.zeros(0, int)
    lens = (ends - data.starts)[idx]
    return FitData(data.X[rows], np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int), data.dissatisfied[idx],
                   data.satisfied[idx], data.floor_yellow[idx], None if data.source is None else data.source[idx])


def figures_by_set(data: FitData, w: np.ndarray, yellow: float, blue: float) -> dict[str, "Figures"]:
    """The figures of each set (``source``) on its own, and of all together (``all``)."""
    out = {"all": figures(data, w, yellow, blue, None)}
    if data.source is not None:
        for src in sorted(set(data.source.tolist())):
            out[src] = figures(subset(data, data.source == src), w, yellow, blue, None)
    return out


def dialogue_max(X: np.ndarray, starts: np.ndarray, w: np.ndarray) -> np.ndarray:
    s = np.minimum(100.0, X @ w)
    return np.maximum.reduceat(s, starts)


@dataclass
class Figures:
    auc: float
    false_alarms: float
    detection: float
    calm_above_blue: float

    def as_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in vars(self).items()}


def figures(data: FitData, w: np.ndarray, yellow: float, blue: float, calm: np.ndarray | None) -> Figures:
    m = dialogue_max(data.X, data.starts, w)
    alarmed = (m >= yellow) | data.floor_yellow
    a = auc(m[data.dissatisfied], m[~data.dissatisfied])
    a = 0.5 if a is None else a     # (not `or 0.5`: an AUC of 0.0 is a figure, not a missing one)
    fa = float(alarmed[data.satisfied].mean()) if data.satisfied.any() else 0.0
    det = float(alarmed[data.dissatisfied].mean()) if data.dissatisfied.any() else 0.0
    calm_bad = float((np.minimum(100.0, calm @ w) >= blue).mean()) if calm is not None and len(calm) else 0.0
    return Figures(a, fa, det, calm_bad)


def objective(f: Figures, fa_target: float, calm_target: float) -> float:
    return f.auc + f.detection - 4.0 * max(0.0, f.false_alarms - fa_target) - 20.0 * max(0.0, f.calm_above_blue - calm_target)


def fit(data: FitData, w0: np.ndarray, yellow: float, blue: float, calm: np.ndarray | None = None,
        fa_target: float = 0.13, calm_target: float = 0.0, passes: int = 4) -> np.ndarray:
    """Coordinate ascent over :data:`GRID` per free weight, from ``w0``."""
    w = w0.astype(float).copy()
    free = [j for j, n in enumerate(INDICATORS) if n not in HELD_AT_ZERO and n not in KEPT]
    for j, n in enumerate(INDICATORS):
        if n in HELD_AT_ZERO:
            w[j] = 0.0
        w[j] = max(w[j], MIN_WEIGHT.get(n, 0.0))
    best = objective(figures(data, w, yellow, blue, calm), fa_target, calm_target)
    for _ in range(passes):
        improved = False
        for j in free:
            keep = w[j]
            for g in GRID:
                if g == keep or g < MIN_WEIGHT.get(INDICATORS[j], 0.0):
                    continue
                w[j] = g
                val = objective(figures(data, w, yellow, blue, calm), fa_target, calm_target)
                if val > best + 1e-9:
                    best, keep, improved = val, g, True
            w[j] = keep
        if not improved:
            break
    return w


def rewrite_weights(toml_text: str, weights: dict[str, float], version: str) -> str:
    """The policy text with new ``[weights]`` values and version; comments and order kept,
    so the candidate reads as a diff of the policy it came from."""
    out, section = [], None
    for line in toml_text.splitlines(keepends=True):
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            section = m.group(1).strip()
        if section is None and line.startswith("version"):
            line = f'version = "{version}"\n'
        elif section == "weights":
            m = re.match(r"(\s*)([a-z_]+)(\s*=\s*)([0-9.]+)(.*)", line, flags=re.S)
            if m and m.group(2) in weights:
                line = f"{m.group(1)}{m.group(2)}{m.group(3)}{weights[m.group(2)]:.1f}{m.group(5)}"
        out.append(line)
    return "".join(out)


def calm_matrix(played_calm: dict | None, saturation: dict) -> np.ndarray | None:
    if not played_calm:
        return None
    turns = [t["indicators"] for d in played_calm["dialogues"] for t in d["turns"] if t.get("indicators")
             and t["speaker"] == "customer"]
    return risk_matrix(turns, saturation) if turns else None


def _by_set(data: FitData, w0: np.ndarray, w: np.ndarray, yellow: float, blue: float) -> dict:
    b, a = figures_by_set(data, w0, yellow, blue), figures_by_set(data, w, yellow, blue)
    return {k: (b[k].as_dict(), a[k].as_dict()) for k in b}


def run(args: argparse.Namespace) -> int:
    from yujing.service.paths import DEFAULT_POLICY
    from yujing.service.policy import load_policy

    base_path = Path(args.policy or DEFAULT_POLICY)
    base = read_policy(base_path)
    played = json.loads(Path(args.played).read_text())
    data = fit_data(played, base["saturation"])
    calm = calm_matrix(json.loads(Path(args.calm).read_text()) if args.calm else None, base["saturation"])
    w0 = np.array([base["weights"][n] for n in INDICATORS], dtype=float)
    yellow, blue = base["levels"]["yellow"], base["levels"]["blue"]
    before = figures(data, w0, yellow, blue, calm)
    w = fit(data, w0, yellow, blue, calm, fa_target=args.false_alarm_target)
    after = figures(data, w, yellow, blue, calm)
    version = args.version or f"{base['version']}+fit"
    text = rewrite_weights(base_path.read_text(), {n: float(w[j]) for j, n in enumerate(INDICATORS)}, version)
    Path(args.out).write_text(text)
    load_policy(Path(args.out))   # the candidate must load: the service's own validation
    print(f"candidate policy {args.out} (version {version}), fitted on {len(data.starts)} dialogues "
          f"({int(data.dissatisfied.sum())} dissatisfied, {int(data.satisfied.sum())} satisfied)")
    print(f"{'weight':<22}{'before':>8}{'after':>8}")
    for j, n in enumerate(INDICATORS):
        mark = "" if w[j] == w0[j] else "  *"
        print(f"{n:<22}{w0[j]:>8.1f}{w[j]:>8.1f}{mark}")
    print(f"{'on the fit data':<22}{'before':>8}{'after':>8}")
    for k in vars(before):
        print(f"{k:<22}{getattr(before, k):>8.3f}{getattr(after, k):>8.3f}")
    per_set = {"fit": _by_set(data, w0, w, yellow, blue)}
    if args.dev:
        # the held-out dialogues (`--split dev`): where a setting such as the false-alarm target is chosen
        per_set["dev"] = _by_set(fit_data(json.loads(Path(args.dev).read_text()), base["saturation"]), w0, w, yellow, blue)
    for side, rows in per_set.items():
        print(f"per set, {side} dialogues (before -> after): AUC, satisfied >= YELLOW, dissatisfied >= YELLOW")
        for src, (b, a) in rows.items():
            print(f"  {src:<8} AUC {b['auc']:.3f} -> {a['auc']:.3f}   false alarms {b['false_alarms']:.3f} -> "
                  f"{a['false_alarms']:.3f}   detection {b['detection']:.3f} -> {a['detection']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before.as_dict(), "after": after.as_dict(),
                                               "per_set_before_after": per_set,
                                               "weights_before": dict(zip(INDICATORS, w0.tolist())),
                                               "weights_after": dict(zip(INDICATORS, w.tolist()))}, indent=1))
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("fit", help="fit the score's weights to dialogue outcomes; writes a candidate policy",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("played", help="`yujing eval conversations --split train --keep-turns --json FILE` output")
    p.add_argument("--policy", default=None, help="the policy to start from (default: the packaged one)")
    p.add_argument("--calm", default=None, help="the same output for calm conversations (no customer turn may reach BLUE)")
    p.add_argument("--out", default="policy_candidate.toml", help="where to write the candidate (default: %(default)s)")
    p.add_argument("--version", default=None, help="the candidate's version string (default: <base>+fit)")
    p.add_argument("--false-alarm-target", type=float, default=0.13,
                   help="satisfied dialogues allowed to reach YELLOW on the fit data (default: %(default)s)")
    p.add_argument("--dev", default=None,
                   help="the same output for held-out dialogues (`--split dev`): their figures before/after, per set")
    p.add_argument("--json", default=None, help="also write the figures before/after as JSON")
    p.set_defaults(func=run)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m yujing.training.policy_fit")
    add_subcommand(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
