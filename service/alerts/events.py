"""An alert before it has an id: what the detectors (session rises, the SLA scheduler,
queue trends, agent fatigue, unacknowledged deadlines) hand to the alert hub, which numbers
it, keeps it in the alert log and sends it to subscribers as a ``pb.Alert``.

Kinds are the proto's ``AlertKind`` names; the scope says what the alert is about.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# AlertKind names (proto/yujing/v1/risk.proto), by scope.
SESSION_KINDS = ("LEVEL_RISE", "HANDOFF_NEEDED", "SLA_BREACH")
AGENT_KINDS = ("AGENT_FATIGUE",)
QUEUE_KINDS = ("NEGATIVE_SURGE", "VOLUME_SPIKE", "COMPLAINT_RATE_UP", "REPEATED_COMPLAINT")
CHAIN_KINDS = ("ESCALATION",)      # an alert not acknowledged by its deadline
KINDS = SESSION_KINDS + AGENT_KINDS + QUEUE_KINDS + CHAIN_KINDS


@dataclass
class AlertEvent:
    """One alert to raise. Levels and priorities are the kernel's numbers
    (``layout.LEVEL_*``: 0 none .. 3 red; priority 0 none, 1 P3 .. 4 P0)."""

    kind: str                       # one of KINDS
    tenant_id: str
    queue: str = ""
    session_id: str = ""            # session kinds
    agent_id: str = ""              # agent kinds (and the session's agent, when known)
    level: int = 0
    priority: int = 0
    risk_score: float = 0.0
    turn_id: str = ""               # the turn that raised it, if a turn did
    event_time_ms: int = 0          # the turn's time, or the end of the trend window
    intent_category: str = ""       # queue kinds per category ("" = the whole queue)
    reasons: list = field(default_factory=list)     # pb.Reason-like dicts (indicator, points, share, value, text_en, text_zh)
    figures: dict = field(default_factory=dict)     # named numbers: value, baseline, ratio, count, wait_s, sla_s ...
    summary_en: str = ""
    summary_zh: str = ""
    escalates_id: int = 0           # ESCALATION: the alert whose deadline passed
    channel: str = ""               # who it is for in the escalation chain ("supervisor", "manager", ...)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}")
