"""The scoring pipeline for one batch of accepted turns.

    texts -> models (sentiment, intent; Triton or in-process) -> featurize -> policy
    lookups -> session/agent slots -> update kernel -> TurnRisk answers

The model call is the only awaited step; everything after it runs synchronously on
the event loop, one batch at a time, so batches are applied strictly in order and a
turn's state change is visible to the next batch. A turn refused here (table full)
changes nothing; every other refusal happens earlier, in :mod:`yujing.service.validate`.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from yujing.kernels import layout as L
from yujing.service.contract import pb
from yujing.service.errors import YujingError
from yujing.service.featurize import ESCALATION_CATEGORIES, featurize_batch, language_mask
from yujing.service.policy import Policy
from yujing.service.session_table import SessionTable

FORMAL_COMPLAINT_BIT = 1 << ESCALATION_CATEGORIES.index("formal_complaint")
_ACTIONS = ((L.ACTION_HANDOFF, pb.HANDOFF_TO_HUMAN), (L.ACTION_SUPERVISOR, pb.SUPERVISOR_ALERT))


@dataclass
class PendingTurn:
    """A validated turn waiting for its batch."""

    turn: "pb.Turn"
    key: tuple[str, str]            # (tenant_id, session_id)
    idem: tuple[str, str, str]      # (tenant_id, session_id, turn_id)
    ts_ms: int                      # the turn's time (its timestamp, or the server clock)
    now_ms: int                     # server clock when accepted


def _trusted(scores, text_languages: np.ndarray) -> np.ndarray:
    """Per text: use this model's output? Yes when the model states no languages, when the
    text has no letters (emoji, digits: the model may still know them), or when the text
    has letters of a language the model was trained on. A Chinese-only text is thus not
    given an intent by an English-only intent model."""
    if not scores.languages:
        return np.ones(len(text_languages), bool)
    mask = language_mask(scores.languages)
    return (text_languages == 0) | ((text_languages & mask) != 0)


class AnswerCache:
    """The idempotency window: the serialized answer of the last ``capacity`` turn ids."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict = OrderedDict()

    def get(self, idem) -> "pb.TurnRisk | None":
        raw = self._d.get(idem)
        if raw is None:
            return None
        self._d.move_to_end(idem)
        risk = pb.TurnRisk.FromString(raw)
        risk.duplicate = True
        return risk

    def put(self, idem, risk: "pb.TurnRisk") -> None:
        if self.capacity <= 0:
            return
        self._d[idem] = risk.SerializeToString()
        self._d.move_to_end(idem)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)


class Engine:
    """Owns the session table, the policy and the answer cache; scores batches."""

    def __init__(self, policy: Policy, table: SessionTable, router, idempotency_window: int = 262_144,
                 clock=lambda: int(time.time() * 1000)):
        self.policy = policy
        self.table = table
        self.router = router
        self.answers = AnswerCache(idempotency_window)
        self.clock = clock
        self._intent_tables: dict = {}
        self.batches = 0
        self.turns = 0

    async def score(self, items: list[PendingTurn]) -> list:
        """Answers (``pb.TurnRisk`` or a :class:`YujingError`) in the order of ``items``.

        Only the turns that will change state go to the models and the kernel: a retry
        already in the answer cache, or a repeat of an earlier turn of the same batch, is
        answered from the first one (``duplicate = True``) without being scored again.
        """
        answers, run = self._plan(items)
        fresh = [items[k] for k in run]
        with_text = [j for j, it in enumerate(fresh) if it.turn.text]
        result = await self.router.classify([fresh[j].turn.text for j in with_text]) if with_text else None
        if fresh:
            for k, a in zip(run, self._apply_kernel(fresh, with_text, result)):
                answers[k] = a
        return self._resolve_repeats(answers)

    # -- the synchronous part ----------------------------------------------------------
    def _intent_table(self, labels):
        t = self._intent_tables.get(labels)
        if t is None:
            t = self._intent_tables[labels] = self.policy.intent_table(labels)
        return t

    def _plan(self, items) -> tuple[list, list[int]]:
        """Answers known before scoring (cached, or the position of an earlier repeat), and
        the positions that go through the models and the kernel."""
        answers: list = [None] * len(items)
        first_of: dict = {}
        run: list[int] = []
        for k, it in enumerate(items):
            cached = self.answers.get(it.idem)
            if cached is not None:
                answers[k] = cached
            elif it.idem in first_of:
                answers[k] = first_of[it.idem]   # resolved after the kernel
            else:
                first_of[it.idem] = k
                run.append(k)
        return answers, run

    @staticmethod
    def _resolve_repeats(answers: list) -> list:
        for k, a in enumerate(answers):
            if isinstance(a, int):            # a repeat of an earlier position in this batch
                src = answers[a]
                if isinstance(src, YujingError):
                    answers[k] = src
                else:
                    dup = pb.TurnRisk()
                    dup.CopyFrom(src)
                    dup.duplicate = True
                    answers[k] = dup
        return answers

    def _apply_kernel(self, items, with_text, result) -> list:
        """Score ``items`` (distinct turns, none cached) in order; ``with_text`` are the
        positions whose texts the models scored (``result``). One answer per item."""
        pol = self.policy
        n_all = len(items)
        answers: list = [None] * n_all
        texts = [it.turn.text for it in items]
        feats = featurize_batch(texts)

        # model outputs, per position (zeros where the turn had no text, or a text in a
        # language the model was not trained on: its output there is not evidence)
        sent = np.zeros(n_all)
        negative = np.zeros(n_all, bool)
        has_sent = np.zeros(n_all, bool)
        intent_id = np.full(n_all, -1, np.int64)
        s_label = [""] * n_all
        s_probs = None
        i_table = None
        if result is not None:
            rows = np.asarray(with_text, np.int64)
            langs = feats.languages[rows]
            s_ok = _trusted(result.sentiment, langs)
            i_ok = _trusted(result.intent, langs)
            s_labels = result.sentiment.labels
            s_probs = np.zeros((n_all, len(s_labels)), np.float32)
            s_probs[rows[s_ok]] = result.sentiment.probs[s_ok]
            has_sent[rows[s_ok]] = True
            neg_col = s_labels.index(pol.negative_label)
            pos_col = s_labels.index(pol.positive_label)
            sent[rows] = s_probs[rows, pos_col] - s_probs[rows, neg_col]
            best = np.argmax(result.sentiment.probs, axis=1)
            negative[rows] = (best == neg_col) & s_ok
            for r, b, ok in zip(with_text, best, s_ok):
                if ok:
                    s_label[r] = s_labels[b]
            i_table = self._intent_table(result.intent.labels)
            i_probs = np.zeros((n_all, len(result.intent.labels)), np.float32)
            i_probs[rows] = result.intent.probs
            intent_id[rows[i_ok]] = np.argmax(result.intent.probs[i_ok], axis=1)
        has_intent = intent_id >= 0
        safe_intent = np.where(has_intent, intent_id, 0)
        if i_table is not None:
            w_intent = np.where(has_intent, i_table.weight[safe_intent], 0.0)
            cat_raise = np.where(has_intent, i_table.raise_[safe_intent], 0)
            complaint = has_intent & i_table.complaint[safe_intent]
        else:
            w_intent = np.zeros(n_all)
            cat_raise = np.zeros(n_all, np.int64)
            complaint = np.zeros(n_all, bool)

        esc_mask = feats.escalation_mask.astype(np.int64)
        esc_level, esc_raise, esc_floor = pol.escalation_from_masks(esc_mask)
        channel = np.fromiter((it.turn.channel for it in items), np.int64, n_all)
        tier = np.fromiter((it.turn.customer_tier for it in items), np.int64, n_all)
        complaint_like = complaint | ((esc_mask & FORMAL_COMPLAINT_BIT) != 0)
        tier_floor = np.where(negative & complaint_like, pol.tier_complaint_floor[tier], 0)

        # slots: refused turns (table full) leave the batch here, before any state moves
        now = max(it.now_ms for it in items)
        slots, new, errors = self.table.resolve([it.key for it in items], now)
        for pos, err in errors.items():
            answers[pos] = err
        keep = [p for p in range(n_all) if p not in errors]
        if not keep:
            return answers
        pos_all = np.asarray(keep, np.int64)   # positions in `items`
        kept = [items[p] for p in keep]
        agent_keys = [(it.key[0], it.turn.agent_id) if it.turn.agent_id else None for it in kept]
        a_slots, a_new = self.table.resolve_agents(agent_keys, now)
        m = len(kept)

        ti = np.zeros((L.TI_ROWS, m), np.int64)
        ti[L.T_SLOT] = slots[keep]
        ti[L.T_NEW] = new[keep]
        ti[L.T_AGENT] = a_slots
        ti[L.T_NEW_AGENT] = a_new
        ti[L.T_TS] = np.fromiter((it.ts_ms for it in kept), np.int64, m)
        ti[L.T_SPEAKER] = np.fromiter((it.turn.speaker for it in kept), np.int64, m)
        ti[L.T_EVENT] = np.fromiter((it.turn.event for it in kept), np.int64, m)
        has_text = np.fromiter((bool(it.turn.text) for it in kept), bool, m)
        ti[L.T_FLAGS] = (np.where(has_text, L.TFLAG_HAS_TEXT, 0) | np.where(negative[pos_all], L.TFLAG_NEGATIVE, 0)
                         | np.where(has_sent[pos_all], L.TFLAG_SENTIMENT, 0)
                         | np.where(complaint[pos_all], L.TFLAG_COMPLAINT, 0))
        ti[L.T_INTENT] = intent_id[pos_all]
        ti[L.T_ESC_MASK] = esc_mask[pos_all]
        ti[L.T_NEG_WORDS] = feats.negation_words[pos_all]
        ti[L.T_WORDS] = feats.words[pos_all]
        ti[L.T_RAISE] = np.maximum(cat_raise[pos_all], esc_raise[pos_all])
        ti[L.T_TIER_RAISE] = pol.tier_raise[tier[pos_all]]
        ti[L.T_FLOOR] = np.maximum(esc_floor[pos_all], tier_floor[pos_all])
        tf = np.zeros((L.TFL_ROWS, m))
        tf[L.TF_SENTIMENT] = sent[pos_all]
        tf[L.TF_INTENT_WEIGHT] = w_intent[pos_all]
        tf[L.TF_INTENSITY] = feats.intensity[pos_all]
        tf[L.TF_ESC_LEVEL] = esc_level[pos_all]
        tf[L.TF_SLA_MS] = pol.sla_ms[channel[pos_all], tier[pos_all]]
        th = np.ascontiguousarray(feats.simhash[pos_all])

        of, oi = self.table.apply(ti, tf, th, pol.pf)
        self.batches += 1
        self.turns += m

        versions = pb.ModelVersions(policy_version=pol.version)
        degraded = False
        if result is not None:
            versions.sentiment_model = result.sentiment.model_name
            versions.sentiment_version = str(result.sentiment.model_version)
            versions.intent_model = result.intent.model_name
            versions.intent_version = str(result.intent.model_version)
            versions.served_by = result.served_by
            degraded = bool(result.degraded)
        else:
            versions.served_by = "none"
        names = L.INDICATORS
        of_t = of.T.tolist()                 # Python floats once, not per field
        oi_t = oi.T.tolist()
        for c, it in enumerate(kept):
            k = int(pos_all[c])
            t = it.turn
            row, irow = of_t[c], oi_t[c]
            total = row[L.OF_TOTAL_POINTS]
            risk = pb.TurnRisk(
                tenant_id=t.tenant_id, session_id=t.session_id, turn_id=t.turn_id,
                indicators=dict(zip(names, row[:L.N_INDICATORS])),
                risk_score=row[L.OF_SCORE],
                level=irow[L.OI_LEVEL] + 1, priority=irow[L.OI_PRIORITY] + 1,
                models=versions, degraded=degraded,
                session_time_ms=irow[L.OI_SESSION_TIME], customer_turns=irow[L.OI_CUSTOMER])
            for r in range(L.TOP_REASONS):
                j = irow[L.OI_REASON_IDX + r]
                if j < 0:
                    break
                pts = row[L.OF_REASON_POINTS + r]
                risk.reasons.add(indicator=names[j], points=pts, share=pts / total if total > 0 else 0.0,
                                 value=row[j])
            bits = irow[L.OI_ACTIONS]
            acts = [a for bit, a in _ACTIONS if bits & bit]
            risk.actions.extend(acts)
            risk.action = acts[0] if acts else pb.NO_ACTION
            if has_sent[k]:
                risk.sentiment.label = s_label[k]
                risk.sentiment.labels.extend(result.sentiment.labels)
                risk.sentiment.probabilities.extend(s_probs[k].tolist())
                risk.sentiment.score = sent[k]
            j = int(intent_id[k])
            if j >= 0:
                risk.intent.label = i_table.labels[j]
                risk.intent.confidence = float(i_probs[k, j])
                risk.intent.category = i_table.category[j]
                risk.intent.risk_weight = float(i_table.weight[j])
            self.answers.put(it.idem, risk)
            answers[k] = risk
        return answers

    # -- session reads --------------------------------------------------------------------
    def session_state(self, key, end: bool = False) -> "pb.SessionState":
        snap = (self.table.end if end else self.table.snapshot)(key, self.policy.pf)
        return pb.SessionState(
            tenant_id=key[0], session_id=key[1], indicators=snap["indicators"],
            risk_score=snap["score"], level=snap["level"] + 1, priority=snap["priority"] + 1,
            started_ms=snap["started_ms"], last_turn_ms=snap["last_turn_ms"],
            turns=snap["turns"], customer_turns=snap["customer_turns"])
