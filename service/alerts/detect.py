"""From a scored batch (and from the clock) to the alerts it raises:

    from_batch(...)   session rises, handoffs and agent fatigue (session_rules.py), and the
                      queue trends the batch's customer turns move (trends.py)
    sla_events(...)   the SLA scheduler's breaches: customers waiting past their SLA with no
                      answer, found by the kernel's scan of the whole session table

Only the few turns that raise something are turned into events; the rest of the batch costs
one compiled pass over the kernel's outputs and the trend counters' update.
"""
from __future__ import annotations

import numpy as np

from yujing.kernels import layout as L
from yujing.service.alerts.events import AlertEvent
from yujing.service.alerts.session_rules import FATIGUE, HANDOFF, RISE, SessionMarks

LEVEL_EN = ("none", "BLUE", "YELLOW", "RED")
LEVEL_ZH = ("无", "蓝色", "黄色", "红色")


def _top_reason(reasons, lang: str) -> str:
    if not reasons:
        return ""
    r = reasons[0]
    return r.text_en if lang == "en" else r.text_zh


class AlertDetector:
    def __init__(self, policy, capacity: int, agent_capacity: int, trends=None):
        self.policy = policy
        self.marks = SessionMarks(capacity, agent_capacity)
        self.trends = trends

    # -- a batch ---------------------------------------------------------------------------
    def from_batch(self, kept, slots, ti, of, oi, reasons_of, outputs, lookups, feats) -> list:
        """Events raised by the applied turns ``kept`` (``slots`` their BatchSlots, ``ti`` the
        kernel's inputs and ``of``/``oi`` its outputs, ``reasons_of(i)`` the ``pb.Reason`` list
        of turn ``i``'s answer, asked only for a turn that raises something; the rest by batch
        position). Level, priority and score come from the kernel's outputs, not the answers."""
        ap = self.policy.alerts
        marks = self.marks.mark(slots.slots, slots.new, oi, slots.agent_slots, slots.agent_new,
                                of[L.OF_AGENT_FATIGUE], ap.agent_fatigue_turns)
        self.marks.remember(slots.slots, slots.new, [it.turn for it in kept])
        events = []
        for i in np.flatnonzero(marks.any(axis=0)).tolist():
            it = kept[i]
            if marks[RISE, i] or marks[HANDOFF, i]:
                risk = (int(oi[L.OI_LEVEL, i]), int(oi[L.OI_PRIORITY, i]),
                        float(np.float32(of[L.OF_SCORE, i])), reasons_of(i))    # the score as the answer has it
            if marks[RISE, i]:
                events.append(self._session_event("LEVEL_RISE", it, risk, ap.level_rise_priority))
            if marks[HANDOFF, i]:
                events.append(self._session_event("HANDOFF_NEEDED", it, risk, ap.handoff_priority))
            if marks[FATIGUE, i]:
                n = of[L.OF_AGENT_FATIGUE, i]
                events.append(AlertEvent(
                    kind="AGENT_FATIGUE", tenant_id=it.key[0], queue=it.turn.queue, agent_id=it.turn.agent_id,
                    session_id=it.key[1], turn_id=it.turn.turn_id, event_time_ms=it.ts_ms,
                    level=L.LEVEL_YELLOW, priority=ap.agent_fatigue_priority, figures={"negative_turns": n},
                    summary_en=f"agent {it.turn.agent_id} took {n:.0f} negative customer turns in 2 hours",
                    summary_zh=f"坐席 {it.turn.agent_id} 两小时内接待了 {n:.0f} 条负面客户消息"))
        if self.trends is not None:
            events.extend(self._trend_events(kept, slots, marks, ti, oi, outputs, lookups, feats))
        return events

    def _session_event(self, kind: str, it, risk, min_priority: int) -> AlertEvent:
        """``risk``: the turn's kernel level and priority, its score and its reasons."""
        level, priority, score, reasons = risk
        sid = it.key[1]
        if kind == "LEVEL_RISE":
            en = f"session {sid} rose to {LEVEL_EN[level]} (score {score:.0f})"
            zh = f"会话 {sid} 升至{LEVEL_ZH[level]}（{score:.0f} 分）"
        else:
            en = f"bot conversation {sid} needs a human agent ({LEVEL_EN[level]}, score {score:.0f})"
            zh = f"机器人会话 {sid} 需转人工（{LEVEL_ZH[level]}，{score:.0f} 分）"
        top_en, top_zh = _top_reason(reasons, "en"), _top_reason(reasons, "zh")
        return AlertEvent(kind=kind, tenant_id=it.key[0], queue=it.turn.queue, session_id=sid,
                          agent_id=it.turn.agent_id, level=level,
                          priority=max(priority, min_priority), risk_score=score,
                          turn_id=it.turn.turn_id, event_time_ms=it.ts_ms, reasons=list(reasons),
                          summary_en=f"{en}: {top_en}" if top_en else en,
                          summary_zh=f"{zh}：{top_zh}" if top_zh else zh)

    def _trend_events(self, kept, slots, marks, ti, oi, outputs, lookups, feats) -> list:
        pos = slots.positions
        customer = ti[L.T_SPEAKER] == L.SPEAKER_CUSTOMER      # as packed for the kernel, not again per turn
        negative = outputs.negative[pos] & customer
        complaint = customer & (lookups.complaint[pos] | (outputs.negative[pos] & (lookups.esc_mask[pos] != 0)))
        table = outputs.intent_table
        intent = np.where(customer, outputs.intent_id[pos], -1)
        categories = ([table.category[j] if j >= 0 else "" for j in intent.tolist()] if table is not None
                      else [""] * len(kept))
        escalation = (marks[RISE] != 0) & (oi[L.OI_LEVEL] >= L.LEVEL_YELLOW)
        return self.trends.observe(
            tenants=[it.key[0] for it in kept], queues=[it.turn.queue for it in kept], categories=categories,
            ts_ms=ti[L.T_TS], customer=customer,
            negative=negative, complaint=complaint, new_session=slots.new.astype(bool),
            escalation=escalation, session_hash=np.fromiter((hash(it.key) for it in kept), np.int64, len(kept)),
            intent_id=intent, simhash=np.where(customer, feats.simhash[pos], 0).astype(np.uint64))

    # -- the clock ---------------------------------------------------------------------------
    def sla_events(self, breaches, state_of, now_ms: int) -> list:
        """SLA_BREACH events for the scheduler's ``breaches`` ``(key, slot, wait_ms, sla_ms)``
        at server time ``now_ms``;
        ``state_of(key)`` gives the session's current pb.SessionState (level, reasons)."""
        ap = self.policy.alerts
        events = []
        for key, slot, wait_ms, sla_ms in breaches:
            st = state_of(key)
            level = max(0, st.level - 1)
            wait_s, sla_s = wait_ms / 1000.0, sla_ms / 1000.0
            events.append(AlertEvent(
                kind="SLA_BREACH", tenant_id=key[0], queue=self.marks.queue_of[slot], session_id=key[1],
                agent_id=self.marks.agent_of[slot], level=level,
                priority=max(max(0, st.priority - 1), ap.sla_breach_priority), risk_score=st.risk_score,
                event_time_ms=int(now_ms - wait_ms + sla_ms), reasons=list(st.reasons),
                figures={"wait_s": wait_s, "sla_s": sla_s},
                summary_en=f"the customer of session {key[1]} has waited {wait_s:.0f} s for an answer "
                           f"(SLA {sla_s:.0f} s)",
                summary_zh=f"会话 {key[1]} 的客户已等待 {wait_s:.0f} 秒未获回复（时限 {sla_s:.0f} 秒）"))
        return events
