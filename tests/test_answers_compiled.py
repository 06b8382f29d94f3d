"""The compiled answer encoder (yujing.kernels.answers, service/answers.py
``build_answers_compiled``) against the Python one (``build_answers_py``, itself checked
against the generated classes in tests/test_wire.py): the same bytes and the same
``tail_at`` for every turn, over seeded random batches with the awkward inputs (ids empty
and non-ASCII, NaN, -0.0, infinities and values beyond float32, missing sentiment, intent
and emotion, every level, priority and action, reasons on every indicator at rounding
edges, with and without an SLA); and the reason-words keys: two values with one key have
the same words."""
import numpy as np
import pytest

from tests.test_wire import STRINGS, _pick, random_batch
from yujing.kernels import answers as K
from yujing.kernels import layout as L
from yujing.service import answers as A
from yujing.service.contract import pb
from yujing.service.model_outputs import ModelOutputs
from yujing.service.reasons import WORDS_KIND, reason_texts

IDS = STRINGS + ["租户-甲", "é", "\u00ff" * 70, "x" * 300]
SLAS = [60.0, 30.0, 120.0, 0.0, -0.0, 1e6, 0.001, 45.5, 1 / 3, -60.0, float("nan"), float("inf"), 86400.0]


def _edge_values(rng, n):
    """Values that the words round: at and next to the halves of 0, 1 and 2 decimals, of
    minutes and hours, plus the plain and odd ones."""
    k = rng.integers(-300, 300, n)
    scale = rng.choice([1.0, 10.0, 100.0, 1 / 60, 1 / 3600, 6 / 3600], n)
    x = (k + 0.5) / scale / rng.choice([1.0, 100.0], n)
    nudge = rng.choice([0.0, 0.0, 1.0, -1.0], n)
    x = np.where(nudge == 0, x, np.nextafter(x, x + nudge))
    plain = rng.normal(0, 3, n) * rng.choice([1e-3, 1.0, 1e2, 1e4, 1e10], n)
    x = np.where(rng.random(n) < 0.5, x, plain)
    ints = rng.integers(-3, 40, n) + rng.choice([0.0, 0.5, 0.49999999999, 0.25], n)
    return np.where(rng.random(n) < 0.2, ints, x)


def compiled_batch(rng, n_items=40):
    items, positions, of, oi, outputs, versions, degraded, sla_s = random_batch(rng, n_items)
    n = len(positions)
    for it in items:                                   # more ids: empty, non-ASCII, long
        t = it.turn
        t.tenant_id, t.session_id = _pick(rng, IDS, 1)[0], _pick(rng, IDS, 1)[0]
        t.turn_id = _pick(rng, IDS, 1)[0]
    # the reasons' values at the words' rounding edges; finite (the words need a number)
    for c in range(n):
        for r in range(L.TOP_REASONS):
            j = oi[L.OI_REASON_IDX + r, c]
            if j >= 0 and rng.random() < 0.7:
                of[j, c] = _edge_values(rng, 1)[0]
    if rng.random() < 0.15:
        outputs = ModelOutputs.empty(n_items)          # no model outputs at all
    elif rng.random() < 0.2:
        outputs.emotion_id = outputs.emotion_probs = None
        outputs.emotion_labels = ()
    if sla_s is not None and rng.random() < 0.7:
        sla_s = np.array(_pick(rng, SLAS, n))
    return items, positions, of, oi, outputs, versions, degraded, sla_s


def _assert_same(batch):
    try:
        want = A.build_answers_py(*batch)
    except (ValueError, OverflowError) as e:          # a reason whose value has no words
        with pytest.raises(type(e)):
            A.build_answers_compiled(*batch)
        return
    got = A.build_answers_compiled(*batch)
    assert len(got) == len(want)
    for c, ((raw, tail), (raw_w, tail_w)) in enumerate(zip(got, want)):
        assert raw == raw_w, c
        assert tail == tail_w, c


@pytest.mark.parametrize("seed", range(40))
def test_compiled_equals_python(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(10):
        _assert_same(compiled_batch(rng, int(rng.integers(1, 80))))


def test_every_level_priority_action_and_indicator():
    rng = np.random.default_rng(2)
    combos = [(lv, pr, act) for lv in (-1, 0, 1, 2, 3, 7) for pr in (-1, 0, 1, 2, 3, 4) for act in range(8)]
    n = len(combos)
    items, positions, of, oi, outputs, versions, degraded, sla_s = compiled_batch(rng, n)
    positions = np.arange(n)
    of, oi = np.abs(rng.normal(0, 2, (L.OF_ROWS, n))), np.full((L.OI_ROWS, n), -1, np.int64)
    for c, (lv, pr, act) in enumerate(combos):
        oi[L.OI_LEVEL, c], oi[L.OI_PRIORITY, c], oi[L.OI_ACTIONS, c] = lv, pr, act
        oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3, c] = [(3 * c + r) % L.N_INDICATORS for r in range(3)]
    oi[L.OI_CUSTOMER] = rng.integers(0, 300, n)
    oi[L.OI_SESSION_TIME] = rng.integers(0, 10**7, n)
    outputs = outputs if outputs.intent_probs is not None else ModelOutputs.empty(n)
    for sla in (None, np.full(n, 60.0), np.array(_pick(rng, SLAS, n))):
        _assert_same((items, positions, of, oi, outputs, versions, degraded, sla))
        _assert_same((items, positions, of, oi, outputs, versions, not degraded, sla))


def test_non_finite_reason_values_fail_as_the_python_encoder_does():
    rng = np.random.default_rng(4)
    batch = list(compiled_batch(rng, 20))
    of, oi = batch[2], batch[3]
    c = 0
    oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3, c] = [0, -1, -1]
    for v in (float("nan"), float("inf")):
        of[0, c] = v
        _assert_same(tuple(batch))


def test_build_answers_is_the_compiled_encoder_and_empty():
    rng = np.random.default_rng(5)
    for n_items in (1, 2, 3, 4, 5, 40):
        batch = compiled_batch(rng, n_items)
        try:
            want = A.build_answers_py(*batch)
        except (ValueError, OverflowError):
            continue
        assert A.build_answers(*batch) == want
    items, positions, of, oi, outputs, versions, degraded, sla_s = compiled_batch(rng, 8)
    assert A.build_answers_compiled(items, positions[:0], of[:, :0], oi[:, :0], outputs, versions, degraded,
                                    None) == []


def _key_of(name, v, sla):
    j = L.INDICATORS.index(name)
    of = np.zeros((L.OF_ROWS, len(v)))
    of[j] = v
    oi = np.full((L.OI_ROWS, len(v)), -1, np.int64)
    oi[L.OI_REASON_IDX] = j
    has = sla is not None
    keys, _, _ = K.reason_keys(of, oi, np.full(len(v), sla if has else 0.0), has, A._WORDS_KINDS,
                               L.OI_REASON_IDX, L.TOP_REASONS)
    return keys[0]


@pytest.mark.parametrize("name", L.INDICATORS)
def test_one_key_one_wording(name):
    """Every indicator's key: values with the same key have the same words (and the values
    the key cannot decide get keys of their own)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    v = np.concatenate([_edge_values(rng, 3000), [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, 0.005, 0.015, 0.125, -0.125,
                                                   0.045, 1e-300, -1e-300, 1e300, 2.0**30, 2.0**30 - 0.5]])
    for sla in (None, 60.0, 30.0, 45.5, 0.001, 86400.0, 1 / 3, float("nan"), -60.0):
        keys = _key_of(name, v, sla)
        words = {}
        for x, key in zip(v.tolist(), keys.tolist()):
            if key >= 0:
                w = reason_texts(name, x, sla)
                assert words.setdefault(key, w) == w, (name, x, sla, key)
    # the kernel's values (plain numbers, the policy's SLAs): almost all decided by the key
    plain = np.abs(rng.normal(0, 1, 2000)) * rng.choice([1.0, 10.0], 2000)
    assert (_key_of(name, plain, 60.0) < 0).mean() < 0.01


def test_every_indicator_has_a_words_kind():
    assert set(L.INDICATORS) <= set(WORDS_KIND)


def test_ids_beyond_the_labels_fail_as_the_python_encoder_does():
    """An intent or emotion id past its model's labels, a reason index past the indicators:
    IndexError from both encoders, nothing read past an array."""
    rng = np.random.default_rng(6)
    while True:
        items, positions, of, oi, outputs, versions, degraded, sla_s = compiled_batch(rng, 12)
        if outputs.intent_probs is not None and outputs.emotion_id is not None and len(positions) >= 2:
            break
    outputs.intent_id[positions[0]] = outputs.intent_probs.shape[1] + 3
    with pytest.raises(IndexError):
        A.build_answers_py(items, positions, of, oi, outputs, versions, degraded, sla_s)
    with pytest.raises(IndexError):
        A.build_answers_compiled(items, positions, of, oi, outputs, versions, degraded, sla_s)
    outputs.intent_id[:] = -1
    for it in items:
        it.turn.speaker = pb.CUSTOMER
    outputs.emotion_id[positions[1]] = len(outputs.emotion_labels)
    oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3] = -1
    with pytest.raises(IndexError):
        A.build_answers_py(items, positions, of, oi, outputs, versions, degraded, sla_s)
    with pytest.raises(IndexError):
        A.build_answers_compiled(items, positions, of, oi, outputs, versions, degraded, sla_s)
    outputs.emotion_id[:] = -1
    oi[L.OI_REASON_IDX, 0] = L.N_INDICATORS
    with pytest.raises(IndexError):
        A.build_answers_py(items, positions, of, oi, outputs, versions, degraded, sla_s)
    with pytest.raises(IndexError):
        A.build_answers_compiled(items, positions, of, oi, outputs, versions, degraded, sla_s)
