"""The plain reference of the per-turn text features (:mod:`yujing.service.featurize`).

This is the definition the compiled path (``yujing.kernels.text``) is tested against:
the batch joined, turned into one array of code points, classified with a lookup table
and reduced per text with numpy; the cue lists run as two trie-shaped regexes over the
joined batch. The features, their units and formulas are written down in
:mod:`yujing.service.featurize`. The cue lists, the class table and the cue-regex
building blocks live here and are shared with the compiled path and the lexicon model.

>>> f = featurize_batch(["我不满意，我要投诉！", "Thanks, all good"])
>>> f.words.tolist(), f.negation_words.tolist()
([8, 3], [1, 0])
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "ESCALATION_CATEGORIES",
    "NEAR_DUPLICATE_BITS",
    "TextFeatures",
    "escalation_names",
    "featurize_batch",
    "hamming64",
    "normalize_for_simhash",
    # building blocks for cue-based models (yujing.service.models.lexicon)
    "TOKEN_MARK",
    "compile_cues",
    "english_cues",
    "mark_tokens",
]

ESCALATION_CATEGORIES: tuple[str, ...] = (
    "manager", "human_agent", "formal_complaint", "regulator",
    "legal", "media", "chargeback", "churn",
)

#: Recommended near-duplicate threshold on ``hamming64`` of two ``simhash`` values.
NEAR_DUPLICATE_BITS = 8

_SEP = "\x00"        # joins the texts of a batch; inputs containing it are sanitised
TOKEN_MARK = "\x02"  # inserted before every English token for the cue regexes
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
_CJK_ASTRAL = (0x20000, 0x3FFFF)
_MAX_CHARS_PER_PASS = 1 << 22     # longer batches are featurised in slices

# ---------------------------------------------------------------------------------------
# Cue lists. They are regex source, compiled into one trie-shaped regex per list (see
# compile_cues), matched against the lowercased batch in which every English token is
# preceded by TOKEN_MARK; English cues, built with english_cues, match whole tokens only.
# ---------------------------------------------------------------------------------------


def english_cues(*phrases: str) -> list[str]:
    """English cue phrases (lowercase) -> regex source matching whole tokens.

    A space matches any whitespace run, a hyphen a hyphen; regex syntax is allowed
    inside a phrase (``"attorney(?! general)"``, ``"refund[a-z]*"``).
    """
    out = []
    for p in phrases:
        parts = _CHAR_CLASS_RE.split(p)       # odd parts are [...] classes, kept as is
        for i in range(0, len(parts), 2):
            parts[i] = parts[i].replace(" ", r"\s+" + TOKEN_MARK).replace("-", "-" + TOKEN_MARK)
        out.append(f"{TOKEN_MARK}{''.join(parts)}(?![a-z0-9])")
    return out


_CHAR_CLASS_RE = re.compile(r"(\[[^\]]*\])")
_LOOKAROUND_RE = re.compile(r"\(\?<?[=!]")


def _atom_rank(atom: str) -> int:
    if _LOOKAROUND_RE.match(atom):
        return 2
    return 1 if atom[0] in "([" else 0


_ESCALATION_CUES: dict[str, list[str]] = {
    "manager": [
        *(f"{verb}{whose}{boss}" for verb in ("找", "叫", "让", "要", "请")
          for whose in ("你们", "你们的", "") for boss in ("经理", "领导", "老板", "上级")),
        "主管(?!部门)", "负责人", "值班经理", "部门经理", "客服经理", "升级处理",
        *english_cues(
            "manager", "supervisor", "your boss", "someone in charge", "higher up",
            "escalate this", "escalate my", "escalate the"),
    ],
    "human_agent": [
        "转人工", "人工客服", "人工服务", "人工坐席", "人工座席", "找人工", "要人工", "接人工",
        "真人", "活人", "不要机器人", "别用机器人",
        *english_cues(
            "a human", "human agent", "human being", "real human", "actual human",
            "speak to someone", "talk to someone", "speak with someone", "real person",
            "live person", "actual person", "live agent", "real agent",
            "customer service agent", "operator", "representative", "not a bot",
            "not a robot", "stop the bot"),
    ],
    "formal_complaint": [
        "投诉", "申诉", "举报", "黑猫投诉",
        *english_cues(
            "file a complaint", "filing a complaint", "formal complaint", "lodge a complaint",
            "make a complaint", "raise a complaint", "register a complaint",
            "official complaint", "submit a complaint", "complain to", "complaint against",
            "report you", "reporting you"),
    ],
    "regulator": [
        "消协", "消费者协会", "消保委", "工商(?!银行)", "市场监管", "市监局", "银保监", "银监会",
        "保监会", "金融监管", "证监会", "人民银行", "工信部", "监管部门", "监管机构", "主管部门",
        "有关部门", "相关部门", "消费者权益保护",
        # 12345 (the city hotline) is also everyone's sample number ("order 12345"): only
        # next to a word that calls or complains
        f"(?:打|拨打|拨|致电|投诉到|打到|找){TOKEN_MARK}?12345(?![0-9])",
        f"{TOKEN_MARK}12345(?:热线|投诉|市长|政务)",
        *english_cues(
            "12315", "12378", "12363", "12321", "call 12345", "calling 12345", "12345 hotline",
            "regulator", "regulators", "regulatory", "fcc", "cfpb", "ftc", "fca", "bbb",
            "better business bureau", "ombudsman", "attorney general", "trading standards",
            "consumer protection", "consumer affairs", "consumer council"),
    ],
    "legal": [
        "律师", "起诉", "法院", "打官司", "诉讼", "法律途径", "法律手段", "法律责任", "告你们",
        "告到", "仲裁", "立案", "报警",
        *english_cues(
            "lawyer", "lawyers", "attorney(?! general)", "attorneys", "sue", "suing", "sued",
            "lawsuit", "court", "legal action", "legal proceedings", "solicitor",
            "small claims", "litigation", "class action", "police"),
    ],
    "media": [
        "曝光", "媒体", "记者", "电视台", "黑猫投诉", "网上发", "发到网上", "上热搜", "差评",
        # a platform's name alone is no threat: customers mention where they bought or
        # posted, and Weibo helpdesk posts @-mention "...官方微博" accounts (STC-3: 351
        # customer turns name 微博, 49 of them in dialogues rated satisfied); only posting
        # there is
        "(?:发|发到|发在|发个|发条|上|晒到|挂到)(?:微博|抖音|小红书|快手|知乎)",
        *english_cues(
            "go public", "going public", "social media", "the press", "newspaper", "the news",
            "local news", "journalist", "reporter", "post a review", "write a review",
            "bad review", "negative review", "1 star", "one star", "1-star", "one-star",
            "twitter", "tweet", "facebook", "tiktok", "reddit", "youtube", "instagram",
            "trustpilot", "yelp", "tell everyone", "go viral"),
    ],
    "chargeback": [
        "拒付", "信用卡争议", "争议交易", "交易争议", "银行卡争议", "撤销交易", "止付", "盗刷",
        "找银行", "联系银行", "打给银行",
        # 退单 alone usually means cancelling an order; only next to a bank word it is one
        *(f"{bank}[^。！？!?\n]{{0,8}}?(?:退单|拒付|争议|撤单|追回)"
          for bank in ("银行", "信用卡", "发卡行", "卡组织")),
        *english_cues(
            "chargeback", "charge back", "charge-back", "dispute the charge",
            "dispute this charge", "dispute the transaction", "dispute the payment",
            "disputing the charge", "call my bank", "contact my bank", "calling my bank",
            "call my credit card", "reverse the charge", "stop the payment", "stop payment"),
    ],
    "churn": [
        "销户", "注销", "不再用", "再也不用", "再也不买", "再也不会", "换一家", "换家", "换别家",
        "换成别", "卸载", "退会员", "取消会员", "不用你们", "不续费", "解约", "携号转网",
        *english_cues(
            "cancel my account", "close my account", "delete my account",
            "cancel my subscription", "cancel my membership", "cancel my plan",
            "cancel my service", "switch to another", "switching to another",
            "switch to a competitor", "switching providers", "switch providers", "never again",
            "never use you", "never buy", "never shop", "never order",
            "take my business elsewhere", "go elsewhere", "going elsewhere", "find another",
            "leave you", "leaving you", "unsubscribe", "goodbye forever", "done with you"),
    ],
}
assert tuple(_ESCALATION_CUES) == ESCALATION_CATEGORIES

_NEGATION_CUES: list[str] = [
    "从来没有", "从来没", "从来不", "从没", "从未", "从不", "决不", "绝不", "并不", "并没有", "并没",
    "毫无", "没有", "不是", "不要", "不能", "不会", "不行", "不用", "不想", "不肯", "不该", "无法",
    "未能", "别再",
    # single characters, minus common words in which they are no negation
    "不(?![错过管少久断仅但然如论止禁])",
    "没(?!收)",
    "别(?<!特别)(?<!区别)(?<!分别)(?<!级别)(?<!类别)(?<!告别)(?<!识别)(?<!差别)(?<!个别)"
    "(?<!性别)(?<!离别)(?<!派别)(?![人的处家])",
    "未(?![来必免])",
    "无(?![论线限数聊])(?!人机)",
    "非(?![常法要得凡])(?<!除非)(?<!是非)",
    "莫(?!名)",
    "勿",
    "否(?!则)(?<!是否)(?<!能否)(?<!可否)(?<!与否)",
    "甭",
    *english_cues("not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "nowhere",
         "cannot", "without", "dont", "doesnt", "didnt", "isnt", "wasnt", "arent", "werent",
         "cant", "couldnt", "wont", "wouldnt", "shouldnt", "havent", "hasnt", "hadnt",
         "aint", "mustnt", "neednt"),
    TOKEN_MARK + r"[a-z]+n['’]t(?![a-z0-9])",     # don't, can't, won't, isn't, ...
]

# Words with a negation inside that negate nothing: matched as cues of their own (tag 0) so
# that the negation cues do not match inside them, and not counted. The Chinese A-not-A
# question (是不是 "is it or not", 有没有 "is there any", 可不可以 "may I") asks; the polite
# formulas (不好意思 "excuse me", 没问题 "no problem", 不客气 "you're welcome") are calm.
_NOT_NEGATION: list[str] = [
    "是不是", "能不能", "会不会", "要不要", "可不可", "好不好", "对不对", "行不行", "有没有", "在不在",
    "用不用", "需不需", "该不该", "想不想", "去不去", "来不来", "够不够", "贵不贵", "多不多", "快不快",
    "算不算", "给不给", "肯不肯", "知不知", "愿不愿", "喜不喜", "值不值", "准不准", "退不退", "换不换",
    "发没发", "到没到", "收没收",
    "不好意思", "不客气", "不用谢", "不谢", "没问题", "没关系", "没事",
    *english_cues("or not", "no problem", "not a problem", "no worries", "not bad"),
]


def _regex_atoms(source: str) -> list[str]:
    """Split regex source into trie keys: a group ``(...)``, a class ``[...]`` with its
    quantifier, an escape with its quantifier, or one literal character."""
    atoms, i = [], 0
    while i < len(source):
        c = source[i]
        if c == "(":
            depth, j = 0, i
            while True:
                if source[j] == "\\":
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(source[j], 0)
                if depth == 0:
                    break
                j += 1
            j += 1
        elif c == "[":
            j = source.index("]", i + 2) + 1
        elif c == "\\":
            j = i + 2
        else:
            j = i + 1
        if j < len(source) and source[j] == "{":
            j = source.index("}", j) + 1
        while j < len(source) and source[j] in "+*?":
            j += 1
        atoms.append(source[i:j])
        i = j
    return atoms


_PLAIN_GROUP_RE = re.compile(r"\(\?:([^()]*)\)(\??)(?![{*+])")


def _expand_groups(source: str) -> list[str]:
    """Spell out plain alternation groups: ``"(?:a|b)c"`` -> ``["ac", "bc"]``.

    A group followed by ``?`` adds the variant without it; groups with other quantifiers,
    nested groups and lookarounds stay as they are. Literal cues make the trie exact:
    a cue's prefix is then shared with every other cue that spells the same prefix.
    """
    m = _PLAIN_GROUP_RE.search(source)
    if m is None:
        return [source]
    head, tail = source[:m.start()], source[m.end():]
    options = m.group(1).split("|") + ([""] if m.group(2) else [])
    return [head + option + rest for option in options for rest in _expand_groups(tail)]


def cue_trie(cues: Iterable[tuple[str, int]]) -> dict:
    """``(regex source, tag)`` cues as a trie of regex atoms: ``node[atom]`` is the child
    node, ``node[None]`` the OR of the tags of the cues ending at ``node``."""
    root: dict = {}
    for cue, tag in cues:
        for source in _expand_groups(cue):
            node = root
            for atom in _regex_atoms(source):
                node = node.setdefault(atom, {})
            node[None] = node.get(None, 0) | tag
    return root


def trie_alternatives(node: dict) -> list[str]:
    """The atoms leaving ``node`` in the order the regex tries them: literals first, then
    classes and groups, lookarounds (cue ends) last, so a longer or more specific cue is
    tried before the one it extends; the cue ending at ``node`` (if any) comes after all."""
    return sorted((a for a in node if a is not None), key=_atom_rank)


def compile_cues(cues: Iterable[tuple[str, int]]) -> tuple[re.Pattern, list[int]]:
    """Compile ``(regex source, tag)`` cues into one regex shaped like a trie.

    Cues sharing a prefix share its matching work, and every alternative starts with a
    literal, so the engine skips quickly to candidate positions. Plain alternation groups
    are spelled out (see ``_expand_groups``), and where one cue extends another (``没有``
    and ``没``), the longer is tried first. Each cue ends in an empty
    capturing group; ``tags[m.lastindex]`` is the OR of the tags of the cues ending
    there. Cue sources must not contain capturing groups of their own.

    >>> pattern, tags = compile_cues([("没", 1), ("没有", 2), ("不", 4)])
    >>> [(m.group(), tags[m.lastindex]) for m in pattern.finditer("没有不")]
    [('没有', 2), ('不', 4)]
    """
    tags = [0]

    def emit(node: dict) -> str:
        alts = [atom + emit(node[atom]) for atom in trie_alternatives(node)]
        if None in node:
            tags.append(node[None])
            alts.append("()")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    pattern = re.compile(emit(cue_trie(cues)))
    if pattern.groups != len(tags) - 1:
        raise ValueError("cue sources must not contain capturing groups")
    return pattern, tags


# (cue, tag) pairs; the compiled path (yujing.service.featurize) builds its tries from these
_ESCALATION_TAGGED = tuple((cue, 1 << bit) for bit, cat in enumerate(ESCALATION_CATEGORIES)
                           for cue in _ESCALATION_CUES[cat])
_NEGATION_TAGGED = tuple((cue, 1) for cue in _NEGATION_CUES) + tuple((cue, 0) for cue in _NOT_NEGATION)
_ESCALATION_RE, _ESCALATION_TAGS = compile_cues(_ESCALATION_TAGGED)
_NEGATION_RE, _NEGATION_TAGS = compile_cues(_NEGATION_TAGGED)

# ---------------------------------------------------------------------------------------
# Character classes: one uint8 of flags per BMP code point.
# ---------------------------------------------------------------------------------------

_WORD, _LETTER, _CJK, _EN, _EXCL, _QUES, _APOS = 1, 2, 4, 8, 16, 32, 64


def _class_table() -> np.ndarray:
    chars = [chr(cp) for cp in range(0x10000)]
    alnum = np.fromiter((c.isalnum() for c in chars), bool, 0x10000)
    alpha = np.fromiter((c.isalpha() for c in chars), bool, 0x10000)
    mark = np.fromiter((unicodedata.category(c)[0] == "M" for c in chars), bool, 0x10000)
    table = np.zeros(0x10000, np.uint8)
    table[alnum | mark] |= _WORD
    table[alpha] |= _LETTER
    for lo, hi in _CJK_RANGES:
        table[lo:hi + 1] |= _CJK | _WORD | _LETTER
    latin = np.zeros(0x10000, bool)
    latin[ord("a"):ord("z") + 1] = latin[ord("A"):ord("Z") + 1] = True
    latin[ord("0"):ord("9") + 1] = True
    latin[0xC0:0x250] = alpha[0xC0:0x250]
    table[latin] |= _EN
    table[[ord("!"), 0xFF01]] |= _EXCL
    table[[ord("?"), 0xFF1F]] |= _QUES
    table[[ord("'"), 0x2019]] |= _APOS
    return table


_CLASS = _class_table()


def _classify(codes: np.ndarray) -> np.ndarray:
    cls = _CLASS[np.minimum(codes, 0xFFFF)]
    astral = codes > 0xFFFF
    if astral.any():
        lo, hi = _CJK_ASTRAL
        cjk = (codes >= lo) & (codes <= hi)
        cls[astral] = 0
        cls[cjk] = _CJK | _WORD | _LETTER
    return cls


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _prev(a: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    out[1:] = a[:-1]
    return out


def _next(a: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    out[:-1] = a[1:]
    return out


# Languages a text's letters belong to (TextFeatures.languages): what the models are
# trusted for. Chinese = CJK ideographs; English = at least two Latin letters; other = any
# other letter (kana, hangul, Cyrillic, Arabic, ...). Digits, punctuation and emoji are none.
LANG_ZH, LANG_EN, LANG_OTHER = 1, 2, 4
LANGUAGE_BITS = {"zh": LANG_ZH, "en": LANG_EN}


def language_mask(languages) -> int:
    """Bits of the language codes ``languages`` (unknown codes count as 'other')."""
    return sum({LANGUAGE_BITS.get(code, LANG_OTHER) for code in languages})


@dataclass(frozen=True)
class TextFeatures:
    """Per-turn features of a batch; entry ``i`` of every field belongs to ``texts[i]``."""

    words: np.ndarray            # int32, tokens (English tokens + CJK characters)
    negation_words: np.ndarray   # int32, negation cues
    intensity: np.ndarray        # float64 in [0, 1)
    escalation_mask: np.ndarray  # int32, bit i = ESCALATION_CATEGORIES[i]
    simhash: np.ndarray          # uint64, SimHash over character 3-grams
    languages: np.ndarray        # uint8, LANG_* bits of the letters present (0: no letters)

    def __len__(self) -> int:
        return len(self.words)

    def negation_share(self) -> np.ndarray:
        """``negation_words / max(words, 1)``, float64 (0 for a text without tokens)."""
        return self.negation_words / np.maximum(self.words, 1).astype(np.float64)


def escalation_names(mask: int) -> tuple[str, ...]:
    """The names of the categories whose bits are set in ``mask``, in category order.

    >>> escalation_names(0b10100)
    ('formal_complaint', 'legal')
    """
    mask = int(mask)
    return tuple(c for i, c in enumerate(ESCALATION_CATEGORIES) if mask >> i & 1)


# ---------------------------------------------------------------------------------------
# the batch pipeline
# ---------------------------------------------------------------------------------------


class _Batch:
    """The lowercased batch as code points, its classes and the owner of every position."""

    def __init__(self, low: str, n: int):
        self.n = n
        self.codes = _codes(low)
        self.cls = _classify(self.codes)
        is_sep = self.codes == 0
        self.sep_at = np.flatnonzero(is_sep)
        self.owner = np.cumsum(is_sep)            # text index; a separator gets the next one
        en = (self.cls & _EN) != 0
        apos = (self.cls & _APOS) != 0
        token = en | (apos & _prev(en) & _next(en))
        self.token_start = token & ~_prev(token)
        letter = (self.cls & _LETTER) != 0
        same = np.zeros(len(self.codes), bool)
        same[1:] = self.codes[1:] == self.codes[:-1]
        # third and later character of a run of one letter
        self.repeat_tail = letter & same & _prev(same)

    def count(self, where: np.ndarray) -> np.ndarray:
        return np.bincount(self.owner[where], minlength=self.n)


def _token_marked(batch: _Batch) -> tuple[str, np.ndarray]:
    """The batch with TOKEN_MARK before every English token, and each text's start offset."""
    at = np.flatnonzero(batch.token_start)
    marked = np.insert(batch.codes, at, ord(TOKEN_MARK))
    seps = batch.sep_at + np.searchsorted(at, batch.sep_at)
    starts = np.concatenate(([0], seps + 1))
    return marked.tobytes().decode("utf-32-le", "surrogatepass"), starts


def mark_tokens(texts: Sequence[str]) -> tuple[str, np.ndarray]:
    """The texts as cue patterns see them, and the start offset of each text in it.

    The texts are joined with NUL, NFKC-normalised, lowercased, and every English token
    gets ``TOKEN_MARK`` in front, so that :func:`english_cues` patterns match whole
    tokens. For models built on :func:`compile_cues`.

    >>> mark_tokens(["Don't SUE", "退款"])
    ("\\x02don't \\x02sue\\x00退款", array([ 0, 12]))
    """
    texts = [t.replace(_SEP, " ") for t in texts]
    return _token_marked(_Batch(_lower(_SEP.join(texts)), len(texts)))


def _cue_hits(pattern: re.Pattern, text: str, starts: np.ndarray) -> tuple[np.ndarray, list]:
    hits = [(m.start(), m.lastindex) for m in pattern.finditer(text)]
    if not hits:
        return np.zeros(0, np.int64), []
    pos, groups = zip(*hits)
    return np.searchsorted(starts, pos, side="right") - 1, groups


_W_EXCL, _W_QUES, _W_RUN, _W_SHOUT, _W_REPEAT = 0.25, 0.10, 0.35, 1.50, 0.35
_SHOUT_MIN_LETTERS = 3


def _intensity(raw: str, batch: _Batch) -> np.ndarray:
    codes = _codes(raw)
    owner = np.cumsum(codes == 0)
    n = batch.n
    excl = (codes == 0x21) | (codes == 0xFF01)
    ques = (codes == 0x3F) | (codes == 0xFF1F)
    mark = excl | ques
    mark_run = mark & _next(mark) & ~_prev(mark)
    upper = (codes >= 0x41) & (codes <= 0x5A)
    letter = upper | ((codes >= 0x61) & (codes <= 0x7A))
    inner = letter & _prev(letter)
    letters = np.bincount(owner[inner], minlength=n)
    shout = np.bincount(owner[inner & upper], minlength=n) / np.maximum(letters, 1)
    shout[letters < _SHOUT_MIN_LETTERS] = 0.0
    repeats = batch.count(batch.repeat_tail & ~_prev(batch.repeat_tail))
    raw_score = (_W_EXCL * np.bincount(owner[excl], minlength=n)
                 + _W_QUES * np.bincount(owner[ques], minlength=n)
                 + _W_RUN * np.bincount(owner[mark_run], minlength=n)
                 + _W_SHOUT * shout + _W_REPEAT * repeats)
    return -np.expm1(-raw_score)


def _normalized(batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """Code points of the normalised texts (see module doc), concatenated, and owners."""
    word = (batch.cls & _WORD) != 0
    not_word = ~word
    not_word[batch.sep_at] = False
    words_so_far = np.cumsum(word)
    base = np.concatenate(([0], words_so_far[batch.sep_at]))
    after_word = words_so_far > base[batch.owner]
    space = not_word & _next(word) & after_word        # last of an inner non-word run
    keep = (word & ~batch.repeat_tail) | space
    return np.where(space, 0x20, batch.codes)[keep], batch.owner[keep]


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LANES = np.uint64(0x0001000100010001)
_MAX_SEGMENT = 0xFFFF        # 3-grams summed in one 16-bit lane


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _simhash(codes: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.uint64)
    lens = np.bincount(owner, minlength=n)
    sel = np.flatnonzero(lens)
    if len(sel) == 0:
        return out
    # Each text is followed by two zeros: a text of 1 or 2 characters is one zero-padded
    # 3-gram, and no 3-gram spans two texts.
    padded = np.zeros(len(codes) + 2 * n, np.uint64)
    padded[np.arange(len(codes)) + 2 * owner] = codes
    text_start = np.cumsum(lens + 2) - (lens + 2)
    grams = np.maximum(lens[sel] - 2, 1)
    first = np.cumsum(grams) - grams
    pos = np.repeat(text_start[sel] - first, grams) + np.arange(int(first[-1] + grams[-1]))
    h = _mix64((padded[pos] << np.uint64(42)) | (padded[pos + 1] << np.uint64(21))
               | padded[pos + 2])
    # Bit counts per text, 4 bits at a time: plane k holds bits k, 16+k, 32+k, 48+k in
    # four 16-bit lanes, so one 1-D sum counts four bits. Texts of more than _MAX_SEGMENT
    # 3-grams are summed in segments.
    n_seg = (grams + _MAX_SEGMENT - 1) // _MAX_SEGMENT
    seg_first = np.cumsum(n_seg) - n_seg
    seg_start = (np.repeat(first, n_seg)
                 + _MAX_SEGMENT * (np.arange(int(n_seg.sum())) - np.repeat(seg_first, n_seg)))
    ones = np.empty((len(seg_start), 4, 16), np.int64)
    for k in range(16):
        lanes = np.add.reduceat((h >> np.uint64(k)) & _LANES, seg_start)
        ones[:, :, k] = lanes.astype("<u8").view("<u2").reshape(-1, 4)
    ones = ones.reshape(-1, 64)
    if len(seg_start) != len(sel):
        ones = np.add.reduceat(ones, seg_first, axis=0)
    majority = (2 * ones > grams[:, None]).astype(np.uint8)
    out[sel] = np.packbits(majority, axis=1, bitorder="little").view("<u8")[:, 0]
    return out


def _lower(text: str) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.lower()


def normalize_for_simhash(text: str) -> str:
    """The normalised text whose character 3-grams make the ``simhash``.

    >>> normalize_for_simhash("  My order NEVER arrived!!! Sooooo bad... ")
    'my order never arrived soo bad'
    """
    text = text.replace(_SEP, " ")
    codes, _ = _normalized(_Batch(_lower(text), 1))
    return codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def _featurize(texts: list[str]) -> TextFeatures:
    n = len(texts)
    raw = _SEP.join(texts)
    batch = _Batch(_lower(raw), n)
    words = batch.count(batch.token_start) + batch.count((batch.cls & _CJK) != 0)

    marked, starts = _token_marked(batch)
    owner, groups = _cue_hits(_NEGATION_RE, marked, starts)
    if len(owner):
        owner = owner[np.take(_NEGATION_TAGS, groups) != 0]     # tag 0: a word that negates nothing
    negations = np.bincount(owner, minlength=n)
    owner, groups = _cue_hits(_ESCALATION_RE, marked, starts)
    mask = np.zeros(n, np.int32)
    if len(owner):
        np.bitwise_or.at(mask, owner, np.take(_ESCALATION_TAGS, groups).astype(np.int32))

    letter = (batch.cls & _LETTER) != 0
    cjk = (batch.cls & _CJK) != 0
    latin = letter & ((batch.cls & _EN) != 0)
    languages = (np.where(batch.count(cjk) > 0, LANG_ZH, 0) | np.where(batch.count(latin) >= 2, LANG_EN, 0)
                 | np.where(batch.count(letter & ~cjk & ~latin) > 0, LANG_OTHER, 0)).astype(np.uint8)
    return TextFeatures(
        words=words.astype(np.int32),
        negation_words=negations.astype(np.int32),
        intensity=_intensity(raw, batch),
        escalation_mask=mask,
        simhash=_simhash(*_normalized(batch), n),
        languages=languages,
    )


def featurize_batch(texts: Sequence[str]) -> TextFeatures:
    """Features of every text of ``texts`` (see the module docstring for the formulas).

    >>> f = featurize_batch(["My order never arrived!!", "my order never arrived"])
    >>> hamming64(f.simhash[0], f.simhash[1]), f.intensity.round(2).tolist()
    (0, [0.57, 0.0])
    """
    return featurize_in_passes(texts, _featurize, _MAX_CHARS_PER_PASS)


def featurize_in_passes(texts: Sequence[str], one_pass, max_chars: int) -> TextFeatures:
    """``one_pass(texts)`` over slices of ``texts`` of about ``max_chars`` characters,
    concatenated (NULs in the texts replaced by spaces first)."""
    texts = [t if _SEP not in t else t.replace(_SEP, " ") for t in texts]
    if not texts:
        empty_i = np.zeros(0, np.int32)
        return TextFeatures(empty_i, empty_i.copy(), np.zeros(0), empty_i.copy(),
                            np.zeros(0, np.uint64), np.zeros(0, np.uint8))
    total = sum(map(len, texts))
    if total <= max_chars:
        return one_pass(texts)
    parts, lo, size = [], 0, 0
    for i, t in enumerate(texts):               # slices of about max_chars
        size += len(t) + 1
        if size > max_chars or i == len(texts) - 1:
            parts.append(one_pass(texts[lo:i + 1]))
            lo, size = i + 1, 0
    return TextFeatures(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("words", "negation_words", "intensity",
                                    "escalation_mask", "simhash", "languages")))


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming64(a, b):
    """Number of differing bits of 64-bit hashes: an ``int`` for two scalars, else an
    int64 array (numpy broadcasting).

    >>> hamming64(0b1011, 0b0001)
    2
    """
    if np.ndim(a) == 0 and np.ndim(b) == 0:
        return (int(a) ^ int(b)).bit_count()
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    x = np.ascontiguousarray(x, dtype="<u8")
    return _POPCOUNT8[x.view(np.uint8).reshape(x.shape + (8,))].sum(axis=-1, dtype=np.int64)
