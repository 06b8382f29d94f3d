"""The answers in protobuf's wire format, written directly: ``TurnRisk`` and ``TurnRiskBatch``
bytes without building a message per turn (proto/yujing/v1/risk.proto).

    key(field, wire_type)           a field's tag bytes
    string_field / float_field ...  one field of a scalar type (nothing for proto3's default)
    message_field(key, payload)     a sub-message (present, so written even when empty)
    IndicatorBlock                  the ``indicators`` map: a whole batch at once, or one turn
    turn_risk_bytes(...)            one TurnRisk from its encoded parts -> (bytes, tail_at)
    mark_duplicate(raw, tail_at)    the same answer with ``duplicate = true``
    find_tail(raw)                  ``tail_at`` of any TurnRisk's bytes (a scan)
    batch_bytes(results)            a TurnRiskBatch from answers and per-turn errors
    serialize                       the gRPC response serializer of those bytes (as they are)

The bytes are those of ``SerializeToString(deterministic=True)`` of the generated class
for the same values (tests/test_wire.py checks it): fields in field-number order, the
map's entries sorted by key, each entry with its key and its value, a proto3 scalar left
out when its bits are zero (so ``-0.0`` and NaN are written, ``0.0`` is not), floats
rounded to float32 as the generated class does (beyond float32's range: infinity).

Duplicates: ``duplicate`` (field 15) goes where the generated class puts it, between
``degraded`` (14) and ``session_time_ms`` (16). :func:`turn_risk_bytes` returns the offset
of field 16 (``tail_at``); :func:`mark_duplicate` inserts ``duplicate = true`` there, so a
repeat's bytes equal the generated class's for the same message. (Appending the field
would parse the same, a later scalar wins, but would not compare equal byte for byte.)

    >>> raw, tail_at = turn_risk_bytes(b"", string_field(KEY_SESSION_ID, "s1"), b"", b"", b"",
    ...                                b"", b"", b"", b"", b"", b"", b"", b"")
    >>> raw, mark_duplicate(raw, tail_at)
    (b'\\x12\\x02s1', b'\\x12\\x02s1x\\x01')
"""
from __future__ import annotations

import operator
import struct

import numpy as np

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5

_VARINT_SMALL = tuple(bytes((i,)) for i in range(128))


def varint(n: int) -> bytes:
    """``n`` as a base-128 varint; a negative ``n`` as its 64-bit two's complement (10 bytes),
    as protobuf writes a negative int32, int64 or enum."""
    if 0 <= n < 128:
        return _VARINT_SMALL[n]
    if 0 < n < 16384:                       # two bytes: most lengths
        return bytes(((n & 127) | 128, n >> 7))
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_ZERO32 = bytes(4)
_ZERO64 = bytes(8)
_INF32 = _F32.pack(float("inf"))
_NINF32 = _F32.pack(float("-inf"))


def f32(x: float) -> bytes:
    """``x`` as protobuf stores a float: rounded to float32, infinity beyond its range."""
    try:
        return _F32.pack(x)
    except OverflowError:
        return _INF32 if x > 0 else _NINF32


# -- one field -------------------------------------------------------------------------------
def string_field(k: bytes, s: str) -> bytes:
    """A string field (``k`` its key); nothing when ``s`` is empty."""
    if not s:
        return b""
    e = s.encode()
    return k + varint(len(e)) + e


def float_field(k: bytes, x: float) -> bytes:
    b = f32(x)
    return b"" if b == _ZERO32 else k + b


def double_field(k: bytes, x: float) -> bytes:
    b = _F64.pack(x)
    return b"" if b == _ZERO64 else k + b


def varint_field(k: bytes, n: int) -> bytes:
    return k + varint(n) if n else b""


def message_field(k: bytes, payload: bytes) -> bytes:
    """A set sub-message: written even when all its fields are defaults (``k`` + 0)."""
    return k + varint(len(payload)) + payload


def repeated_strings(k: bytes, values) -> bytes:
    return b"".join(k + varint(len(e)) + e for e in (s.encode() for s in values))


def packed_varints(k: bytes, values) -> bytes:
    b = b"".join(varint(v) for v in values)
    return k + varint(len(b)) + b if b else b""


# -- TurnRisk (risk.proto field numbers) -------------------------------------------------------
KEY_TENANT_ID = key(1, WT_LEN)
KEY_SESSION_ID = key(2, WT_LEN)
KEY_TURN_ID = key(3, WT_LEN)
KEY_SENTIMENT = key(4, WT_LEN)
KEY_INTENT = key(5, WT_LEN)
KEY_INDICATORS = key(6, WT_LEN)
KEY_RISK_SCORE = key(7, WT_I32)
KEY_LEVEL = key(8, WT_VARINT)
KEY_PRIORITY = key(9, WT_VARINT)
KEY_REASONS = key(10, WT_LEN)
KEY_ACTION = key(11, WT_VARINT)
KEY_ACTIONS = key(12, WT_LEN)
KEY_MODELS = key(13, WT_LEN)
KEY_DEGRADED = key(14, WT_VARINT)
KEY_DUPLICATE = key(15, WT_VARINT)
KEY_SESSION_TIME_MS = key(16, WT_VARINT)
KEY_CUSTOMER_TURNS = key(17, WT_VARINT)
KEY_EMOTION = key(18, WT_LEN)
DUPLICATE_FIELD = 15
DUPLICATE_TRUE = KEY_DUPLICATE + b"\x01"
DEGRADED_TRUE = KEY_DEGRADED + b"\x01"

# Sentiment, Intent, Emotion, Reason: field keys inside each sub-message
SENTIMENT_LABEL, SENTIMENT_PROBS, SENTIMENT_LABELS, SENTIMENT_SCORE = (
    key(1, WT_LEN), key(2, WT_LEN), key(3, WT_LEN), key(4, WT_I32))
INTENT_LABEL, INTENT_CONFIDENCE, INTENT_CATEGORY, INTENT_RISK_WEIGHT = (
    key(1, WT_LEN), key(2, WT_I32), key(3, WT_LEN), key(4, WT_I32))
EMOTION_LABEL, EMOTION_CONFIDENCE, EMOTION_PROBS, EMOTION_LABELS = (
    key(1, WT_LEN), key(2, WT_I32), key(3, WT_LEN), key(4, WT_LEN))
REASON_INDICATOR, REASON_POINTS, REASON_SHARE, REASON_VALUE, REASON_TEXT_EN, REASON_TEXT_ZH = (
    key(1, WT_LEN), key(2, WT_I32), key(3, WT_I32), key(4, WT_I64), key(5, WT_LEN), key(6, WT_LEN))
# TurnRiskBatch.results (1), TurnResult.risk (1) / .error (2), TurnError.code/.message/.field
KEY_RESULTS = key(1, WT_LEN)
KEY_RESULT_RISK = key(1, WT_LEN)
KEY_RESULT_ERROR = key(2, WT_LEN)
ERROR_CODE, ERROR_MESSAGE, ERROR_FIELD = key(1, WT_VARINT), key(2, WT_LEN), key(3, WT_LEN)


def sentiment_bytes(label: str, probs: bytes, labels: bytes, score: float) -> bytes:
    """A set ``sentiment`` field: ``probs`` its packed ``probabilities`` field, ``labels`` from
    :func:`repeated_strings` (the same for a whole batch)."""
    return message_field(KEY_SENTIMENT, string_field(SENTIMENT_LABEL, label) + probs + labels
                         + float_field(SENTIMENT_SCORE, score))


def intent_bytes(label: bytes, confidence: float, category_and_weight: bytes) -> bytes:
    """A set ``intent``: ``label`` and ``category_and_weight`` encoded once per intent label
    (:func:`intent_parts`), the confidence per turn."""
    return message_field(KEY_INTENT, label + float_field(INTENT_CONFIDENCE, confidence) + category_and_weight)


def intent_parts(label: str, category: str, risk_weight: float) -> tuple[bytes, bytes]:
    return (string_field(INTENT_LABEL, label),
            string_field(INTENT_CATEGORY, category) + float_field(INTENT_RISK_WEIGHT, risk_weight))


def emotion_bytes(label: bytes, confidence: float, probs: bytes, labels: bytes) -> bytes:
    return message_field(KEY_EMOTION, label + float_field(EMOTION_CONFIDENCE, confidence) + probs + labels)


# points, share (float) and value (double) with their one-byte keys, when all three are written
_REASON_NUMBERS = struct.Struct("<BfBfBd")
_REASON_KEYS = (REASON_POINTS[0], REASON_SHARE[0], REASON_VALUE[0])
_F32_SAFE_MIN, _F32_SAFE_MAX = 1e-44, 3.4e38        # a float32 of these magnitudes is neither 0 nor inf


def reason_numbers(points: float, share: float, value: float) -> bytes:
    """A Reason's ``points``, ``share`` and ``value`` fields: one pack when none of them is
    left out (the usual case), else field by field."""
    if (_F32_SAFE_MIN < abs(points) < _F32_SAFE_MAX and _F32_SAFE_MIN < abs(share) < _F32_SAFE_MAX
            and value != 0.0):
        kp, ks, kv = _REASON_KEYS
        return _REASON_NUMBERS.pack(kp, points, ks, share, kv, value)
    return float_field(REASON_POINTS, points) + float_field(REASON_SHARE, share) + double_field(REASON_VALUE, value)


def reason_texts_bytes(text_en: str, text_zh: str) -> bytes:
    """A Reason's ``text_en`` and ``text_zh`` fields."""
    return string_field(REASON_TEXT_EN, text_en) + string_field(REASON_TEXT_ZH, text_zh)


def reason_bytes(indicator: bytes, points: float, share: float, value: float, text_en: str,
                 text_zh: str) -> bytes:
    """One ``reasons`` entry; ``indicator`` is the name's field, encoded once."""
    return message_field(KEY_REASONS, indicator + reason_numbers(points, share, value)
                         + reason_texts_bytes(text_en, text_zh))


def actions_bytes(actions) -> bytes:
    """``action`` (the first, or ``main`` when none) and the packed ``actions`` list."""
    acts = list(actions)
    return varint_field(KEY_ACTION, acts[0]) + packed_varints(KEY_ACTIONS, acts)


class IndicatorBlock:
    """The ``indicators`` map (``map<string, double>``) of many turns at once: the entries'
    bytes are fixed but for the 8 bytes of each value, so a batch's block is one template
    row per turn with the values written in by numpy, column by column.

    ``names`` in the order of the value rows; the entries are written sorted by key."""

    def __init__(self, names):
        self.names = tuple(names)
        parts, offsets, pos = [], [0] * len(self.names), 0
        for row in sorted(range(len(self.names)), key=lambda j: self.names[j].encode()):
            k = self.names[row].encode()
            entry = b"\x0a" + varint(len(k)) + k + b"\x11"          # key = 1, then value = 2 (double)
            head = KEY_INDICATORS + varint(len(entry) + 8) + entry
            offsets[row] = pos + len(head)
            parts.append(head + _ZERO64)
            pos += len(head) + 8
        self.template = np.frombuffer(b"".join(parts), np.uint8)
        self.width = pos
        self.value_at = np.asarray(offsets, np.int64)                  # by row: its value's first byte
        self._cols = self.value_at[:, None] + np.arange(8)             # [names, 8] byte columns
        # one turn's block in one pack: each entry's fixed bytes, then its value
        order = sorted(range(len(self.names)), key=lambda j: self.names[j].encode())
        heads = [p[:-8] for p in parts]
        self._one = struct.Struct("<" + "".join(f"{len(h)}sd" for h in heads))
        self._args = [x for h in heads for x in (h, 0.0)]
        self._pick = operator.itemgetter(*order)

    def row(self, values) -> bytes:
        """One turn's block from its values by name (a sequence in ``names`` order, floats;
        longer is fine): the same bytes as its row of :meth:`rows`, cheaper for a few turns."""
        args = self._args[:]
        args[1::2] = self._pick(values)
        return self._one.pack(*args)

    def rows(self, values: np.ndarray) -> bytes:
        """``values`` float64 [names, n] -> the n turns' blocks end to end (``width`` each)."""
        n = values.shape[1]
        out = np.empty((n, self.width), np.uint8)
        out[:] = self.template
        v = np.ascontiguousarray(values.T, "<f8").view(np.uint8).reshape(n, len(self.names), 8)
        out[:, self._cols] = v
        return out.tobytes()


def turn_risk_bytes(tenant_id: bytes, session_id: bytes, turn_id: bytes, sentiment: bytes, intent: bytes,
                    indicators: bytes, score_level_priority: bytes, reasons: bytes, actions: bytes,
                    models_degraded: bytes, session_time_ms: bytes, customer_turns: bytes,
                    emotion: bytes) -> tuple[bytes, int]:
    """One TurnRisk from its fields, each already encoded (``b""``: not set), in field order;
    returns the bytes and ``tail_at``, where ``duplicate`` would go (:func:`mark_duplicate`)."""
    tail = session_time_ms + customer_turns + emotion
    raw = b"".join((tenant_id, session_id, turn_id, sentiment, intent, indicators, score_level_priority,
                    reasons, actions, models_degraded, tail))
    return raw, len(raw) - len(tail)


def mark_duplicate(raw: bytes, tail_at: int) -> bytes:
    """The answer ``raw`` (with no ``duplicate`` field) as a repeat: ``duplicate = true``."""
    return raw[:tail_at] + DUPLICATE_TRUE + raw[tail_at:]


def find_tail(raw: bytes) -> int:
    """``tail_at`` of a TurnRisk's bytes from any writer (an old snapshot's, written by the
    generated class): the offset of its first field numbered above ``duplicate``."""
    pos, n = 0, len(raw)
    while pos < n:
        start = pos
        tag, pos = _read_varint(raw, pos)
        if tag >> 3 > DUPLICATE_FIELD:
            return start
        wt = tag & 7
        if wt == WT_VARINT:
            _, pos = _read_varint(raw, pos)
        elif wt == WT_I64:
            pos += 8
        elif wt == WT_I32:
            pos += 4
        elif wt == WT_LEN:
            length, pos = _read_varint(raw, pos)
            pos += length
        else:
            raise ValueError(f"not a TurnRisk: wire type {wt} at byte {start}")
    if pos != n:
        raise ValueError("not a TurnRisk: its last field runs past the end")
    return n


def _read_varint(b: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(b):
            raise ValueError("not a TurnRisk: a varint runs past the end")
        c = b[pos]
        pos += 1
        out |= (c & 127) << shift
        if c < 128:
            return out, pos
        shift += 7


def serialize(answer: bytes) -> bytes:
    """gRPC's response serializer for answers already in wire format: the bytes as they are."""
    return answer


# -- TurnRiskBatch ------------------------------------------------------------------------------
def error_result(code: int, message: str, field: str) -> bytes:
    """A TurnResult's ``error`` (TurnError) payload, to pass to :func:`batch_bytes`."""
    return varint_field(ERROR_CODE, code) + string_field(ERROR_MESSAGE, message) + string_field(ERROR_FIELD, field)


class TurnError(bytes):
    """A refused turn's encoded TurnError (:func:`error_result`), told apart from an
    answer's bytes in :func:`batch_bytes`."""


def batch_bytes(results) -> bytes:
    """A TurnRiskBatch: one TurnResult per item of ``results``, in order; an item is a
    TurnRisk's bytes (``risk``) or a :class:`TurnError` (``error``)."""
    parts = []
    for r in results:
        inner = (KEY_RESULT_ERROR if isinstance(r, TurnError) else KEY_RESULT_RISK) + varint(len(r)) + r
        parts.append(KEY_RESULTS + varint(len(inner)) + inner)
    return b"".join(parts)
