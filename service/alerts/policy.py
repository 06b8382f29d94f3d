"""The policy's ``[alerts]`` section: response deadlines by priority (DOMAIN: P0 within
15 minutes, P1 a plan within 2 hours, P2 within 48 hours), the escalation chain an alert
climbs when nobody acknowledges it, and the thresholds of the session and agent alerts.
Optional in a policy file: a file without it gets these defaults.

    >>> p = AlertPolicy.from_section({"response_minutes": {"P0": 10}}, "policy.toml")
    >>> p.deadline_ms(4), p.deadline_ms(3), p.deadline_ms(1)
    (600000, 7200000, 0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from yujing.service.errors import ConfigError

PRIORITY_NAMES = ("NONE", "P3", "P2", "P1", "P0")     # kernel priority numbers 0 .. 4

DEFAULT_ALERTS_TOML = """\
# The early-warning layer (README "Alerts"): who must answer an alert by when, and who is
# told next when nobody does. Optional: a policy without this table gets these values.
[alerts]
# Response deadline by priority, in minutes (DOMAIN: P0 15 min, P1 a plan within 2 h,
# P2 within 48 h); 0: no deadline (P3 waits for the next iteration).
response_minutes = { P0 = 15.0, P1 = 120.0, P2 = 2880.0, P3 = 0.0 }
# An alert not acknowledged by its deadline raises an ESCALATION alert for the next in
# this chain, one priority step up, with that priority's deadline; the last one is final.
chain = ["supervisor", "manager", "director"]
# The lowest priority of an alert of each session kind (the session's own priority when higher).
sla_breach_priority = "P1"
handoff_priority = "P1"
level_rise_priority = "P3"
# AGENT_FATIGUE: this many negative customer turns taken by one agent in 2 h; raised again
# only after the count fell below half of it.
agent_fatigue_turns = 20
agent_fatigue_priority = "P2"
"""


@dataclass
class AlertPolicy:
    response_ms: tuple = (0, 0, 2880 * 60_000, 120 * 60_000, 15 * 60_000)   # by priority 0 .. 4
    chain: tuple = ("supervisor", "manager", "director")
    sla_breach_priority: int = 3
    handoff_priority: int = 3
    level_rise_priority: int = 1
    agent_fatigue_turns: float = 20.0
    agent_fatigue_priority: int = 2

    def deadline_ms(self, priority: int) -> int:
        """The response time of ``priority`` (kernel number), 0 for none."""
        return int(self.response_ms[max(0, min(4, priority))])

    @classmethod
    def from_section(cls, t: dict | None, path: str) -> "AlertPolicy":
        d = cls()
        if t is None:
            return d
        allowed = {"response_minutes", "chain", "sla_breach_priority", "handoff_priority",
                   "level_rise_priority", "agent_fatigue_turns", "agent_fatigue_priority"}
        extra = sorted(set(t) - allowed)
        if extra:
            raise ConfigError(f"{path}: unknown key(s) in [alerts]: {', '.join(extra)}", "alerts")
        resp = list(d.response_ms)
        rm = t.get("response_minutes", {})
        if not isinstance(rm, dict):
            raise ConfigError(f"{path}: alerts.response_minutes must be a table like {{ P0 = 15.0 }}",
                              "alerts.response_minutes")
        for name, v in rm.items():
            if name not in PRIORITY_NAMES[1:]:
                raise ConfigError(f"{path}: alerts.response_minutes.{name}: expected P0, P1, P2 or P3",
                                  "alerts.response_minutes")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{path}: alerts.response_minutes.{name} = {v!r}: expected minutes >= 0",
                                  f"alerts.response_minutes.{name}")
            resp[PRIORITY_NAMES.index(name)] = int(round(v * 60_000))
        chain = t.get("chain", list(d.chain))
        if not (isinstance(chain, list) and chain and all(isinstance(c, str) and c for c in chain)):
            raise ConfigError(f"{path}: alerts.chain must be a non-empty list of names", "alerts.chain")

        def prio(key: str, default: int) -> int:
            v = t.get(key, PRIORITY_NAMES[default])
            if v not in PRIORITY_NAMES[1:]:
                raise ConfigError(f"{path}: alerts.{key} = {v!r}; expected P0, P1, P2 or P3", f"alerts.{key}")
            return PRIORITY_NAMES.index(v)

        turns = t.get("agent_fatigue_turns", d.agent_fatigue_turns)
        if isinstance(turns, bool) or not isinstance(turns, (int, float)) or not 1 <= turns <= 100_000:
            raise ConfigError(f"{path}: alerts.agent_fatigue_turns = {turns!r}: expected 1 .. 100,000",
                              "alerts.agent_fatigue_turns")
        return cls(response_ms=tuple(resp), chain=tuple(chain),
                   sla_breach_priority=prio("sla_breach_priority", d.sla_breach_priority),
                   handoff_priority=prio("handoff_priority", d.handoff_priority),
                   level_rise_priority=prio("level_rise_priority", d.level_rise_priority),
                   agent_fatigue_turns=float(turns),
                   agent_fatigue_priority=prio("agent_fatigue_priority", d.agent_fatigue_priority))
