"""Prometheus metrics for the service, on their own registry and HTTP port.

    m = Metrics()
    port = m.start_http("127.0.0.1", 0)          # 0: a free port; GET /metrics
    server = grpc.aio.server(interceptors=[MetricsInterceptor(m)])
    MicroBatcher(..., on_batch=m.observe_batch)
    m.instrument_router(router)                  # model call latency / errors, fallback gauge
    m.watch(table=table, router=router)          # live sessions, evictions, expirations at scrape

Metric names (all prefixed ``yujing_``):

    rpc_requests_total{method,code}            counter   every RPC, by final gRPC status
    rpc_latency_seconds{method,code}           histogram whole call (streams: open to close)
    expired_calls_total{method}                counter   calls picked up after their deadline (DEADLINE_EXCEEDED)
    pending_turns                              gauge     turns admitted, answers not yet handed to gRPC
    overload_refusals_total                    counter   turns refused by admission control (any reason)
    admission_refusals_total{reason}           counter   the same by reason: turns, queue_time, deadline
    turns_dropped_total{reason}                counter   cancelled / deadline (not scored), undelivered (applied)
    grpc_core_calls_total{outcome}             counter   gRPC core's own count (channelz): started, succeeded, failed
    calls_unseen_total                         counter   started by gRPC core, never picked up by the service
    batch_stage_seconds{stage}                 histogram a micro-batch's queue, models, turn_log, features,
                                                         kernel, answers and alerts stages
    batches_overlapped_total                   counter   batches started while another was out (--batches-in-flight)
    stream_messages_total{method,direction}    counter   messages on streaming RPCs
    undecodable_requests_total{method}         counter   requests whose bytes are not the method's message
    batch_size                                 histogram turns per micro-batch
    batch_latency_seconds                      histogram engine time per micro-batch, start to answers
    model_call_latency_seconds{served_by}      histogram one router.classify (Triton or in-process)
    model_call_errors_total{kind}              counter   failed model calls / Triton trips
    triton_model_reloads_total{model}          counter   models the embedded Triton had unloaded, reloaded
    fallback_active                            gauge     1 when answers come from the in-process fallback
    model_calls_per_batch                      gauge     model calls a micro-batch costs: 1 through heads, else
                                                         one per model (--combined-model '', or heads unusable)
    live_sessions                              gauge     sessions in the table
    session_evictions_total                    counter   idle sessions evicted to make room
    session_expirations_total                  counter   sessions expired by the TTL
    alerts_raised_total{kind}                  counter   alerts raised, by AlertKind
    alert_subscribers                          gauge     open WatchAlerts streams
    alerts_open                                gauge     alerts with a deadline, not yet acknowledged
    alert_ack_on_time_share{tenant,queue}      gauge     acknowledged by the deadline / (acknowledged + missed)
    alert_log_bytes, alert_log_dropped_total   gauge, counter  the alert log's size; alerts dropped by retention
    alerts_unlogged, alerts_unlogged_dropped_total  gauge, counter  alerts waiting for the alert log to write
                                                         again (a full disk); dropped past AlertHub.MAX_UNLOGGED
    webhook_{delivered,attempts,retries,dead_letters,dropped}_total  counters, webhook_queued gauge
    queue_health_index{tenant,queue}           gauge     README "Queue trends" (at most QUEUE_GAUGES queues,
    queue_negative_share{tenant,queue}         gauge     the rest folded into queue="other")
    scan_seconds, scan_sessions                histogram, gauge  the scheduler's pass over the session table
    auth_refusals_total{code}                  counter   calls (batch turns) refused UNAUTHENTICATED / PERMISSION_DENIED
    quota_refusals_total{quota}                counter   turns refused by a tenant quota (max_sessions, turns_per_s)
    gc_pause_seconds{generation}               histogram the Python garbage collector's pauses (2: a full
                                                         collection), folded in on each scheduler pass
    gc_frozen_objects                          gauge     objects frozen out of its scans (``yujing serve``
                                                         freezes what start-up left alive)

A dedicated :class:`prometheus_client.CollectorRegistry` is used, so several services in
one process (tests) never share or collide on metrics.
"""
from __future__ import annotations

import collections
import gc
import inspect
import logging
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from yujing.service.errors import UndecodableRequest, undecodable

log = logging.getLogger(__name__)

# A call cancelled this close to its deadline (seconds left by the server's clock) is counted
# DEADLINE_EXCEEDED: the caller's deadline fired and its cancel crossed the wire.
DEADLINE_SLACK_S = 0.1

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


def _method_name(full: str) -> str:
    """'/yujing.v1.RiskScorer/Score' -> 'Score' (other services keep 'Service/Method')."""
    full = full or "unknown"
    svc, _, meth = full.lstrip("/").rpartition("/")
    if svc.endswith("RiskScorer"):
        return meth
    return f"{svc.rsplit('.', 1)[-1]}/{meth}" if svc else meth


class _TableCollector:
    """Reads live sessions, evictions and expirations from the session table at scrape time."""

    def __init__(self, metrics: "Metrics"):
        self.m = metrics

    def collect(self):
        table = self.m._table
        live = GaugeMetricFamily("yujing_live_sessions", "Sessions held in the session table")
        ev = CounterMetricFamily("yujing_session_evictions", "Idle sessions evicted to make room")
        ex = CounterMetricFamily("yujing_session_expirations", "Sessions expired by the idle TTL")
        if table is not None:
            try:
                self.m._live = int(len(table))
                self.m._evicted = int(getattr(table, "evicted", self.m._evicted))
                self.m._expired = int(getattr(table, "expired", self.m._expired))
            except Exception:  # never fail a scrape
                log.debug("session table read failed", exc_info=True)
        live.add_metric([], self.m._live)
        ev.add_metric([], self.m._evicted)
        ex.add_metric([], self.m._expired)
        yield live
        yield ev
        yield ex
        router = self.m._router
        fb = GaugeMetricFamily("yujing_fallback_active",
                               "1 when answers are scored by the in-process fallback (degraded or in-process mode)")
        if router is not None:
            try:
                self.m._fallback = 0 if router.served_by == "triton" else 1
            except Exception:
                log.debug("router read failed", exc_info=True)
        fb.add_metric([], self.m._fallback)
        yield fb
        if router is not None and hasattr(router, "model_calls_per_batch"):
            calls = GaugeMetricFamily("yujing_model_calls_per_batch",
                                      "Model calls one micro-batch costs: 1 through the combined model heads "
                                      "(one Triton request or one in-process pass), else one per model")
            try:
                calls.add_metric([], int(router.model_calls_per_batch))
                yield calls
            except Exception:
                log.debug("router read failed", exc_info=True)
        core = self.m.core_calls()
        if core is not None:
            calls = CounterMetricFamily("yujing_grpc_core_calls", "Calls gRPC core started on the service's "
                                        "server, by outcome (from channelz)", labels=["outcome"])
            for outcome in ("started", "succeeded", "failed"):
                calls.add_metric([outcome], core[outcome])
            yield calls
            unseen = CounterMetricFamily("yujing_calls_unseen", "Calls gRPC core started that the service never "
                                         "picked up (expired or cancelled in gRPC core's queue)")
            self.m._unseen = max(self.m._unseen, core["started"] - self.m.calls_seen)
            unseen.add_metric([], self.m._unseen)
            yield unseen
        pend = GaugeMetricFamily("yujing_pending_turns",
                                 "Turns accepted and not yet answered (admission control limit: --max-pending-turns)")
        if self.m._admission is not None:
            self.m._pending = int(self.m._admission.pending)
        elif self.m._batcher is not None:
            self.m._pending = int(self.m._batcher.in_flight)
        pend.add_metric([], self.m._pending)
        yield pend
        if self.m._batcher is not None:
            yield CounterMetricFamily("yujing_batches_overlapped", "Micro-batches whose model call started while "
                                      "another batch was out (--batches-in-flight)",
                                      value=float(getattr(self.m._batcher, "overlapped", 0)))

    def describe(self):
        return []


QUEUE_GAUGES = 200


class _AlertCollector:
    """Reads the alert hub, the webhook sink and the queue trends at scrape time."""

    def __init__(self, metrics: "Metrics"):
        self.m = metrics

    def collect(self):
        hub, sink, trends = self.m._hub, self.m._webhook, self.m._trends
        if hub is not None:
            raised = CounterMetricFamily("yujing_alerts_raised", "Alerts raised, by kind", labels=["kind"])
            for kind, n in sorted(hub.raised.items()):
                raised.add_metric([kind], n)
            yield raised
            yield GaugeMetricFamily("yujing_alert_subscribers", "Open WatchAlerts streams", value=hub.subscribers)
            yield GaugeMetricFamily("yujing_alerts_open", "Alerts with a deadline not yet acknowledged",
                                    value=len(hub._open))
            share = GaugeMetricFamily("yujing_alert_ack_on_time_share",
                                      "Alerts acknowledged by their deadline / (acknowledged + missed)",
                                      labels=["tenant", "queue"])
            for (tenant, queue), (on_time, late, missed) in list(hub.ack_stats.items())[:QUEUE_GAUGES]:
                total = on_time + late + missed
                share.add_metric([tenant, queue], on_time / total if total else 1.0)
            yield share
            stats = getattr(hub.log, "stats", None)
            yield GaugeMetricFamily("yujing_alert_log_bytes", "Bytes of the alert log on disk",
                                    value=float(stats.get("bytes", 0)) if isinstance(stats, dict) else 0.0)
            yield CounterMetricFamily("yujing_alert_log_dropped", "Alerts dropped from the log by retention",
                                      value=float(getattr(hub.log, "dropped_records", 0)))
            yield GaugeMetricFamily("yujing_alerts_unlogged", "Alerts waiting for the alert log to write again "
                                    "(a full disk); subscribers see them once logged", value=len(hub.unlogged))
            yield CounterMetricFamily("yujing_alerts_unlogged_dropped",
                                      "Alerts dropped while waiting for the alert log (over MAX_UNLOGGED)",
                                      value=float(hub.unlogged_dropped))
        if sink is not None:
            for name in ("delivered", "attempts", "retries", "dead_letters", "dropped"):
                yield CounterMetricFamily(f"yujing_webhook_{name}", f"Webhook {name.replace('_', ' ')}",
                                          value=float(getattr(sink, name, 0)))
            yield GaugeMetricFamily("yujing_webhook_queued", "Alerts waiting for the webhook", value=sink.queued)
        if trends is not None:
            health = GaugeMetricFamily("yujing_queue_health_index", "Queue health index (0-100)",
                                       labels=["tenant", "queue"])
            neg = GaugeMetricFamily("yujing_queue_negative_share", "Negative share of customer turns, last hour",
                                    labels=["tenant", "queue"])
            try:
                for tenant, queue, index, negative_share in trends.gauges(QUEUE_GAUGES):
                    health.add_metric([tenant, queue], index)
                    neg.add_metric([tenant, queue], negative_share)
            except Exception:  # never fail a scrape
                log.debug("trend gauges failed", exc_info=True)
            yield health
            yield neg

    def describe(self):
        return []


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=False)
        r = self.registry
        self.rpc_requests = Counter("yujing_rpc_requests", "RPCs by method and final gRPC status code",
                                    ["method", "code"], registry=r)
        self.rpc_latency = Histogram("yujing_rpc_latency_seconds", "RPC latency (streams: open to close)",
                                     ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.stream_messages = Counter("yujing_stream_messages", "Messages on streaming RPCs",
                                       ["method", "direction"], registry=r)
        self.batch_size = Histogram("yujing_batch_size", "Turns per micro-batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_latency = Histogram("yujing_batch_latency_seconds", "Engine time per micro-batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram("yujing_model_call_latency_seconds",
                                       "Latency of one model call (every configured model for a batch)",
                                       ["served_by"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_errors = Counter("yujing_model_call_errors", "Failed model calls (Triton errors, timeouts)",
                                    ["kind"], registry=r)
        self.triton_model_reloads = Counter("yujing_triton_model_reloads",
                                            "Models found unloaded on the embedded Triton and reloaded",
                                            ["model"], registry=r)
        self.undecodable_requests = Counter("yujing_undecodable_requests",
                                            "Requests refused with INVALID_ARGUMENT because their bytes are not "
                                            "the method's message (malformed protobuf, a string not UTF-8)",
                                            ["method"], registry=r)
        self.overload_refusals = Counter("yujing_overload_refusals",
                                         "Turns refused by admission control (RESOURCE_EXHAUSTED, overloaded)",
                                         registry=r)
        self.admission_refusals = Counter("yujing_admission_refusals",
                                          "Turns refused by admission control, by reason: turns (the pending "
                                          "budget), queue_time (expected wait over --max-queue-ms), deadline "
                                          "(expected wait past the call's deadline)", ["reason"], registry=r)
        self.turns_dropped = Counter("yujing_turns_dropped",
                                     "Turns nobody waited for: cancelled or deadline (dropped before the models, "
                                     "nothing applied), undelivered (applied, the caller had gone; a retry gets "
                                     "the answer as a duplicate)", ["reason"], registry=r)
        self.expired_calls = Counter("yujing_expired_calls",
                                     "Calls whose deadline had passed when the service picked them up (refused "
                                     "DEADLINE_EXCEEDED, nothing applied)", ["method"], registry=r)
        self.stage_latency = Histogram("yujing_batch_stage_seconds",
                                       "Time of one micro-batch in each stage: queue (the oldest turn's wait "
                                       "before its batch started), models, turn_log, features (featurize and "
                                       "packing), kernel, answers, alerts", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.auth_refusals = Counter("yujing_auth_refusals", "Calls (ScoreBatch: turns) refused for their token: "
                                     "UNAUTHENTICATED or PERMISSION_DENIED", ["code"], registry=r)
        self.quota_refusals = Counter("yujing_quota_refusals", "Turns refused RESOURCE_EXHAUSTED by a tenant quota",
                                      ["quota"], registry=r)
        self.scan_seconds = Histogram("yujing_scan_seconds", "One scheduler pass over the session table",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.scan_sessions = Gauge("yujing_scan_sessions", "Sessions the last scheduler pass scanned", registry=r)
        self.gc_pause = Histogram("yujing_gc_pause_seconds", "Pauses of Python's garbage collector in this "
                                  "process, by generation (2: a full collection)", ["generation"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.gc_frozen = Gauge("yujing_gc_frozen_objects", "Objects frozen out of the garbage collector's "
                               "scans (yujing serve freezes what start-up left alive)", registry=r)
        self.gc_frozen.set_function(gc.get_freeze_count)
        # (generation, seconds) of each collection, appended by the collector's callback (no
        # lock there: a collection may start inside any code, a lock holder's included)
        self._gc_pauses: collections.deque = collections.deque(maxlen=65_536)
        self._gc_started = 0.0
        self._hub = self._webhook = self._trends = None
        self._stream_children: dict = {}
        self._rpc_children: dict = {}
        self._stage_children: dict = {}
        self._admission = None
        self.calls_seen = 0             # calls whose handler ran (compared with gRPC core's count)
        self._unseen = 0
        self._core_server_id = None
        self._batcher = None
        self._pending = 0
        self._table = None
        self._router = None
        self._live = 0
        self._evicted = 0
        self._expired = 0
        self._fallback = 0
        r.register(_TableCollector(self))
        r.register(_AlertCollector(self))
        self._http = None
        self._http_thread = None
        self.port: int | None = None

    # ---- the garbage collector --------------------------------------------------------
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_pauses.append((info["generation"], time.perf_counter() - self._gc_started))

    def watch_gc(self) -> None:
        """Time every collection of this process from now on (:meth:`unwatch_gc` stops)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def fold_gc_pauses(self) -> None:
        """Move the pauses timed so far into ``gc_pause_seconds`` (the scheduler's pass)."""
        q = self._gc_pauses
        while q:
            generation, seconds = q.popleft()
            self.gc_pause.labels(str(generation)).observe(seconds)

    # ---- HTTP -------------------------------------------------------------------------
    def start_http(self, host: str = "127.0.0.1", port: int = 0, **tls) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) in a daemon thread; the port.
        ``tls``: start_http_server's certfile, keyfile, client_cafile, client_auth_required."""
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, addr=host, registry=self.registry, **tls)
        self._http, self._http_thread = server, thread
        self.port = int(server.server_address[1])
        return self.port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def render(self) -> bytes:
        """The exposition text (what /metrics answers)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    # ---- observations -----------------------------------------------------------------
    def observe_rpc(self, method: str, code, seconds: float) -> None:
        # the labelled children are resolved once per (method, code): a call costs one
        # counter increment and one histogram observation, no label look-up
        children = self._rpc_children.get((method, code))
        if children is None:
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            children = self._rpc_children[(method, code)] = (self.rpc_requests.labels(method, name),
                                                               self.rpc_latency.labels(method, name))
        children[0].inc()
        children[1].observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Matches Engine's and MicroBatcher's ``on_stage(stage, seconds)`` callback."""
        child = self._stage_children.get(stage)
        if child is None:
            child = self._stage_children[stage] = self.stage_latency.labels(stage)
        child.observe(seconds)

    def observe_drop(self, reason: str, n: int) -> None:
        """Matches MicroBatcher's ``on_drop(reason, n)`` callback."""
        self.turns_dropped.labels(reason).inc(n)

    def observe_refusal(self, reason: str, n: int) -> None:
        """Matches Admission's ``on_refuse(reason, n)`` callback."""
        self.overload_refusals.inc(n)
        self.admission_refusals.labels(reason).inc(n)

    def observe_stream_message(self, method: str, direction: str) -> None:
        # the labelled child is looked up once per (method, direction): resolving labels
        # costs about 8 us, a stream message's whole budget on a WatchAlerts stream
        child = self._stream_children.get((method, direction))
        if child is None:
            child = self._stream_children[(method, direction)] = self.stream_messages.labels(method, direction)
        child.inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """Matches MicroBatcher's ``on_batch(size, seconds)`` callback."""
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def observe_model_call(self, served_by: str, seconds: float, error: str | None = None) -> None:
        self.model_latency.labels(served_by).observe(seconds)
        if error:
            self.model_errors.labels(error).inc()

    def model_error(self, kind: str) -> None:
        self.model_errors.labels(kind).inc()

    def set_fallback(self, active: bool) -> None:
        self._fallback = 1 if active else 0

    def set_live_sessions(self, n: int) -> None:
        self._live = int(n)

    def inc_evictions(self, n: int = 1) -> None:
        self._evicted += n

    def inc_expirations(self, n: int = 1) -> None:
        self._expired += n

    # ---- wiring helpers ---------------------------------------------------------------
    def watch(self, table=None, router=None, batcher=None, hub=None, webhook=None, trends=None,
              admission=None) -> None:
        """Read the table's size / evicted / expired, the router's state, the pending turns
        (admission control's count, else the batcher's) and the early-warning layer at each
        scrape."""
        self._table = table
        self._router = router
        self._batcher = batcher
        self._admission = admission
        self._hub, self._webhook, self._trends = hub, webhook, trends

    def watch_core_server(self, server_id: int | None) -> None:
        """Report gRPC core's call counts of the server with this channelz id at each scrape."""
        self._core_server_id = server_id

    def core_calls(self) -> dict | None:
        """gRPC core's started / succeeded / failed calls of the watched server, or None."""
        if self._core_server_id is None:
            return None
        import json

        from grpc._cython import cygrpc

        try:
            data = json.loads(cygrpc.channelz_get_server(self._core_server_id))["server"]["data"]
        except Exception:   # never fail a scrape (channelz off, the server gone)
            return None
        return {k: int(data.get("calls" + k.capitalize(), 0)) for k in ("started", "succeeded", "failed")}

    def observe_scan(self, sessions: int, seconds: float) -> None:
        self.scan_seconds.observe(seconds)
        self.scan_sessions.set(sessions)

    def instrument_router(self, router) -> None:
        """Time every ``router.classify`` and count Triton failures (wraps the bound method)."""
        if router is None or getattr(router, "_yujing_metrics", None) is self:
            return
        inner = router.classify
        metrics = self
        stats = getattr(router, "stats", None)

        async def classify(texts):
            fails0 = getattr(stats, "triton_failures", 0)
            t0 = time.perf_counter()
            try:
                result = await inner(texts)
            except BaseException as exc:
                metrics.observe_model_call("error", time.perf_counter() - t0, type(exc).__name__)
                raise
            dt = time.perf_counter() - t0
            metrics.observe_model_call(getattr(result, "served_by", "unknown"), dt)
            trips = getattr(stats, "triton_failures", 0) - fails0
            if trips > 0:
                metrics.model_errors.labels("triton").inc(trips)
            metrics._fallback = 0 if getattr(result, "served_by", "") == "triton" else 1
            return result

        router.classify = classify
        router._yujing_metrics = self
        self._router = router


class _Observed:
    """One call, timed and counted by its final status (the exception it ends with) when
    it leaves the ``with``; an undecodable request the handler let through ends it
    INVALID_ARGUMENT (swallowed here). A small object per call rather than a generator-based
    context manager, and the exception is not kept (no frame-traceback cycle)."""

    __slots__ = ("finish", "refuse", "context", "t0")

    def __init__(self, finish, refuse, context):
        self.finish, self.refuse, self.context = finish, refuse, context
        self.t0 = time.perf_counter()

    def __enter__(self) -> "_Observed":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, UndecodableRequest):
            self.refuse(self.context, exc)
            self.finish(self.context, self.t0, None)
            return True
        self.finish(self.context, self.t0, exc)
        return False


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every RPC (unary and streaming) and records its final status code.

    It also decodes the requests strictly: a request whose bytes are not the method's
    message (malformed wire format, a string field that is not UTF-8) never reaches the
    handler and never ends as UNKNOWN with a traceback. A unary call is answered
    INVALID_ARGUMENT ``request is not a valid yujing.v1.Turn: <what is wrong>``; on a
    client stream the request iterator raises :class:`UndecodableRequest` at that message
    (the handler answers the messages before it, then ends the stream with the error).
    Each one counts in ``yujing_undecodable_requests_total{method}`` and is logged as a
    WARNING at most once every :attr:`LOG_EVERY_S` seconds (with the number suppressed).
    """

    LOG_EVERY_S = 10.0

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._log_after = 0.0       # monotonic time before which undecodable requests are not logged
        self._suppressed = 0
        self._wrapped: dict[str, tuple] = {}    # method path -> (its handler, the wrapped handler)

    def _undecodable(self, method: str, err: UndecodableRequest) -> None:
        """Count one undecodable request and log it, rate limited."""
        try:
            self.metrics.undecodable_requests.labels(method).inc()
        except Exception:
            log.debug("metrics observe failed", exc_info=True)
        now = time.monotonic()
        if now < self._log_after:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last such warning)" if self._suppressed else ""
        log.warning("refused an undecodable %s request with INVALID_ARGUMENT: %s%s; such requests are "
                    "logged at most once every %g s", method, err.reason or err.message, more, self.LOG_EVERY_S)
        self._log_after = now + self.LOG_EVERY_S
        self._suppressed = 0

    @staticmethod
    def _refuse(context, err: UndecodableRequest) -> None:
        context.set_code(err.code)
        context.set_details(err.message)

    @staticmethod
    def _strict(deserializer):
        """``deserializer`` returning an :class:`UndecodableRequest` instead of raising."""
        if deserializer is None:
            return None

        def deserialize(data):
            try:
                return deserializer(data)
            except Exception:  # DecodeError (or anything a deserializer raises on bad bytes)
                return undecodable(data, deserializer)
        return deserialize

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        # one wrapped handler per method, built on its first call: what the wrapper needs
        # is the method's (its name, its handler), never the call's
        known = self._wrapped.get(handler_call_details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, _method_name(handler_call_details.method))
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler, method: str):
        """``handler`` timed and counted by its final status, its requests decoded strictly."""
        m = self.metrics
        interceptor = self
        deserializer = self._strict(handler.request_deserializer)

        def code_of(context, exc: BaseException | None):
            try:
                c = context.code()
            except Exception:
                c = None
            if isinstance(c, grpc.StatusCode):
                return c
            if isinstance(c, int):
                for sc in grpc.StatusCode:
                    if sc.value[0] == c:
                        return sc
            if exc is None:
                return grpc.StatusCode.OK
            import asyncio
            if isinstance(exc, asyncio.CancelledError):   # gRPC cancels a call at its deadline too
                try:
                    left = context.time_remaining()
                except Exception:
                    left = None
                # the caller's clock for its deadline started before ours (we start ours when
                # the headers arrive), so its deadline fires first and reaches us as a cancel a
                # transit time early: a cancel that near our deadline is the caller's deadline
                return (grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= DEADLINE_SLACK_S
                        else grpc.StatusCode.CANCELLED)
            return grpc.StatusCode.UNKNOWN

        def finish(context, t0, exc):
            try:
                m.observe_rpc(method, code_of(context, exc), time.perf_counter() - t0)
            except Exception:
                log.debug("metrics observe failed", exc_info=True)

        def counted_requests(request_iterator):
            async def gen():
                async for req in request_iterator:
                    m.observe_stream_message(method, "received")
                    if isinstance(req, UndecodableRequest):
                        interceptor._undecodable(method, req)
                        raise req
                    yield req
            return gen()

        def call(fn, request_or_iter, context):
            if handler.request_streaming:
                request_or_iter = counted_requests(request_or_iter)
            elif isinstance(request_or_iter, UndecodableRequest):
                interceptor._undecodable(method, request_or_iter)
                raise request_or_iter
            return fn(request_or_iter, context)

        if not handler.response_streaming:
            fn = handler.unary_unary if not handler.request_streaming else handler.stream_unary

            async def unary_resp(request_or_iter, context):
                m.calls_seen += 1     # the handler runs: the service saw the call
                with _Observed(finish, interceptor._refuse, context):
                    r = call(fn, request_or_iter, context)
                    if inspect.isawaitable(r):
                        r = await r
                    return r

            make = (grpc.stream_unary_rpc_method_handler if handler.request_streaming
                    else grpc.unary_unary_rpc_method_handler)
            return make(unary_resp, request_deserializer=deserializer,
                        response_serializer=handler.response_serializer)

        fn = handler.unary_stream if not handler.request_streaming else handler.stream_stream

        async def stream_resp(request_or_iter, context):
            m.calls_seen += 1
            r = None
            try:
                with _Observed(finish, interceptor._refuse, context):
                    r = call(fn, request_or_iter, context)
                    if inspect.isawaitable(r) and not hasattr(r, "__aiter__"):
                        r = await r
                    if r is not None and hasattr(r, "__aiter__"):
                        async for item in r:
                            m.observe_stream_message(method, "sent")
                            yield item
                    elif r is not None:
                        for item in r:
                            m.observe_stream_message(method, "sent")
                            yield item
            finally:
                # the handler's own clean-up (a stream's budget, its reader) runs now, not
                # whenever the garbage collector finds the generator: closing this one at
                # a yield (the client left) leaves the handler's generator suspended
                if r is not None and hasattr(r, "aclose"):
                    try:
                        await r.aclose()
                    except Exception:      # the call has ended: its status is already decided
                        log.debug("closing the %s handler's generator failed", method, exc_info=True)

        make = (grpc.stream_stream_rpc_method_handler if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler)
        return make(stream_resp, request_deserializer=deserializer,
                    response_serializer=handler.response_serializer)


__all__ = ["Metrics", "MetricsInterceptor", "LATENCY_BUCKETS", "BATCH_BUCKETS"]
