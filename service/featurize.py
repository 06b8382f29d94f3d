"""Per-turn text features: the cheap, model-free signals computed for every turn.

``featurize_batch(texts)`` returns a :class:`TextFeatures`, one entry per text, each
field a numpy array. The batch is processed as a whole: the texts are joined with NUL
and encoded once as UTF-32; NFKC (per character through a table built from
``unicodedata`` where that is exact, else ``unicodedata.normalize``) and lowercasing
(``str.lower``) stay with Python's own code, so they equal the reference's; the code
points go to one compiled
kernel (``yujing.kernels.text.featurize_codes``) that classifies, counts, matches both
cue lists (tries compiled once into one array each, walked in ``re``'s backtracking
order) and hashes. ``yujing.service.featurize_reference`` is the plain numpy/regex
definition it is tested against; the two are equal on every input. The service does
not fall back to it; it imports the reference module for the definitions both share
(cue lists, class table, ``TextFeatures``, ``mark_tokens`` for the lexicon model).
:func:`warm_up` compiles the kernel, or loads it from numba's cache; the server calls
it before it reports SERVING.

Features, units and formulas
----------------------------
All matching runs on the NFKC-normalised, lowercased text (full-width letters, digits
and marks count like ASCII ones), except the capital-letter share, which needs case.

``words`` (int32, tokens)
    English tokens + CJK characters. An English token is a run of ASCII/Latin letters
    and digits; an apostrophe between two of them joins them (``don't`` is one token;
    ``12315`` is one token). Every CJK ideograph counts as one token, because Chinese
    is not segmented: ``我不满意`` is 4 tokens. Mixed text adds both counts.
    Punctuation, emoji and whitespace are not tokens.
``negation_words`` (int32, cues)
    Negation cues. English (whole tokens): ``not no never nothing nobody none neither
    nor nowhere cannot without``, every ``n't`` form (``don't``, ``can't``...), and the
    same without apostrophe (``dont``, ``cant``, ``didnt``...). Chinese: a multi-character
    negation (``没有 不是 不要 不能 从来没 从不 并不 毫无 无法``...) is one cue; otherwise
    the single characters ``不 没 别 未 无 非 莫 勿 否 甭``, except inside common words
    that are no negation (``非常 不错 不过 不管 不少 无论 未来 是否 否则 别人 特别 莫名``...).
    Not counted either, in both languages: words with a negation inside that negate nothing,
    the Chinese A-not-A question (``是不是 有没有 能不能 可不可以``...), the polite formulas
    (``不好意思 不客气 没问题 没关系``) and ``or not``, ``no problem``, ``no worries``,
    ``not bad`` (cues of tag 0: they match, so no negation cue matches inside them).
    ``negation_share = negation_words / max(words, 1)`` is the domain's "share of
    negation words" (industry alert baseline: 15 %); :meth:`TextFeatures.negation_share`.
``intensity`` (float64, in [0, 1), dimensionless)
    ``intensity = 1 - exp(-raw)``, saturating, with ::

        raw = 0.25 * exclamations      # count of ! and ！
            + 0.10 * questions         # count of ? and ？
            + 0.35 * mark_runs         # runs of 2+ marks: "!!!", "？？", "?!"
            + 1.50 * shout             # capital-letter share, below; in [0, 1]
            + 0.35 * char_repeats      # runs of one letter/ideograph 3+ times: "sooo", "啊啊啊"

    ``shout`` is the share of upper-case letters among the non-initial letters of
    ASCII words of length >= 2 ("Hello World" scores 0, "I AM ANGRY" scores 1), and 0
    when there are fewer than 3 such letters. A calm text scores 0, one "!" 0.22,
    "THIS IS UNACCEPTABLE!!!" 0.93.
``escalation_mask`` (int32, bit set)
    Bit ``i`` is set when a cue of ``ESCALATION_CATEGORIES[i]`` appears. English cues
    match whole tokens only ("issue" does not trigger "sue"), Chinese cues anywhere.
    The bare word ``退单`` is deliberately *not* a chargeback cue (in e-commerce it
    usually means cancelling or returning an order); it counts only after a bank or
    credit-card word (``信用卡...退单``). ``escalation_names(mask)`` decodes a mask.
``simhash`` (uint64)
    64-bit SimHash of the normalised text: NFKC, lowercased, every run of characters
    that are not letters, digits or combining marks (whitespace, punctuation, symbols,
    emoji) replaced by one space and dropped at both ends, and every run of 3+ identical
    letters shortened to 2 ("sooooo" -> "soo"); see :func:`normalize_for_simhash`. The
    features are the overlapping character 3-grams, each of weight 1; a text of 1 or 2
    characters is one feature; an empty normalised text hashes to 0. A 3-gram's 64-bit
    hash is the splitmix64 finaliser of its three code points packed into 63 bits, so
    values are identical in every process, run and machine (no salted ``hash()``).
    ``hamming64(a, b)`` counts differing bits. Texts differing only in case,
    punctuation, spacing or letter repeats are 0 apart; one added or changed word in a
    one-sentence complaint moves about 4-11 bits. Over 200,000 random pairs of
    customer-service texts (airline tweets, food-delivery reviews, Bitext requests) the
    distance had median 31, 99 % of pairs were at least 20 apart, and the pairs within
    8 were near-identical requests. ``NEAR_DUPLICATE_BITS = 8`` is the recommended
    threshold for "the same complaint again"; 10-12 catches more rewordings at the
    price of some false matches between short, templated requests.

Example
-------
>>> f = featurize_batch(["我不满意，我要投诉！", "Thanks, all good"])
>>> f.words.tolist(), f.negation_words.tolist()
([8, 3], [1, 0])
>>> [escalation_names(m) for m in f.escalation_mask]
[('formal_complaint',), ()]
"""
from __future__ import annotations

import time
import unicodedata
from typing import Sequence

import numpy as np

from yujing.kernels import text as _text
from yujing.service import featurize_reference as _reference
from yujing.service.featurize_reference import (  # noqa: F401  (the public API)
    ESCALATION_CATEGORIES,
    LANG_EN,
    LANG_OTHER,
    LANG_ZH,
    LANGUAGE_BITS,
    NEAR_DUPLICATE_BITS,
    TOKEN_MARK,
    TextFeatures,
    compile_cues,
    english_cues,
    escalation_names,
    hamming64,
    language_mask,
    mark_tokens,
    normalize_for_simhash,
)

# the reference's public API (featurize_batch is this module's own), plus warm_up
__all__ = [*_reference.__all__, "warm_up"]

_MAX_CHARS_PER_PASS = 1 << 22     # longer batches are featurised in slices


def _program(tagged) -> tuple:
    """The reference's cue trie for ``(cue, tag)`` pairs as a kernel cue program."""
    def ordered(node: dict):
        return ([(atom, ordered(node[atom])) for atom in _reference.trie_alternatives(node)],
                node.get(None))
    return _text.compile_cue_program(ordered(_reference.cue_trie(tagged)))


_NEGATION_PROGRAM = _program(_reference._NEGATION_TAGGED)
_ESCALATION_PROGRAM = _program(_reference._ESCALATION_TAGGED)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


_NEEDS_FULL_NFKC = np.uint32(0xFFFFFFFF)


def _nfkc_by_character() -> np.ndarray:
    """For every code point ``c``: ``NFKC(c)`` when that is one character that cannot
    take part in composition or reordering (combining class 0 and never the second of a
    canonical pair, nor its decomposition's first character), else ``_NEEDS_FULL_NFKC``.

    Replacing each character of a text by its NFKC leaves the text's NFKD unchanged, so
    its NFKC too; when every replacement is such a character, the result is already in
    NFKC (nothing composes, nothing reorders), so it *is* the text's NFKC. Chinese text
    needs this: its full-width punctuation (，！？) sends ``unicodedata.normalize`` down its
    slow path for the whole batch (about 1.2 us of the 2.8 us a turn cost). Surrogates and
    anything else go to ``unicodedata.normalize``.
    """
    table = np.arange(0x110000, dtype=np.uint32)
    table[0xD800:0xE000] = _NEEDS_FULL_NFKC
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))    # Hangul V, T
    changed = []
    for lo in range(0, 0x110000, 256):      # a block whose characters all decompose to
        chars = [chr(c) for c in range(lo, lo + 256) if not 0xD800 <= c < 0xE000]
        joined = "\x00".join(chars)           # themselves needs no look at each one
        if unicodedata.normalize("NFKD", joined) != joined:
            changed.extend(chars)
    for ch in changed:
        parts = unicodedata.decomposition(ch).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(int(parts[1], 16))
    for c in range(0x110000):
        if unicodedata.combining(chr(c)):
            table[c] = _NEEDS_FULL_NFKC
    for c in seconds:
        table[c] = _NEEDS_FULL_NFKC
    for ch in changed:
        nfkc = unicodedata.normalize("NFKC", ch)
        if (len(nfkc) != 1 or ord(nfkc) in seconds or unicodedata.combining(nfkc)
                or unicodedata.combining(unicodedata.normalize("NFKD", nfkc)[0])
                or ord(unicodedata.normalize("NFKD", nfkc)[0]) in seconds):
            table[ord(ch)] = _NEEDS_FULL_NFKC
        elif table[ord(ch)] != _NEEDS_FULL_NFKC:
            table[ord(ch)] = ord(nfkc)
    return table


_NFKC_BY_CHARACTER = _nfkc_by_character()


def _normalized_lower(raw: str, codes: np.ndarray) -> np.ndarray:
    """Code points of ``featurize_reference._lower(raw)`` (NFKC, then ``str.lower``);
    ``codes`` are those of ``raw``. Per character through ``_NFKC_BY_CHARACTER`` when it
    allows, else ``unicodedata.normalize`` over the whole text; equal either way."""
    if raw.isascii():
        return _code_points(raw.lower())
    mapped = _NFKC_BY_CHARACTER[codes]
    if mapped.max() == _NEEDS_FULL_NFKC:
        return _code_points(_reference._lower(raw))
    return _code_points(mapped.tobytes().decode("utf-32-le").lower())


def _featurize(texts: list[str]) -> TextFeatures:
    raw = "\x00".join(texts)
    codes = _code_points(raw)
    words, negations, mask, raw_intensity, simhash, languages = _text.featurize_codes(
        codes, _normalized_lower(raw, codes), len(texts),
        _reference._CLASS, *_NEGATION_PROGRAM, *_ESCALATION_PROGRAM)
    return TextFeatures(words=words, negation_words=negations, intensity=-np.expm1(-raw_intensity),
                        escalation_mask=mask, simhash=simhash, languages=languages)


def featurize_batch(texts: Sequence[str]) -> TextFeatures:
    """Features of every text of ``texts`` (see the module docstring for the formulas).

    >>> f = featurize_batch(["My order never arrived!!", "my order never arrived"])
    >>> hamming64(f.simhash[0], f.simhash[1]), f.intensity.round(2).tolist()
    (0, [0.57, 0.0])
    """
    return _reference.featurize_in_passes(texts, _featurize, _MAX_CHARS_PER_PASS)


def warm_up() -> float:
    """Compile the text kernel (or load it from numba's on-disk cache) by featurising a
    small batch; returns the seconds it took. The server calls it before it serves."""
    start = time.perf_counter()
    featurize_batch(["我不满意，我要投诉！别再敷衍", "Don't SUE me!!! call my bank", "", "ok"])
    return time.perf_counter() - start
