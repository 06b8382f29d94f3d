"""Cross-fitted calibration of the sentiment model (training/indomain/train.py,
``inner_out_of_fold_logits``): every training turn of JDDC and SGD/MWOZ is scored once, by a
model fitted without its dialogue, and no other source is held out of any fit."""
from __future__ import annotations

import numpy as np
import pytest

from yujing.training.indomain import data as D
from yujing.training.indomain import train as TR


def _items(prefix: str, n: int) -> list[D.Item]:
    labels = list(D.SENTIMENT)
    return [D.Item(f"{prefix} turn {k}", labels[k % 3], group=f"{prefix}-dialogue-{k // 3}") for k in range(n)]


@pytest.mark.parametrize("fold", [0, 3])
def test_each_training_turn_is_scored_once_by_a_model_that_never_saw_it(monkeypatch, fold):
    parts = [("jddc", "zh", _items("jddc", 300)), ("uss", "en", _items("uss", 150)),
             ("airline", "en", _items("airline", 60))]
    fits = []

    class Recorder:
        """Logits: column 0 is 1 for a text the fit saw, column 1 counts the fit."""

        def __init__(self, seen: set[str], index: int) -> None:
            self.seen, self.index = seen, index

        def logits(self, texts):
            return np.array([[float(t in self.seen), float(self.index), 0.0] for t in texts], np.float32)

    def fake_train(name, labels, split_parts, weights, heads, **kw):
        seen = {x.text for _, _, items in split_parts for x in items}
        fits.append(seen)
        return Recorder(seen, len(fits) - 1), None, None

    monkeypatch.setattr(TR.L, "train", fake_train)
    monkeypatch.setattr(D, "FOLD", fold)
    out = TR.inner_out_of_fold_logits(parts)

    assert len(fits) == len(TR.INNER_BUCKETS) == 3
    airline = {x.text for x in parts[2][2]}
    assert all(airline <= seen for seen in fits)                      # other sources are in every fit
    for name, _, items in parts[:2]:
        texts, z, y = out[name]
        expected = [x for x in items if D.relative_bucket(x.group) in TR.INNER_BUCKETS]
        assert sorted(texts) == sorted(x.text for x in expected) and len(set(texts)) == len(texts)
        assert not z[:, 0].any()                                       # never scored by a fit that saw it
        for text, fit, label in zip(texts, z[:, 1].astype(int), y):
            item = next(x for x in items if x.text == text)
            assert D.relative_bucket(item.group) == TR.INNER_BUCKETS[fit]    # by the fit that held its bucket out
            assert label == list(D.SENTIMENT).index(item.label)
        # a dialogue's turns stay together: none of the test or dev side is scored
        assert not any(D.relative_bucket(x.group) in (0, 1) and x.text in texts for x in items)
