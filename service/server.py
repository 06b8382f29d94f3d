"""The gRPC server: the RiskScorer handlers, health checking, reflection, and the
start-up and graceful shutdown of everything behind them.

    create_server(config) -> (YujingServer, port)    # started, listening; tests use port 0
    serve(config)                                    # runs until SIGINT / SIGTERM

Shutdown (SIGINT / SIGTERM): health goes NOT_SERVING, new calls and the streams' next
turns get UNAVAILABLE, the turns already accepted are answered for up to ``drain_s``; those
still unscored then are refused UNAVAILABLE (nothing of them applied), the state is
snapshotted, the model router and the embedded Triton server stop. A second signal exits
at once (the turn log still holds every answered turn).

State across restarts (``data_dir``): the newest snapshot is restored, then the turn log
after it is replayed (:mod:`yujing.service.storage.turn_log`); what the durability modes
lose on a crash is said there.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from yujing.service.alerts import trends
from yujing.service.alerts.api import AlertsServicer, queue_health
from yujing.service.alerts.detect import AlertDetector
from yujing.service.alerts.hub import AlertHub, MemoryLog
from yujing.service.alerts.trends import TrendTracker
from yujing.service.batcher import MicroBatcher
from yujing.service.config import Config
from yujing.service.contract import SERVICE_NAME, pb, pb_grpc
from yujing.service import featurize
from yujing.service import answers as A
from yujing.service.engine import Engine
from yujing.service.metrics import Metrics, MetricsInterceptor
from yujing.service.admission import Admission, loop_deadline
from yujing.service.errors import (ConfigError, DeadlinePassed, InvalidTurn, Overloaded, PermissionDenied,
                                   QuotaExceeded, ShuttingDown, YujingError, fail)
from yujing.service.security import guards, tls
from yujing.service.security.auth import AuthInterceptor
from yujing.service.storage.turn_log import REC_BATCH, REC_END, REC_SCAN, REC_SWEEP, decode_batch
from yujing.service.policy import load_policy
from yujing.service.session_table import SessionTable
from yujing.service.validate import session_key, validate_turn
from yujing.service import wire

log = logging.getLogger("yujing")
# What a client sees when a batch fails for a reason of ours (a bug; logged with its trace).
INTERNAL = YujingError("internal error while scoring this turn; the server log has the details")
STOPPED_READING = ShuttingDown("server is shutting down: the turns after the last answer were not read "
                               "(nothing of them applied); resume on another replica or after the restart")
NOT_SCORED = ShuttingDown("server is shutting down: this turn was not scored before the drain deadline "
                          "(nothing of it applied); retry on another replica or after the restart")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _core_server_ids() -> set[int]:
    """The channelz ids of the gRPC servers of this process (what gRPC core counts)."""
    import json

    from grpc._cython import cygrpc

    try:
        return {int(x["ref"]["serverId"]) for x in json.loads(cygrpc.channelz_get_servers(0)).get("server", [])}
    except Exception:   # channelz is a diagnostic: its absence changes nothing
        return set()


def _now_ms() -> int:
    return int(time.time() * 1000)


def add_risk_scorer(servicer, server) -> None:
    """Register the RiskScorer service as ``pb_grpc.add_RiskScorerServicer_to_server`` does
    (the same method names and request parsers), except that Score, ScoreStream and
    ScoreBatch answer with bytes already in the wire format (service/wire.py), sent as they
    are instead of a message serialised by gRPC."""
    handlers = {
        "Score": grpc.unary_unary_rpc_method_handler(
            servicer.Score, request_deserializer=pb.Turn.FromString, response_serializer=wire.serialize),
        "ScoreStream": grpc.stream_stream_rpc_method_handler(
            servicer.ScoreStream, request_deserializer=pb.Turn.FromString, response_serializer=wire.serialize),
        "ScoreBatch": grpc.unary_unary_rpc_method_handler(
            servicer.ScoreBatch, request_deserializer=pb.TurnBatch.FromString, response_serializer=wire.serialize),
        "GetSession": grpc.unary_unary_rpc_method_handler(
            servicer.GetSession, request_deserializer=pb.SessionRef.FromString,
            response_serializer=pb.SessionState.SerializeToString),
        "EndSession": grpc.unary_unary_rpc_method_handler(
            servicer.EndSession, request_deserializer=pb.SessionRef.FromString,
            response_serializer=pb.SessionState.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class RiskScorer(pb_grpc.RiskScorerServicer):
    """The RiskScorer handlers; Score, ScoreStream and ScoreBatch return wire bytes
    (:func:`add_risk_scorer` registers them)."""

    def __init__(self, owner: "YujingServer"):
        self.o = owner

    _fail = staticmethod(fail)

    def _check_open(self):
        self.o.last_call = time.monotonic()
        if self.o.draining:
            raise ShuttingDown("server is shutting down; retry on another replica")

    def _bind(self, context, request) -> None:
        """The caller's token (UNAUTHENTICATED) may act for ``request.tenant_id``
        (PERMISSION_DENIED; an empty one becomes the token's tenant)."""
        auth = self.o.auth
        auth.bind(auth.principal(context.invocation_metadata()), request)

    def _deadline_left(self, context, method: str) -> float | None:
        """Seconds until the caller's deadline (None: none); a call picked up after its
        deadline is refused here, counted, before anything is read or queued."""
        left = context.time_remaining()
        if left is not None and left <= 0:
            self.o.metrics.expired_calls.labels(method).inc()
            raise DeadlinePassed("the call's deadline had passed when the service picked it up; nothing applied")
        return left

    def _submit(self, item, deadline: float) -> asyncio.Future:
        """The answer of ``item`` to come (admitted by the caller): its first answer when
        the turn id is a repeat (``duplicate``, no batch), else its place in the next batch."""
        cached = self.o.engine.cached(item)
        if cached is not None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(cached)
            return fut
        release = self.o.quotas.admit((item,))
        fut = self.o.batcher.submit(item, deadline)
        if release is not None:
            fut.add_done_callback(lambda _: release())
        return fut

    async def Score(self, request, context):
        adm = self.o.admission
        try:
            self._check_open()
            left = self._deadline_left(context, "Score")
            self._bind(context, request)
            item = validate_turn(request, self.o.config, _now_ms())
            cached = self.o.engine.cached(item)
            if cached is not None:
                return cached
            adm.admit(1, left)
        except YujingError as err:
            return self._fail(context, err)
        except Exception:
            return self._fail(context, INTERNAL)
        try:
            ans = await self._submit(item, loop_deadline(left))
        except YujingError as err:
            return self._fail(context, err)
        except Exception:
            return self._fail(context, INTERNAL)
        finally:
            adm.release(1)
        if isinstance(ans, YujingError):
            return self._fail(context, ans)
        return ans

    async def ScoreStream(self, request_iterator, context):
        """Answers in order. The reader admits each turn into the shared budget
        (:mod:`yujing.service.admission`) and keeps at most ``stream_window`` unanswered;
        when the budget is spent it waits for this stream's own answers to be read, or
        refuses the next turn if it has none outstanding. When the call ends (the client
        went away, its deadline, a refusal), the turns not yet scored are dropped."""
        queue: asyncio.Queue = asyncio.Queue()
        auth, metadata, adm, cfg = self.o.auth, context.invocation_metadata(), self.o.admission, self.o.config
        window = cfg.stream_window
        outstanding = 0                 # turns admitted by this stream, answers not yet handed to gRPC
        sent = asyncio.Event()          # set each time an answer is handed over

        async def room() -> YujingError | None:
            """Wait until this stream may take one more turn; the refusal when it may not."""
            while True:
                if outstanding < window:
                    reason = adm.refusal_reason(1)
                    if reason is None:
                        return None
                    if outstanding == 0:
                        return adm.refuse(reason, 1)
                sent.clear()
                await sent.wait()

        async def read():
            """Queue each turn's answer to come, in order; the first refusal (a turn that
            is invalid, or a message that is not a Turn at all: the iterator raises
            UndecodableRequest there) is queued last and nothing after it is read."""
            nonlocal outstanding
            try:
                deadline = loop_deadline(self._deadline_left(context, "ScoreStream"))
                async for turn in request_iterator:
                    try:
                        self._check_open()
                        auth.bind(auth.principal(metadata), turn)    # each turn: a revoked token stops here
                        item = validate_turn(turn, cfg, _now_ms())
                    except YujingError as err:
                        queue.put_nowait(err)
                        return
                    refused = await room()
                    if refused is not None:
                        queue.put_nowait(refused)
                        return
                    adm.pending += 1
                    outstanding += 1
                    queue.put_nowait(self._submit(item, deadline))
            except YujingError as err:
                queue.put_nowait(err)
            except asyncio.CancelledError:   # the shutdown stops reading streams
                queue.put_nowait(STOPPED_READING)
                raise
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        self.o.stream_readers.add(reader)
        reader.add_done_callback(self.o.stream_readers.discard)
        try:
            while True:
                x = await queue.get()
                if x is None:
                    break
                if isinstance(x, YujingError):
                    self._fail(context, x)
                    return
                try:
                    ans = await x
                except Exception:
                    ans = INTERNAL
                if isinstance(ans, YujingError):
                    self._fail(context, ans)
                    return
                yield ans
                outstanding -= 1
                adm.release(1)
                sent.set()
        finally:
            reader.cancel()
            while not queue.empty():       # nobody reads these answers: not scored, out of the budget
                x = queue.get_nowait()
                if isinstance(x, asyncio.Future):
                    x.cancel()
            adm.release(outstanding)
            outstanding = 0

    async def ScoreBatch(self, request, context):
        cfg = self.o.config
        try:
            self._check_open()
            left = self._deadline_left(context, "ScoreBatch")
            principal = self.o.auth.principal(context.invocation_metadata())
        except YujingError as err:
            return self._fail(context, err)
        if len(request.turns) > cfg.max_batch_turns:
            return self._fail(context, InvalidTurn(
                f"turns has {len(request.turns)} turns; the limit is {cfg.max_batch_turns}", "turns"))
        now = _now_ms()
        results: list = [None] * len(request.turns)
        todo, pos = [], []
        bind = self.o.auth.bind
        for k, turn in enumerate(request.turns):
            try:     # a turn of another tenant is refused alone, as an invalid one is
                bind(principal, turn)
                item = validate_turn(turn, cfg, now)
            except (InvalidTurn, PermissionDenied) as err:
                results[k] = err.within(f"turns[{k}].")
                continue
            todo.append(item)
            pos.append(k)
        adm = self.o.admission
        try:
            adm.admit(len(todo), left)
        except Overloaded as err:
            return self._fail(context, err)
        try:
            release = self.o.quotas.admit(todo, repeats=self.o.engine.answers)
        except QuotaExceeded as err:
            adm.release(len(todo))
            return self._fail(context, err)
        try:
            answers = await self.o.batcher.submit_group(todo, loop_deadline(left))
        finally:
            adm.release(len(todo))
            if release is not None:
                release()
        for k, ans in zip(pos, answers):
            results[k] = INTERNAL if isinstance(ans, Exception) and not isinstance(ans, YujingError) else ans
        return wire.batch_bytes([wire.TurnError(wire.error_result(r.code.value[0], r.message, r.field))
                                 if isinstance(r, YujingError) else r for r in results])

    async def GetSession(self, request, context):
        try:
            self._bind(context, request)
            return self.o.engine.session_state(session_key(request, self.o.config))
        except YujingError as err:
            return self._fail(context, err)

    async def EndSession(self, request, context):
        try:
            self._bind(context, request)
            return self.o.engine.session_state(session_key(request, self.o.config), end=True)
        except YujingError as err:
            return self._fail(context, err)


class YujingServer:
    """Everything one running service owns."""

    def __init__(self, config: Config):
        self.config = config.validate()
        self.policy = load_policy(config.policy)
        self.triton = None
        self.router = None
        self.draining = False
        self.last_call = 0.0          # time.monotonic() of the latest call (drain)
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.table = SessionTable(capacity=config.capacity, agent_capacity=config.agent_capacity,
                                  ttl_ms=int(config.ttl_s * 1000),
                                  evict_min_idle_ms=int(config.evict_min_idle_s * 1000),
                                  backend=config.backend)
        self.engine: Engine | None = None
        self.batcher: MicroBatcher | None = None
        self.admission: Admission | None = None
        self._sweeper: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._scheduler: asyncio.Task | None = None
        self._snapshotter: asyncio.Task | None = None
        self._snapshot_lock = threading.Lock()
        self.turn_log = None
        self._snapshot_log_ids: list[int] = []   # turn-log ids of the snapshots kept (oldest first)
        self.stream_readers: set = set()          # reader tasks of the open ScoreStream calls
        self.metrics = Metrics()
        self.auth, self.quotas = guards(self.config, self.table, self.metrics)   # tokens, tenant quotas
        self.hub: AlertHub | None = None
        self.trends = None
        self.webhook = None
        self.detector: AlertDetector | None = None

    # -- the early-warning layer ----------------------------------------------------------
    def _open_alert_log(self):
        """The alert log in ``data_dir/alerts`` (one service per directory), or memory."""
        cfg = self.config
        if cfg.data_dir is None:
            return MemoryLog()
        from yujing.service.storage.segment_log import LogLocked, SegmentLog

        keep_bytes = int(cfg.alert_retention_mb * (1 << 20))
        try:   # segments of 1/8 of the retention (1 .. 64 MiB): retention drops an eighth at a time
            return SegmentLog(Path(cfg.data_dir) / "alerts", durability="batch",
                              retention_ms=int(cfg.alert_retention_days * 86_400_000), retention_bytes=keep_bytes,
                              segment_bytes=min(64 << 20, max(1 << 20, keep_bytes // 8)))
        except LogLocked as exc:
            raise ConfigError(f"data_dir {cfg.data_dir}: {exc}; give each service its own --data-dir",
                              "data_dir") from None

    def _start_alerts(self) -> None:
        cfg = self.config
        self.trends = TrendTracker(self.policy.trend)
        self.detector = AlertDetector(self.policy, cfg.capacity, cfg.agent_capacity, self.trends)
        if cfg.webhook_url:
            self.webhook = self._start_webhook()
        self.hub = AlertHub(self._open_alert_log(), self.policy.version, self.policy.alerts, _now_ms,
                            webhook=None)
        if self.webhook is not None:
            self._replay_webhook()
            self.hub.webhook = self.webhook

    def _start_webhook(self):
        from yujing.service.alerts.webhook import WebhookSink

        cfg = self.config
        secret = Path(cfg.webhook_secret_file).read_bytes().strip() if cfg.webhook_secret_file else None
        state = Path(cfg.data_dir) if cfg.data_dir is not None else None
        sink = WebhookSink(cfg.webhook_url, secret, cursor_path=state / "webhook.cursor" if state else None,
                           dead_letter_path=state / "webhook-dead-letters.jsonl" if state else None)
        sink.start()
        return sink

    def _replay_webhook(self) -> None:
        """Offer the sink what the log holds after its cursor (alerts raised while it was
        down or still queued at a stop); a sink with no cursor yet starts from now."""
        from yujing.service.alerts.hub import alert_json

        cursor = self.webhook.cursor
        if not cursor:
            return
        while True:
            batch = self.hub.after(cursor, 1024)
            if not batch:
                return
            for a in batch:
                self.webhook.offer(a.id, alert_json(a))
                cursor = a.id

    # -- session state across restarts (issue 14: snapshots; the turn log is still to come) ---
    def _snapshot_dir(self) -> Path | None:
        return Path(self.config.data_dir) / "snapshots" if self.config.data_dir is not None else None

    def _open_turn_log(self) -> None:
        """The turn log in ``data_dir/turns`` (issue 14; storage/turn_log.py), or none."""
        if self.config.data_dir is None:
            return
        from yujing.service.storage.segment_log import LogLocked
        from yujing.service.storage.turn_log import TurnLog

        try:
            self.turn_log = TurnLog(Path(self.config.data_dir) / "turns", durability=self.config.durability)
        except LogLocked as exc:
            raise ConfigError(f"data_dir {self.config.data_dir}: {exc}; give each service its own --data-dir",
                              "data_dir") from None

    def _recover_state(self) -> None:
        """The newest valid snapshot, then every turn-log record after it; from then on
        the engine writes the log ahead of every batch."""
        meta = self._restore_snapshot() or {}
        if self.turn_log is None:
            return
        after = int(meta.get("turn_log_id", 0))
        self._snapshot_log_ids = [after]
        if after + 1 < self.turn_log.log.first_id:
            log.error("turn log starts at record %d but the snapshot holds records up to %d only: the records "
                      "between are gone and their turns are missing from the restored state",
                      self.turn_log.log.first_id, after)
        self._replay_turn_log(after, int(meta.get("alert_log_id", 0)))
        self.engine.turn_log = self.turn_log

    def _replay_turn_log(self, after: int, alerts_after: int) -> None:
        t0 = time.perf_counter()
        records = turns = 0
        self.engine._replay_seen = self.hub.raised_keys_after(alerts_after)
        try:
            for rec in self.turn_log.records_after(after):
                kind = rec.payload[:1]
                if kind == REC_BATCH:
                    turns += self.engine.replay(decode_batch(rec.payload))
                elif kind == REC_END:
                    import json

                    key = tuple(json.loads(rec.payload[1:]))
                    if key in self.table.sessions.slot_of:
                        self.table.end(key, self.policy.pf)
                elif kind == REC_SWEEP:
                    self.table.sweep(rec.ts_ms)
                elif kind == REC_SCAN:
                    self.table.sla_breaches(rec.ts_ms)
                else:
                    raise ConfigError(f"turn log record {rec.id}: unknown kind {kind!r}", "data_dir")
                records += 1
        finally:
            self.engine._replay_seen = None
        if records:
            log.info("replayed %d turn-log records (%d turns) after the snapshot in %.2f s; %d sessions live",
                     records, turns, time.perf_counter() - t0, len(self.table))

    def _restore_snapshot(self) -> dict | None:
        """Load the newest valid snapshot of the tables (and of the alert marks, so a
        restored session does not alert its level again) into the empty tables; its meta."""
        folder = self._snapshot_dir()
        if folder is None or not folder.is_dir():
            return None
        from yujing.kernels import layout as L
        from yujing.service.storage.snapshot import SnapshotLayoutError, read_latest_snapshot

        try:
            found = read_latest_snapshot(folder, layout_version=L.layout_version())
        except SnapshotLayoutError as exc:
            raise ConfigError(f"data_dir {self.config.data_dir}: {exc}", "data_dir") from None
        if found is None:
            return None
        arrays, meta, path = found
        n = self.table.restore(arrays, meta)
        self.detector.marks.restore(arrays, meta, arrays["sessions.slots"])
        if "idem.bytes" in arrays:
            self.engine.answers.restore(arrays, meta["idem_keys"])
        log.info("restored %d sessions from %s (written %s)", n, path, meta.get("written_at", "?"))
        return meta

    def _snapshot_payload(self) -> tuple[dict, dict]:
        """Copies of everything a snapshot holds, taken on the event loop between batches
        (so they are consistent): tables, indexes, alert marks, the idempotency window."""
        arrays, meta = self.table.export()
        marks, marks_meta = self.detector.marks.export(arrays["sessions.slots"])
        arrays.update(marks)
        answers, marks_meta["idem_keys"] = self.engine.answers.export()   # a retry after the restart is still a duplicate
        arrays.update(answers)
        arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}   # the loop goes on changing the originals
        meta.update(marks_meta, policy_version=self.policy.version,
                    written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    # what the state holds: the turn log and the alert log up to these records
                    turn_log_id=self.turn_log.last_id if self.turn_log is not None else 0,
                    alert_log_id=self.hub.log.last_id)
        return arrays, meta

    def _snapshot_written(self, meta: dict) -> None:
        """On the loop, after a snapshot is on disk: the turn log before the older of the two
        snapshots kept (the fallback if the newest turns out corrupt) is no longer needed."""
        if self.turn_log is None:
            return
        self._snapshot_log_ids = (self._snapshot_log_ids + [meta["turn_log_id"]])[-2:]
        dropped = self.turn_log.drop_through(self._snapshot_log_ids[0])
        if dropped:
            log.debug("turn log: %d records before the snapshots dropped", dropped)

    def _write_snapshot(self, arrays: dict, meta: dict) -> Path:
        from yujing.kernels import layout as L
        from yujing.service.storage.snapshot import write_snapshot

        t0 = time.perf_counter()
        with self._snapshot_lock:        # the periodic writer's thread and the one at SIGTERM take turns
            path = write_snapshot(self._snapshot_dir(), arrays, meta, layout_version=L.layout_version())
        log.info("snapshot of %d sessions written to %s in %.2f s", len(meta["session_keys"]), path,
                 time.perf_counter() - t0)
        return path

    def _snapshot_waits(self) -> bool:
        """True while alerts wait for the alert log (a full disk): a snapshot now would mark
        them raised while the log lacks them, and let the turn log that raises them again
        on a replay be dropped; the snapshot waits until they are logged (tried once more
        here first)."""
        if self.hub is None or not self.hub.unlogged:
            return False
        self.hub.publish([], _now_ms())
        if not self.hub.unlogged:
            return False
        log.warning("snapshot postponed: %d alerts wait for the alert log; the turn log keeps the turns "
                    "that raised them", len(self.hub.unlogged))
        return True

    def _take_snapshot(self) -> Path | None:
        """Write the tables now (the caller makes sure no batch is half applied)."""
        if self._snapshot_dir() is None or self._snapshot_waits():
            return None
        arrays, meta = self._snapshot_payload()
        path = self._write_snapshot(arrays, meta)
        self._snapshot_written(meta)
        return path

    async def _snapshot_forever(self) -> None:
        """Every ``snapshot_interval_s``: copy the state on the loop (a memcpy of the tables,
        about 0.1 s at 1 M sessions), write it in a thread. Bounds what a SIGKILL loses."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            if self._snapshot_waits():
                continue
            try:
                arrays, meta = self._snapshot_payload()
                await loop.run_in_executor(None, self._write_snapshot, arrays, meta)
                self._snapshot_written(meta)
            except Exception:
                log.exception("periodic snapshot failed")

    def queue_health(self, tenant: str, queue: str):
        # the trend tracker's own clock (the latest turn time it has seen): event time, as the
        # counts are, so a replayed day reads like a live one
        return queue_health(self.trends, self.hub, tenant, queue, None)

    async def _schedule_forever(self) -> None:
        """The clock's pass, every ``scan_period_s``: customers waiting past their SLA (the
        kernel's scan of the whole table), alert deadlines, the alert log's retention."""
        period = self.config.scan_period_s
        next_retention = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                self.metrics.fold_gc_pauses()
                self.scan_once()
                if self.turn_log is not None and self.turn_log.durability == "none":
                    self.turn_log.flush()        # bounds what a crash loses in 'none' mode
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + 60.0
                    self.hub.log.enforce_retention(_now_ms())
            except Exception:   # a bug: keep the clock running, say it once per pass
                log.exception("scheduler pass failed")

    def scan_once(self, now_ms: int | None = None) -> list:
        """One scheduler pass at ``now_ms`` (default: the server clock); the alerts raised."""
        now = _now_ms() if now_ms is None else now_ms
        t0 = time.perf_counter()
        breaches = self.table.sla_breaches(now)
        self.metrics.observe_scan(len(self.table), time.perf_counter() - t0)
        if breaches and self.turn_log is not None:
            self.turn_log.scan(now)          # the scan marked them reported: a replay must too
        raised = []
        if breaches:
            raised += self.hub.publish(self.detector.sla_events(breaches, self.engine.session_state, now), now)
        raised += self.hub.tick(now)
        return raised

    async def _start_models(self) -> None:
        from yujing.service.triton.access import KEY_FILE_NAME, read_key_file
        from yujing.service.triton.router import ModelRouter

        cfg = self.config
        url = headers = http_url = http_headers = None
        if cfg.models == "embedded":
            from yujing.service.triton.launcher import TritonServer, discover_models

            port = cfg.triton_port
            if port and not _port_free(port):
                log.warning("port %d is taken: the embedded Triton takes a free port instead", port)
                port = 0
            key_file = cfg.triton_key_file or (Path(cfg.data_dir) / KEY_FILE_NAME if cfg.data_dir else None)
            self.triton = TritonServer(cfg.model_repo, models=[m for m in (cfg.sentiment_model, cfg.intent_model,
                                                                   cfg.emotion_model, cfg.dissatisfaction_model) if m]
                                       + [m for m in (cfg.combined_model,) if m in discover_models(cfg.model_repo)],
                                       grpc_port=port, allow_http=cfg.triton_inference == "http",
                                       allow_metrics=True, key_file=key_file)
            await asyncio.get_running_loop().run_in_executor(None, self.triton.start)
            url, http_url = self.triton.grpc_url, self.triton.http_url
            log.info("embedded Triton at %s; its model-repository API takes the key in %s", url,
                     self.triton.key_file)
            self._supervisor = asyncio.create_task(self._supervise_triton(), name="yujing-triton-supervisor")
        elif cfg.models == "external":
            url = cfg.triton_url
            key = read_key_file(cfg.triton_key_file) if cfg.triton_key_file else None
            headers, http_headers = (key.grpc_headers(), key.http_headers()) if key else (None, None)
            http_url = cfg.triton_http_url
        if cfg.triton_inference != "http":       # --triton-inference grpc: every request over gRPC
            http_url = None
        self.router = ModelRouter(cfg.model_repo, url, sentiment_model=cfg.sentiment_model,
                                  intent_model=cfg.intent_model, emotion_model=cfg.emotion_model or None,
                                  dissatisfaction_model=cfg.dissatisfaction_model or None,
                                  deadline_s=cfg.triton_timeout_ms / 1000, triton_headers=headers,
                                  triton_http_url=http_url, triton_http_headers=http_headers,
                                  combined_model=cfg.combined_model or None)
        await self.router.start()

    async def _supervise_triton(self) -> None:
        """Restart the embedded Triton if it dies (same ports), and reload a model it
        unloaded (checked every second); the router scores in-process, degraded,
        meanwhile and goes back to Triton by itself."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            await asyncio.sleep(backoff)
            if self.draining:
                continue
            if self.triton.is_running():
                backoff = 1.0
                await self._reload_unloaded_models()
                continue
            log.error("embedded Triton exited; restarting it (log %s)", self.triton.log_path)
            try:
                await loop.run_in_executor(None, self.triton.restart)
                log.info("embedded Triton restarted at %s", self.triton.grpc_url)
                backoff = 1.0
            except Exception as exc:  # keep serving in-process; try again later
                log.error("embedded Triton restart failed: %s", str(exc).splitlines()[0])
                backoff = min(30.0, backoff * 2)

    async def _reload_unloaded_models(self) -> None:
        """A model the running Triton does not have ready (unloaded with the key, behind
        the service's back) is loaded again, with a log line and a count."""
        loop = asyncio.get_running_loop()
        for model in await loop.run_in_executor(None, self.triton.unready_models):
            log.warning("embedded Triton: model %s is not loaded (unloaded behind the service's back?); "
                        "reloading it", model)
            try:
                await loop.run_in_executor(None, self.triton.load_model, model)
            except Exception as exc:  # scored in-process meanwhile; tried again next time
                log.error("embedded Triton: reloading %s failed: %s", model, str(exc).splitlines()[0])
                continue
            self.metrics.triton_model_reloads.labels(model).inc()
            log.info("embedded Triton: model %s reloaded", model)

    async def start(self) -> "YujingServer":
        cfg = self.config
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._start_alerts()        # first: a data directory held by another service fails fast
        self._open_turn_log()
        await self._start_models()
        self.metrics.instrument_router(self.router)
        self.metrics.watch(table=self.table, router=self.router)
        self.engine = Engine(self.policy, self.table, self.router, cfg.idempotency_window)
        self.engine.detector, self.engine.hub = self.detector, self.hub
        self.engine.on_stage = self.metrics.observe_stage
        self._recover_state()
        self.batcher = MicroBatcher(self.engine.score, cfg.max_batch, cfg.max_delay_ms,
                                    on_batch=self.metrics.observe_batch, on_drop=self.metrics.observe_drop,
                                    on_stage=self.metrics.observe_stage, in_flight_batches=cfg.batches_in_flight)
        self.batcher.start()
        self.admission = Admission(self.batcher, cfg.max_pending_turns, cfg.max_queue_ms / 1000.0,
                                   on_refuse=self.metrics.observe_refusal)
        self.metrics.watch(table=self.table, router=self.router, batcher=self.batcher, hub=self.hub,
                           webhook=self.webhook, trends=self.trends, admission=self.admission)
        interceptors = [MetricsInterceptor(self.metrics), AuthInterceptor(self.auth)]   # counted, then authenticated
        known = _core_server_ids()
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            # a bigger request is refused RESOURCE_EXHAUSTED by gRPC core before it is parsed
            # (ScoreBatch's turn limit is checked only after: 24 concurrent 66 MB batches held 4 GB)
            ("grpc.max_receive_message_length", cfg.max_request_bytes),
            ("grpc.so_reuseport", 0),
            # gRPC core's backlog of calls not yet picked up: its defaults (random early drop
            # from 1,000, all above 3,000) cancel bursts of concurrent calls with a bare
            # CANCELLED; the service's own admission control (max_pending_turns) answers
            # overload with RESOURCE_EXHAUSTED and a message instead
            ("grpc.server.max_pending_requests", cfg.max_pending_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", cfg.max_pending_rpcs),
        ])
        new = _core_server_ids() - known
        self.metrics.watch_core_server(new.pop() if len(new) == 1 else None)
        add_risk_scorer(RiskScorer(self), self.server)
        pb_grpc.add_AlertsServicer_to_server(AlertsServicer(self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["RiskScorer"].full_name,
             pb.DESCRIPTOR.services_by_name["Alerts"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME), self.server)
        self.port = tls.listen(self.server, cfg)
        await self.server.start()
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.start_http(cfg.host, cfg.metrics_port, **tls.metrics_tls(cfg))
        await self._warm_up()
        self.metrics.watch_gc()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="yujing-ttl-sweeper")
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="yujing-scheduler")
        if cfg.data_dir is not None and cfg.snapshot_interval_s > 0:
            self._snapshotter = asyncio.create_task(self._snapshot_forever(), name="yujing-snapshots")
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return self

    async def _warm_up(self) -> None:
        """Compile (or load from cache) the kernels on a scratch table before SERVING.
        The text, answer and queue trend kernels first, off the event loop (a cold compile
        takes seconds, during which health checks are still answered NOT_SERVING)."""
        loop = asyncio.get_running_loop()
        for what, warm_up in (("text feature", featurize.warm_up), ("answer", A.warm_up),
                              ("queue trend", trends.warm_up)):
            seconds = await loop.run_in_executor(None, warm_up)
            log.info("%s kernel ready in %.2f s (compiled, or loaded from numba's cache)", what, seconds)
        scratch = SessionTable(capacity=2, agent_capacity=2, backend=self.config.backend)
        eng = Engine(self.policy, scratch, self.router, 0)
        eng.detector = AlertDetector(self.policy, 2, 2)
        eng.hub = AlertHub(MemoryLog(), self.policy.version, self.policy.alerts, _now_ms)
        t = pb.Turn(session_id="warm-up", turn_id="1", speaker=pb.CUSTOMER, text="warm up", agent_id="a")
        await eng.score([validate_turn(t, self.config, _now_ms())])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.config.ttl_s / 4))
            now = _now_ms()
            if self.turn_log is not None and self.table.sessions.idle_slots(now - self.table.ttl_ms, set()).size:
                self.turn_log.sweep(now)     # ahead of the change, as every change
            self.table.sweep(now)

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            r = self.health.set(name, status)
            if asyncio.iscoroutine(r):
                await r

    async def _drain(self, limit_s: float) -> None:
        """Refuse new calls with UNAVAILABLE until no call has arrived for a moment and
        the batcher is empty. gRPC core cancels calls it holds that the application
        has not picked up yet when the server stops; draining first answers them."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while loop.time() < end:
            quiet = time.monotonic() - self.last_call > 0.1
            if quiet and (self.batcher is None or self.batcher.in_flight == 0):
                return
            await asyncio.sleep(0.02)

    async def stop(self, drain_s: float | None = None) -> None:
        """Stop accepting, answer what was accepted within ``drain_s``, refuse the rest
        UNAVAILABLE, snapshot, close everything (module docstring)."""
        grace = self.config.drain_s if drain_s is None else drain_s
        self.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.hub is not None:
            self.hub.stop_watchers()
        for reader in list(self.stream_readers):   # a stream's next turn is not read
            reader.cancel()
        if self.server is not None:
            await self._drain(grace)
        if self.batcher is not None:
            refused = self.batcher.refuse_queued(NOT_SCORED)
            if refused:
                log.warning("drain deadline (%.1f s): %d accepted turns not scored were refused UNAVAILABLE",
                            grace, refused)
            await self.batcher.close()             # the batch being scored, if any
        if self.server is not None:
            await self.server.stop(min(grace, 2.0))  # every answer is decided: send them
        if self.batcher is not None:
            try:
                self._take_snapshot()
            except Exception:   # the turn log still holds every applied turn
                log.exception("snapshot at shutdown failed")
        if self.turn_log is not None:
            self.turn_log.close()
        for task in (self._sweeper, self._supervisor, self._scheduler, self._snapshotter):
            if task is not None:
                task.cancel()
        if self.webhook is not None:
            await self.webhook.close(min(grace, 5.0))
        if self.hub is not None:
            self.hub.close()
        if self.router is not None:
            await self.router.close()
        if self.triton is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.triton.close)
        self.metrics.unwatch_gc()
        self.metrics.stop_http()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def create_server(config: Config) -> tuple[YujingServer, int]:
    """Start a service for ``config`` (port 0: a free port); returns it and its port."""
    srv = YujingServer(config)
    try:
        await srv.start()
    except BaseException:
        await srv.stop(0)
        raise
    return srv, srv.port


def _freeze_startup_heap(metrics) -> None:
    """Move what start-up left alive (modules, models, compiled kernels, the restored state)
    out of the garbage collector's scans: a full collection then walks only what serving
    made since. Under ScoreBatch load a full collection paused the loop 86-115 ms with the
    start-up heap in it, 3-7 ms without (BENCHMARKS.md section 8). Done by the process
    that serves (not by create_server, which tests call many times in one process: a
    service stopped later would stay frozen in memory). The collection made here (about
    0.1 s) is start-up's, not a pause of serving: ``metrics`` does not time it."""
    import gc

    metrics.unwatch_gc()
    try:
        gc.collect()
        gc.freeze()
    finally:
        metrics.watch_gc()


async def _serve(config: Config) -> None:
    srv, port = await create_server(config)
    _freeze_startup_heap(srv.metrics)
    c = config
    models = {"embedded": f"embedded Triton at {srv.triton.grpc_url}" if srv.triton else "",
              "external": f"Triton at {c.triton_url}", "in-process": "in-process models"}[c.models]
    if srv.router.client is not None:
        http_url = srv.router.client.http_url
        models += f", inference over HTTP at {http_url}" if http_url else ", inference over gRPC"
    emotion = f", emotion {c.emotion_model} v{srv.router.versions.get(c.emotion_model)}" if c.emotion_model else ""
    if c.dissatisfaction_model:
        emotion += f", dissatisfaction {c.dissatisfaction_model} v{srv.router.versions.get(c.dissatisfaction_model)}"
    log.info("yujing serving on %s:%d (models: %s, sentiment %s v%s, intent %s v%s%s; kernels %s; "
             "capacity %d sessions; policy %s; %s)", c.host, port, models, c.sentiment_model,
             srv.router.versions.get(c.sentiment_model), c.intent_model,
             srv.router.versions.get(c.intent_model), emotion, srv.table.kernels.name, c.capacity,
             srv.policy.version, tls.describe(c, len(srv.auth.store) if srv.auth.store is not None else None))
    if c.tokens is not None and not c.tls_cert and not tls.is_loopback(c.host):
        log.warning("yujing: tokens travel in clear text on %s: give --tls-cert/--tls-key (or terminate TLS "
                    "in front of the service)", c.host)
    if c.data_dir is not None:
        held = (f"alerts {srv.hub.log.first_id} .. {srv.hub.log.last_id}" if srv.hub.log.last_id >= srv.hub.log.first_id
                else "no alerts yet")
        log.info("yujing state in %s: %d sessions, %s (alerts kept %.0f days, %.0f MiB at most)",
                 c.data_dir, len(srv.table), held, c.alert_retention_days, c.alert_retention_mb)
    else:
        log.info("yujing keeps no state on disk (--data-dir none): alerts are lost on exit")
    if srv.webhook is not None:
        log.info("yujing webhook: POST alerts to %s%s", c.webhook_url,
                 " (signed)" if c.webhook_secret_file else " (unsigned: give --webhook-secret-file)")
    if srv.metrics_port is not None:
        log.info("yujing metrics on %s://%s:%d/metrics", "https" if c.metrics_tls else "http", c.host,
                 srv.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("yujing: shutting down (answering accepted turns for up to %.1f s)", c.drain_s)
    for sig in (signal.SIGINT, signal.SIGTERM):   # a second signal: exit now
        loop.add_signal_handler(sig, _exit_now)
    await srv.stop()
    log.info("yujing: stopped")


def _exit_now() -> None:
    import os

    log.warning("yujing: second signal, exiting without the shutdown snapshot (the turn log holds the state)")
    logging.shutdown()
    os._exit(1)


def serve(config: Config) -> None:
    import uvloop

    uvloop.run(_serve(config))
