"""The turn log: every change of the session state that a snapshot does not yet hold,
in the order it was applied, so a restart (or a crash) loses no acknowledged turn.

The service writes it ahead: a record is appended and committed (one group commit per
micro-batch, in the durability mode of ``--durability``) *before* the change is applied
and before any answer of the batch is sent. A restart restores the newest snapshot, then
replays the records after the snapshot's ``turn_log_id`` (:meth:`TurnLog.replay`).

What a record holds (one :class:`~yujing.service.storage.segment_log.SegmentLog`
record each; the first byte is its kind):

``T`` a scored batch: the distinct turns that went to the kernel, with their tenant, turn
      time and server clock, and the models' answer for their texts. Replay runs the
      batch through everything after the model call (features, policy, slots, kernel,
      answers into the idempotency window, alert marks) with the recorded model answer:
      no model is called again, the state comes out as it was.
``E`` EndSession of one ``(tenant, session)`` key.
``W`` a TTL sweep at a server time (only one that expired sessions is logged).
``L`` an SLA scan at a server time that reported breaches (it marks them reported).

Layout of a ``T`` record (little-endian)::

    b"T" | u32 header length | header (JSON, UTF-8) | i64 ts_ms[n] | i64 now_ms[n]
         | u32 turn length[n] | serialised pb.Turn ... | float32 probs of each model ...

The header names ``n``, the tenants and the models' answer (model, version, labels,
languages, shape, who served it, degraded; sentiment, intent, then emotion and
dissatisfaction where the header's flag of that name is true -- a record written before
the dissatisfaction model has no such flag and replays without it). ``E``: ``b"E" + JSON [tenant, session]``;
``W`` and ``L``: the kind byte alone, the server time is the record's ``ts_ms``.

Loss windows of the three durability modes are those of the SegmentLog (its module
docstring); the service also ``flush()``-es a ``none`` log on every scheduler pass, so
``none`` loses at most about ``--scan-period-s`` of turns (or 1 MiB) on a crash.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yujing.service.storage.segment_log import SegmentLog

REC_BATCH, REC_END, REC_SWEEP, REC_SCAN = b"T", b"E", b"W", b"L"
# the ClassifyResult answers a batch may hold besides sentiment and intent, in record order
OPTIONAL_SCORES = ("emotion", "dissatisfaction")
_U32 = struct.Struct("<I")


@dataclass
class LoggedBatch:
    """A decoded ``T`` record: what :meth:`Engine.replay` needs."""

    items: list          # PendingTurn, in batch order
    result: object       # ClassifyResult (None: no turn had text)


def encode_batch(items, result) -> bytes:
    """The ``T`` record of ``items`` (PendingTurn) and the router's ``result``."""
    n = len(items)
    header = {"n": n, "tenants": [it.key[0] for it in items]}
    blobs = []
    if result is not None:
        optional = [(role, getattr(result, role, None)) for role in OPTIONAL_SCORES]
        scores = [result.sentiment, result.intent] + [s for _, s in optional if s is not None]
        header["result"] = {"served_by": result.served_by, "degraded": bool(result.degraded),
                            **{role: s is not None for role, s in optional},
                            "scores": [{"model": s.model_name, "version": s.model_version, "labels": list(s.labels),
                                        "served_by": s.served_by,
                                        "languages": None if s.languages is None else list(s.languages),
                                        "shape": list(np.shape(s.probs))} for s in scores]}
        blobs = [np.ascontiguousarray(s.probs, np.float32).tobytes() for s in scores]
    turns = [it.turn.SerializeToString() for it in items]
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join([REC_BATCH, _U32.pack(len(head)), head,
                     np.fromiter((it.ts_ms for it in items), np.int64, n).tobytes(),
                     np.fromiter((it.now_ms for it in items), np.int64, n).tobytes(),
                     np.fromiter((len(t) for t in turns), np.uint32, n).tobytes(), *turns, *blobs])


def decode_batch(payload: bytes) -> LoggedBatch:
    """The inverse of :func:`encode_batch`."""
    from yujing.service.contract import pb
    from yujing.service.engine import PendingTurn
    from yujing.service.triton.router import ClassifyResult, ModelScores

    if payload[:1] != REC_BATCH:
        raise ValueError(f"not a batch record (kind {payload[:1]!r})")
    (hlen,) = _U32.unpack_from(payload, 1)
    pos = 5 + hlen
    header = json.loads(payload[5:pos])
    n = header["n"]
    ts = np.frombuffer(payload, np.int64, n, pos); pos += 8 * n
    now = np.frombuffer(payload, np.int64, n, pos); pos += 8 * n
    lens = np.frombuffer(payload, np.uint32, n, pos).tolist(); pos += 4 * n
    items = []
    for k, length in enumerate(lens):
        turn = pb.Turn.FromString(payload[pos:pos + length]); pos += length
        tenant = header["tenants"][k]
        items.append(PendingTurn(turn=turn, key=(tenant, turn.session_id), idem=(tenant, turn.session_id, turn.turn_id),
                                 ts_ms=int(ts[k]), now_ms=int(now[k])))
    result = None
    r = header.get("result")
    if r is not None:
        scores = []
        for s in r["scores"]:
            rows, cols = s["shape"]
            probs = np.frombuffer(payload, np.float32, rows * cols, pos).reshape(rows, cols).copy()
            pos += 4 * rows * cols
            scores.append(ModelScores(s["model"], s["version"], tuple(s["labels"]), probs, s["served_by"],
                                      None if s["languages"] is None else tuple(s["languages"])))
        # a record names the optional answers it holds, in OPTIONAL_SCORES order after sentiment
        # and intent; one written before a model existed has no flag for it (None)
        rest = iter(scores[2:])
        optional = {role: next(rest) if r.get(role, False) else None for role in OPTIONAL_SCORES}
        result = ClassifyResult(scores[0], scores[1], r["served_by"], r["degraded"], **optional)
    if pos != len(payload):
        raise ValueError(f"batch record of {len(payload)} bytes decoded to {pos}")
    return LoggedBatch(items, result)


class TurnLog:
    """The service's turn log in ``directory`` (one writer; see the module docstring)."""

    def __init__(self, directory: str | Path, durability: str = "batch", segment_bytes: int = 64 << 20):
        self.log = SegmentLog(directory, durability=durability, segment_bytes=segment_bytes)
        self.durability = durability
        self.records = 0          # appended by this process
        self.bytes = 0

    @property
    def last_id(self) -> int:
        return self.log.last_id

    def _write(self, payload: bytes, ts_ms: int) -> int:
        rid = self.log.append(payload, ts_ms)
        self.log.commit()
        self.records += 1
        self.bytes += len(payload)
        return rid

    def batch(self, items, result, now_ms: int) -> int:
        """Log a batch before it is applied (one group commit)."""
        return self._write(encode_batch(items, result), now_ms)

    def end(self, key, now_ms: int) -> int:
        return self._write(REC_END + json.dumps(list(key), ensure_ascii=False).encode(), now_ms)

    def sweep(self, now_ms: int) -> int:
        return self._write(REC_SWEEP, now_ms)

    def scan(self, now_ms: int) -> int:
        return self._write(REC_SCAN, now_ms)

    def flush(self) -> None:
        self.log.flush()

    def records_after(self, after_id: int, chunk: int = 256):
        """Every record after ``after_id``, in order (read in chunks)."""
        cursor = after_id
        while True:
            recs = self.log.read(cursor, chunk)
            if not recs:
                return
            yield from recs
            cursor = recs[-1].id

    def drop_through(self, rid: int) -> int:
        """Delete the whole segments whose records are all at or below ``rid`` (a snapshot
        holds their effect); the active segment stays."""
        return self.log.drop_through(rid)

    def close(self) -> None:
        self.log.close()
