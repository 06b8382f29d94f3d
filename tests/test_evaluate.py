"""The decision rule of the test metrics (training/evaluate.py), which the fine-tuning's
per-epoch validation and the companion-weight choice use too."""
from __future__ import annotations

import numpy as np

from yujing.training.data import Subset
from yujing.training.evaluate import decide, score_subset

LABELS = ["negative", "neutral", "positive"]
SCORES = np.array([[0.2, 0.7, 0.1],     # neutral wins 3-way; negative beats positive
                   [0.1, 0.6, 0.3],     # neutral wins 3-way; positive beats negative
                   [0.3, 0.4, 0.3],     # a tie between negative and positive
                   [0.1, 0.1, 0.8]])


def test_decide_over_all_labels_and_over_a_pair():
    assert decide(SCORES).tolist() == [1, 1, 1, 2]
    assert decide(SCORES, [0, 2]).tolist() == [0, 2, 0, 2]      # a tie goes to the first
    assert decide(SCORES, [2, 0]).tolist() == [0, 2, 2, 2]
    # logits decide as their probabilities do
    assert decide(np.log(SCORES), [0, 2]).tolist() == [0, 2, 0, 2]


def test_binary_subset_is_scored_on_negative_vs_positive():
    labels = ["negative", "positive", "positive", "positive"]
    binary = score_subset(SCORES, Subset("zh_x", "zh", ["a"] * 4, labels, True), LABELS)
    assert binary["accuracy"] == 0.75                 # the tie (row 3) goes to negative: wrong
    assert binary["accuracy_3way"] == 0.25 and binary["neutral_rate"] == 0.75
    three_way = score_subset(SCORES, Subset("en_x", "en", ["a"] * 4, labels, False), LABELS)
    assert three_way["accuracy"] == 0.25
