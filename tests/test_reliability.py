"""The reliability diagram's arithmetic (training/indomain/reliability.py) on hand-made
probabilities whose bins, accuracies and calibration error are known."""
import numpy as np
import pytest

from yujing.training.indomain.reliability import reliability


def test_bins_accuracy_and_ece_match_a_hand_computed_case():
    # four turns at confidence 0.9 (3 right), two at 0.5 (both wrong)
    p = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.5, 0.3, 0.2]] * 2)
    y = np.array([0, 0, 0, 1, 2, 1])
    rep = reliability(p, y, bins=10)
    by_hi = {r["hi"]: r for r in rep["bins"] if r["n"]}
    assert set(by_hi) == {0.9, 0.5}               # right-closed bins: 0.9 falls in (0.8, 0.9]
    assert by_hi[0.9]["n"] == 4 and by_hi[0.9]["accuracy"] == 0.75
    assert by_hi[0.5]["n"] == 2 and by_hi[0.5]["accuracy"] == 0.0
    assert rep["ece"] == pytest.approx((4 * 0.15 + 2 * 0.5) / 6, abs=1e-4)


def test_a_calibrated_model_has_a_small_error_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.4, 1.0, 20_000)
    right = rng.uniform(size=conf.size) < conf      # right as often as it is confident
    p = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], 1)
    y = np.where(right, 0, 1)
    assert reliability(p, y)["ece"] < 0.02
    sharp = np.stack([np.full(conf.size, 0.99), np.full(conf.size, 0.005), np.full(conf.size, 0.005)], 1)
    assert reliability(sharp, y)["ece"] > 0.2
