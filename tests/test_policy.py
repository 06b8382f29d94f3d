"""The policy file: defaults load, every bad value is refused naming its key."""
import re

import numpy as np
import pytest

from yujing.kernels import layout as L
from yujing.service.errors import ConfigError
from yujing.service.policy import DEFAULT_POLICY, load_policy


def test_default_policy_loads_with_domain_numbers():
    p = load_policy()
    assert p.version
    assert p.pf[L.P_TH_BLUE] < p.pf[L.P_TH_YELLOW] < p.pf[L.P_TH_RED]
    assert p.pf[L.P_SATURATION + L.IND["repeat_complaints"]] == 5      # DOMAIN: 5 similar complaints
    assert p.pf[L.P_AGENT_BUCKET_MS] * L.AGENT_BUCKETS == 2 * 3600_000  # fatigue over 2 h
    # SLA never grows with the tier; VIP raise >= STANDARD raise
    assert np.all(np.diff(p.sla_ms[:, 1:], axis=1) <= 0)
    assert p.tier_raise[4] >= p.tier_raise[1]


def test_unknown_intent_label_gets_the_default_and_warns_once(caplog):
    p = load_policy()
    with caplog.at_level("WARNING"):
        t1 = p.intent_table(["complaint", "brand_new_label"])
        p.intent_table(["brand_new_label"])
    assert t1.weight[1] == p.intent_default_weight and t1.category[1] == p.intent_default_category
    assert sum("brand_new_label" in r.message for r in caplog.records) == 1
    assert t1.weight[0] == 1.0 and t1.complaint[0]


def edited(tmp_path, old, new):
    text = DEFAULT_POLICY.read_text()
    assert re.search(old, text, flags=re.M), old
    f = tmp_path / "policy.toml"
    f.write_text(re.sub(old, new, text, count=1, flags=re.M))
    return f


@pytest.mark.parametrize("old,new,key", [
    (r"^red = 75.0", "red = 40.0", "levels"),
    (r"^blue = 25.0", "blue = -1", "levels.blue"),
    (r"^alpha_fast = 0.3", "alpha_fast = 0", "windows.alpha_fast"),
    (r"^neg_turns = 10", "neg_turns = 64", "windows.neg_turns"),
    (r"^escalation = [0-9.]+$", "escalation = \"lots\"", "weights.escalation"),
    (r"^intensity = 0.8", "intensity = 0", "saturation.intensity"),
    (r"^CHAT = \{ STANDARD = 60.0", "CHAT = { STANDARD = 10.0", "sla_seconds.CHAT"),
    (r"^raise = \{ STANDARD = 0, GOLD = 0, DIAMOND = 1, VIP = 1 \}",
     "raise = { STANDARD = 1, GOLD = 0, DIAMOND = 1, VIP = 1 }", "tiers.raise"),
    (r"^media = \{ level = 0.85", "media = { level = 1.5", "escalation.media"),
    (r"^complaint = \[\"complaint\", 1.0\]", "complaint = [\"nope\", 1.0]", "intents.labels.complaint"),
    (r"^version = .*$", "", "version"),
    (r"^\[levels\]", "[levels]\nsurprise = 1", "levels"),
    (r"^angry = 1.0", "angry = 2.0", "emotion.angry"),
])
def test_bad_policy_is_refused_naming_the_key(tmp_path, old, new, key):
    with pytest.raises(ConfigError) as err:
        load_policy(edited(tmp_path, old, new))
    assert key in str(err.value)


def test_not_toml_and_missing_file(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("version = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")


def test_emotion_weights_follow_the_models_labels():
    pol = load_policy()
    w = pol.emotion_weights(("neutral", "angry", "anxious", "unknown"))
    assert w.tolist() == [0.0, 1.0, 0.5, 0.0]     # anger weighs more than worry; unknown: 0


def test_escalation_lookup_tables_equal_the_per_cue_definition():
    """The per-turn (level, raise, floor) come from tables of every mask value; they equal
    the strongest-cue definition on random masks, and a policy copied with other cue
    levels gets its own tables."""
    import dataclasses

    import numpy as np

    pol = load_policy()
    k = pol.esc_level.shape[0]
    masks = np.random.default_rng(3).integers(0, 1 << k, 2000)
    masks[:k] = 1 << np.arange(k)
    for got, want in zip(pol.escalation_from_masks(masks), pol.escalation_by_mask(masks)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert pol.escalation_from_masks(np.array([0]))[0][0] == 0.0
    other = dataclasses.replace(pol, esc_level=pol.esc_level * 0.5)
    assert np.allclose(other.escalation_from_masks(masks)[0], pol.escalation_from_masks(masks)[0] * 0.5)
