"""The compiled text features (yujing.kernels.text via yujing.service.featurize) equal the
plain reference (yujing.service.featurize_reference) on every field, bit for bit.

The corpus is random but seeded: Chinese, English in mixed case, emoji and other astral
characters, full-width forms, combining marks, compatibility characters that NFKC
rewrites, every literal cue and negation of the lexicon embedded at random positions,
empty strings and very long texts, featurised in batches of random size so that cues
can also meet across text boundaries. ``--run-slow`` adds a 200k-text variant.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import yujing.service.featurize as featurize
import yujing.service.featurize_reference as reference
from yujing.kernels import text as text_kernels

FIELDS = ("words", "negation_words", "intensity", "escalation_mask", "simhash", "languages")


def _literal_cues() -> list[str]:
    """Every cue of both lists spelled out as plain text (regex syntax removed)."""
    out = set()
    for cue, _ in (*reference._ESCALATION_TAGGED, *reference._NEGATION_TAGGED):
        for source in reference._expand_groups(cue):
            plain = re.sub(r"\(\?<?[=!][^)]*\)", "", source)      # lookarounds
            plain = plain.replace(r"\s+", " ").replace(reference.TOKEN_MARK, "")
            plain = re.sub(r"\[\^[^\]]*\]\{0,8\}\?", "的卡", plain)   # the bank cues' gap
            plain = plain.replace("[a-z]+n['’]t", "couldn't").replace("?", "")
            out.add(plain)
    return sorted(out)


CUES = _literal_cues()
NEAR_MISSES = ["特别", "非常", "不错", "是否", "除非", "未来", "无论", "人机", "工商银行", "主管部门",
               "attorney general", "issue", "knot", "cannot", "don’t", "won't", "isn't",
               "12345", "order 12345", "打12345", "投诉到12345", "信用卡。退单", "银行abcdefghi退单"]
WORDS = ["my", "order", "refund", "never", "arrived", "hello", "world", "the", "a", "is", "ok",
         "please", "help", "now", "delivery", "我的", "订单", "退款", "怎么", "回事", "你好", "客服",
         "快递", "三天", "了", "还", "发货", "谢谢"]
PUNCT = list(" ,.!?;:'’\"-()！？。，、…\t\n\u3000\xa0\u2028") + ["!!!", "?!", "？？", "...", "  "]
SPECIALS = ["😡", "👍🏻", "🇨🇳", "𠀀", "𪚥", "𝐀𝐁𝐂", "ﬁ", "㈱", "①", "Ⅻ", "ｈｅｌｌｏ", "ＳＵＥ", "１２３４５",
            "！", "？", "é", "e\u0301", "a\u0308\u0301", "\u0301", "İ", "ΣΑΣ", "ς", "ß", "ǅ", "Ⓐ",
            "한국어", "кириллица", "日本語です", "ｶﾀｶﾅ", "\x02", "\x00", "\x01", "\ufeff", "\u200b",
            "sooooo", "啊啊啊啊", "NOOOO", "Zzz", "O'Neil", "rock'n'roll", "'tis", "\ud83d", "ﷺ"]


def _random_piece(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 100)
    if kind < 25:
        return CUES[rng.integers(len(CUES))]
    if kind < 32:
        return NEAR_MISSES[rng.integers(len(NEAR_MISSES))]
    if kind < 55:
        return WORDS[rng.integers(len(WORDS))]
    if kind < 75:
        return PUNCT[rng.integers(len(PUNCT))]
    if kind < 85:
        return SPECIALS[rng.integers(len(SPECIALS))]
    if kind < 92:       # random CJK ideographs
        return "".join(chr(c) for c in rng.integers(0x4E00, 0x9FFF, rng.integers(1, 6)))
    if kind < 97:       # random letters and digits
        return "".join(chr(c) for c in rng.choice(
            np.array([*range(0x41, 0x5B), *range(0x61, 0x7B), *range(0x30, 0x3A)]),
            rng.integers(1, 9)))
    return chr(int(rng.integers(0x20, 0x3000)))      # anything in the lower BMP


def _random_case(rng: np.random.Generator, piece: str) -> str:
    r = rng.integers(0, 10)
    if r == 0:
        return piece.upper()
    if r == 1:
        return piece.title()
    if r == 2:
        return "".join(c.upper() if rng.integers(0, 2) else c for c in piece)
    return piece


def random_corpus(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        r = rng.integers(0, 1000)
        if r < 40:
            texts.append("")
            continue
        pieces = rng.integers(1, 400 if r >= 995 else 25)      # a few very long texts
        texts.append("".join(_random_case(rng, _random_piece(rng)) for _ in range(pieces)))
        if r >= 999:
            texts[-1] *= int(rng.integers(20, 80))
    return texts


def _batches(texts: list[str], rng: np.random.Generator):
    i = 0
    while i < len(texts):
        size = int(rng.choice([1, 2, 7, 16, 64, 256, 1000]))
        yield texts[i:i + size]
        i += size


def assert_same(texts: list[str]) -> None:
    got, want = featurize.featurize_batch(texts), reference.featurize_batch(texts)
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        if not np.array_equal(a, b):
            bad = int(np.flatnonzero(a != b)[0])
            pytest.fail(f"{name} differs for text {bad} {texts[bad]!r}: {a[bad]} != {b[bad]}")


def _corpus_equal(n: int, seed: int) -> None:
    texts = random_corpus(n, seed)
    rng = np.random.default_rng(seed + 1)
    for batch in _batches(texts, rng):
        assert_same(batch)
    assert_same(texts[:5000])        # one big batch as well


def test_compiled_equals_reference_on_a_random_corpus():
    _corpus_equal(20_000, seed=13)


@pytest.mark.slow
def test_compiled_equals_reference_on_a_large_random_corpus():
    _corpus_equal(200_000, seed=1313)


@pytest.mark.parametrize("texts", [
    [],
    [""],
    ["", "", ""],
    ["我不满意，我要投诉！", "Thanks, all good"],
    ["投诉到12345", "打 12345", "order 12345", "12345热线"],          # the longer cue wins
    ["I can't and won't, don’t dont", "couldn't've", "n't", "knot"],   # [a-z]+n['’]t backtracks
    ["信用卡abc退单", "银行", "退单", "银行。退单", "发卡行一二三四五六七八九退单"],   # lazy gap
    ["my 银行卡", "退单了"],                               # a gap across a text boundary
    ["attorney general", "attorney", "attorney  \t general", "attorneys"],
    ["特别好", "别走", "别人", "区别", "除非", "非要", "是否", "否", "莫名", "无人机", "无聊"],
    ["SUE", "Issue", "sue!", "su e", "ＳＵＥ", "s\u0301ue"],
    ["\x00x\x00", "a\x02b", "\x02sue"],
    ["İstanbul", "ΣΑΣ ΟΔΟΣ", "ﬁle a complaint", "㈱", "e\u0301\u0301e"],
])
def test_compiled_equals_reference_on_edge_cases(texts):
    assert_same(texts)


def test_compiled_equals_reference_when_sliced(monkeypatch):
    texts = random_corpus(300, seed=7)
    whole = featurize.featurize_batch(texts)
    monkeypatch.setattr(featurize, "_MAX_CHARS_PER_PASS", 500)
    monkeypatch.setattr(reference, "_MAX_CHARS_PER_PASS", 500)
    assert_same(texts)
    sliced = featurize.featurize_batch(texts)
    for name in ("words", "intensity", "simhash", "languages"):     # cue matches may differ
        np.testing.assert_array_equal(getattr(whole, name), getattr(sliced, name))


def test_the_corpus_holds_what_it_should():
    texts = random_corpus(20_000, seed=13)
    f = reference.featurize_batch(texts)
    assert sum(t == "" for t in texts) > 500
    assert max(map(len, texts)) > 20_000
    assert (f.escalation_mask != 0).mean() > 0.3 and (f.negation_words > 0).mean() > 0.3
    for bit in range(len(reference.ESCALATION_CATEGORIES)):
        assert ((f.escalation_mask >> bit) & 1).sum() > 100
    joined = "".join(texts)
    assert not joined.isascii() and "\u0301" in joined and "😡" in joined and "ｈ" in joined


def _all_sets():
    """(element source, ranges, negated) of every element the two cue programs use."""
    seen = {}
    for tagged in (reference._NEGATION_TAGGED, reference._ESCALATION_TAGGED):
        for cue, _ in tagged:
            for source in reference._expand_groups(cue):
                for atom in reference._regex_atoms(source):
                    body = re.sub(r"^\(\?<?[=!](.*)\)$", r"\1", atom)
                    for element in text_kernels._split_elements(body):
                        base = re.sub(r"(\{[^}]*\}|[+*?])+$", "", element) or element
                        seen[base] = text_kernels._parse_element(base)[:2]
    return seen


BMP = "".join(chr(c) for c in range(0x10000))


def test_character_sets_equal_those_of_re():
    sets = _all_sets()
    assert r"\s" in sets and "[^。！？!?\n]" in sets and "[a-z]" in sets
    for source, (ranges, neg) in sets.items():
        mine = {c for lo, hi in ranges for c in range(lo, hi + 1) if c < 0x10000}
        if neg:
            mine = set(range(0x10000)) - mine
        theirs = {ord(m) for m in re.findall(source, BMP)}
        assert mine == theirs, source
    assert not any(chr(c).isspace() for c in range(0x10000, 0x110000))   # \s is all BMP


@pytest.mark.parametrize("atom", ["(?:a|b)+", "\\d", "(a)", "^a", "a*+"])
def test_unsupported_cue_syntax_raises(atom):
    with pytest.raises(ValueError):
        text_kernels.compile_cue_program(([("x", ([(atom, ([], 1))], None))], None))


def test_a_cue_must_start_with_a_literal():
    with pytest.raises(ValueError):
        text_kernels.compile_cue_program(([("[ab]", ([], 1))], None))


def test_warm_up_compiles_and_returns_its_time():
    assert featurize.warm_up() >= 0.0


def test_the_longer_cue_is_tried_first_and_the_cue_ending_here_last():
    f = featurize.featurize_batch(["投诉到12345", "投诉", "我要投诉到底"])
    assert f.escalation_mask.tolist() == [8, 4, 4]        # regulator alone, then complaint
    assert_same(["投诉到12345", "投诉", "我要投诉到底"])


ATOMS = ["a", "b", "c", "[ab]", "[^a]", "a?", "b+", "[bc]*", "c{0,2}?", "b{1,3}", "(?!a)",
         "(?<!b)", "(?=c)", "(?<=ab)", r"\s+", " "]


def _random_cues(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
    cues = []
    for i in range(n):
        body = "".join(ATOMS[k] for k in rng.integers(0, len(ATOMS), rng.integers(0, 4)))
        cues.append(("abc "[rng.integers(0, 4)] + body, 1 << i))
    return cues


def _kernel_matches(prog, text: str) -> list[tuple[int, int, int]]:
    code, first_ok = prog
    codes = np.array([ord(c) for c in text], np.uint32)
    frames, stack = text_kernels.scratch(code)
    out, p = [], 0
    while p < len(codes):
        if first_ok[codes[p]]:
            end, tag = text_kernels._match_at(codes, len(codes), p, code, frames, stack)
            if end >= 0:
                out.append((p, int(end), int(tag)))
                p = end
                continue
        p += 1
    return out


@pytest.mark.parametrize("seed", range(40))
def test_cue_programs_match_like_re(seed):
    """Random small cue lists over a small alphabet: the kernel's matches (start, end,
    tag) are re.finditer's on the trie-shaped regex, in order."""
    rng = np.random.default_rng(seed)
    cues = _random_cues(rng, int(rng.integers(1, 12)))
    pattern, tags = reference.compile_cues(cues)
    prog = featurize._program(cues)
    for _ in range(30):
        text = "".join("abc  \t"[k] for k in rng.integers(0, 6, rng.integers(0, 30)))
        want = [(m.start(), m.end(), tags[m.lastindex]) for m in pattern.finditer(text)]
        assert _kernel_matches(prog, text) == want, (cues, text)


def test_nfkc_by_character_equals_unicodedata_on_every_code_point():
    """The per-character NFKC + lowercase of the compiled path, where its table allows it,
    equals the reference's ``unicodedata.normalize`` + ``str.lower`` for every single
    code point (the table is not just trusted for the characters it maps)."""
    table = featurize._NFKC_BY_CHARACTER
    fast = np.flatnonzero(table != featurize._NEEDS_FULL_NFKC)
    assert len(fast) > 1_000_000 and table[0xFF01] == ord("!") and table[0x3000] == ord(" ")
    text = "".join(map(chr, fast))
    got = featurize._normalized_lower(text, featurize._code_points(text))
    want = featurize._code_points("".join(reference._lower(chr(c)) for c in fast))
    np.testing.assert_array_equal(got, want)


TRICKY = ("，！？。　ｈＥｌｌｏ１２３４５ＳＵＥ㈱①Ⅻ𝐀𝐁𝐂ℌ" "İΣΑΣςßǅẞĲŉ" "한국어가각" "ㄱㄳㅏ"
          "\u1100\u1161\u11a8" "e\u0301\u0308\u0327a\u030a\u212b\u00c5" "ﬁﬀ…‥" "😡👍🏻🇨🇳𠀀𪚥"
          "\u0f73\u0f75\u0344\u0958\u09cb\u0b4b\u0bca\u0dda\u1b06\u1b35" "\u3099\u309a\u304b\u30ab"
          "\uff76\uff9e\uff8a\uff9f" "\u0591\u05b0\u0316\u0334" "abc我不没!?'’ \x02")


@pytest.mark.parametrize("seed", range(3))
def test_fast_nfkc_equals_unicodedata_on_random_mixes(seed):
    """Random texts of characters that compose, reorder, expand or map (full-width
    forms, Hangul jamo, half-width kana with voicing marks, combining marks that compose
    and marks that only reorder, ligatures, final sigma): equal to the reference's NFKC + lowercase, and many take the fast path."""
    rng = np.random.default_rng(seed)
    fast_taken = 0
    for _ in range(3000):
        text = "".join(TRICKY[k] for k in rng.integers(0, len(TRICKY), rng.integers(0, 12)))
        codes = featurize._code_points(text)
        fast_taken += int(featurize._NFKC_BY_CHARACTER[codes].max(initial=0)
                          != featurize._NEEDS_FULL_NFKC)
        np.testing.assert_array_equal(featurize._normalized_lower(text, codes),
                                      featurize._code_points(reference._lower(text)), text)
    assert fast_taken > 300


@pytest.mark.parametrize("text", [
    "a\u0591\u05b0", "a\u0316\u0334", "x\u0334\u0316",          # marks that only reorder
    "e\u0301", "a\u030a", "\u212b", "\u1100\u1161", "가\u11a8", "\u3131\u314f",   # compose
    "ｶﾞ", "\u304b\u3099", "ﬁle", "ΣΑΣ ΟΔΟΣ", "İ", "ｈｅｌｌｏ，世界！", "㈱①Ⅻ", "𝐀😡",
])
def test_fast_nfkc_equals_unicodedata_on_edge_cases(text):
    codes = featurize._code_points(text)
    np.testing.assert_array_equal(featurize._normalized_lower(text, codes),
                                  featurize._code_points(reference._lower(text)))
