"""The answers: ``TurnRisk`` messages from the kernel's outputs (``of``/``oi``, rows named in
:mod:`yujing.kernels.layout`) and the models' outputs, and ``SessionState`` messages from
a session snapshot. The kernel's level and priority numbers become proto enums here
only (:func:`level_enum`, :func:`priority_enum`).
"""
from __future__ import annotations

from yujing.kernels import layout as L
from yujing.service.contract import pb
from yujing.service.reasons import reason_texts

_ACTIONS = ((L.ACTION_HANDOFF, pb.HANDOFF_TO_HUMAN), (L.ACTION_SUPERVISOR, pb.SUPERVISOR_ALERT))


def level_enum(level: int) -> int:
    """Kernel level (layout.LEVEL_NONE .. LEVEL_RED) -> ``pb.Level`` (NONE .. RED)."""
    return level + 1


def priority_enum(priority: int) -> int:
    """Kernel priority (0 none, 1 P3 .. 4 P0) -> ``pb.Priority`` (PRIORITY_NONE .. P0)."""
    return priority + 1


def model_versions(result, policy) -> tuple["pb.ModelVersions", bool]:
    """The models and policy behind a batch's answers, and whether it was degraded."""
    versions = pb.ModelVersions(policy_version=policy.version)
    if result is None:
        versions.served_by = "none"
        return versions, False
    versions.sentiment_model = result.sentiment.model_name
    versions.sentiment_version = str(result.sentiment.model_version)
    versions.intent_model = result.intent.model_name
    versions.intent_version = str(result.intent.model_version)
    if result.emotion is not None:
        versions.emotion_model = result.emotion.model_name
        versions.emotion_version = str(result.emotion.model_version)
    versions.served_by = result.served_by
    return versions, bool(result.degraded)


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


def _add_model_outputs(risk, outputs, k: int, customer: bool = True) -> None:
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
    """``TurnRisk`` for ``items[positions[c]]`` from column ``c`` of ``of``/``oi``, in order;
    ``sla_s[c]`` is that turn's response SLA (seconds), for the reasons' words."""
    of_t = of.T.tolist()                 # Python floats once, not per field
    oi_t = oi.T.tolist()
    sla = [None] * len(oi_t) if sla_s is None else list(sla_s)
    answers = []
    for c, k in enumerate(positions.tolist()):
        turn = items[k].turn
        risk = turn_risk(turn, of_t[c], oi_t[c], versions, degraded, sla[c])
        _add_model_outputs(risk, outputs, k, turn.speaker == pb.CUSTOMER)
        answers.append(risk)
    return answers


def session_state(key, snap: dict, pf=None, now_ms: int | None = None) -> "pb.SessionState":
    """A ``SessionState`` from :meth:`SessionTable.snapshot`'s dict; with the policy's
    ``pf``, the same top reasons an answer would carry at the session clock; with the
    server clock ``now_ms``, the customer's current wait."""
    state = pb.SessionState(
        tenant_id=key[0], session_id=key[1], indicators=snap["indicators"],
        risk_score=snap["score"], level=level_enum(snap["level"]), priority=priority_enum(snap["priority"]),
        started_ms=snap["started_ms"], last_turn_ms=snap["last_turn_ms"],
        turns=snap["turns"], customer_turns=snap["customer_turns"], sla_ms=snap.get("sla_ms", 0))
    since = snap.get("wait_since_ms", L.NO_WAIT)
    if now_ms is not None and since != L.NO_WAIT:
        state.waiting_ms = max(0, now_ms - since)
    if pf is not None:
        values = [snap["indicators"][n] for n in L.INDICATORS]
        pts = [pf[L.P_WEIGHTS + j] * L.saturated_risk(n, v, pf[L.P_SATURATION + j])
               for j, (n, v) in enumerate(zip(L.INDICATORS, values))]
        total = sum(pts)
        for j in sorted((j for j in range(len(pts)) if pts[j] > 0), key=lambda j: -pts[j])[:L.TOP_REASONS]:
            _add_reason(state, j, pts[j], total, values[j], None)
    return state
