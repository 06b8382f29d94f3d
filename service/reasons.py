"""Reasons in words: each of the top indicators of an answer as a short English and
Chinese sentence a supervisor reads ("waiting 4 min, SLA 1 min" / "已等待 4 分钟，时限 1 分钟").

One template per indicator, filled with the indicator's value (and, for the SLA-relative
ones, the session's SLA in seconds). Used by the answers and by ``GetSession``.

    >>> reason_texts("repeat_complaints", 3.0)
    ('the customer has repeated the same complaint 3 times', '客户已重复投诉同一问题 3 次')
    >>> reason_texts("unanswered_wait_sla", 4.0, sla_s=60.0)
    ('waiting 4 min with no answer, SLA 1 min', '已等待4分钟未获回复，时限1分钟')
"""
from __future__ import annotations

from yujing.kernels import answers as _K

# Which figures each template prints (yujing.kernels.answers.reason_keys): two values with
# the same figures get the same words, so the answers compute the figures in compiled code
# and call reason_texts once per distinct figure. Change a template, change its entry; a
# name missing here is worded value by value (W_EXACT). tests/test_answers_compiled.py
# checks every entry against reason_texts.
WORDS_KIND = {
    "sentiment_ewma": _K.W_SIGNED_2F,
    "neg_share_turns": _K.W_PCT, "neg_share_window": _K.W_PCT, "dissatisfaction": _K.W_PCT, "intensity": _K.W_PCT,
    "consecutive_negative": _K.W_INT, "repeat_complaints": _K.W_INT, "transfers": _K.W_INT,
    "bot_turns_unhandled": _K.W_INT, "agent_fatigue": _K.W_INT,
    "message_rate": _K.W_F0,
    "response_delay_sla": _K.W_SLA, "unanswered_wait_sla": _K.W_SLA,
    "session_minutes": _K.W_DUR60,
    "sentiment_trend": _K.W_CONST, "peak_negativity": _K.W_CONST, "negation_share": _K.W_CONST,
    "escalation": _K.W_CONST, "intent_exposure": _K.W_CONST, "anger": _K.W_CONST,
}


def _dur(seconds: float) -> tuple[str, str]:
    if seconds < 60:
        n = max(0, round(seconds))
        return f"{n} s", f"{n}秒"
    if seconds < 5400:
        n = round(seconds / 60)
        return f"{n} min", f"{n}分钟"
    n = round(seconds / 3600, 1)
    return f"{n:g} h", f"{n:g}小时"


def _pct(v: float) -> str:
    return f"{100 * v:.0f} %"


def reason_texts(indicator: str, value: float, sla_s: float | None = None) -> tuple[str, str]:
    """``(english, chinese)`` for one indicator at ``value``."""
    v = float(value)
    n = int(round(v))
    if indicator == "sentiment_ewma":
        return (f"the customer's recent messages are negative ({v:+.2f})", f"客户近期消息情绪负面（{v:+.2f}）")
    if indicator == "neg_share_turns":
        return (f"{_pct(v)} of the customer's last messages are negative", f"客户最近消息中 {_pct(v)} 为负面")
    if indicator == "neg_share_window":
        return (f"{_pct(v)} of the customer's messages in the last minutes are negative",
                f"最近几分钟内客户消息 {_pct(v)} 为负面")
    if indicator == "sentiment_trend":
        return ("the customer's mood is getting worse", "客户情绪正在变差")
    if indicator == "consecutive_negative":
        return (f"{n} negative messages in a row", f"连续 {n} 条负面消息")
    if indicator == "peak_negativity":
        return ("the customer was very negative a short while ago", "客户不久前情绪非常负面")
    if indicator == "repeat_complaints":
        return (f"the customer has repeated the same complaint {n} times", f"客户已重复投诉同一问题 {n} 次")
    if indicator == "message_rate":
        return (f"the customer is writing fast ({v:.0f} messages a minute)", f"客户发消息很急（每分钟 {v:.0f} 条）")
    if indicator in ("response_delay_sla", "unanswered_wait_sla"):
        if sla_s:
            (we, wz), (se, sz) = _dur(v * sla_s), _dur(sla_s)
            if indicator == "unanswered_wait_sla":
                return (f"waiting {we} with no answer, SLA {se}", f"已等待{wz}未获回复，时限{sz}")
            return (f"replies take {we} on average, SLA {se}", f"平均回复用时{wz}，时限{sz}")
        if indicator == "unanswered_wait_sla":
            return (f"waiting {v:.1f}x the SLA with no answer", f"未获回复的等待已达时限的 {v:.1f} 倍")
        return (f"replies take {v:.1f}x the SLA", f"回复用时为时限的 {v:.1f} 倍")
    if indicator == "negation_share":
        return ("the customer keeps saying no / not", "客户频繁使用否定词")
    if indicator == "intensity":
        return (f"the customer's tone is {_pct(v)} intense (!!, ??, capitals, the emotion)",
                f"客户语气强度 {_pct(v)}（感叹号、问号、大写、情绪）")
    if indicator == "escalation":
        return ("the customer asked for a manager, complained formally or threatened to go public",
                "客户要求升级（找主管、正式投诉、曝光或投诉到监管）")
    if indicator == "intent_exposure":
        return ("the customer's requests are high-risk (refund, cancellation, complaint)",
                "客户诉求属高风险类（退款、取消、投诉）")
    if indicator == "transfers":
        return (f"transferred {n} times", f"已被转接 {n} 次")
    if indicator == "session_minutes":
        (de, dz) = _dur(v * 60)
        return (f"the conversation has lasted {de}", f"会话已持续{dz}")
    if indicator == "bot_turns_unhandled":
        return (f"{n} bot replies and no human yet", f"机器人已回复 {n} 次，仍无人工介入")
    if indicator == "agent_fatigue":
        return (f"the agent handled {n} negative customer messages in the last 2 h",
                f"该坐席近 2 小时处理了 {n} 条负面客户消息")
    if indicator == "dissatisfaction":
        return (f"the customer's words read like those of customers who end dissatisfied ({_pct(v)})",
                f"客户的话与最终不满意的客户相似（{_pct(v)}）")
    if indicator == "anger":
        return ("the customer is angry", "客户情绪愤怒")
    return (f"{indicator} = {v:g}", f"{indicator} = {v:g}")
