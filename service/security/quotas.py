"""Per-tenant quotas: live sessions, and turns per second (a token bucket).

    q = TenantQuotas(Limits(max_sessions=1000, turns_per_s=200), overrides, table)
    release = q.admit(items)        # QuotaExceeded, or the turns are counted
    ...                             # score them
    release()                       # their new sessions are in the table now (or refused)

Limits come from the flags (``--quota-max-sessions``, ``--quota-turns-per-s``,
``--quota-burst-turns``; 0: no limit) and, per tenant, from the tokens file's ``quotas``
(the flags for what it leaves out). Every check runs before any count moves, so a refused
call changes nothing. A turn of a session the table does not hold yet counts against
``max_sessions`` from its admission until its batch is applied (a reservation), so
concurrent calls cannot overshoot the quota while their batch is still queued.
Repeated turns (idempotency hits) are answered from the cache and are not counted.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from yujing.service.errors import QuotaExceeded

SESSION_RETRY_S = 1.0        # the hint of a live-sessions refusal: sessions end or expire at their pace


@dataclass(frozen=True)
class Limits:
    max_sessions: int = 0       # live sessions of the tenant (0: no limit)
    turns_per_s: float = 0.0    # sustained rate (0: no limit)
    burst_turns: float = 0.0    # bucket size (0: one second of turns_per_s)

    def merged(self, override: dict | None) -> "Limits":
        return Limits(**{**self.__dict__, **override}) if override else self

    @property
    def active(self) -> bool:
        return bool(self.max_sessions or self.turns_per_s)


class TenantQuotas:
    def __init__(self, defaults: Limits, overrides, table, clock=time.monotonic, on_refusal=None):
        """``overrides()``: the current tenant -> dict of the tokens file; ``table``: the
        session table (``live_of(tenant)``, ``holds(key)``)."""
        self.defaults = defaults
        self.overrides = overrides
        self.table = table
        self.clock = clock
        self.on_refusal = on_refusal or (lambda quota, n: None)    # metrics: quota name, turns refused
        self._buckets: dict = {}                 # tenant -> [tokens, last refill time]
        self._pending: dict = defaultdict(dict)  # tenant -> {session key: reservations} not yet in the table

    def limits(self, tenant: str) -> Limits:
        return self.defaults.merged(self.overrides().get(tenant))

    def admit(self, items, repeats=()) -> "callable | None":
        """Count ``items`` (PendingTurns) against their tenants' quotas, or raise
        QuotaExceeded and count nothing; returns the release of their reservations.
        Items whose turn id is in ``repeats`` (the idempotency window) are not counted."""
        if not self.defaults.active and not self.overrides():
            return None
        by_tenant: dict = {}
        for it in items:
            if it.idem in repeats:
                continue
            by_tenant.setdefault(it.key[0], []).append(it)
        plans = [self._plan(tenant, its) for tenant, its in by_tenant.items()]
        reserved = []
        for tenant, take, bucket, new_keys in plans:      # all checks passed: commit
            if bucket is not None:
                bucket[0] -= take
            pend = self._pending[tenant]
            for key in new_keys:
                pend[key] = pend.get(key, 0) + 1
                reserved.append((tenant, key))
        return (lambda: self._release(reserved)) if reserved else None

    def _plan(self, tenant: str, its: list):
        lim = self.limits(tenant)
        bucket = self._check_rate(tenant, lim, len(its)) if lim.turns_per_s else None
        new_keys = self._check_sessions(tenant, lim, its) if lim.max_sessions else ()
        return tenant, len(its), bucket, new_keys

    def _check_rate(self, tenant: str, lim: Limits, n: int) -> list:
        size = lim.burst_turns or max(1.0, lim.turns_per_s)
        now = self.clock()
        b = self._buckets.get(tenant)
        if b is None:
            b = self._buckets[tenant] = [size, now]
        b[0] = min(size, b[0] + (now - b[1]) * lim.turns_per_s)
        b[1] = now
        if b[0] >= n:
            return b
        self.on_refusal("turns_per_s", n)
        if n > size:
            raise QuotaExceeded(f"tenant {tenant!r}: {n} turns in one call exceed its burst of {size:g} turns "
                                f"({lim.turns_per_s:g} turns/s); send fewer turns per call", tenant,
                                "turns_per_s", n / lim.turns_per_s)
        wait = (n - b[0]) / lim.turns_per_s
        raise QuotaExceeded(f"tenant {tenant!r} is over its quota of {lim.turns_per_s:g} turns/s "
                            f"(burst {size:g}); retry in {wait:.3f} s", tenant, "turns_per_s", wait)

    def _check_sessions(self, tenant: str, lim: Limits, its: list) -> list:
        pend = self._pending.get(tenant, {})
        new_keys = list(dict.fromkeys(it.key for it in its if it.key not in pend and not self.table.holds(it.key)))
        if not new_keys:
            return new_keys
        live = self.table.live_of(tenant) + len(pend)
        if live + len(new_keys) <= lim.max_sessions:
            return new_keys
        self.on_refusal("max_sessions", len(its))
        raise QuotaExceeded(f"tenant {tenant!r} holds {live} live sessions of its quota of {lim.max_sessions}; "
                            f"this call would start {len(new_keys)} more (end sessions with EndSession, or let "
                            f"idle ones expire)", tenant, "max_sessions", SESSION_RETRY_S)

    def _release(self, reserved) -> None:
        for tenant, key in reserved:
            pend = self._pending.get(tenant)
            if pend is None or key not in pend:
                continue
            pend[key] -= 1
            if pend[key] <= 0:
                del pend[key]
            if not pend:
                del self._pending[tenant]
