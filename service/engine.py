"""The scoring pipeline for one batch of accepted turns; the engine only orchestrates:

    plan (idempotency.py: answers already known, repeats in the batch)
      -> models (the router: sentiment, intent; Triton or in-process)
      -> the turn log (storage/turn_log.py): the batch and the models' answer, committed
         before anything is applied (a restart replays it after the last snapshot)
      -> model outputs by position (model_outputs.py) + features (featurize.py)
      -> policy look-ups (pack.py) -> session/agent slots (slots.py)
      -> packed kernel inputs (pack.py) -> update kernel (session_table.py -> kernels/)
      -> TurnRisk answers as wire bytes (answers.py, wire.py), kept in the idempotency window
      -> alerts the batch raises (alerts/detect.py), logged before the answers go out

The model call is the only awaited step; everything after it runs synchronously on
the event loop. Batches may overlap in the model call (the batcher starts the next batch's
call while one is out: ``--batches-in-flight``), but they are applied strictly in the order
:meth:`Engine.score` was called, so a turn's state change is visible to the next batch. A
turn refused here (table full) changes nothing; every other refusal happens earlier, in
:mod:`yujing.service.validate`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from yujing.service import answers as A
from yujing.service.contract import pb
from yujing.service.errors import StateUnavailable
from yujing.service.featurize import featurize_batch
from yujing.service.idempotency import AnswerCache, plan, resolve_repeats
from yujing.service.model_outputs import read_outputs
from yujing.kernels import layout as L
from yujing.service.pack import pack_turns, policy_lookups
from yujing.service.policy import Policy
from yujing.service.session_table import SessionTable
from yujing.service.slots import resolve_slots
from yujing.service.storage.segment_log import LogError, write_failure

log = logging.getLogger("yujing")


def replay_key(e) -> tuple:
    """What identifies an alert a replayed batch may raise again: the turn-raised kinds only
    (queue trends are not replayed: their counters start again after a restart)."""
    return (e.kind, e.tenant_id, e.session_id, e.agent_id, e.turn_id)


@dataclass
class PendingTurn:
    """A validated turn waiting for its batch."""

    turn: "pb.Turn"
    key: tuple[str, str]            # (tenant_id, session_id)
    idem: tuple[str, str, str]      # (tenant_id, session_id, turn_id)
    ts_ms: int                      # the turn's time (its timestamp, or the server clock)
    now_ms: int                     # server clock when accepted


def _with_text(items) -> list:
    """Positions of the turns that carry text: the ones the models score."""
    return [j for j, it in enumerate(items) if it.turn.text]


class Engine:
    """Owns the session table, the policy and the answer cache; scores batches."""

    def __init__(self, policy: Policy, table: SessionTable, router, idempotency_window: int = 262_144,
                 clock=lambda: int(time.time() * 1000)):
        self.policy = policy
        self.table = table
        self.router = router
        self.answers = AnswerCache(idempotency_window)
        self.clock = clock
        self._intent_tables: dict = {}
        # the early-warning layer (service/alerts): set by the server, None in a bare engine
        self.detector = None
        self.hub = None
        # the turn log (service/storage/turn_log.py): set by the server when it keeps state
        self.turn_log = None
        # while a restart replays the turn log: the alerts the log already holds (not raised twice)
        self._replay_seen: set | None = None
        self.batches = 0
        self.turns = 0
        # the apply order: each score() call waits for the one called before it to be applied
        self._last_applied = None
        # callback(stage, seconds) for each stage of a batch (metrics: yujing_batch_stage_seconds)
        self.on_stage = None

    async def score(self, items: list[PendingTurn]) -> list:
        """Answers (a TurnRisk's wire bytes, or a :class:`YujingError`) in the order of
        ``items``; the gRPC handlers send the bytes as they are.

        Only the turns that will change state go to the models and the kernel: a retry
        already in the answer cache, or a repeat of an earlier turn of the same batch, is
        answered from the first one (``duplicate = True``) without being scored again.

        Calls may overlap: their model calls run at the same time, and each is applied only
        after the call made before it (in call order, whatever order the models answer in).
        A batch planned while an earlier one was still unapplied looks its turns up again
        once that one is applied: a retry of a turn of that batch is its duplicate, not a
        second application.
        """
        prev, done = self._last_applied, asyncio.get_running_loop().create_future()
        self._last_applied = done
        try:
            return await self._score_after(items, prev)
        finally:
            done.set_result(None)

    async def _score_after(self, items, prev) -> list:
        """:meth:`score` once the batch before it (``prev``: its future, or None) is applied."""
        answers, run = plan(items, self.cached)
        planned_at = self.batches
        fresh = [items[k] for k in run]
        with_text = _with_text(fresh)
        result, models_s = await self._classify(fresh, with_text)
        if prev is not None and not prev.done():
            await prev
        if self.batches != planned_at and fresh:      # applied since the plan: look again
            answers, rerun = plan(items, self.cached)
            if rerun != run:                          # a retry of a turn just applied (rare)
                run, fresh = rerun, [items[k] for k in rerun]
                with_text = _with_text(fresh)
                result, models_s = await self._classify(fresh, with_text)
        if fresh:
            t1 = time.perf_counter()
            logged = self._log_batch(fresh, result)
            if self.on_stage is not None:
                self.on_stage("models", models_s)
                self.on_stage("turn_log", time.perf_counter() - t1)
            for k, a in zip(run, self._apply_kernel(fresh, with_text, result) if logged is None
                            else [logged] * len(fresh)):
                answers[k] = a
        return resolve_repeats(answers)

    async def _classify(self, fresh, with_text) -> tuple:
        """The models' answer for the texts of ``fresh`` at ``with_text`` (None when none
        has text) and the seconds it took."""
        if not with_text:
            return None, 0.0
        t0 = time.perf_counter()
        result = await self.router.classify([fresh[j].turn.text for j in with_text])
        return result, time.perf_counter() - t0

    def _log_batch(self, fresh, result):
        """Write ``fresh`` ahead to the turn log; None when written (or no log is kept),
        else the refusal every turn of the batch gets (nothing is applied)."""
        if self.turn_log is None:
            return None
        try:
            self.turn_log.batch(fresh, result, max(it.now_ms for it in fresh))
        except (OSError, LogError) as exc:     # LogError: still failing since an earlier write
            log.error("turn log write failed; the batch of %d turns is refused: %s", len(fresh), exc)
            return StateUnavailable(f"the service cannot write its turn log ({write_failure(exc)}); "
                                    "nothing was applied, retry later")
        return None

    def replay(self, batch) -> int:
        """Apply a batch read back from the turn log (a restart): everything after the
        model call, with the recorded model answer; alerts the alert log already holds
        (``alerts_seen``) are not raised again. Returns the turns applied."""
        items, result = batch.items, batch.result
        answers = self._apply_kernel(items, _with_text(items), result)
        return sum(1 for a in answers if isinstance(a, bytes))

    def cached(self, item) -> bytes | None:
        """The idempotency look-up: the first answer of ``item``'s turn id (``duplicate``
        set) while it is in the window, else None. The one place it is written: the
        handlers' fast path (server.py) and :meth:`score` both call it."""
        return self.answers.get(item.idem)

    # -- the synchronous part ----------------------------------------------------------
    def _intent_table(self, labels):
        t = self._intent_tables.get(labels)
        if t is None:
            t = self._intent_tables[labels] = self.policy.intent_table(labels)
        return t

    def _apply_kernel(self, items, with_text, result) -> list:
        """Score ``items`` (distinct turns, none cached) in order; ``with_text`` are the
        positions whose texts the models scored (``result``). One answer per item."""
        pol = self.policy
        stage = self.on_stage
        t0 = time.perf_counter()
        feats = featurize_batch([it.turn.text for it in items])
        outputs = read_outputs(result, with_text, len(items), feats.languages, pol, self._intent_table)
        lookups = policy_lookups(pol, items, feats, outputs)
        slots = resolve_slots(self.table, items)
        answers: list = [None] * len(items)
        for pos, err in slots.errors.items():
            answers[pos] = err
        if not slots.keep:
            return answers
        ti, tf, th = pack_turns(items, slots, feats, outputs, lookups, pol)
        t1 = time.perf_counter()
        of, oi = self.table.apply(ti, tf, th, pol.pf)
        t2 = time.perf_counter()
        self.batches += 1
        self.turns += len(slots.keep)
        versions, degraded = A.model_versions(result, pol)
        sla_s = tf[L.TF_SLA_MS] / 1000.0
        built = A.build_answers(items, slots.positions, of, oi, outputs, versions, degraded, sla_s=sla_s)
        for k, (raw, tail_at) in zip(slots.keep, built):
            self.answers.put(items[k].idem, raw, tail_at)
            answers[k] = raw
        t3 = time.perf_counter()
        if self.detector is not None:
            kept = [items[k] for k in slots.keep]
            # an alert's reasons are its answer's, read back from the answer's bytes (a parse
            # in C, only for the turns that raise an alert)
            events = self.detector.from_batch(kept, slots, ti, of, oi,
                                              lambda i: list(pb.TurnRisk.FromString(built[i][0]).reasons),
                                              outputs, lookups, feats)
            if self._replay_seen is not None:
                events = [e for e in events if replay_key(e) not in self._replay_seen]
            self.hub.publish(events)
        if stage is not None:
            stage("features", t1 - t0)
            stage("kernel", t2 - t1)
            stage("answers", t3 - t2)
            stage("alerts", time.perf_counter() - t3)
        return answers

    # -- session reads --------------------------------------------------------------------
    def session_state(self, key, end: bool = False) -> "pb.SessionState":
        if end:
            self.table.slot(key)                       # NOT_FOUND before anything is logged
            if self.turn_log is not None:
                self.turn_log.end(key, self.clock())
        snap = (self.table.end if end else self.table.snapshot)(key, self.policy.pf)
        return A.session_state(key, snap, self.policy.pf, self.clock())
