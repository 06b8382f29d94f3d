"""The alert hub: numbers every alert, keeps it in the alert log, serves the WatchAlerts
streams, records acknowledgements and raises an ESCALATION when a deadline passes.

The log (:class:`yujing.service.storage.segment_log.SegmentLog` in the data directory, or
:class:`MemoryLog` for a service without one) holds two kinds of record, told apart by
their first byte:

    b"A" + Alert        an alert as raised; its id is the record's id
    b"K" + Alert        an acknowledgement: only id, tenant_id, queue and ack are set

So the alert ids are the log's record ids: strictly increasing and never reused, also
across restarts, but not contiguous (an acknowledgement takes an id too). The alerts of a
batch are appended and committed together, before any subscriber sees them and before the
batch's answers are sent: an alert a subscriber has seen is in the log, and a subscriber
that resumes from its last id misses none and sees none twice. (If the log cannot write
them, they wait, unnumbered and unseen, and are logged first once it can: ``publish``.)

At start the retained log is read once: the acknowledgements, the alerts whose deadline
is still open (so an escalation due while the service was down is raised at the first
tick), and the most recent alerts for live subscribers.
"""
from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
from collections import Counter, namedtuple

from yujing.service.alerts.events import AlertEvent
from yujing.service.alerts.policy import AlertPolicy
from yujing.service.contract import pb
from yujing.service.errors import SessionNotFound, ShuttingDown, StateUnavailable
from yujing.service.storage.segment_log import LogError, write_failure
from yujing.service.validate import check_id

log = logging.getLogger(__name__)

REC_ALERT = b"A"
REC_ACK = b"K"
Record = namedtuple("Record", "id ts_ms payload")


class MemoryLog:
    """The log's interface without a disk, for a service run without a data directory:
    the newest ``max_records`` records, lost on exit."""

    def __init__(self, max_records: int = 100_000):
        self.max_records = max_records
        self._records: list = []
        self.next_id = 1
        self.dropped_records = 0

    @property
    def first_id(self) -> int:
        return self._records[0].id if self._records else self.next_id

    @property
    def last_id(self) -> int:
        return self.next_id - 1

    def append(self, payload: bytes, ts_ms: int) -> int:
        rid = self.next_id
        self.next_id += 1
        self._records.append(Record(rid, ts_ms, payload))
        return rid

    def commit(self) -> None:
        extra = len(self._records) - self.max_records
        if extra > 0:
            del self._records[:extra]
            self.dropped_records += extra

    def read(self, after_id: int, limit: int = 1000) -> list:
        start = max(0, after_id + 1 - self.first_id)
        return self._records[start:start + limit]

    def enforce_retention(self, now_ms: int) -> int:
        return 0

    def close(self) -> None:
        pass


def _priority_kernel(p: int) -> int:
    return max(0, p - 1)


class AlertHub:
    RECENT = 65_536          # alerts served to live subscribers from memory
    MAX_UNLOGGED = 65_536    # alerts kept waiting while the log cannot write (then the oldest go)

    def __init__(self, alert_log, policy_version: str, policy: AlertPolicy, clock, webhook=None):
        self.log = alert_log
        self.policy_version = policy_version
        self.policy = policy
        self.clock = clock
        self.webhook = webhook
        self._ids: list[int] = []           # recent alerts, id order
        self._alerts: list = []
        self._acks: dict[int, "pb.Acknowledgement"] = {}
        self._open: dict[int, "pb.Alert"] = {}      # deadline set, not acknowledged, not escalated
        self._deadlines: list = []                  # heap of (deadline_ms, id)
        self._changed: asyncio.Future | None = None
        self.raised = Counter()                     # by kind name
        self.ack_stats: dict = {}                   # (tenant, queue) -> [on_time, late, missed]
        self.subscribers = 0
        self.closing = False
        self.unlogged: list = []      # (AlertEvent, raised at ms) the log could not write yet
        self.unlogged_dropped = 0
        self._restore()

    # -- start ---------------------------------------------------------------------------
    def _restore(self) -> None:
        cursor, n = self.log.first_id - 1, 0
        while True:
            recs = self.log.read(cursor, 4096)
            if not recs:
                break
            for rec in recs:
                cursor = rec.id
                a = pb.Alert.FromString(rec.payload[1:])
                a.id = rec.id
                if rec.payload[:1] == REC_ACK:
                    self._acks[a.id] = a.ack
                    self._count_ack(a, a.ack.on_time, self._open.pop(a.id, None) is not None)
                elif rec.payload[:1] == REC_ALERT:
                    n += 1
                    self._remember(a)
                    self._note_escalation(a)
        if n:
            log.info("alert log: %d alerts retained (ids %d .. %d), %d acknowledged, %d awaiting acknowledgement",
                     n, self.log.first_id, self.log.last_id, len(self._acks), len(self._open))

    def _remember(self, a: "pb.Alert") -> None:
        self._ids.append(a.id)
        self._alerts.append(a)
        if len(self._ids) > 2 * self.RECENT:
            del self._ids[:self.RECENT]
            del self._alerts[:self.RECENT]
        if a.deadline_ms and a.id not in self._acks:
            self._open[a.id] = a
            heapq.heappush(self._deadlines, (a.deadline_ms, a.id))

    def _note_escalation(self, a: "pb.Alert") -> None:
        """An ESCALATION closes the alert it escalates, which counts as missed."""
        if a.kind == pb.ESCALATION:
            self._open.pop(a.escalates_id, None)
            self._stats(a.tenant_id, a.queue)[2] += 1

    def _stats(self, tenant: str, queue: str) -> list:
        s = self.ack_stats.get((tenant, queue))
        if s is None:
            if len(self.ack_stats) >= 4096:
                tenant, queue = "", "other"
                s = self.ack_stats.setdefault((tenant, queue), [0, 0, 0])
            else:
                s = self.ack_stats[(tenant, queue)] = [0, 0, 0]
        return s

    def _count_ack(self, a, on_time: bool, was_open: bool) -> None:
        """Count an acknowledgement: on time, or late while still open. A late one of an
        alert that already escalated was counted as missed then, and is not counted twice."""
        if on_time or was_open:
            self._stats(a.tenant_id, a.queue)[0 if on_time else 1] += 1

    # -- raising -------------------------------------------------------------------------
    def _to_alert(self, e: AlertEvent, now_ms: int, visible_ms: int | None = None) -> "pb.Alert":
        """The alert of ``e`` raised at ``now_ms``; its response deadline runs from
        ``visible_ms`` (default ``now_ms``), when subscribers can first see it."""
        a = pb.Alert(kind=pb.AlertKind.Value(e.kind), tenant_id=e.tenant_id, queue=e.queue,
                     session_id=e.session_id, agent_id=e.agent_id, level=e.level + 1,
                     priority=e.priority + 1, turn_id=e.turn_id, time_ms=now_ms,
                     event_time_ms=e.event_time_ms or now_ms, policy_version=self.policy_version,
                     risk_score=e.risk_score, summary_en=e.summary_en, summary_zh=e.summary_zh,
                     intent_category=e.intent_category, escalates_id=e.escalates_id,
                     channel=e.channel or self.policy.chain[0])
        for r in e.reasons:
            a.reasons.add(**r) if isinstance(r, dict) else a.reasons.add().CopyFrom(r)
        for k, v in e.figures.items():
            a.figures[k] = float(v)
        respond = self.policy.deadline_ms(e.priority)
        a.deadline_ms = (now_ms if visible_ms is None else visible_ms) + respond if respond else 0
        return a

    def publish(self, events: list, now_ms: int | None = None) -> list:
        """Number, log (one commit) and send ``events``; returns the ``pb.Alert`` messages.

        If the log cannot write them (a full disk), they wait in :attr:`unlogged`, in order,
        unnumbered and unseen by subscribers, and every later call (a batch's, or the
        scheduler's :meth:`tick`) tries them again first; the batch that raised them is
        answered as usual: its turns are applied and in the turn log, whose replay would
        raise them again after a crash (:meth:`Server._take_snapshot` waits while any wait)."""
        now = self.clock() if now_ms is None else now_ms
        if self.unlogged:
            events = [*self.unlogged, *((e, now) for e in events)]
        elif not events:
            return []
        else:
            events = [(e, now) for e in events]
        out = []
        try:
            for e, raised_at in events:
                a = self._to_alert(e, raised_at, now)    # a waiting alert's deadline runs from now
                a.id = self.log.append(REC_ALERT + a.SerializeToString(), raised_at)
                out.append(a)
            self.log.commit()
        except (OSError, LogError) as exc:     # uncommitted appends are dropped, their ids given again
            if not self.unlogged:
                log.error("alert log write failed; %d alerts wait in memory and are tried again with the next "
                          "batch or scheduler pass: %s", len(events), exc)
            self.unlogged = events[-self.MAX_UNLOGGED:]
            self.unlogged_dropped += len(events) - len(self.unlogged)
            return []
        if self.unlogged:
            log.warning("alert log writing again: %d alerts that waited are logged", len(self.unlogged))
            self.unlogged = []
        for a in out:
            self._remember(a)
            self.raised[pb.AlertKind.Name(a.kind)] += 1
            self._note_escalation(a)
            if self.webhook is not None:
                self.webhook.offer(a.id, alert_json(a))
        self._notify()
        return out

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def tick(self, now_ms: int | None = None) -> list:
        """Raise an ESCALATION for every open alert whose deadline has passed; the last
        in the policy's chain is counted as missed and not escalated further."""
        now = self.clock() if now_ms is None else now_ms
        events, chain = [], self.policy.chain
        while self._deadlines and self._deadlines[0][0] <= now:
            _, aid = heapq.heappop(self._deadlines)
            a = self._open.pop(aid, None)
            if a is None:
                continue
            step = chain.index(a.channel) + 1 if a.channel in chain else 1
            if step >= len(chain):
                self._stats(a.tenant_id, a.queue)[2] += 1
                continue
            prio = min(4, _priority_kernel(a.priority) + 1)
            events.append(AlertEvent(
                kind="ESCALATION", tenant_id=a.tenant_id, queue=a.queue, session_id=a.session_id,
                agent_id=a.agent_id, level=max(0, a.level - 1), priority=prio, risk_score=a.risk_score,
                event_time_ms=a.deadline_ms, intent_category=a.intent_category, escalates_id=a.id,
                channel=chain[step], reasons=list(a.reasons),
                figures={"overdue_s": (now - a.deadline_ms) / 1000.0},
                summary_en=f"not acknowledged by its deadline: alert {a.id} ({pb.AlertKind.Name(a.kind)}) "
                           f"goes to the {chain[step]}",
                summary_zh=f"告警 {a.id}（{pb.AlertKind.Name(a.kind)}）超时未响应，升级至{chain[step]}"))
        return self.publish(events, now)

    # -- acknowledging -------------------------------------------------------------------
    def find(self, alert_id: int) -> "pb.Alert | None":
        k = bisect.bisect_left(self._ids, alert_id)
        if k < len(self._ids) and self._ids[k] == alert_id:
            return self._alerts[k]
        for rec in self.log.read(alert_id - 1, 1):
            if rec.id == alert_id and rec.payload[:1] == REC_ALERT:
                a = pb.Alert.FromString(rec.payload[1:])
                a.id = rec.id
                return a
        return None

    def ack(self, req: "pb.AckRequest", max_bytes: int = 128) -> "pb.Alert":
        check_id(req.by, "by", max_bytes, True)        # who takes the alert
        check_id(req.note, "note", 1024, False)
        a = self.find(req.alert_id) if req.alert_id else None
        if a is None or (req.tenant_id and a.tenant_id != req.tenant_id):
            raise SessionNotFound(f"no alert {req.alert_id} in the alert log (never raised, or dropped "
                                  f"by retention)", "alert_id")
        out = pb.Alert()
        out.CopyFrom(a)
        if a.id in self._acks:
            out.ack.CopyFrom(self._acks[a.id])
            return out
        now = self.clock()
        ack = pb.Acknowledgement(by=req.by, time_ms=now, note=req.note,
                                 on_time=not a.deadline_ms or now <= a.deadline_ms)
        rec = pb.Alert(tenant_id=a.tenant_id, queue=a.queue, ack=ack)
        try:
            self.log.append(REC_ACK + rec.SerializeToString(), now)
            self.log.commit()
        except (OSError, LogError) as exc:
            raise StateUnavailable(f"the service cannot write its alert log ({write_failure(exc)}); "
                                   "the acknowledgement was not recorded, retry later") from exc
        self._acks[a.id] = ack
        self._count_ack(a, ack.on_time, self._open.pop(a.id, None) is not None)
        out.ack.CopyFrom(ack)
        return out

    def queue_acks(self, tenant: str, queue: str) -> tuple[int, float]:
        """(alerts of the queue awaiting acknowledgement, share acknowledged on time among
        those acknowledged or past their deadline; 1.0 when none)."""
        open_n = sum(1 for a in self._open.values() if a.tenant_id == tenant and a.queue == queue)
        on_time, late, missed = self.ack_stats.get((tenant, queue), (0, 0, 0))
        total = on_time + late + missed
        return open_n, (on_time / total if total else 1.0)

    # -- watching ------------------------------------------------------------------------
    def after(self, cursor: int, limit: int = 512) -> list:
        """Alerts with id > cursor, from memory when they are recent, else from the log."""
        if self._ids and cursor >= self._ids[0] - 1:
            k = bisect.bisect_right(self._ids, cursor)
            return self._alerts[k:k + limit]
        out = []
        while not out:
            recs = self.log.read(cursor, limit)
            if not recs:
                break
            for rec in recs:
                cursor = rec.id
                if rec.payload[:1] == REC_ALERT:
                    a = pb.Alert.FromString(rec.payload[1:])
                    a.id = rec.id
                    out.append(a)
            if self._ids and cursor >= self._ids[0] - 1 and not out:
                return self.after(cursor, limit)
        return out

    def raised_keys_after(self, cursor: int) -> set:
        """``(kind, tenant, session, agent, turn)`` of every alert after ``cursor``: what a
        replay of the turn log (a restart) must not raise again (engine.replay_key)."""
        keys = set()
        while True:
            batch = self.after(cursor, 4096)
            if not batch:
                return keys
            for a in batch:
                keys.add((pb.AlertKind.Name(a.kind), a.tenant_id, a.session_id, a.agent_id, a.turn_id))
            cursor = batch[-1].id

    def start_cursor(self, q: "pb.AlertQuery") -> tuple[int, bool]:
        """(cursor, gap): where a query starts, and whether retention dropped alerts after
        its cursor."""
        if q.after_id:
            return q.after_id, q.after_id + 1 < self.log.first_id
        if q.from_oldest:
            return self.log.first_id - 1, False
        return self.log.last_id, False

    async def watch(self, q: "pb.AlertQuery"):
        """Matching alerts after the query's start, then live; never ends by itself."""
        cursor, gap = self.start_cursor(q)
        kinds, queues = set(q.kinds), set(q.queues)
        self.subscribers += 1
        try:
            while True:
                if self.closing:
                    raise ShuttingDown("server is shutting down; resume on another replica (or after the "
                                       f"restart) with after_id = {cursor}")
                batch = self.after(cursor)
                if not batch:
                    if self._changed is None:
                        self._changed = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._changed)
                    continue
                for a in batch:
                    cursor = a.id
                    if ((q.tenant_id and a.tenant_id != q.tenant_id) or (kinds and a.kind not in kinds)
                            or (queues and a.queue not in queues) or a.level < q.min_level):
                        continue
                    ack = self._acks.get(a.id)
                    if gap or ack is not None:
                        a = _copy(a)
                        a.gap_before, gap = gap, False
                        if ack is not None:
                            a.ack.CopyFrom(ack)
                    yield a
        finally:
            self.subscribers -= 1

    def stop_watchers(self) -> None:
        """End every WatchAlerts stream (UNAVAILABLE, with the id to resume after)."""
        self.closing = True
        self._notify()

    def close(self) -> None:
        self.stop_watchers()
        self.log.close()


def _copy(a: "pb.Alert") -> "pb.Alert":
    out = pb.Alert()
    out.CopyFrom(a)
    return out


def alert_json(a: "pb.Alert") -> bytes:
    """The alert as the webhook sends it: proto3 JSON (field names in lowerCamelCase, enums
    by name, 64-bit integers as strings)."""
    from google.protobuf import json_format

    return json_format.MessageToJson(a, indent=None, preserving_proto_field_name=False).encode()
