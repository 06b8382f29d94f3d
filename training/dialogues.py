"""Whole conversations from the shared data sets, for evaluating risk on the task users have
(``yujing eval conversations``) and fitting the policy to dialogue outcomes
(``yujing policy fit``). Nothing here is committed data: every set is read from
``../shared/data`` (``$YUJING_DATA_DIR``).

A :class:`Dialogue` is its turns in order (speaker, text, and the turn's gold sentiment
where the set has one) and an outcome for the whole dialogue where the set has one.

The splits are by dialogue, deterministic, and the same in every tool:

* **JDDC-USS** (``zh/jddc_uss_satisfaction/jddc_uss_user_turns.csv``, the 330 ``valid``
  dialogues here; the 330 test dialogues are held back by the project): ``test`` when
  ``sha1(dialogue_id) % 5 == 0`` (about 66 dialogues), ``dev`` when it is 1 (the models'
  calibration side, never trained on), else ``train``. Each rated customer
  turn follows the agent turn it answers (``prev_system``). Turn gold: ``sat`` 0 / 1 / 2
  read as negative / neutral / positive (the customer's satisfaction with the exchange,
  the closest the set has to a turn sentiment). Outcome: the ``OVERALL`` row's rating,
  0 dissatisfied, 1 neutral, 2 satisfied.
* **STC-3** (``zh/stc3_customer_helpdesk``, 3,325 dialogues; ids ``% 10 == 0`` are held
  back by the project and absent): ``test`` when ``int(dialogue_id) % 10 == 5``, ``dev``
  when it is 6, else ``train``. No turn gold. Outcome from the mean of 19 annotators' satisfaction S:
  dissatisfied when ``S < -0.5``, satisfied when ``S > 0.5``, else neutral.
* **SGD / MultiWOZ from USS** (``en/uss_sgd_mwoz``; their test dialogues are held back):
  ``test`` when ``sha1(dialogue_id) % 5 == 0``, ``dev`` when it is 1, else ``train``. Turn gold on the rated user
  turns, ``sat`` read as for JDDC; a system turn follows each user turn. No dialogue
  outcome.
* **calm** (``training/indomain/plain_questions.txt``, committed, hand-written: 20 zh and 20
  en plain customer questions, never trained or tuned on): each question a one-turn
  conversation, gold neutral, outcome satisfied; all of it is ``test``.

``dev`` is where choices are made (the policy fit's false-alarm target, saturations): fit on
``train``, choose on ``dev``, report ``test``. A calm question must
  stay at level NONE.

Time: the sets carry no timestamps, so a conversation is replayed at a steady, calm pace
(:data:`CUSTOMER_GAP_S` between customer turns, the agent answering
:data:`AGENT_DELAY_S` after each): the time-based indicators then read a served customer.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from yujing.service.paths import data_dir
from yujing.training.indomain import data as D

OUTCOMES = ("dissatisfied", "neutral", "satisfied")
SETS = ("jddc", "stc3", "sgd", "mwoz", "calm")
PLAIN_QUESTIONS = Path(__file__).resolve().parent / "indomain" / "plain_questions.txt"
CUSTOMER_GAP_S = 40.0
AGENT_DELAY_S = 15.0


@dataclass
class DialogueTurn:
    speaker: str                 # customer | agent | bot
    text: str
    gold: str | None = None      # negative | neutral | positive, where the set labels the turn


@dataclass
class Dialogue:
    id: str
    source: str                  # jddc | stc3 | sgd | mwoz | a hand-made set's name
    language: str                # zh | en
    turns: list[DialogueTurn] = field(default_factory=list)
    outcome: str | None = None   # dissatisfied | neutral | satisfied, where the set rates it
    split: str = "train"


def hash_split(dialogue_id: str) -> str:
    """``test`` for one dialogue in five and ``dev`` for another, by the same stable hash the
    v2 models' training split uses (:func:`yujing.training.indomain.data.bucket`: its bucket
    0 is test there too, so no dialogue tested here was trained on; bucket 1 is the models'
    held-out calibration side)."""
    return D.hash_split(dialogue_id)


def _by_dialogue(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by ``dialogue_id``, each dialogue's rows in ``turn`` order."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[r["dialogue_id"]].append(r)
    return {did: sorted(rs, key=lambda r: int(r["turn"])) for did, rs in by_id.items()}


def load_jddc(root: Path) -> list[Dialogue]:
    out = []
    for did, rows in _by_dialogue(D.rows(root / D.JDDC_FILE)).items():
        d = Dialogue(id=did, source="jddc", language="zh", split=hash_split(did))
        for r in rows:
            if r["prev_system"].strip():
                d.turns.append(DialogueTurn("agent", r["prev_system"].strip()))
            if r["is_overall"] == "1":
                d.outcome = OUTCOMES[int(r["sat"])]
                continue
            d.turns.append(DialogueTurn("customer", r["text"].strip(), D.SAT3.get(r["sat"])))
        out.append(d)
    return out


def stc3_outcome(s_mean: float) -> str:
    return "dissatisfied" if s_mean < -0.5 else "satisfied" if s_mean > 0.5 else "neutral"


def load_stc3(root: Path) -> list[Dialogue]:
    out = []
    for split, dialogues in D.stc3(root).items():
        for did, dlg in dialogues.items():
            split_d = "dev" if split == "train" and int(did) % 10 == 6 else split
            d = Dialogue(id=did, source="stc3", language="zh", outcome=stc3_outcome(dlg["S_mean"]), split=split_d)
            d.turns = [DialogueTurn("customer" if sender == "customer" else "agent", text.strip())
                       for sender, text in dlg["turns"]]
            out.append(d)
    return out


def load_uss_en(root: Path, which: str) -> list[Dialogue]:
    out = []
    for did, rows in _by_dialogue(D.rows(root / f"en/uss_sgd_mwoz/{which}_valid_dialogues.csv")).items():
        d = Dialogue(id=did, source=which, language="en", split=hash_split(did))
        for r in rows:
            d.turns.append(DialogueTurn("customer", r["user"].strip(), D.SAT3.get(r["sat"] or "")))
            if r["system_reply"].strip():
                d.turns.append(DialogueTurn("bot", r["system_reply"].strip()))
        out.append(d)
    return out


def load_calm() -> list[Dialogue]:
    lines = [l.strip() for l in PLAIN_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    out = []
    for k, q in enumerate(l for l in lines if l and not l.startswith("#")):
        lang = "en" if q.isascii() else "zh"
        out.append(Dialogue(id=f"q{k:02d}", source="calm", language=lang, outcome="satisfied", split="test",
                            turns=[DialogueTurn("customer", q, "neutral")]))
    return out


def load(sets: Iterable[str] = SETS, split: str | None = None, root: str | Path | None = None) -> list[Dialogue]:
    """The dialogues of ``sets`` (``jddc``, ``stc3``, ``sgd``, ``mwoz``), of one split
    (``train`` / ``dev`` / ``test``) or all (``None``)."""
    r = data_dir(root)
    out: list[Dialogue] = []
    for s in sets:
        if s == "jddc":
            out += load_jddc(r)
        elif s == "stc3":
            out += load_stc3(r)
        elif s in ("sgd", "mwoz"):
            out += load_uss_en(r, s)
        elif s == "calm":
            out += load_calm()
        else:
            raise ValueError(f"unknown dialogue set {s!r}: expected one of {', '.join(SETS)}")
    return [d for d in out if split is None or d.split == split]
