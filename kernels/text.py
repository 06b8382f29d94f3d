"""Per-turn text features as Numba kernels over a whole batch of code points.

The batch arrives as two uint32 arrays of code points, the texts joined by 0: ``raw`` (as
received) and ``low`` (NFKC-normalised and lowercased by the caller). One call of
:func:`featurize_codes` computes, per text, the token count, the negation-cue count, the
escalation-cue mask, the raw intensity score (before ``1 - exp(-raw)``), the SimHash and
the language bits, mirroring ``yujing.service.featurize_reference`` (the definitions and
the plain reference; ``tests/test_featurize_compiled.py`` holds the two equal).

Cue lists are regexes; :func:`compile_cue_program` turns a trie of their atoms into
arrays (a "cue program") that :func:`_match_at` walks with the same backtracking order as
Python's ``re`` on the trie-shaped pattern: at a node, the alternatives in the order
given, each quantifier greedy or lazy as written, the cue ending at the node last. The
supported atoms are what the cue lists use: a literal, a character class (``[...]``,
``[^...]``), ``\\s``, each with ``? * + {m,n}`` (lazy with a trailing ``?``), and
negative or positive lookahead and fixed-width lookbehind over a sequence of those.
Anything else raises at compile time, so a new cue cannot silently diverge.

A cue program is ``(code, first_ok)``: ``first_ok`` is a uint8 per code point, 1 where a
match can start (the root's literals); ``code`` is one int64 array holding the sections
below (``s`` set, ``e`` element, ``a`` atom, ``k`` node, ``g`` edge), section ``S_*`` at
``code[code[S_*]:]``, so a kernel reads ``code[code[S_X] + i]``. One flat array rather
than a tuple of arrays: numba copied the tuple (and reference-counted every member) at
each inlined helper, which made a match attempt cost microseconds::

    set_first[s], set_end[s], set_neg[s]   ranges range_lo/range_hi[set_first:set_end]
    el_set[e], el_min[e], el_max[e], el_lazy[e]    one set repeated min..max times
    atom_kind[a], atom_first[a], atom_end[a], atom_width[a]
                                           CONSUME: one element; LOOK*: a body sequence
    node_end[k]                            tag of the cue ending at k, -1 if none
    node_lit_first/end[k] -> lit_char, lit_edge   single-character edges, sorted by char
    node_cx_first/end[k]  -> cx_edge       other edges, in match order
    edge_atom[g], edge_child[g], edge_order[g]   edge_order: rank among its node's edges
    meta                                   (stack depth, element count) for scratch()
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit

CONSUME, LOOKAHEAD_NEG, LOOKAHEAD_POS, LOOKBEHIND_NEG, LOOKBEHIND_POS = 0, 1, 2, 3, 4
_UNBOUNDED = 1 << 30
(S_SET_FIRST, S_SET_END, S_SET_NEG, S_RANGE_LO, S_RANGE_HI, S_EL_SET, S_EL_MIN, S_EL_MAX,
 S_EL_LAZY, S_ATOM_KIND, S_ATOM_FIRST, S_ATOM_END, S_ATOM_WIDTH, S_NODE_END,
 S_NODE_LIT_FIRST, S_NODE_LIT_END, S_LIT_CHAR, S_LIT_EDGE, S_NODE_CX_FIRST, S_NODE_CX_END,
 S_CX, S_EDGE_ATOM, S_EDGE_CHILD, S_EDGE_ORDER, S_META) = range(25)
_N_SECTIONS = 25
_N_CODES = 0x110000

# character class flags (yujing.service.featurize_reference._class_table)
WORD, LETTER, CJK, EN, EXCL, QUES, APOS = 1, 2, 4, 8, 16, 32, 64
TOKEN_MARK = 2
CJK_ASTRAL_LO, CJK_ASTRAL_HI = 0x20000, 0x3FFFF

_inline = njit(cache=True, nogil=True)

_W_EXCL, _W_QUES, _W_RUN, _W_SHOUT, _W_REPEAT = 0.25, 0.10, 0.35, 1.50, 0.35
_SHOUT_MIN_LETTERS = 3

# ---------------------------------------------------------------------------------------
# cue program: regex atoms -> arrays
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _whitespace_ranges() -> list[tuple[int, int]]:
    # re's \s on str is Py_UNICODE_ISSPACE, the same test as str.isspace; all in the BMP
    return _ranges([c for c in range(0x10000) if chr(c).isspace()])


def _ranges(codes: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in sorted(set(codes)):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(lo, hi) for lo, hi in out]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


def _escaped(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isalnum():
        raise ValueError(f"unsupported escape \\{ch} in a cue")
    return ch


def _parse_class(body: str) -> tuple[list[tuple[int, int]], bool]:
    """``body`` is the inside of ``[...]``; returns (ranges, negated)."""
    neg = body.startswith("^")
    if neg:
        body = body[1:]
    items: list[tuple[int, int]] = []
    i = 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] == "s":
                items.extend(_whitespace_ranges())
                i += 2
                continue
            lo, i = ord(_escaped(body[i + 1])), i + 2
        else:
            lo, i = ord(body[i]), i + 1
        if i + 1 < len(body) and body[i] == "-":
            hi_ch = body[i + 1]
            if hi_ch == "\\":
                hi, i = ord(_escaped(body[i + 2])), i + 3
            else:
                hi, i = ord(hi_ch), i + 2
            items.append((lo, hi))
        else:
            items.append((lo, lo))
    return _ranges([c for lo, hi in items for c in range(lo, hi + 1)]), neg


def _split_elements(source: str) -> list[str]:
    """Regex source -> its elements: a class, an escape or a character, each with its
    quantifier. Groups are not allowed here."""
    out, i = [], 0
    while i < len(source):
        c = source[i]
        if c in "()|":
            raise ValueError(f"unsupported group or alternation in cue atom {source!r}")
        if c == "[":
            j = source.index("]", i + 2) + 1
        elif c == "\\":
            j = i + 2
        else:
            j = i + 1
        if j < len(source) and source[j] == "{":
            j = source.index("}", j) + 1
        while j < len(source) and source[j] in "+*?":
            j += 1
        out.append(source[i:j])
        i = j
    return out


def _parse_element(element: str) -> tuple[list[tuple[int, int]], bool, int, int, bool]:
    """One element -> (ranges, negated, min, max, lazy)."""
    if element[0] == "[":
        end = element.index("]", 2)
        ranges, neg = _parse_class(element[1:end])
        quant = element[end + 1:]
    elif element[0] == "\\":
        if element[1] == "s":
            ranges, neg = _whitespace_ranges(), False
        else:
            ranges, neg = [(ord(_escaped(element[1])),) * 2], False
        quant = element[2:]
    elif element[0] == ".":
        ranges, neg, quant = [(10, 10)], True, element[1:]
    elif element[0] in "^$":
        raise ValueError(f"unsupported anchor in cue element {element!r}")
    else:
        ranges, neg, quant = [(ord(element[0]),) * 2], False, element[1:]
    lazy = False
    if quant.startswith("{"):
        close = quant.index("}")
        lo, _, hi = quant[1:close].partition(",")
        lo_n = int(lo) if lo else 0
        hi_n = (int(hi) if hi else _UNBOUNDED) if "," in quant[1:close] else lo_n
        rest = quant[close + 1:]
    elif quant[:1] in ("?", "*", "+"):
        lo_n, hi_n = {"?": (0, 1), "*": (0, _UNBOUNDED), "+": (1, _UNBOUNDED)}[quant[0]]
        rest = quant[1:]
    else:
        lo_n, hi_n, rest = 1, 1, quant
    if rest == "?":
        lazy = True
    elif rest:
        raise ValueError(f"unsupported quantifier in cue element {element!r}")
    return ranges, neg, lo_n, hi_n, lazy


_LOOKAROUNDS = (("(?<!", LOOKBEHIND_NEG), ("(?<=", LOOKBEHIND_POS),
                ("(?!", LOOKAHEAD_NEG), ("(?=", LOOKAHEAD_POS))


def _parse_atom(atom: str) -> tuple[int, list]:
    for prefix, kind in _LOOKAROUNDS:
        if atom.startswith(prefix):
            if not atom.endswith(")"):
                raise ValueError(f"unsupported quantified lookaround {atom!r}")
            return kind, [_parse_element(e) for e in _split_elements(atom[len(prefix):-1])]
    if atom.startswith("("):
        raise ValueError(f"unsupported group in cue atom {atom!r}")
    elements = _split_elements(atom)
    if len(elements) != 1:
        raise ValueError(f"cue atom {atom!r} is not one element")
    return CONSUME, [_parse_element(elements[0])]


def compile_cue_program(root) -> tuple:
    """A trie of regex atoms -> a cue program ``(code, first_ok)`` (see the module doc).

    ``root`` is ``(edges, end_tag)``: ``edges`` a list of ``(atom, child)`` in match order
    (children of the same shape), ``end_tag`` the tag of the cue ending there or None.

    >>> code, first_ok = compile_cue_program(([("a", ([("b", ([], 2))], 1))], None))
    >>> codes = np.array([ord(c) for c in "xaby"], np.uint32)
    >>> _match_at(codes, len(codes), 1, code, *scratch(code))
    (3, 2)
    """
    sets: dict[tuple, int] = {}
    set_rows: list[tuple[int, int, int]] = []
    range_lo: list[int] = []
    range_hi: list[int] = []
    elements: list[tuple[int, int, int, int]] = []
    atoms: dict[str, int] = {}
    atom_rows: list[tuple[int, int, int, int]] = []

    def set_id(ranges, neg) -> int:
        key = (tuple(ranges), neg)
        if key not in sets:
            sets[key] = len(set_rows)
            set_rows.append((len(range_lo), len(range_lo) + len(ranges), int(neg)))
            range_lo.extend(lo for lo, _ in ranges)
            range_hi.extend(hi for _, hi in ranges)
        return sets[key]

    def atom_id(atom: str) -> int:
        if atom not in atoms:
            kind, parsed = _parse_atom(atom)
            first = len(elements)
            for ranges, neg, lo, hi, lazy in parsed:
                elements.append((set_id(ranges, neg), lo, hi, int(lazy)))
            width = 0
            if kind in (LOOKBEHIND_NEG, LOOKBEHIND_POS):
                if any(lo != hi for _, _, lo, hi, _ in parsed):
                    raise ValueError(f"lookbehind {atom!r} is not of fixed width")
                width = sum(lo for _, _, lo, _, _ in parsed)
            atoms[atom] = len(atom_rows)
            atom_rows.append((kind, first, len(elements), width))
        return atoms[atom]

    def single_char(a: int) -> int:
        kind, first, end, _ = atom_rows[a]
        if kind != CONSUME:
            return -1
        s, lo, hi, _ = elements[first]
        r0, r1, neg = set_rows[s]
        if lo == hi == 1 and not neg and r1 - r0 == 1 and range_lo[r0] == range_hi[r0]:
            return range_lo[r0]
        return -1

    node_rows: list[list[int]] = []
    lit: list[tuple[int, int]] = []
    cx: list[int] = []
    edge_rows: list[list[int]] = []
    depth = [0]

    def add(node, level: int) -> int:
        depth[0] = max(depth[0], level)
        edges, end_tag = node
        k = len(node_rows)
        node_rows.append([-1 if end_tag is None else int(end_tag), 0, 0, 0, 0])
        mine = []
        for order, (atom, child) in enumerate(edges):
            g = len(edge_rows)
            edge_rows.append([atom_id(atom), -1, order])
            mine.append(g)
        for g, (_, child) in zip(mine, edges):
            edge_rows[g][1] = add(child, level + 1)
        lits = sorted((single_char(edge_rows[g][0]), g) for g in mine
                      if single_char(edge_rows[g][0]) >= 0)
        if len({c for c, _ in lits}) != len(lits):
            raise ValueError("two edges of one trie node match the same single character")
        node_rows[k][1:3] = [len(lit), len(lit) + len(lits)]
        lit.extend(lits)
        others = [g for g in mine if single_char(edge_rows[g][0]) < 0]
        node_rows[k][3:5] = [len(cx), len(cx) + len(others)]
        cx.extend(others)
        return k

    add(root, 0)
    first_ok = np.zeros(_N_CODES, np.uint8)
    root_edges = [g for g, row in enumerate(edge_rows) if g < len(root[0])]
    for g in root_edges:
        c = single_char(edge_rows[g][0])
        if c < 0:     # every match then consumes, and first_ok finds the candidates
            raise ValueError("every cue must start with one literal character")
        first_ok[c] = 1
    i64 = lambda xs: np.asarray(list(xs), np.int64).reshape(-1)   # noqa: E731
    cols = lambda rows, n: [i64([r[j] for r in rows]) for j in range(n)]   # noqa: E731
    set_first, set_end, set_neg = cols(set_rows, 3)
    el_set, el_min, el_max, el_lazy = cols(elements, 4)
    atom_kind, atom_first, atom_end, atom_width = cols(atom_rows, 4)
    node_end, node_lit_first, node_lit_end, node_cx_first, node_cx_end = cols(node_rows, 5)
    lit_char, lit_edge = cols(lit, 2)
    edge_atom, edge_child, edge_order = cols(edge_rows, 3)
    parts = (set_first, set_end, set_neg, i64(range_lo), i64(range_hi),
             el_set, el_min, el_max, el_lazy,
             atom_kind, atom_first, atom_end, atom_width,
             node_end, node_lit_first, node_lit_end, lit_char, lit_edge,
             node_cx_first, node_cx_end, i64(cx),
             edge_atom, edge_child, edge_order,
             i64([depth[0] + 2, max(len(elements), 1)]))
    assert len(parts) == _N_SECTIONS
    starts = np.cumsum([_N_SECTIONS] + [len(x) for x in parts[:-1]])
    return np.concatenate([starts.astype(np.int64), *parts]), first_ok


def scratch(code) -> tuple:
    """Work arrays for :func:`_match_at` (the backtracking stacks), sized for ``code``."""
    meta = code[S_META]
    return (np.empty((code[meta], 8), np.int64), np.empty((code[meta + 1] + 1, 4), np.int64))


# ---------------------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------------------


@_inline
def _at(code, section, i):
    """Entry ``i`` of section ``section`` of a cue program."""
    return code[code[section] + i]


@_inline
def _in_set(c, s, code):
    inside = False
    lo_base, hi_base = code[S_RANGE_LO], code[S_RANGE_HI]
    for r in range(_at(code, S_SET_FIRST, s), _at(code, S_SET_END, s)):
        if code[lo_base + r] <= c <= code[hi_base + r]:
            inside = True
            break
    return inside != (_at(code, S_SET_NEG, s) != 0)


@_inline
def _run_length(codes, n, pos, e, code):
    """How many times element ``e`` can repeat from ``pos`` (at most its maximum)."""
    s, hi = _at(code, S_EL_SET, e), _at(code, S_EL_MAX, e)
    k = 0
    while k < hi and pos + k < n and _in_set(np.int64(codes[pos + k]), s, code):
        k += 1
    return k


@_inline
def _match_sequence(codes, n, pos, first, end, code, stack):
    """Whether elements ``first:end`` match in sequence from ``pos`` (with backtracking
    over their quantifiers, in re's order); returns True or False."""
    if (end - first == 1 and _at(code, S_EL_MIN, first) == 1
            and _at(code, S_EL_MAX, first) == 1):   # the common case
        return pos < n and _in_set(np.int64(codes[pos]), _at(code, S_EL_SET, first), code)
    # stack[d] = (position before element first+d, next k, last k, step)
    d = 0
    stack[0, 0] = pos
    stack[0, 1] = -1            # -1: reps of this level not yet computed
    while True:
        if first + d == end:
            return True
        e = first + d
        if stack[d, 1] == -1:
            kmax = _run_length(codes, n, stack[d, 0], e, code)
            lo = _at(code, S_EL_MIN, e)
            if kmax < lo:
                stack[d, 1], stack[d, 2], stack[d, 3] = 0, -1, 1      # nothing to try
            elif _at(code, S_EL_LAZY, e):
                stack[d, 1], stack[d, 2], stack[d, 3] = lo, kmax, 1
            else:
                stack[d, 1], stack[d, 2], stack[d, 3] = kmax, lo, -1
        k, last, step = stack[d, 1], stack[d, 2], stack[d, 3]
        if (step > 0 and k <= last) or (step < 0 and k >= last):
            stack[d, 1] = k + step
            stack[d + 1, 0] = stack[d, 0] + k
            stack[d + 1, 1] = -1
            d += 1
            continue
        d -= 1
        if d < 0:
            return False


@_inline
def _lookaround_holds(codes, n, pos, a, code, stack):
    kind, first = _at(code, S_ATOM_KIND, a), _at(code, S_ATOM_FIRST, a)
    end, width = _at(code, S_ATOM_END, a), _at(code, S_ATOM_WIDTH, a)
    if kind == LOOKAHEAD_NEG or kind == LOOKAHEAD_POS:
        found = _match_sequence(codes, n, pos, first, end, code, stack)
    else:
        found = pos - width >= 0 and _match_sequence(codes, pos, pos - width, first, end,
                                                     code, stack)
    return found == (kind == LOOKAHEAD_POS or kind == LOOKBEHIND_POS)


@_inline
def _literal_edge(node, c, code):
    """The single-character edge of ``node`` matching ``c``, or -1 (binary search)."""
    lo, hi = _at(code, S_NODE_LIT_FIRST, node), _at(code, S_NODE_LIT_END, node)
    end = hi
    chars = code[S_LIT_CHAR]
    while lo < hi:
        mid = (lo + hi) // 2
        if code[chars + mid] < c:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and code[chars + lo] == c:
        return _at(code, S_LIT_EDGE, lo)
    return -1


@_inline
def _enter(frames, d, node, pos, codes, n, code):
    frames[d, 0] = node
    frames[d, 1] = pos
    frames[d, 2] = _literal_edge(node, np.int64(codes[pos]), code) if pos < n else -1
    frames[d, 3] = _at(code, S_NODE_CX_FIRST, node)   # next edge of the node's other edges
    frames[d, 4] = -1                   # edge whose repetitions are being tried


@njit(cache=True, nogil=True)
def _match_at(codes, n, start, code, frames, stack):
    """The first cue matching at ``start`` in re's order: ``(end, tag)``, or ``(-1, 0)``.

    ``frames[d]`` = (node, pos, pending single-character edge, next other edge, edge,
    next k, last k, step of k) at depth ``d``: the edge's repetitions still to try.
    """
    d = 0
    _enter(frames, 0, 0, start, codes, n, code)
    while True:
        g = frames[d, 4]
        if g >= 0:
            k, last, step = frames[d, 5], frames[d, 6], frames[d, 7]
            if (step > 0 and k <= last) or (step < 0 and k >= last):
                frames[d, 5] = k + step
                _enter(frames, d + 1, _at(code, S_EDGE_CHILD, g), frames[d, 1] + k,
                       codes, n, code)
                d += 1
                continue
            frames[d, 4] = -1
        node = frames[d, 0]
        # the next edge in match order: the pending single-character one or the next other
        lit, c = frames[d, 2], frames[d, 3]
        cx_end = _at(code, S_NODE_CX_END, node)
        if lit >= 0 and (c >= cx_end or _at(code, S_EDGE_ORDER, lit)
                         < _at(code, S_EDGE_ORDER, _at(code, S_CX, c))):
            frames[d, 2] = -1
            g = lit
        elif c < cx_end:
            frames[d, 3] = c + 1
            g = _at(code, S_CX, c)
        else:
            g = -1
        if g >= 0:
            a = _at(code, S_EDGE_ATOM, g)
            pos = frames[d, 1]
            if _at(code, S_ATOM_KIND, a) == CONSUME:
                e = _at(code, S_ATOM_FIRST, a)
                kmax = _run_length(codes, n, pos, e, code)
                lo = _at(code, S_EL_MIN, e)
                if kmax >= lo:
                    frames[d, 4] = g
                    if _at(code, S_EL_LAZY, e):
                        frames[d, 5], frames[d, 6], frames[d, 7] = lo, kmax, 1
                    else:
                        frames[d, 5], frames[d, 6], frames[d, 7] = kmax, lo, -1
            elif _lookaround_holds(codes, n, pos, a, code, stack):
                frames[d, 4] = g
                frames[d, 5], frames[d, 6], frames[d, 7] = 0, 0, 1
            continue
        tag = _at(code, S_NODE_END, node)
        if tag >= 0:
            return frames[d, 1], tag
        d -= 1
        if d < 0:
            return -1, 0


# ---------------------------------------------------------------------------------------
# the batch
# ---------------------------------------------------------------------------------------

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BYTE_LANES = np.uint64(0x0101010101010101)
_LANE_LIMIT = 255            # 3-grams summed in one 8-bit lane before it is flushed


@_inline
def _class_of(c, table):
    if c <= 0xFFFF:
        return table[c]
    if CJK_ASTRAL_LO <= c <= CJK_ASTRAL_HI:
        return np.uint8(CJK | WORD | LETTER)
    return np.uint8(0)


@_inline
def _mix64(z):
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _flush_lanes(acc, ones):
    for k in range(8):
        for lane in range(8):
            ones[8 * lane + k] += np.int64((acc[k] >> np.uint64(8 * lane)) & np.uint64(0xFF))
        acc[k] = np.uint64(0)


@njit(cache=True, nogil=True)
def _simhash_text(low, cls, repeat_tail, first, end, buf, acc, ones):
    """SimHash of ``low[first:end]``: normalised into ``buf`` (word characters, one space
    per inner run of others, letter runs cut to 2), then its character 3-grams."""
    size = 0
    seen_word = False
    for i in range(first, end):
        if cls[i] & WORD:
            seen_word = True
            if not repeat_tail[i]:
                buf[size] = np.uint64(low[i])
                size += 1
        elif seen_word and i + 1 < end and cls[i + 1] & WORD:
            buf[size] = np.uint64(0x20)
            size += 1
    if size == 0:
        return np.uint64(0)
    grams = max(size - 2, 1)
    buf[size] = np.uint64(0)          # a text of 1 or 2 characters is zero-padded
    buf[size + 1] = np.uint64(0)
    ones[:] = 0
    acc[:] = np.uint64(0)
    pending = 0
    for g in range(grams):
        h = _mix64((buf[g] << np.uint64(42)) | (buf[g + 1] << np.uint64(21)) | buf[g + 2])
        for k in range(8):
            acc[k] += (h >> np.uint64(k)) & _BYTE_LANES
        pending += 1
        if pending == _LANE_LIMIT:
            _flush_lanes(acc, ones)
            pending = 0
    _flush_lanes(acc, ones)
    out = np.uint64(0)
    for bit in range(64):
        if 2 * ones[bit] > grams:
            out |= np.uint64(1) << np.uint64(bit)
    return out


@njit(cache=True, nogil=True)
def _scan_cues(marked, starts, n, code, first_ok, counts, mask):
    """re.finditer of the cue program ``(code, first_ok)`` over ``marked``: each match's
    tag is OR-ed into its text's mask and, unless the tag is 0 (a cue that only keeps the
    others from matching inside it), counted; the next match starts where one ended."""
    meta = code[S_META]
    frames = np.empty((code[meta], 8), np.int64)
    stack = np.empty((code[meta + 1] + 1, 4), np.int64)
    size = len(marked)
    p = 0
    t = 0
    while p < size:
        if first_ok[marked[p]] == 0:
            p += 1
            continue
        end, tag = _match_at(marked, size, p, code, frames, stack)
        if end < 0:
            p += 1
            continue
        while t + 1 < n and starts[t + 1] <= p:
            t += 1
        if tag != 0:
            counts[t] += 1
        mask[t] |= tag
        p = end


@njit(cache=True, nogil=True)
def featurize_codes(raw, low, n, table, negation_code, negation_first, escalation_code,
                    escalation_first):
    """Features of the ``n`` texts in ``raw``/``low`` (uint32 code points joined by 0).

    Returns ``(words int32, negation_words int32, escalation_mask int32, raw_intensity
    float64, simhash uint64, languages uint8)``; intensity is ``-expm1(-raw_intensity)``.
    ``table`` is the uint8 class of every BMP code point (WORD, LETTER, ... flags).
    """
    size = len(low)
    cls = np.empty(size, np.uint8)
    for i in range(size):
        cls[i] = _class_of(np.int64(low[i]), table)
    token = np.zeros(size + 1, np.bool_)
    for i in range(size):
        if cls[i] & EN:
            token[i] = True
        elif (cls[i] & APOS and i > 0 and i + 1 < size and cls[i - 1] & EN
              and cls[i + 1] & EN):
            token[i] = True
    words = np.zeros(n, np.int32)
    cjk = np.zeros(n, np.int64)
    latin = np.zeros(n, np.int64)
    other = np.zeros(n, np.int64)
    repeats = np.zeros(n, np.int64)
    repeat_tail = np.zeros(size, np.bool_)
    token_start = np.zeros(size, np.bool_)
    low_first = np.zeros(n + 1, np.int64)
    marks = 0
    t = 0
    for i in range(size):
        if low[i] == 0:
            t += 1
            low_first[t] = i + 1
            continue
        ci = cls[i]
        if token[i] and not (i > 0 and token[i - 1]):
            token_start[i] = True
            words[t] += 1
            marks += 1
        if ci & CJK:
            words[t] += 1
            cjk[t] += 1
        if ci & LETTER:
            if ci & EN:
                latin[t] += 1
            elif not ci & CJK:
                other[t] += 1
            if i >= 2 and low[i] == low[i - 1] and low[i - 1] == low[i - 2]:
                repeat_tail[i] = True
                if not repeat_tail[i - 1]:
                    repeats[t] += 1
    low_first[n] = size + 1

    marked = np.empty(size + marks, np.uint32)
    starts = np.zeros(n, np.int64)
    j = 0
    t = 0
    for i in range(size):
        if low[i] == 0:
            marked[j] = 0
            j += 1
            t += 1
            starts[t] = j
            continue
        if token_start[i]:
            marked[j] = TOKEN_MARK
            j += 1
        marked[j] = low[i]
        j += 1
    negations = np.zeros(n, np.int32)
    unused = np.zeros(n, np.int32)
    _scan_cues(marked, starts, n, negation_code, negation_first, negations, unused)
    hits = np.zeros(n, np.int32)
    mask = np.zeros(n, np.int32)
    _scan_cues(marked, starts, n, escalation_code, escalation_first, hits, mask)

    simhash = np.zeros(n, np.uint64)
    buf = np.empty(size + 2, np.uint64)
    acc = np.zeros(8, np.uint64)
    ones = np.zeros(64, np.int64)
    languages = np.zeros(n, np.uint8)
    for t in range(n):
        simhash[t] = _simhash_text(low, cls, repeat_tail, low_first[t], low_first[t + 1] - 1,
                                   buf, acc, ones)
        lang = 0
        if cjk[t] > 0:
            lang |= 1
        if latin[t] >= 2:
            lang |= 2
        if other[t] > 0:
            lang |= 4
        languages[t] = lang
    return words, negations, mask, _raw_intensity(raw, n, repeats), simhash, languages


@_inline
def _is_mark(c):
    return c == 0x21 or c == 0xFF01 or c == 0x3F or c == 0xFF1F


@njit(cache=True, nogil=True)
def _raw_intensity(raw, n, repeats):
    """``raw`` of the intensity formula per text (marks and shouting from the received
    text, letter repeats counted on the normalised one), summed in the reference's order."""
    excl = np.zeros(n, np.int64)
    ques = np.zeros(n, np.int64)
    runs = np.zeros(n, np.int64)
    inner = np.zeros(n, np.int64)
    upper = np.zeros(n, np.int64)
    size = len(raw)
    t = 0
    prev_mark = False
    prev_letter = False
    for i in range(size):
        c = raw[i]
        if c == 0:
            t += 1
            prev_mark = prev_letter = False
            continue
        mark = _is_mark(c)
        if c == 0x21 or c == 0xFF01:
            excl[t] += 1
        elif c == 0x3F or c == 0xFF1F:
            ques[t] += 1
        if mark and not prev_mark and i + 1 < size and _is_mark(raw[i + 1]):
            runs[t] += 1
        is_upper = 0x41 <= c <= 0x5A
        letter = is_upper or 0x61 <= c <= 0x7A
        if letter and prev_letter:
            inner[t] += 1
            if is_upper:
                upper[t] += 1
        prev_mark = mark
        prev_letter = letter
    out = np.empty(n, np.float64)
    for t in range(n):
        shout = upper[t] / max(inner[t], 1)
        if inner[t] < _SHOUT_MIN_LETTERS:
            shout = 0.0
        out[t] = (_W_EXCL * excl[t] + _W_QUES * ques[t] + _W_RUN * runs[t]
                  + _W_SHOUT * shout + _W_REPEAT * repeats[t])
    return out
