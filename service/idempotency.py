"""Idempotency: ``(tenant_id, session_id, turn_id)`` is a turn's key; a turn sent again is
answered with its first answer (``duplicate = True``) and not counted twice.

    AnswerCache     the window of the last ``capacity`` answers, serialized
    plan            a batch split into answers already known and the positions to score
    resolve_repeats repeats inside one batch answered from their first copy

The look-up itself is ``Engine.cached`` (:mod:`yujing.service.engine`), used both by the
gRPC handlers' fast path and by :func:`plan`.
"""
from __future__ import annotations

from collections import OrderedDict

from yujing.service.contract import pb
from yujing.service.errors import YujingError


class AnswerCache:
    """The idempotency window: the serialized answer of the last ``capacity`` turn ids."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict = OrderedDict()

    def __contains__(self, idem) -> bool:
        return idem in self._d

    def get(self, idem) -> "pb.TurnRisk | None":
        raw = self._d.get(idem)
        if raw is None:
            return None
        self._d.move_to_end(idem)
        risk = pb.TurnRisk.FromString(raw)
        risk.duplicate = True
        return risk

    def put(self, idem, risk: "pb.TurnRisk") -> None:
        if self.capacity <= 0:
            return
        self._d[idem] = risk.SerializeToString()
        self._d.move_to_end(idem)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def export(self) -> tuple[dict, list]:
        """The window for a snapshot, oldest first: ``({"idem.bytes", "idem.lengths"}, keys)``."""
        import numpy as np

        raws = list(self._d.values())
        lengths = np.fromiter((len(r) for r in raws), np.int64, len(raws))
        data = np.frombuffer(b"".join(raws), np.uint8) if raws else np.zeros(0, np.uint8)
        return {"idem.bytes": data, "idem.lengths": lengths}, [list(k) for k in self._d]

    def restore(self, arrays: dict, keys: list) -> int:
        data, lengths = arrays["idem.bytes"].tobytes(), arrays["idem.lengths"].tolist()
        pos = 0
        for key, n in zip(keys, lengths):
            self._d[tuple(key)] = data[pos:pos + n]
            pos += n
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
        return len(self._d)


def plan(items, cached) -> tuple[list, list[int]]:
    """Answers known before scoring (``cached(item)``, or the position of an earlier repeat
    in this batch, an int resolved by :func:`resolve_repeats`), and the positions that go
    through the models and the kernel."""
    answers: list = [None] * len(items)
    first_of: dict = {}
    run: list[int] = []
    for k, it in enumerate(items):
        known = cached(it)
        if known is not None:
            answers[k] = known
        elif it.idem in first_of:
            answers[k] = first_of[it.idem]   # resolved after the kernel
        else:
            first_of[it.idem] = k
            run.append(k)
    return answers, run


def resolve_repeats(answers: list) -> list:
    """Replace each position left by :func:`plan` with a duplicate of its first copy's
    answer (or the same error)."""
    for k, a in enumerate(answers):
        if isinstance(a, int):            # a repeat of an earlier position in this batch
            src = answers[a]
            if isinstance(src, YujingError):
                answers[k] = src
            else:
                dup = pb.TurnRisk()
                dup.CopyFrom(src)
                dup.duplicate = True
                answers[k] = dup
    return answers
