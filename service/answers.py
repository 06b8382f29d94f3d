"""The answers: each turn's ``TurnRisk`` as wire bytes (:mod:`yujing.service.wire`) from the
kernel's outputs (``of``/``oi``, rows named in :mod:`yujing.kernels.layout`) and the models'
outputs, and ``SessionState`` messages from a session snapshot. The kernel's level and
priority numbers become proto enums here only (:func:`level_enum`, :func:`priority_enum`).

What is the same for many turns (the models' versions, the label sets, the indicator
map's keys, each intent label's fields, a reason's words) is encoded once, in Python; the
turns' fields are written by one compiled call per batch
(:func:`yujing.kernels.answers.encode_turn_risks`: the ids, the numbers, the models'
outputs, those pieces) into one buffer, cut here into one ``bytes`` per turn. A reason's
words come from :func:`yujing.service.reasons.reason_texts`, called once per distinct key
(:func:`yujing.kernels.answers.reason_keys`: the figures its template prints) and kept.

:func:`build_answers_py` writes the same bytes field by field in Python: the definition
the compiled encoder is tested against. The same answers built with the generated classes
are in :mod:`yujing.service.answers_reference`.
"""
from __future__ import annotations

import time
from operator import attrgetter

import numpy as np

from yujing.kernels import answers as K
from yujing.kernels import layout as L
from yujing.service import wire as W
from yujing.service.contract import pb
from yujing.service.reasons import WORDS_KIND, reason_texts

_ACTIONS = ((L.ACTION_HANDOFF, pb.HANDOFF_TO_HUMAN), (L.ACTION_SUPERVISOR, pb.SUPERVISOR_ALERT))
# action + actions by the kernel's ACTION_* bits
_ACTION_FIELDS = tuple(W.actions_bytes([a for bit, a in _ACTIONS if bits & bit]) if bits
                       else W.varint_field(W.KEY_ACTION, pb.NO_ACTION) for bits in range(4))
_INDICATOR_BLOCK = W.IndicatorBlock(L.INDICATORS)
_INDICATOR_ROWS_MIN = 8                 # from this many turns numpy writes the indicator blocks
_REASON_NAMES = tuple(W.string_field(W.REASON_INDICATOR, name) for name in L.INDICATORS)
# level and priority fields by the kernel's (level, priority)
_LEVEL_PRIORITY = {(lv, pr): W.varint_field(W.KEY_LEVEL, lv + 1) + W.varint_field(W.KEY_PRIORITY, pr + 1)
                   for lv in range(L.LEVEL_NONE, L.LEVEL_RED + 1) for pr in range(5)}


def _level_priority(level: int, priority: int) -> bytes:
    got = _LEVEL_PRIORITY.get((level, priority))
    if got is None:            # not a value the kernel writes: field by field
        got = W.varint_field(W.KEY_LEVEL, level + 1) + W.varint_field(W.KEY_PRIORITY, priority + 1)
    return got


def level_enum(level: int) -> int:
    """Kernel level (layout.LEVEL_NONE .. LEVEL_RED) -> ``pb.Level`` (NONE .. RED)."""
    return level + 1


def priority_enum(priority: int) -> int:
    """Kernel priority (0 none, 1 P3 .. 4 P0) -> ``pb.Priority`` (PRIORITY_NONE .. P0)."""
    return priority + 1


def model_versions(result, policy) -> tuple["pb.ModelVersions", bool]:
    """The models and policy behind a batch's answers, and whether it was degraded."""
    versions = pb.ModelVersions(policy_version=policy.version)
    if result is None:
        versions.served_by = "none"
        return versions, False
    versions.sentiment_model = result.sentiment.model_name
    versions.sentiment_version = str(result.sentiment.model_version)
    versions.intent_model = result.intent.model_name
    versions.intent_version = str(result.intent.model_version)
    if result.emotion is not None:
        versions.emotion_model = result.emotion.model_name
        versions.emotion_version = str(result.emotion.model_version)
    dissatisfaction = getattr(result, "dissatisfaction", None)
    if dissatisfaction is not None:
        versions.dissatisfaction_model = dissatisfaction.model_name
        versions.dissatisfaction_version = str(dissatisfaction.model_version)
    versions.served_by = result.served_by
    return versions, bool(result.degraded)


def _add_reason(msg, j: int, pts: float, total: float, value: float, sla_s: float | None) -> None:
    en, zh = reason_texts(L.INDICATORS[j], value, sla_s)
    msg.reasons.add(indicator=L.INDICATORS[j], points=pts, share=pts / total if total > 0 else 0.0,
                    value=value, text_en=en, text_zh=zh)


# the text fields of recent reasons by their words: the words are rounded figures, so few
# distinct ones recur (cleared when full, so it stays small)
_TEXT_FIELDS: dict = {}
_TEXT_FIELDS_MAX = 4096


def _reason_fields(row, irow, sla_s) -> bytes:
    total = row[L.OF_TOTAL_POINTS]
    out = b""
    texts = _TEXT_FIELDS
    for r in range(L.TOP_REASONS):
        j = irow[L.OI_REASON_IDX + r]
        if j < 0:
            break
        pts, value = row[L.OF_REASON_POINTS + r], row[j]
        words = reason_texts(L.INDICATORS[j], value, sla_s)
        text = texts.get(words)
        if text is None:
            if len(texts) >= _TEXT_FIELDS_MAX:
                texts.clear()
            text = texts[words] = W.reason_texts_bytes(*words)
        body = _REASON_NAMES[j] + W.reason_numbers(pts, pts / total if total > 0 else 0.0, value) + text
        out += W.KEY_REASONS + W.varint(len(body)) + body
    return out


_LABEL_FIELDS: dict = {}          # a label set's encoded fields, by (what, labels)


def _label_fields(what: str, labels):
    """``labels`` as a ``repeated string`` field (``what``: "sentiment" or "emotion"), or
    as each label's own ``Emotion.label`` field ("emotion_label"): kept, since a model's
    label set is the same batch after batch."""
    k = (what, tuple(labels))
    got = _LABEL_FIELDS.get(k)
    if got is None:
        if len(_LABEL_FIELDS) >= 64:
            _LABEL_FIELDS.clear()
        if what == "emotion_label":
            got = [W.string_field(W.EMOTION_LABEL, s) for s in labels]
        else:
            got = W.repeated_strings(W.SENTIMENT_LABELS if what == "sentiment" else W.EMOTION_LABELS, labels)
        _LABEL_FIELDS[k] = got
    return got


def _rows_bytes(probs, positions, key: bytes) -> tuple[bytes, bytes, int]:
    """A packed float field per position: its prefix (key + length), all rows' bytes end to
    end, and one row's width."""
    rows = np.ascontiguousarray(probs[positions], "<f4")
    width = 4 * rows.shape[1]
    return (key + W.varint(width) if width else b""), rows.tobytes(), width


class _BatchParts:
    """What the answers of one batch share, encoded once, and its per-position lookups."""

    def __init__(self, outputs, positions, versions, degraded: bool):
        self.models_degraded = (W.message_field(W.KEY_MODELS, versions.SerializeToString(deterministic=True))
                                + (W.DEGRADED_TRUE if degraded else b""))
        self.has_sentiment = outputs.has_sentiment[positions].tolist()
        if outputs.sentiment_probs is not None and any(self.has_sentiment):
            self.sent_score = outputs.sentiment[positions].tolist()
            self.sent_labels = _label_fields("sentiment", outputs.sentiment_labels)
            self.sent_prefix, self.sent_rows, self.sent_width = _rows_bytes(
                outputs.sentiment_probs, positions, W.SENTIMENT_PROBS)
        ids = outputs.intent_id[positions]
        self.intent_id = ids.tolist()
        self.intent = {}
        if (ids >= 0).any():
            table = outputs.intent_table
            self.intent_conf = outputs.intent_probs[positions, np.maximum(ids, 0)].tolist()
            for j in set(self.intent_id) - {-1}:
                self.intent[j] = W.intent_parts(table.labels[j], table.category[j], float(table.weight[j]))
        self.emotion_id = ([-1] * len(self.intent_id) if outputs.emotion_id is None
                           else outputs.emotion_id[positions].tolist())
        if any(e >= 0 for e in self.emotion_id):
            e_ids = outputs.emotion_id[positions]
            self.emo_conf = outputs.emotion_probs[positions, np.maximum(e_ids, 0)].tolist()
            self.emo_label = _label_fields("emotion_label", outputs.emotion_labels)
            self.emo_labels = _label_fields("emotion", outputs.emotion_labels)
            self.emo_prefix, self.emo_rows, self.emo_width = _rows_bytes(
                outputs.emotion_probs, positions, W.EMOTION_PROBS)

    def sentiment(self, c: int, label: str) -> bytes:
        if not self.has_sentiment[c]:
            return b""
        w = self.sent_width
        return W.sentiment_bytes(label, self.sent_prefix + self.sent_rows[c * w:(c + 1) * w], self.sent_labels,
                                 self.sent_score[c])

    def intent_of(self, c: int) -> bytes:
        j = self.intent_id[c]
        if j < 0:
            return b""
        label, rest = self.intent[j]
        return W.intent_bytes(label, self.intent_conf[c], rest)

    def emotion(self, c: int, customer: bool) -> bytes:
        e = self.emotion_id[c]
        if e < 0 or not customer:
            return b""
        w = self.emo_width
        return W.emotion_bytes(self.emo_label[e], self.emo_conf[c], self.emo_prefix + self.emo_rows[c * w:(c + 1) * w],
                               self.emo_labels)


def build_answers_py(items, positions, of, oi, outputs, versions, degraded: bool, sla_s=None) -> list:
    """:func:`build_answers` field by field in Python: the definition the compiled encoder
    is tested against (tests/test_answers_compiled.py), and the baseline of ``yujing bench
    answers``."""
    n = len(positions)
    if n == 0:
        return []
    of_t = of.T.tolist()                 # Python numbers once, not per field
    oi_t = oi.T.tolist()
    sla = [None] * n if sla_s is None else np.asarray(sla_s, np.float64).tolist()
    block = _INDICATOR_BLOCK
    if n >= _INDICATOR_ROWS_MIN:          # the whole batch's blocks at once
        blocks, width = block.rows(of[:L.N_INDICATORS]), block.width
        indicators = [blocks[c * width:(c + 1) * width] for c in range(n)]
    else:
        indicators = [block.row(r) for r in of_t]
    parts = _BatchParts(outputs, positions, versions, degraded)
    models_degraded, sentiment_labels = parts.models_degraded, outputs.sentiment_label
    actions, customer, enc = _ACTION_FIELDS, pb.CUSTOMER, W.turn_risk_bytes
    string_field, float_field, varint_field = W.string_field, W.float_field, W.varint_field
    level_priority = _level_priority
    answers = []
    for c, k in enumerate(positions.tolist()):
        turn = items[k].turn
        row, irow = of_t[c], oi_t[c]
        answers.append(enc(
            string_field(W.KEY_TENANT_ID, turn.tenant_id), string_field(W.KEY_SESSION_ID, turn.session_id),
            string_field(W.KEY_TURN_ID, turn.turn_id),
            parts.sentiment(c, sentiment_labels[k]), parts.intent_of(c),
            indicators[c],
            float_field(W.KEY_RISK_SCORE, row[L.OF_SCORE])
            + level_priority(irow[L.OI_LEVEL], irow[L.OI_PRIORITY]),
            _reason_fields(row, irow, sla[c]),
            actions[irow[L.OI_ACTIONS] & 3], models_degraded,
            varint_field(W.KEY_SESSION_TIME_MS, irow[L.OI_SESSION_TIME]),
            varint_field(W.KEY_CUSTOMER_TURNS, irow[L.OI_CUSTOMER]),
            parts.emotion(c, turn.speaker == customer)))
    return answers


# -- the compiled encoder (yujing.kernels.answers) ----------------------------------------------
assert L.N_INDICATORS <= 32, "yujing.kernels.answers.reason_keys keeps an indicator in 5 bits"
_WORDS_KINDS = np.array([WORDS_KIND.get(name, K.W_EXACT) for name in L.INDICATORS], np.int64)
_IND_TEMPLATE = _INDICATOR_BLOCK.template
_IND_AT = _INDICATOR_BLOCK.value_at
_IDS_SPEAKER = attrgetter("tenant_id", "session_id", "turn_id", "speaker")
_NO_ROWS = np.zeros((0, 0), np.float32)
_NO_IDS = np.zeros(0, np.int64)
_NO_SLA = np.zeros(0)
# a reason's words field by its key (yujing.kernels.answers.reason_keys): the same words
# for the same key in every batch (cleared when full, so it stays small)
_WORDS: dict = {}
_WORDS_MAX = 4096
_INTENT_PARTS: dict = {}            # an intent table's label fields and category + weight fields


def _intent_pieces(table) -> tuple[list, list]:
    k = (table.labels, table.category, np.asarray(table.weight, np.float64).tobytes())
    got = _INTENT_PARTS.get(k)
    if got is None:
        if len(_INTENT_PARTS) >= 64:
            _INTENT_PARTS.clear()
        parts = [W.intent_parts(lb, cat, float(w)) for lb, cat, w in zip(table.labels, table.category, table.weight)]
        got = _INTENT_PARTS[k] = ([p[0] for p in parts], [p[1] for p in parts])
    return got


def _words(uniq, first, of, oi, sla, has_sla: bool) -> list:
    """The words fields of the batch's distinct reason keys (``uniq``, sorted): each from
    :func:`reason_texts` on the value of the reason at flat index ``first`` (r * n + c)."""
    n = of.shape[1]
    cache = _WORDS
    out = []
    for key, f in zip(uniq.tolist(), first.tolist()):
        got = cache.get(key) if key >= 0 else None
        if got is None:
            r, c = divmod(f, n)
            j = int(oi[L.OI_REASON_IDX + r, c])
            got = W.reason_texts_bytes(*reason_texts(L.INDICATORS[j], float(of[j, c]),
                                                     float(sla[c]) if has_sla else None))
            if key >= 0:
                if len(cache) >= _WORDS_MAX:
                    cache.clear()
                cache[key] = got
        out.append(got)
    return out


def _ids(turns, n: int) -> tuple:
    """(UTF-8 bytes, their lengths [3n], speakers): the tenants, then the sessions, then
    the turn ids, end to end."""
    tenants, sessions, turn_ids, speakers = zip(*map(_IDS_SPEAKER, turns))
    strs = (*tenants, *sessions, *turn_ids)
    joined = "".join(strs)
    raw = joined.encode()
    if len(raw) == len(joined):                # ASCII: a string's bytes are its characters
        lens = np.fromiter(map(len, strs), np.int64, 3 * n)
    else:
        lens = np.fromiter(map(len, map(str.encode, strs)), np.int64, 3 * n)
    return np.frombuffer(raw or b"\0", np.uint8), lens, speakers


def _f32_rows(probs) -> np.ndarray:
    return _NO_ROWS if probs is None else np.ascontiguousarray(probs, np.float32)


_STATIC: dict = {}                 # the pieces of a batch's models, by what they are made of
_SENT_LABEL_FIELDS: dict = {}      # a sentiment label's field, by the label


def _sentiment_label_field(label: str) -> bytes:
    got = _SENT_LABEL_FIELDS.get(label)
    if got is None:
        if len(_SENT_LABEL_FIELDS) >= 256:
            _SENT_LABEL_FIELDS.clear()
        got = _SENT_LABEL_FIELDS[label] = W.string_field(W.SENTIMENT_LABEL, label)
    return got


def _static_pieces(models: bytes, degraded: bool, outputs, ws: int, we: int) -> tuple:
    """The pieces that are the same while the models are (yujing.kernels.answers.B_*: the
    actions, the models block, the label sets and probability prefixes, the intent labels'
    fields, the emotion labels' fields, the reasons' indicator names), end to end, their
    lengths, and where the intent labels, their rests, the emotion labels and the names
    start."""
    table = outputs.intent_table if outputs.intent_probs is not None else None
    has_sentiment, has_emotion = outputs.sentiment_probs is not None, outputs.emotion_id is not None
    k = (models, degraded, tuple(outputs.sentiment_labels) if has_sentiment else None, ws,
         tuple(outputs.emotion_labels) if has_emotion else None, we, id(table))
    got = _STATIC.get(k)
    if got is not None and got[0] is table:
        return got[1]
    pieces = [*_ACTION_FIELDS, W.message_field(W.KEY_MODELS, models) + (W.DEGRADED_TRUE if degraded else b""),
              _label_fields("sentiment", outputs.sentiment_labels) if has_sentiment else b"",
              W.SENTIMENT_PROBS + W.varint(4 * ws) if ws else b"",
              _label_fields("emotion", outputs.emotion_labels) if has_emotion else b"",
              W.EMOTION_PROBS + W.varint(4 * we) if we else b""]
    b_intent_label = len(pieces)
    i_label, i_rest = _intent_pieces(table) if table is not None else ([], [])
    pieces += i_label
    b_intent_rest = len(pieces)
    pieces += i_rest
    b_emo_label = len(pieces)
    if has_emotion:
        pieces += _label_fields("emotion_label", outputs.emotion_labels)
    b_reason_name = len(pieces)
    pieces += _REASON_NAMES
    out = (b"".join(pieces), np.array([len(p) for p in pieces], np.int64), b_intent_label, b_intent_rest,
           b_emo_label, b_reason_name)
    if len(_STATIC) >= 64:
        _STATIC.clear()
    _STATIC[k] = (table, out)
    return out


def build_answers_compiled(items, positions, of, oi, outputs, versions, degraded: bool, sla_s=None) -> list:
    """:func:`build_answers` by :func:`yujing.kernels.answers.encode_turn_risks`: the same
    bytes as :func:`build_answers_py`, the whole batch in one compiled call."""
    n = len(positions)
    if n == 0:
        return []
    pos = positions.tolist()
    of = np.ascontiguousarray(of, np.float64)
    oi = np.ascontiguousarray(oi, np.int64)
    ids, id_len, speakers = _ids([items[k].turn for k in pos], n)
    # the reasons' words: one call of reason_texts per distinct key
    has_sla = sla_s is not None
    sla = np.ascontiguousarray(sla_s, np.float64) if has_sla else _NO_SLA
    rkeys, ukeys, first = K.reason_keys(of, oi, sla, has_sla, _WORDS_KINDS, L.OI_REASON_IDX, L.TOP_REASONS)
    texts = _words(ukeys, first, of, oi, sla, has_sla)
    # pieces: the fields many turns share, those of the batch's models first (kept from
    # batch to batch), then the sentiment labels and the reasons' words
    has_sentiment, has_intent = outputs.sentiment_probs is not None, outputs.intent_probs is not None
    has_emotion = outputs.emotion_id is not None
    sprobs, iprobs, eprobs = (_f32_rows(outputs.sentiment_probs), _f32_rows(outputs.intent_probs),
                              _f32_rows(outputs.emotion_probs))
    static, static_len, b_intent_label, b_intent_rest, b_emo_label, b_reason_name = _static_pieces(
        versions.SerializeToString(deterministic=True), degraded, outputs, sprobs.shape[1], eprobs.shape[1])
    n_static = len(static_len)
    if has_sentiment:
        labels_at, seen = outputs.sentiment_label, {}
        sent_label = np.fromiter([seen.setdefault(labels_at[k], n_static + len(seen)) for k in pos], np.int64, n)
        dynamic = [_sentiment_label_field(s) for s in seen]
    else:
        sent_label, dynamic = _NO_IDS, []
    b_text = n_static + len(dynamic)
    dynamic += texts
    base = np.array((0, 4, 5, 6, 7, 8, n_static, b_intent_label, b_intent_rest, b_emo_label, b_reason_name, b_text,
                     has_sentiment, has_intent, has_emotion, pb.CUSTOMER), np.int64)
    c_array = np.ascontiguousarray            # the types the kernel was compiled for (warm_up)
    buf, starts, tails = K.encode_turn_risks(
        ids, id_len, c_array(positions, np.int64), of, oi, np.fromiter(speakers, np.int64, n), sent_label,
        c_array(outputs.has_sentiment, np.bool_), c_array(outputs.sentiment, np.float64), sprobs,
        c_array(outputs.intent_id, np.int64), iprobs,
        c_array(outputs.emotion_id, np.int64) if has_emotion else _NO_IDS, eprobs,
        np.frombuffer(static + b"".join(dynamic), np.uint8),
        np.concatenate((static_len, np.fromiter(map(len, dynamic), np.int64, len(dynamic)))), base, _IND_TEMPLATE, _IND_AT, rkeys, ukeys)
    st = starts.tolist()
    raw = buf[:st[-1]].tobytes()
    return [(raw[a:b], t) for a, b, t in zip(st, st[1:], tails.tolist())]


def build_answers(items, positions, of, oi, outputs, versions, degraded: bool, sla_s=None) -> list:
    """``(bytes, tail_at)`` of the TurnRisk of ``items[positions[c]]`` from column ``c`` of
    ``of``/``oi``, in order (``tail_at``: :func:`yujing.service.wire.mark_duplicate`);
    ``sla_s[c]`` is that turn's response SLA (seconds), for the reasons' words. Written by
    the compiled encoder (:func:`build_answers_compiled`), a batch of one turn included
    (``yujing bench answers``: cheaper than :func:`build_answers_py` from one turn on);
    the bytes are :func:`build_answers_py`'s."""
    return build_answers_compiled(items, positions, of, oi, outputs, versions, degraded, sla_s)


def warm_up() -> float:
    """Compile the answer kernels (or load them from numba's cache) on a small batch; returns
    the seconds it took. The server calls it before it serves."""
    from types import SimpleNamespace

    from yujing.service.model_outputs import ModelOutputs

    start = time.perf_counter()
    n = 4
    items = [SimpleNamespace(turn=pb.Turn(session_id="warm-up", turn_id=str(c), speaker=pb.CUSTOMER))
             for c in range(n)]
    of, oi = np.zeros((L.OF_ROWS, n)), np.zeros((L.OI_ROWS, n), np.int64)
    oi[L.OI_REASON_IDX:L.OI_REASON_IDX + L.TOP_REASONS] = -1
    oi[L.OI_REASON_IDX] = np.arange(n) % L.N_INDICATORS
    build_answers_compiled(items, np.arange(n), of, oi, ModelOutputs.empty(n), pb.ModelVersions(), False,
                           np.full(n, 60.0))
    return time.perf_counter() - start


def session_state(key, snap: dict, pf=None, now_ms: int | None = None) -> "pb.SessionState":
    """A ``SessionState`` from :meth:`SessionTable.snapshot`'s dict; with the policy's
    ``pf``, the same top reasons an answer would carry at the session clock; with the
    server clock ``now_ms``, the customer's current wait."""
    state = pb.SessionState(
        tenant_id=key[0], session_id=key[1], indicators=snap["indicators"],
        risk_score=snap["score"], level=level_enum(snap["level"]), priority=priority_enum(snap["priority"]),
        started_ms=snap["started_ms"], last_turn_ms=snap["last_turn_ms"],
        turns=snap["turns"], customer_turns=snap["customer_turns"], sla_ms=snap.get("sla_ms", 0))
    since = snap.get("wait_since_ms", L.NO_WAIT)
    if now_ms is not None and since != L.NO_WAIT:
        state.waiting_ms = max(0, now_ms - since)
    if pf is not None:
        values = [snap["indicators"][n] for n in L.INDICATORS]
        pts = [pf[L.P_WEIGHTS + j] * L.saturated_risk(n, v, pf[L.P_SATURATION + j])
               for j, (n, v) in enumerate(zip(L.INDICATORS, values))]
        total = sum(pts)
        for j in sorted((j for j in range(len(pts)) if pts[j] > 0), key=lambda j: -pts[j])[:L.TOP_REASONS]:
            _add_reason(state, j, pts[j], total, values[j], None)
    return state
