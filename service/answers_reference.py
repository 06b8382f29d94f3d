"""The answers built with the generated classes, field by field: ``pb.TurnRisk`` messages
from the kernel's outputs and the models' outputs, as the service built them before it
wrote the wire format itself (:mod:`yujing.service.wire`).

The definition the wire bytes are checked against (tests/test_wire.py: field by field and
byte for byte against ``SerializeToString(deterministic=True)``) and the baseline of
``yujing bench answers``. The serving path does not import it.
"""
from __future__ import annotations

from yujing.kernels import layout as L
from yujing.service.answers import level_enum, priority_enum
from yujing.service.contract import pb
from yujing.service.reasons import reason_texts

_ACTIONS = ((L.ACTION_HANDOFF, pb.HANDOFF_TO_HUMAN), (L.ACTION_SUPERVISOR, pb.SUPERVISOR_ALERT))


def _add_reason(msg, j: int, pts: float, total: float, value: float, sla_s: float | None) -> None:
    en, zh = reason_texts(L.INDICATORS[j], value, sla_s)
    msg.reasons.add(indicator=L.INDICATORS[j], points=pts, share=pts / total if total > 0 else 0.0,
                    value=value, text_en=en, text_zh=zh)


def _add_reasons(risk, row, irow, sla_s: float | None = None) -> None:
    total = row[L.OF_TOTAL_POINTS]
    for r in range(L.TOP_REASONS):
        j = irow[L.OI_REASON_IDX + r]
        if j < 0:
            break
        _add_reason(risk, j, row[L.OF_REASON_POINTS + r], total, row[j], sla_s)


def _add_actions(risk, bits: int) -> None:
    acts = [a for bit, a in _ACTIONS if bits & bit]
    risk.actions.extend(acts)
    risk.action = acts[0] if acts else pb.NO_ACTION


def add_model_outputs(risk, outputs, k: int, customer: bool = True) -> None:
    """The sentiment, intent and (for a customer's turn) emotion the models gave position
    ``k`` (when they did)."""
    if outputs.has_sentiment[k]:
        risk.sentiment.label = outputs.sentiment_label[k]
        risk.sentiment.labels.extend(outputs.sentiment_labels)
        risk.sentiment.probabilities.extend(outputs.sentiment_probs[k].tolist())
        risk.sentiment.score = outputs.sentiment[k]
    j = int(outputs.intent_id[k])
    if j >= 0:
        table = outputs.intent_table
        risk.intent.label = table.labels[j]
        risk.intent.confidence = float(outputs.intent_probs[k, j])
        risk.intent.category = table.category[j]
        risk.intent.risk_weight = float(table.weight[j])
    e = -1 if outputs.emotion_id is None else int(outputs.emotion_id[k])
    if e >= 0 and customer:
        risk.emotion.label = outputs.emotion_labels[e]
        risk.emotion.confidence = float(outputs.emotion_probs[k, e])
        risk.emotion.labels.extend(outputs.emotion_labels)
        risk.emotion.probabilities.extend(outputs.emotion_probs[k].tolist())


def turn_risk(turn, row, irow, versions, degraded: bool, sla_s: float | None = None) -> "pb.TurnRisk":
    """One turn's answer from its column of ``of`` (``row``) and ``oi`` (``irow``)."""
    risk = pb.TurnRisk(
        tenant_id=turn.tenant_id, session_id=turn.session_id, turn_id=turn.turn_id,
        indicators=dict(zip(L.INDICATORS, row[:L.N_INDICATORS])),
        risk_score=row[L.OF_SCORE],
        level=level_enum(irow[L.OI_LEVEL]), priority=priority_enum(irow[L.OI_PRIORITY]),
        models=versions, degraded=degraded,
        session_time_ms=irow[L.OI_SESSION_TIME], customer_turns=irow[L.OI_CUSTOMER])
    _add_reasons(risk, row, irow, sla_s)
    _add_actions(risk, irow[L.OI_ACTIONS])
    return risk


def build_answers(items, positions, of, oi, outputs, versions, degraded: bool, sla_s=None) -> list:
    """``pb.TurnRisk`` for ``items[positions[c]]`` from column ``c`` of ``of``/``oi``, in order;
    ``sla_s[c]`` is that turn's response SLA (seconds), for the reasons' words."""
    of_t = of.T.tolist()                 # Python floats once, not per field
    oi_t = oi.T.tolist()
    sla = [None] * len(oi_t) if sla_s is None else list(sla_s)
    answers = []
    for c, k in enumerate(positions.tolist()):
        turn = items[k].turn
        risk = turn_risk(turn, of_t[c], oi_t[c], versions, degraded, sla[c])
        add_model_outputs(risk, outputs, k, turn.speaker == pb.CUSTOMER)
        answers.append(risk)
    return answers
