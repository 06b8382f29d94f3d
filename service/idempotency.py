"""Idempotency: ``(tenant_id, session_id, turn_id)`` is a turn's key; a turn sent again is
answered with its first answer (``duplicate = True``) and not counted twice.

    AnswerCache     the window of the last ``capacity`` answers, as their wire bytes
    plan            a batch split into answers already known and the positions to score
    resolve_repeats repeats inside one batch answered from their first copy

An answer is a TurnRisk's bytes (:mod:`yujing.service.wire`); a repeat gets the same bytes
with ``duplicate = true`` inserted at the answer's ``tail_at``, never parsed. The look-up
itself is ``Engine.cached`` (:mod:`yujing.service.engine`), used both by the gRPC handlers'
fast path and by :func:`plan`.
"""
from __future__ import annotations

from collections import OrderedDict

from yujing.service import wire
from yujing.service.errors import YujingError


class AnswerCache:
    """The idempotency window: the answer bytes (and ``tail_at``) of the last ``capacity``
    turn ids.

    In a snapshot (:meth:`export`): ``idem.bytes`` (the answers end to end), ``idem.lengths``
    and ``idem.tail_at``; a snapshot written before ``idem.tail_at`` existed (answers
    serialized by the generated class) is restored with each ``tail_at`` found by a scan
    of its bytes (:func:`yujing.service.wire.find_tail`)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict = OrderedDict()

    def __contains__(self, idem) -> bool:
        return idem in self._d

    def get(self, idem) -> bytes | None:
        """The first answer of ``idem`` marked ``duplicate``, or None outside the window."""
        got = self._d.get(idem)
        if got is None:
            return None
        self._d.move_to_end(idem)
        return wire.mark_duplicate(*got)

    def put(self, idem, raw: bytes, tail_at: int) -> None:
        if self.capacity <= 0:
            return
        self._d[idem] = (raw, tail_at)
        self._d.move_to_end(idem)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def export(self) -> tuple[dict, list]:
        """The window for a snapshot, oldest first: ``({"idem.bytes", "idem.lengths",
        "idem.tail_at"}, keys)``."""
        import numpy as np

        held = list(self._d.values())
        lengths = np.fromiter((len(r) for r, _ in held), np.int64, len(held))
        tails = np.fromiter((t for _, t in held), np.int64, len(held))
        data = np.frombuffer(b"".join(r for r, _ in held), np.uint8) if held else np.zeros(0, np.uint8)
        return {"idem.bytes": data, "idem.lengths": lengths, "idem.tail_at": tails}, [list(k) for k in self._d]

    def restore(self, arrays: dict, keys: list) -> int:
        data, lengths = arrays["idem.bytes"].tobytes(), arrays["idem.lengths"].tolist()
        tails = arrays["idem.tail_at"].tolist() if "idem.tail_at" in arrays else None
        pos = 0
        for i, (key, n) in enumerate(zip(keys, lengths)):
            raw = data[pos:pos + n]
            self._d[tuple(key)] = (raw, tails[i] if tails is not None else wire.find_tail(raw))
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
    answer (or the same error). A repeat inside one batch is rare: its first copy's
    ``tail_at`` is found again by a scan rather than carried along."""
    for k, a in enumerate(answers):
        if isinstance(a, int):            # a repeat of an earlier position in this batch
            src = answers[a]
            answers[k] = src if isinstance(src, YujingError) else wire.mark_duplicate(src, wire.find_tail(src))
    return answers
