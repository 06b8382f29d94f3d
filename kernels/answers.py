"""The answers' wire bytes, compiled: a whole batch of ``TurnRisk`` messages written into
one byte buffer (``encode_turn_risks``), and the key that decides each reason's words
(``reason_keys``). What these take and write is :mod:`yujing.service.answers`' business
(it builds the arguments and slices the buffer into one answer per turn); the bytes are
those of its Python encoder (``build_answers_py``), which is the definition they are tested
against (tests/test_answers_compiled.py), and so of the generated classes' deterministic
serialisation (service/wire.py's docstring says how protobuf writes each field).

Pieces: everything that is the same for many turns (a label's field, the models block, an
action's fields, a reason's indicator name and its words) is encoded once in Python; the
pieces lie end to end in ``blob``, ``piece_len`` their lengths. ``base`` says where each
kind of piece starts (``B_*``). Per turn the kernel writes the ids, the numbers (float32 rounding
and proto3's zero omission: a field whose bits are all zero is left out, so ``-0.0`` and
NaN are written) and the sub-messages' lengths, and copies pieces.

Reason words: ``reason_keys`` gives each reason an int64 key such that two reasons with
the same key have the same words (the indicator, the figures its template prints after
Python's rounding, the SLA); a reason whose figures it cannot decide exactly (a rounding
boundary, a value beyond the range, a value that is not finite, an unknown template) gets
a key of its own, ``-1 - (r * n + c)``, so its words come from its own value. Python
resolves each distinct key once. A key's bits: the indicator (0-4), the template's branch
(5-6: for an SLA-relative or duration figure, seconds / minutes / hours), the figure's sign
(7), the SLA in ms (8-31, 0 without one), the figure (32-61: the rounded value in the
template's unit, e.g. hundredths for ``+.2f``).

The figures: ``round``/``int(round(v))``, ``:.0f`` and ``round(x, 1)`` round the exact
binary value half to even; ``np.rint`` does the same for a number it holds exactly (``v``,
``100 * v``: computed as Python computes them), and for a scaled value ``y = x * 10**d``
(one rounding from the exact product) the integer is that of the exact product unless ``y``
lies on a half, where the key is not used (``_round_safe``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from yujing.kernels import layout as L

# how an indicator's words depend on its value (yujing.service.reasons.WORDS_KIND)
W_CONST = 0        # the words do not depend on the value (a finite one)
W_SIGNED_2F = 1    # f"{v:+.2f}"
W_PCT = 2          # f"{100 * v:.0f} %"
W_INT = 3          # int(round(v))
W_F0 = 4           # f"{v:.0f}"
W_SLA = 5          # _dur(v * sla) and _dur(sla) with an SLA, else f"{v:.1f}"
W_DUR60 = 6        # _dur(v * 60)
W_EXACT = 7        # no key: every reason its own words

NO_REASON = np.iinfo(np.int64).max

# base: the first piece of each kind, and which models' outputs the batch has
(B_ACTIONS, B_MODELS, B_SENT_LABELS, B_SENT_PREFIX, B_EMO_LABELS, B_EMO_PREFIX, B_SENT_LABEL,
 B_INTENT_LABEL, B_INTENT_REST, B_EMO_LABEL, B_REASON_NAME, B_TEXT, B_HAS_SENTIMENT, B_HAS_INTENT,
 B_HAS_EMOTION, B_CUSTOMER, B_ROWS) = range(17)

_K_LIMIT = 1 << 30          # the figures a key holds (below 2**30)
# y = x * scale is the exact product rounded once (within |y| * 2**-53 <= 2**-23 of it), and a
# half is a double, so y can only sit on the wrong side of a half by being that half; the
# margin around it is spare
_NEAR_HALF = 2.0 ** -20
_SLA_MS_LIMIT = 1 << 24


@njit(cache=True, nogil=True)
def _round_safe(y):
    """The integer the exact product behind ``y`` (>= 0, one rounding away) rounds to, half
    to even, or -1 when ``y`` is too close to a half to tell (or too large)."""
    if not y < _K_LIMIT:
        return -1
    fl = np.floor(y)
    d = y - fl
    if abs(d - 0.5) <= _NEAR_HALF:
        return -1
    return np.int64(fl) + (1 if d > 0.5 else 0)


@njit(cache=True, nogil=True)
def _dur_key(s):
    """(branch, figure) of reasons._dur(s), or (0, -1) when it cannot be told exactly."""
    if not np.isfinite(s):
        return 0, -1
    if s < 60.0:
        return 1, max(np.int64(0), np.int64(np.rint(s)) if s > -_K_LIMIT else np.int64(0))
    if s < 5400.0:
        return 2, np.int64(np.rint(s / 60.0))
    return 3, _round_safe(s / 3600.0 * 10.0)


@njit(cache=True, nogil=True)
def _signbit(x):
    return 1 if np.copysign(1.0, x) < 0 else 0


@njit(cache=True, nogil=True)
def reason_keys(of, oi, sla, has_sla, kinds, reason_idx_row, n_top):
    """``(keys, uniq, first)``: int64 [n_top, n] each reason's words key (see the module
    docstring), ``NO_REASON`` where a turn has fewer reasons; the distinct keys, sorted, and
    for each the flat index (``r * n + c``) of its first reason. ``of``/``oi`` the kernel's outputs, ``sla`` the turns'
    SLAs in seconds (read when ``has_sla``), ``kinds[j]`` indicator j's ``W_*``."""
    n = of.shape[1]
    keys = np.full((n_top, n), NO_REASON, np.int64)
    for c in range(n):
        for r in range(n_top):
            j = oi[reason_idx_row + r, c]
            if j < 0:
                break
            if j >= kinds.shape[0]:                 # not an indicator: worded (and refused) in Python
                keys[r, c] = -1 - (r * n + c)
                continue
            v = of[j, c]
            kind = kinds[j]
            branch, sign, m, k = 0, 0, 0, np.int64(0)
            if not np.isfinite(v) or kind == W_EXACT:
                k = -1
            elif kind == W_SIGNED_2F:
                sign, k = _signbit(v), _round_safe(abs(v) * 100.0)
            elif kind == W_PCT:
                w = 100.0 * v
                sign = _signbit(w)
                k = np.int64(abs(np.rint(w))) if abs(w) < _K_LIMIT else -1
            elif kind == W_INT:
                if abs(v) < _K_LIMIT:
                    q = np.int64(np.rint(v))
                    sign, k = (1 if q < 0 else 0), abs(q)
                else:
                    k = -1
            elif kind == W_F0:
                sign = _signbit(v)
                k = np.int64(abs(np.rint(v))) if abs(v) < _K_LIMIT else -1
            elif kind == W_SLA:
                s = sla[c] if has_sla else 0.0
                if s != 0.0:                    # Python's truth: NaN is an SLA too
                    ms = np.rint(s * 1000.0) if np.isfinite(s) else -1.0
                    if s > 0 and 0 < ms < _SLA_MS_LIMIT and ms / 1000.0 == s:
                        m = np.int64(ms)
                        branch, k = _dur_key(v * s)
                    else:
                        k = -1
                else:
                    sign, k = _signbit(v), _round_safe(abs(v) * 10.0)
            elif kind == W_DUR60:
                branch, k = _dur_key(v * 60.0)
            if k < 0:
                keys[r, c] = -1 - (r * n + c)
            else:
                keys[r, c] = j | (branch << 5) | (sign << 7) | (m << 8) | (k << 32)
    flat = keys.ravel()
    order = np.argsort(flat, kind="mergesort")
    uniq = np.empty(flat.shape[0], np.int64)
    first = np.empty(flat.shape[0], np.int64)
    u = 0
    for i in range(flat.shape[0]):
        key = flat[order[i]]
        if key == NO_REASON:
            break
        if u == 0 or key != uniq[u - 1]:
            uniq[u] = key
            first[u] = order[i]
            u += 1
    return keys, uniq[:u], first[:u]


@njit(cache=True, nogil=True)
def _varint_len(v):
    u = np.uint64(v)
    n = 1
    while u >= np.uint64(128):
        u >>= np.uint64(7)
        n += 1
    return n


@njit(cache=True, nogil=True)
def _varint(buf, pos, v):
    u = np.uint64(v)
    while u >= np.uint64(128):
        buf[pos] = np.uint8((u & np.uint64(127)) | np.uint64(128))
        u >>= np.uint64(7)
        pos += 1
    buf[pos] = np.uint8(u)
    return pos + 1


@njit(cache=True, nogil=True)
def _le(buf, pos, bits, nbytes):
    u = np.uint64(bits)
    for i in range(nbytes):
        buf[pos + i] = np.uint8(u & np.uint64(255))
        u >>= np.uint64(8)
    return pos + nbytes


@njit(cache=True, nogil=True)
def _fixed_field(buf, pos, key, bits, nbytes):
    """A fixed-width scalar field (``key`` its tag, ``bits`` its little-endian bytes), left
    out when its bits are zero, as proto3 writes a float or double."""
    if bits == 0:
        return pos
    return _le(buf, _varint(buf, pos, key), bits, nbytes)


@njit(cache=True, nogil=True)
def _varint_field(buf, pos, key, v):
    """A varint scalar field, left out when it is zero (proto3's default)."""
    if v == 0:
        return pos
    return _varint(buf, _varint(buf, pos, key), v)


@intrinsic
def _memcpy(typingctx, dst, dst_at, src, src_at, nbytes):
    """``nbytes`` bytes from byte ``src_at`` of array ``src`` to byte ``dst_at`` of ``dst``
    (C-contiguous arrays; the caller keeps within them): llvm.memcpy, which a byte loop
    does not become, and one load and store when ``nbytes`` is a constant 4 or 8."""
    sig = types.void(dst, dst_at, src, src_at, nbytes)

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        i8 = cgutils.voidptr_t
        dp = builder.gep(builder.bitcast(d.data, i8), [args[1]])
        sp = builder.gep(builder.bitcast(s.data, i8), [args[3]])
        cgutils.raw_memcpy(builder, dp, sp, args[4], 1)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _copy(buf, pos, blob, piece, p):
    a, b = piece[p], piece[p + 1]
    _memcpy(buf, pos, blob, a, b - a)
    return pos + b - a


@njit(cache=True, nogil=True)
def _f32_bits(x, s32, u32):
    s32[0] = np.float32(x)
    return u32[0]


@njit(cache=True, nogil=True)
def _conf_bits(x32, s32, u32):
    """A float32 probability's bits as protobuf writes it after Python read it as a float
    (float32 -> float64 -> float32: the same number, a NaN made quiet)."""
    s32[0] = x32
    b = u32[0]
    if x32 != x32:
        b |= np.uint32(0x00400000)
    return b


@njit(cache=True, nogil=True)
def encode_turn_risks(ids, id_len, positions, of, oi, speaker, sent_label, has_sent, sent_score, sprobs, intent_id,
                      iprobs, emotion_id, eprobs, blob, piece_len, base, ind_template, ind_at, rkeys, ukeys):
    """All turns' TurnRisk bytes end to end: ``(buf, starts, tails)``, turn c's answer is
    ``buf[starts[c]:starts[c + 1]]`` and its ``tail_at`` (where ``duplicate`` goes) ``tails[c]``.

    ``ids``/``id_len``: the UTF-8 ids end to end, all tenants, then all sessions, then all
    turn ids, and their lengths; ``of``/``oi``: the kernel's outputs, column c for turn c;
    ``speaker``: the turns' speakers (``base[B_CUSTOMER]``: the customer's); ``sent_label``:
    the piece of each turn's sentiment label; the models' outputs (``has_sent`` ..
    ``eprobs``) by position, turn c at ``positions[c]`` (``base[B_HAS_*]``: which the batch
    has); ``blob``/``piece_len``: the pieces end to end and their lengths;
    ``ind_template``/``ind_at``: one turn's
    indicators block and where each indicator's 8 value bytes go; ``rkeys``
    (:func:`reason_keys`) looked up in the sorted ``ukeys``, whose words are the pieces
    from ``base[B_TEXT]``."""
    n = of.shape[1]
    n_top = L.TOP_REASONS
    id_off = np.zeros(3 * n + 1, np.int64)
    for i in range(3 * n):
        id_off[i + 1] = id_off[i] + id_len[i]
    piece = np.zeros(piece_len.shape[0] + 1, np.int64)
    for i in range(piece_len.shape[0]):
        piece[i + 1] = piece[i] + piece_len[i]
    customer = base[B_CUSTOMER]
    s32 = np.empty(1, np.float32)
    u32 = s32.view(np.uint32)
    ofb = of.view(np.uint64)
    ws, we = sprobs.shape[1], eprobs.shape[1]
    has_sentiment, has_intent, has_emotion = base[B_HAS_SENTIMENT], base[B_HAS_INTENT], base[B_HAS_EMOTION]

    # an upper bound of the bytes: the ids, then every field at its longest
    max_piece = 0
    for p in range(piece.shape[0] - 1):
        max_piece = max(max_piece, piece[p + 1] - piece[p])
    per_turn = (3 * 11 + (11 + 3 * max_piece + 4 * ws + 5) + (11 + 2 * max_piece + 5)
                + ind_template.shape[0] + 5 + 22 + n_top * (11 + 2 * max_piece + 19) + 2 * max_piece
                + 33 + (11 + 3 * max_piece + 5 + 4 * we))
    buf = np.empty(id_off[3 * n] + n * per_turn, np.uint8)
    starts = np.empty(n + 1, np.int64)
    tails = np.empty(n, np.int64)
    width = ind_template.shape[0]
    pos = 0
    for c in range(n):
        k = positions[c]
        starts[c] = pos
        for f in range(3):                                            # tenant, session, turn id
            a, b = id_off[f * n + c], id_off[f * n + c + 1]
            if b > a:
                buf[pos] = (f + 1) << 3 | 2
                pos = _varint(buf, pos + 1, b - a)
                _memcpy(buf, pos, ids, a, b - a)
                pos += b - a
        if has_sentiment and has_sent[k]:                             # sentiment (4)
            sl = sent_label[c]
            sb = _f32_bits(sent_score[k], s32, u32)
            body = piece[sl + 1] - piece[sl] + piece[base[B_SENT_LABELS] + 1] - piece[base[B_SENT_LABELS]]
            if sb != 0:
                body += 5
            if ws:
                body += piece[base[B_SENT_PREFIX] + 1] - piece[base[B_SENT_PREFIX]] + 4 * ws
            buf[pos] = 0x22
            pos = _varint(buf, pos + 1, body)
            pos = _copy(buf, pos, blob, piece, sl)
            if ws:
                pos = _copy(buf, pos, blob, piece, base[B_SENT_PREFIX])
                _memcpy(buf, pos, sprobs, 4 * ws * k, 4 * ws)
                pos += 4 * ws
            pos = _copy(buf, pos, blob, piece, base[B_SENT_LABELS])
            pos = _fixed_field(buf, pos, 0x25, sb, 4)
        j = intent_id[k] if has_intent else -1
        if j >= 0:                                                    # intent (5)
            if j >= base[B_INTENT_REST] - base[B_INTENT_LABEL] or j >= iprobs.shape[1]:
                raise IndexError("an intent id beyond the intent model's labels")
            cb = _conf_bits(iprobs[k, j], s32, u32)
            lp, rp = base[B_INTENT_LABEL] + j, base[B_INTENT_REST] + j
            body = piece[lp + 1] - piece[lp] + piece[rp + 1] - piece[rp]
            if cb != 0:
                body += 5
            buf[pos] = 0x2a
            pos = _varint(buf, pos + 1, body)
            pos = _copy(buf, pos, blob, piece, lp)
            pos = _fixed_field(buf, pos, 0x15, cb, 4)
            pos = _copy(buf, pos, blob, piece, rp)
        _memcpy(buf, pos, ind_template, 0, width)                     # indicators (6)
        for r in range(L.N_INDICATORS):
            _memcpy(buf, pos + ind_at[r], of, 8 * (r * n + c), 8)
        pos += width
        pos = _fixed_field(buf, pos, 0x3d, _f32_bits(of[L.OF_SCORE, c], s32, u32), 4)   # risk_score (7)
        pos = _varint_field(buf, pos, 0x40, oi[L.OI_LEVEL, c] + 1)    # level (8)
        pos = _varint_field(buf, pos, 0x48, oi[L.OI_PRIORITY, c] + 1)  # priority (9)
        total = of[L.OF_TOTAL_POINTS, c]
        for r in range(n_top):                                        # reasons (10)
            j = oi[L.OI_REASON_IDX + r, c]
            if j < 0:
                break
            pts = of[L.OF_REASON_POINTS + r, c]
            share = pts / total if total > 0 else 0.0
            vb = ofb[j, c]
            pb_ = _f32_bits(pts, s32, u32)
            shb = _f32_bits(share, s32, u32)
            tp = base[B_TEXT] + np.searchsorted(ukeys, rkeys[r, c])
            np_ = base[B_REASON_NAME] + j
            body = piece[np_ + 1] - piece[np_] + piece[tp + 1] - piece[tp]
            if pb_ != 0:
                body += 5
            if shb != 0:
                body += 5
            if vb != 0:
                body += 9
            buf[pos] = 0x52
            pos = _varint(buf, pos + 1, body)
            pos = _copy(buf, pos, blob, piece, np_)
            pos = _fixed_field(buf, pos, 0x15, pb_, 4)
            pos = _fixed_field(buf, pos, 0x1d, shb, 4)
            pos = _fixed_field(buf, pos, 0x21, vb, 8)
            pos = _copy(buf, pos, blob, piece, tp)
        pos = _copy(buf, pos, blob, piece, base[B_ACTIONS] + (oi[L.OI_ACTIONS, c] & 3))   # action(s) (11, 12)
        pos = _copy(buf, pos, blob, piece, base[B_MODELS])           # models (13), degraded (14)
        tails[c] = pos - starts[c]
        pos = _varint_field(buf, pos, 16 << 3, oi[L.OI_SESSION_TIME, c])   # session_time_ms (16)
        pos = _varint_field(buf, pos, 17 << 3, oi[L.OI_CUSTOMER, c])       # customer_turns (17)
        e = emotion_id[k] if has_emotion and speaker[c] == customer else -1
        if e >= 0:                                                    # emotion (18)
            if e >= base[B_REASON_NAME] - base[B_EMO_LABEL] or e >= eprobs.shape[1]:
                raise IndexError("an emotion id beyond the emotion model's labels")
            eb = _conf_bits(eprobs[k, e], s32, u32)
            lp = base[B_EMO_LABEL] + e
            body = piece[lp + 1] - piece[lp] + piece[base[B_EMO_LABELS] + 1] - piece[base[B_EMO_LABELS]]
            if eb != 0:
                body += 5
            if we:
                body += piece[base[B_EMO_PREFIX] + 1] - piece[base[B_EMO_PREFIX]] + 4 * we
            pos = _varint(buf, _varint(buf, pos, 18 << 3 | 2), body)   # key 0x92 0x01
            pos = _copy(buf, pos, blob, piece, lp)
            pos = _fixed_field(buf, pos, 0x15, eb, 4)
            if we:
                pos = _copy(buf, pos, blob, piece, base[B_EMO_PREFIX])
                _memcpy(buf, pos, eprobs, 4 * we * k, 4 * we)
                pos += 4 * we
            pos = _copy(buf, pos, blob, piece, base[B_EMO_LABELS])
    starts[n] = pos
    return buf, starts, tails
