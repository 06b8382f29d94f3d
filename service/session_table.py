"""The session table: (tenant, session) -> slot in the struct-of-arrays state of
:mod:`yujing.kernels.layout`, with TTL expiry, least-recently-active eviction, and the agent
table beside it.

Slot life: a new key takes a free slot and its first turn carries ``T_NEW`` (the kernel
initialises the columns). A session idle for ``ttl_ms`` (server clock) expires: the
next turn of the same key starts a new session. When no slot is free, expired sessions
are swept; if none, the least recently active sessions idle for at least
``evict_min_idle_ms`` are evicted (oldest first); if none can be, the turn is refused
with RESOURCE_EXHAUSTED and changes nothing. Sessions already named in the batch being
resolved are never evicted. ``EndSession`` frees the slot at once.

    >>> t = SessionTable(capacity=4)
    >>> slots, new, errors = t.resolve([("t", "a"), ("t", "a"), ("t", "b")], now_ms=1000)
    >>> slots.tolist(), new.tolist(), errors
    ([0, 0, 1], [1, 0, 1], {})
"""
from __future__ import annotations

import logging

import numpy as np

from yujing.kernels import get_backend
from yujing.kernels import layout as L
from yujing.service.errors import SessionNotFound, TableFull

log = logging.getLogger(__name__)


class _SlotIndex:
    """Key -> slot, with a free list and a host-side last-seen clock for eviction."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.slot_of: dict = {}
        self.per_tenant: dict = {}      # key[0] (the tenant) -> keys held: the live-sessions quota
        self.key_of: list = [None] * capacity
        self.free = list(range(capacity - 1, -1, -1))
        self.last_seen = np.zeros(capacity, np.int64)
        self.occupied = np.zeros(capacity, bool)

    def take(self, key, now_ms: int) -> int:
        slot = self.free.pop()
        self.slot_of[key] = slot
        self.per_tenant[key[0]] = self.per_tenant.get(key[0], 0) + 1
        self.key_of[slot] = key
        self.occupied[slot] = True
        self.last_seen[slot] = now_ms
        return slot

    def release(self, slot: int) -> None:
        key = self.key_of[slot]
        if key is not None:
            del self.slot_of[key]
            left = self.per_tenant[key[0]] - 1
            if left:
                self.per_tenant[key[0]] = left
            else:
                del self.per_tenant[key[0]]
        self.key_of[slot] = None
        self.occupied[slot] = False
        self.free.append(slot)

    def resolve(self, keys, now_ms: int, expire_before: int | None, make_room):
        """Slots for ``keys`` in order (``None``: no slot). A key last seen before
        ``expire_before`` starts a new life on a fresh slot; when none is free,
        ``make_room(in_batch) -> bool`` may free one. Returns ``(slots, new, refused
        positions, expired count)``."""
        n = len(keys)
        slots = np.full(n, -1, np.int64)
        new = np.zeros(n, np.int64)
        refused: list[int] = []
        expired = 0
        in_batch: set[int] = set()
        for pos, key in enumerate(keys):
            if key is None:
                continue
            slot = self.slot_of.get(key)
            if (slot is not None and expire_before is not None and slot not in in_batch
                    and self.last_seen[slot] < expire_before):
                self.release(slot)
                expired += 1
                slot = None
            if slot is None:
                if not self.free and not make_room(in_batch):
                    refused.append(pos)
                    continue
                slot = self.take(key, now_ms)
                new[pos] = 1
            self.last_seen[slot] = now_ms
            in_batch.add(slot)
            slots[pos] = slot
        return slots, new, refused, expired

    def idle_slots(self, older_than_ms: int, exclude: set, limit: int | None = None) -> np.ndarray:
        """Occupied slots last seen before ``older_than_ms``, oldest first."""
        cand = np.flatnonzero(self.occupied & (self.last_seen < older_than_ms))
        if exclude and cand.size:
            cand = cand[~np.isin(cand, np.fromiter(exclude, np.int64, len(exclude)))]
        if limit is not None and cand.size > limit:
            part = np.argpartition(self.last_seen[cand], limit - 1)[:limit]
            cand = cand[part]
        return cand[np.argsort(self.last_seen[cand], kind="stable")]


class SessionTable:
    """Fixed-capacity session and agent tables on the chosen kernel backend."""

    EVICT_BATCH = 64

    def __init__(self, capacity: int = 1 << 20, agent_capacity: int = 1 << 16,
                 ttl_ms: int = 30 * 60_000, evict_min_idle_ms: int = 60_000,
                 agent_idle_ms: int = 2 * 3600_000, backend: str = "auto"):
        self.kernels = get_backend(backend)
        xp = self.kernels.xp
        self.state = L.new_session_arrays(capacity, xp)
        self.agents = L.new_agent_arrays(agent_capacity, xp)
        self.sessions = _SlotIndex(capacity)
        self.agent_index = _SlotIndex(agent_capacity)
        self.ttl_ms = ttl_ms
        self.evict_min_idle_ms = evict_min_idle_ms
        self.agent_idle_ms = agent_idle_ms
        self.expired = 0
        self.evicted = 0
        self._agents_full_warned = False
        self._victims: list = []     # eviction candidates, oldest last

    @property
    def capacity(self) -> int:
        return self.sessions.capacity

    def __len__(self) -> int:
        return len(self.sessions.slot_of)

    # -- resolution, before a batch is applied ---------------------------------------
    def resolve(self, keys, now_ms: int):
        """Slots for a batch's session keys: ``(slots, new, errors)``; a refused
        position has slot -1 and an entry in ``errors`` (position -> TableFull)."""
        slots, new, refused, expired = self.sessions.resolve(keys, now_ms, now_ms - self.ttl_ms,
                                                             lambda in_batch: self._make_room(now_ms, in_batch))
        self.expired += expired
        msg = (f"session table full ({self.capacity} sessions, none idle for "
               f"{self.evict_min_idle_ms // 1000} s); retry later")
        return slots, new, {pos: TableFull(msg, "session_id") for pos in refused}

    def resolve_agents(self, keys, now_ms: int):
        """Agent slots (-1 for no agent, or when the agent table is full: no fatigue)."""
        idx = self.agent_index

        def make_room(in_batch):
            for old in idx.idle_slots(now_ms - self.agent_idle_ms, in_batch, self.EVICT_BATCH):
                idx.release(int(old))
            return bool(idx.free)

        slots, new, refused, _ = idx.resolve(keys, now_ms, None, make_room)
        if refused and not self._agents_full_warned:
            self._agents_full_warned = True
            log.warning("agent table full (%d agents active in 2 h): new agents get no "
                        "fatigue indicator; raise --agent-capacity", idx.capacity)
        return slots, new

    def _make_room(self, now_ms: int, in_batch: set) -> bool:
        """Free one slot: an expired session, else the least recently active idle one.

        The scan for eviction candidates is amortised: it keeps the EVICT_BATCH oldest
        idle sessions and takes one per call, re-checking that each is still idle."""
        idx = self.sessions
        for slot in idx.idle_slots(now_ms - self.ttl_ms, in_batch):
            idx.release(int(slot))
            self.expired += 1
        if idx.free:
            return True
        cutoff = now_ms - self.evict_min_idle_ms
        for attempt in range(2):
            while self._victims:
                slot, key = self._victims.pop()
                if idx.key_of[slot] == key and idx.last_seen[slot] < cutoff and slot not in in_batch:
                    idx.release(slot)
                    self.evicted += 1
                    return True
            if attempt == 0:
                oldest = idx.idle_slots(cutoff, in_batch, self.EVICT_BATCH)
                self._victims = [(int(s), idx.key_of[int(s)]) for s in oldest[::-1]]
        return False

    def sweep(self, now_ms: int) -> int:
        """Expire every session idle for the TTL; returns how many."""
        idle = self.sessions.idle_slots(now_ms - self.ttl_ms, set())
        for slot in idle:
            self.sessions.release(int(slot))
        self.expired += int(idle.size)
        return int(idle.size)

    # -- applying and reading -----------------------------------------------------------
    def apply(self, ti, tf, th, pf):
        """Run the update kernel on a resolved batch; returns host ``(of, oi)``."""
        return self.kernels.apply(self.state, self.agents, ti, tf, th, pf)

    def sla_breaches(self, now_ms: int, max_out: int = 65536) -> list:
        """The scheduler's pass (:mod:`yujing.kernels.scan`): live sessions whose customer
        has waited at least the SLA at the server clock ``now_ms`` and was not reported
        for this wait yet, each marked as reported; at most ``max_out`` (the rest come on
        the next pass). Returns ``[(key, slot, wait_ms, sla_ms), ...]``. Call it where
        batches are resolved and applied (not between a batch's ``resolve`` and its
        ``apply``: a new session's slot holds its previous life until then)."""
        slots, wait_ms, sla_ms = self.kernels.sla_scan(self.state, self.sessions.occupied, now_ms, max_out)
        key_of = self.sessions.key_of
        return [(key_of[s], s, w, sla) for s, w, sla in zip(slots.tolist(), wait_ms.tolist(), sla_ms.tolist())]

    # -- snapshots (service/storage/snapshot.py writes them) ----------------------------------
    def export(self) -> tuple[dict, dict]:
        """Host copies of the state and what locates it: ``(arrays, meta)`` for a snapshot.
        Only live slots' keys are listed; free slots' stale columns travel but are never read."""
        arrays = {f"s.{n}": np.ascontiguousarray(self.kernels.to_host(a)) for n, a in self.state.items()}
        arrays.update({f"a.{n}": np.ascontiguousarray(self.kernels.to_host(a)) for n, a in self.agents.items()})
        for name, idx in (("sessions", self.sessions), ("agents", self.agent_index)):
            live = np.flatnonzero(idx.occupied)
            arrays[f"{name}.slots"] = live.astype(np.int64)
            arrays[f"{name}.last_seen"] = idx.last_seen[live]
        meta = {"capacity": self.capacity, "agent_capacity": self.agent_index.capacity,
                # the key tuples themselves (immutable: the writer thread may read them while the
                # loop goes on), gathered at C speed: a Python loop here stalled the loop 2.4 s at 1 M
                "session_keys": list(map(self.sessions.key_of.__getitem__, arrays["sessions.slots"].tolist())),
                "agent_keys": list(map(self.agent_index.key_of.__getitem__, arrays["agents.slots"].tolist())),
                "expired": self.expired, "evicted": self.evicted}
        return arrays, meta

    def restore(self, arrays: dict, meta: dict) -> int:
        """Load an :meth:`export` into this (empty) table of the same capacities; the
        number of sessions restored."""
        from yujing.service.errors import ConfigError

        if meta["capacity"] != self.capacity or meta["agent_capacity"] != self.agent_index.capacity:
            raise ConfigError(f"the snapshot holds a table of {meta['capacity']:,} sessions and "
                              f"{meta['agent_capacity']:,} agents; start with --capacity {meta['capacity']} "
                              f"--agent-capacity {meta['agent_capacity']} (or move the snapshot away)", "capacity")
        xp = self.kernels.xp
        for n in self.state:
            self.state[n][...] = xp.asarray(arrays[f"s.{n}"])
        for n in self.agents:
            self.agents[n][...] = xp.asarray(arrays[f"a.{n}"])
        for name, idx in (("sessions", self.sessions), ("agents", self.agent_index)):
            slots_a = arrays[f"{name}.slots"]
            slots = slots_a.tolist()
            keys = list(map(tuple, meta["session_keys" if name == "sessions" else "agent_keys"]))
            idx.occupied[slots_a] = True
            idx.last_seen[slots_a] = arrays[f"{name}.last_seen"]
            idx.free = np.flatnonzero(~idx.occupied)[::-1].tolist()    # lowest slot handed out first
            idx.slot_of.update(zip(keys, slots))
            key_of = idx.key_of
            for s, key in zip(slots, keys):
                key_of[s] = key
            for key in keys:
                idx.per_tenant[key[0]] = idx.per_tenant.get(key[0], 0) + 1
        self.expired, self.evicted = meta.get("expired", 0), meta.get("evicted", 0)
        return len(self.sessions.slot_of)

    def live_of(self, tenant: str) -> int:
        """Sessions of ``tenant`` in the table (the live-sessions quota)."""
        return self.sessions.per_tenant.get(tenant, 0)

    def holds(self, key) -> bool:
        return key in self.sessions.slot_of

    def slot(self, key) -> int:
        slot = self.sessions.slot_of.get(key)
        if slot is None:
            raise SessionNotFound(f"no live session {key[1]!r} for tenant {key[0]!r}", "session_id")
        return slot

    def snapshot(self, key, pf) -> dict:
        """Indicators (at the session clock), score, level, priority and counters."""
        from yujing.kernels.update_cpu import session_indicators

        slot = self.slot(key)
        host = {name: self.kernels.to_host(arr[slot:slot + 1]) for name, arr in self.state.items()}
        out = np.zeros((L.OF_ROWS, 1))
        session_indicators(host["sf"], host["si"], host["sc"], host["sb"], host["sw"], 0, pf, out)
        return {
            "indicators": {name: float(out[k, 0]) for k, name in enumerate(L.INDICATORS)},
            "score": float(host["sf"][0, L.F_SCORE]),
            "level": int(host["sb"][0, L.B_LEVEL]),
            "priority": int(host["sb"][0, L.B_PRIORITY]),
            "started_ms": int(host["si"][0, L.I_FIRST_TS]),
            "last_turn_ms": int(host["si"][0, L.I_LAST_TS]),
            "turns": int(host["sc"][0, L.C_TURNS]),
            "customer_turns": int(host["sc"][0, L.C_CUSTOMER]),
            "wait_since_ms": int(host["si"][0, L.I_WAIT_SINCE]),
            "sla_ms": int(host["sf"][0, L.F_SLA_MS]),
        }

    def end(self, key, pf) -> dict:
        snap = self.snapshot(key, pf)
        self.sessions.release(self.sessions.slot_of[key])
        return snap
