"""yujing.service.featurize: per-turn text features."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import yujing.service.featurize as featurize
import yujing.service.featurize_reference as featurize_reference
from yujing.service.featurize import (
    ESCALATION_CATEGORIES,
    NEAR_DUPLICATE_BITS,
    escalation_names,
    featurize_batch,
    hamming64,
    normalize_for_simhash,
)

REPO = Path(__file__).resolve().parents[1]


def one(text: str):
    f = featurize_batch([text])
    return {name: getattr(f, name)[0] for name in
            ("words", "negation_words", "intensity", "escalation_mask", "simhash")}


def categories(text: str) -> set[str]:
    return set(escalation_names(one(text)["escalation_mask"]))


def reference_simhash(text: str) -> int:
    """Obviously-correct SimHash: the module's normalisation, then a plain loop."""
    norm = normalize_for_simhash(text)
    if not norm:
        return 0
    cps = [ord(c) for c in norm] + [0, 0]
    mask = (1 << 64) - 1
    counts = [0] * 64
    n_grams = max(len(norm) - 2, 1)
    for i in range(n_grams):
        z = ((cps[i] << 42) | (cps[i + 1] << 21) | cps[i + 2]) + 0x9E3779B97F4A7C15 & mask
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & mask
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & mask
        z ^= z >> 31
        for b in range(64):
            counts[b] += z >> b & 1
    return sum(1 << b for b in range(64) if 2 * counts[b] > n_grams)


# --- shapes and dtypes ------------------------------------------------------------------

def test_dtypes_and_lengths():
    f = featurize_batch(["hello", "你好", ""])
    assert len(f) == 3
    assert f.words.dtype == np.int32 and f.negation_words.dtype == np.int32
    assert f.intensity.dtype == np.float64 and f.escalation_mask.dtype == np.int32
    assert f.simhash.dtype == np.uint64


def test_empty_batch():
    f = featurize_batch([])
    assert len(f) == 0 and f.simhash.dtype == np.uint64


def test_empty_and_punctuation_only_texts():
    for text in ("", "   ", "!!!", "？？"):
        r = one(text)
        assert r["words"] == 0 and r["negation_words"] == 0 and r["escalation_mask"] == 0
        assert r["simhash"] == 0
    assert one("")["intensity"] == 0.0


def test_batch_equals_one_by_one():
    texts = ["我不满意，我要投诉！", "", "Don't SUE me!!!", "a", "转人工", "sooooo slow"]
    batch = featurize_batch(texts)
    for i, t in enumerate(texts):
        single = featurize_batch([t])
        for name in ("words", "negation_words", "intensity", "escalation_mask", "simhash"):
            assert getattr(batch, name)[i] == getattr(single, name)[0], (t, name)


def test_separator_characters_in_input_are_harmless():
    f = featurize_batch(["a\x00b", "c\x02d", "e"])
    assert f.words.tolist() == [2, 2, 1]


# --- words and negation -----------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("My order never arrived", 4),
    ("I don't like it", 4),
    ("我不满意", 4),
    ("我要打12315投诉", 6),          # 5 CJK characters + one number token
    ("Ｆｕｌｌ width ＯＫ", 3),
    ("😡😡 !!", 0),
])
def test_word_counts(text, words):
    assert one(text)["words"] == words


@pytest.mark.parametrize("text, negations", [
    ("I don't want this and it isn't working", 2),
    ("I can't log in, nothing works, never again", 3),
    ("dont care, nobody helps", 2),
    ("no, not now", 2),
    ("This is a notable knowledge base", 0),       # no/not inside words do not count
    ("我不满意", 1),
    ("我从来没有收到过货", 1),                         # one multi-character negation
    ("并不是我的问题，没有人管", 2),
    ("非常不错，没问题", 0),                           # 非常, 不错 and 没问题 are no negations
    ("能不能开发票？有没有优惠？", 0),                  # A-not-A questions ask, they negate nothing
    ("不好意思，是不是已经发货了？", 0),
    ("是不是不想给我退款？", 1),                       # the question form, then a real negation
    ("Can you check whether it shipped or not? No problem if not.", 1),   # only the last "not"
    ("是否可以退款？特别着急，未来再说", 0),
    ("别再打电话了，无法接受", 2),
])
def test_negation_counts(text, negations):
    assert one(text)["negation_words"] == negations


def test_negation_share():
    f = featurize_batch(["我不满意", "", "not good, not at all"])
    np.testing.assert_allclose(f.negation_share(), [0.25, 0.0, 2 / 5])


# --- intensity --------------------------------------------------------------------------

def test_intensity_ordering_en():
    calm, angry, shouting = featurize_batch([
        "I have a question about my order.",
        "This is ridiculous, my order never arrived!",
        "THIS IS RIDICULOUS!!! WHERE IS MY ORDER???",
    ]).intensity
    assert calm == 0.0 < angry < shouting < 1.0
    assert shouting > 0.9


def test_intensity_ordering_zh():
    calm, angry, furious = featurize_batch(
        ["请问我的订单什么时候发货", "怎么还没发货！", "啊啊啊啊气死我了！！！到底什么时候发货？？？"]).intensity
    assert calm < angry < furious


def test_intensity_components():
    r = featurize_batch(["Hello World", "I AM ANGRY", "sooooo slow", "OK", "！？"]).intensity
    assert r[0] == 0.0                       # title case is no shouting
    assert r[1] > 0.7                        # capitals
    assert r[2] > 0.0                        # letter repeats
    assert r[3] == 0.0                       # too few letters to call it shouting
    assert r[4] > 0.0                        # full-width marks count


def test_intensity_saturates_below_one():
    r = one("!" * 10_000 + "A" * 5_000)["intensity"]
    assert 0.99 < r <= 1.0


# --- escalation -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("叫你们领导出来", {"manager"}),
    ("Let me speak to a manager or your supervisor", {"manager"}),
    ("转人工", {"human_agent"}),
    ("I want to talk to a real person", {"human_agent"}),
    ("我要投诉你们", {"formal_complaint"}),
    ("I will file a complaint", {"formal_complaint"}),
    ("我要打12315", {"regulator"}),
    ("再不处理我就打12345", {"regulator"}),
    ("I will call 12345 about this", {"regulator"}),
    ("我去消费者协会和市场监管局反映", {"regulator"}),
    ("reporting this to the CFPB and the BBB", {"regulator"}),
    ("我要找律师起诉你们", {"legal"}),
    ("I will sue you", {"legal"}),
    ("see you in court", {"legal"}),
    ("我要发微博曝光你们", {"media"}),
    ("再不解决我就发抖音", {"media"}),
    ("我明天就上微博说说你们", {"media"}),
    ("I'll post a review on social media", {"media"}),
    ("我要找信用卡中心拒付", {"chargeback"}),
    ("I'm calling my bank to dispute the charge", {"chargeback"}),
    ("我要销户，换一家", {"churn"}),
    ("cancel my account, never again", {"churn"}),
    ("I'll sue, call the regulator and tell the press!", {"legal", "regulator", "media"}),
])
def test_escalation_categories(text, expected):
    assert categories(text) == expected


@pytest.mark.parametrize("text", [
    "I have an issue with my order",          # "sue" inside "issue"
    "I will pursue this later",
    "of course, the courtyard",
    "请帮我退单",                               # 退单 alone is an order cancellation
    "我在工商银行开的卡",                       # 工商 inside the bank's name
    "Could you tell me the status of order 12345?",   # 12345 as a sample order number
    "我的订单号是12345",
    "@TCL客服微博 @华为终端官方微博 电视没有画面",   # a Weibo post @-mentioning official accounts
    "我在抖音上买的，什么时候发货？",             # where it was bought
    "拍了三张照片打算发朋友圈，相册里少了一张",   # posting photos is not a threat
    "Good news, it arrived",
    "",
])
def test_no_false_escalation(text):
    assert categories(text) == set()


def test_escalation_bits_follow_category_order():
    assert ESCALATION_CATEGORIES == ("manager", "human_agent", "formal_complaint", "regulator",
                                     "legal", "media", "chargeback", "churn")
    assert one("I will sue you")["escalation_mask"] == 1 << ESCALATION_CATEGORIES.index("legal")
    assert escalation_names(0b1000_0001) == ("manager", "churn")


# --- simhash ----------------------------------------------------------------------------

def test_normalisation():
    assert normalize_for_simhash("  My order NEVER arrived!!! Sooooo bad... ") == \
        "my order never arrived soo bad"
    assert normalize_for_simhash("你好，世界！！") == "你好 世界"
    assert normalize_for_simhash("100000") == "100000"      # digits are not collapsed


@pytest.mark.parametrize("text", [
    "", "a", "ab", "abc", "My order never arrived!!", "我的订单一直没到，我要退款",
    "mixed 中文 and English 12315", "emoji 😡 and 𠀀 astral",
])
def test_simhash_matches_reference(text):
    assert int(one(text)["simhash"]) == reference_simhash(text)


def test_simhash_long_text_segments(monkeypatch):
    text = "我的订单三天了还没发货，你们到底怎么回事？" * 40
    expected = reference_simhash(text)
    assert int(one(text)["simhash"]) == expected      # 838 3-grams: the kernel's lanes flush
    monkeypatch.setattr(featurize_reference, "_MAX_SEGMENT", 100)   # the multi-segment sum
    assert int(featurize_reference.featurize_batch([text]).simhash[0]) == expected


def test_sliced_batches_equal_one_pass(monkeypatch):
    texts = ["我不满意，我要投诉！", "Don't SUE me!!!", "", "转人工"] * 5
    whole = featurize_batch(texts)
    monkeypatch.setattr(featurize, "_MAX_CHARS_PER_PASS", 30)
    sliced = featurize_batch(texts)
    for name in ("words", "negation_words", "intensity", "escalation_mask", "simhash"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(sliced, name))


def test_simhash_stable_across_processes():
    texts = ["My order never arrived!!", "我的订单一直没到，我要退款", "a", ""]
    code = ("import json, sys; from yujing.service.featurize import featurize_batch; "
            "print(json.dumps([int(h) for h in featurize_batch(json.loads(sys.argv[1])).simhash]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], cwd=REPO,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == [int(h) for h in featurize_batch(texts).simhash]


NEAR_DUPLICATES = [
    ("My order never arrived!!", "my order never arrived"),
    ("WHERE IS MY REFUND???", "where is my refund"),
    ("I have been waiting for two weeks for my refund and nobody answers my emails",
     "I've been waiting 2 weeks for my refund and nobody answers my emails"),
    ("This is the third time I am calling about the same problem with my internet",
     "This is the third time I'm calling about the same problem with my internet!!!"),
    ("我的订单一直没到，我要退款", "我的订单一直没有到，我要退款！"),
    ("退款！！！", "退款"),
]
UNRELATED = [
    "My order never arrived",
    "我的订单一直没到，我要退款",
    "How do I reset my password?",
    "Thank you so much, the agent was very helpful",
    "请问发票怎么开",
    "The flight was delayed for three hours and nobody told us",
    "我要投诉你们的快递员态度太差",
    "Can I change the delivery address of my order?",
    "你们的客服电话是多少",
    "I want to cancel my subscription",
]


@pytest.mark.parametrize("a, b", NEAR_DUPLICATES)
def test_near_duplicates_are_close(a, b):
    f = featurize_batch([a, b])
    assert hamming64(f.simhash[0], f.simhash[1]) <= NEAR_DUPLICATE_BITS


def test_unrelated_texts_are_far():
    h = featurize_batch(UNRELATED).simhash
    d = hamming64(h[:, None], h[None, :])
    off = d[~np.eye(len(h), dtype=bool)]
    assert off.min() > NEAR_DUPLICATE_BITS
    assert np.median(off) >= 20


def test_hamming64_scalars_and_arrays():
    assert hamming64(0, 0) == 0
    assert hamming64(np.uint64(2**64 - 1), 0) == 64
    d = hamming64(np.array([0, 1, 3], np.uint64), np.uint64(0))
    assert d.tolist() == [0, 1, 2]


# --- size and volume --------------------------------------------------------------------

def test_16_kib_text():
    text = ("我要投诉！你们的服务太差了，never again!!! " * 600)[:16 * 1024]
    r = one(text)
    assert r["words"] > 1000
    assert r["negation_words"] > 100
    assert set(escalation_names(r["escalation_mask"])) == {"formal_complaint", "churn"}
    assert 0.99 < r["intensity"] <= 1.0
    assert int(r["simhash"]) == reference_simhash(text)


def test_throughput_sanity():
    """A larger batch goes through and agrees with small ones; no wall-clock assertion."""
    base = ["My order never arrived!!", "我不满意，我要投诉！", "thanks", "", "转人工 please"]
    texts = base * 2000
    f = featurize_batch(texts)
    assert len(f) == len(texts)
    small = featurize_batch(base)
    np.testing.assert_array_equal(f.simhash[-5:], small.simhash)
    np.testing.assert_array_equal(f.escalation_mask[:5], small.escalation_mask)


def test_languages_of_the_letters_present():
    from yujing.service.featurize import LANG_EN, LANG_OTHER, LANG_ZH, language_mask

    texts = ["我要投诉！", "where is my refund", "my card 还没到", "😡😡 !!! 123", "", "a 1",
             "Привет, где мой заказ", "注文はまだですか", "退款 ok", "Café crème", "𠀀𠀁"]
    got = featurize_batch(texts).languages.tolist()
    assert got == [LANG_ZH, LANG_EN, LANG_ZH | LANG_EN, 0, 0, 0,
                   LANG_OTHER, LANG_ZH | LANG_OTHER, LANG_ZH | LANG_EN, LANG_EN, LANG_ZH]
    # the same in a batch big enough to be featurized in several passes
    big = texts * 2000
    assert featurize_batch(big).languages.tolist() == got * 2000
    assert language_mask(["en"]) == LANG_EN and language_mask(["zh", "en"]) == LANG_ZH | LANG_EN
    assert language_mask(["ja"]) == LANG_OTHER
