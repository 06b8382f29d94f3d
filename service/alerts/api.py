"""The ``yujing.v1.Alerts`` gRPC handlers: WatchAlerts, AckAlert, GetQueueHealth.

Every request is checked before it reaches the hub; a bad one is INVALID_ARGUMENT with a
message naming the field, and changes nothing. With tokens, each request's ``tenant_id``
is bound to the caller's (service/security/auth.py): a tenant's token watches, acknowledges
and reads the queues of its own tenant only.
"""
from __future__ import annotations

import logging

from yujing.service.contract import pb, pb_grpc
from yujing.service.errors import InvalidTurn, SessionNotFound, ShuttingDown, YujingError, fail
from yujing.service.validate import check_id

log = logging.getLogger(__name__)
MAX_QUERY_QUEUES = 256
_KINDS = set(pb.AlertKind.values()) - {pb.ALERT_KIND_UNSPECIFIED}
_LEVELS = set(pb.Level.values())


def check_query(q: "pb.AlertQuery", max_id_bytes: int) -> None:
    check_id(q.tenant_id, "tenant_id", max_id_bytes, False)
    if len(q.queues) > MAX_QUERY_QUEUES:
        raise InvalidTurn(f"queues names {len(q.queues)} queues; the limit is {MAX_QUERY_QUEUES}", "queues")
    for k, name in enumerate(q.queues):
        check_id(name, f"queues[{k}]", max_id_bytes, False)
    for k, kind in enumerate(q.kinds):
        if kind not in _KINDS:
            raise InvalidTurn(f"kinds[{k}] = {kind} is not an AlertKind", f"kinds[{k}]")
    if q.min_level not in _LEVELS:
        raise InvalidTurn(f"min_level = {q.min_level} is not a Level", "min_level")


class AlertsServicer(pb_grpc.AlertsServicer):
    def __init__(self, owner):
        self.o = owner          # the YujingServer: config, hub, trends, auth

    def _bind(self, context, request):
        """Who the caller is (UNAUTHENTICATED), and ``request.tenant_id`` bound to it."""
        auth = self.o.auth
        principal = auth.principal(context.invocation_metadata())
        auth.bind(principal, request)
        return principal

    async def WatchAlerts(self, request, context):
        try:
            self._bind(context, request)
            check_query(request, self.o.config.max_id_bytes)
            if self.o.draining:
                raise ShuttingDown("server is shutting down; resume on another replica with after_id")
            metadata = context.invocation_metadata()
            async for alert in self.o.hub.watch(request):
                self.o.auth.principal(metadata)         # a token revoked meanwhile ends the stream
                yield alert
        except YujingError as err:
            fail(context, err)

    async def AckAlert(self, request, context):
        try:
            self._bind(context, request)
            check_id(request.tenant_id, "tenant_id", self.o.config.max_id_bytes, False)
            if not request.alert_id:
                raise InvalidTurn("alert_id is required", "alert_id")
            return self.o.hub.ack(request, self.o.config.max_id_bytes)
        except YujingError as err:
            return fail(context, err, pb.Alert())

    async def GetQueueHealth(self, request, context):
        try:
            self._bind(context, request)
            for name in ("tenant_id", "queue"):
                check_id(getattr(request, name), name, self.o.config.max_id_bytes, False)
            return self.o.queue_health(request.tenant_id, request.queue)
        except YujingError as err:
            return fail(context, err, pb.QueueHealth())


def queue_health(trends, hub, tenant: str, queue: str, now_ms: int) -> "pb.QueueHealth":
    """A ``QueueHealth`` from the trend tracker's figures and the hub's acknowledgements."""
    figures = trends.health(tenant, queue, now_ms) if trends is not None else None
    if not figures:
        raise SessionNotFound(f"no turns seen for queue {queue!r} of tenant {tenant!r}", "queue")
    out = pb.QueueHealth(tenant_id=tenant, queue=queue, health_index=float(figures["health_index"]),
                         as_of_ms=int(figures.get("as_of_ms", 0)))
    for name, w in figures["windows"].items():
        out.windows.add(window=name, **{k: w[k] for k in _WINDOW_FIELDS if k in w})
    for name, c in sorted(figures.get("categories", {}).items()):
        out.categories.add(category=name, **{k: c[k] for k in _CATEGORY_FIELDS if k in c})
    out.open_alerts, out.ack_on_time_share = hub.queue_acks(tenant, queue)
    return out


_WINDOW_FIELDS = tuple(f.name for f in pb.QueueWindow.DESCRIPTOR.fields if f.name != "window")
_CATEGORY_FIELDS = tuple(f.name for f in pb.QueueCategory.DESCRIPTOR.fields if f.name != "category")
