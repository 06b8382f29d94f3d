"""The conversation evaluator and the policy fit, on hand-made data with known answers,
and through a real service (in-process models, real gRPC)."""
import numpy as np
import pytest

from yujing.training import conversations as C
from yujing.training import policy_fit as F
from yujing.training.dialogues import Dialogue, DialogueTurn, hash_split
from tests.service_harness import ServiceThread
from tests.service_models import in_process_repo
from yujing.service.config import Config
from yujing.kernels.layout import INDICATORS


def test_metrics_on_known_numbers():
    cm = C.confusion(["negative", "neutral", "neutral", "positive"], ["negative", "negative", "neutral", "positive"])
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    # F1: negative 2/3, neutral 2/3, positive 1
    assert C.macro_f1(cm) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert C.auc([3, 4], [1, 2]) == 1.0 and C.auc([1], [1]) == 0.5 and C.auc([1, 5], [3]) == 0.5
    assert C.auc([], [1]) is None


def test_lead_time_counts_customer_turns_from_the_first_alarm():
    d = C.PlayedDialogue("d", "x", "en", "dissatisfied", [
        C.PlayedTurn("customer", None, "neutral", 10, 1), C.PlayedTurn("agent", None, "", 10, 1),
        C.PlayedTurn("customer", None, "negative", 55, 3), C.PlayedTurn("customer", None, "negative", 80, 4)])
    assert d.first_alarm_lead() == 2 and d.max_level == 4 and d.max_score == 80


def test_the_split_is_stable_and_one_in_five():
    ids = [f"valid_{k:04d}" for k in range(2000)]
    assert [hash_split(i) for i in ids] == [hash_split(i) for i in ids]
    assert 0.15 < np.mean([hash_split(i) == "test" for i in ids]) < 0.25


def test_cross_fitting_folds_test_each_dialogue_once_and_fold_0_is_the_shipped_split():
    from yujing.training.indomain import data as split_rule

    ids = [f"valid_{k:04d}" for k in range(500)]
    shipped = [hash_split(i) for i in ids]
    sides = []
    try:
        for k in range(split_rule.FOLDS):
            split_rule.set_fold(k)
            sides.append([hash_split(i) for i in ids])
        with pytest.raises(ValueError, match="fold"):
            split_rule.set_fold(split_rule.FOLDS)
    finally:
        split_rule.set_fold(0)
    assert sides[0] == shipped
    for j in range(len(ids)):
        column = [s[j] for s in sides]
        assert column.count("test") == 1 and column.count("dev") == 1 and column.count("train") == 3
        k = column.index("test")
        assert sides[(k + 1) % split_rule.FOLDS][j] == "train" and column[(k - 1) % split_rule.FOLDS] == "dev"


def test_the_auc_comes_with_an_interval_that_narrows_with_more_positives():
    a = C.auc([60, 50, 20, 70], list(range(0, 64, 2)))
    lo, hi = C.auc_interval([60, 50, 20, 70], list(range(0, 64, 2)), n=500)
    assert lo < a < hi and hi - lo > 0.2
    lo2, hi2 = C.auc_interval([60, 50, 20, 70] * 10, list(range(0, 64, 2)) * 10, n=500)
    assert lo2 < a < hi2 and hi2 - lo2 < (hi - lo) / 2
    assert C.auc_interval([60], [1, 2, 3]) is None
    rep = C.dialogue_metrics([C.PlayedDialogue(f"d{i}", "x", "zh", o, [C.PlayedTurn("customer", None, "neutral", s, 1)])
                              for i, (s, o) in enumerate([(9, "dissatisfied"), (7, "dissatisfied"), (8, "satisfied"),
                                                          (1, "satisfied"), (2, "neutral")])])
    assert rep["auc_95_interval"] == C.auc_interval([9, 7], [8, 1, 2])


def test_crossfit_pools_the_folds_played_dialogues(tmp_path):
    """`crossfit --replay-only` measures the folds' played dialogues together: the pooled AUC
    is the AUC over every fold's dialogues, not an average of the folds' AUCs."""
    import json

    from yujing.training.indomain import crossfit

    scores = {0: ([70, 40], [10, 50, 20]), 1: ([30], [60, 5, 15])}
    for k, (pos, neg) in scores.items():
        ds = [C.PlayedDialogue(f"f{k}-{i}", "jddc", "zh", outcome,
                               [C.PlayedTurn("customer", "negative", "negative", float(s), 3 if s >= 50 else 1)])
              for i, (s, outcome) in enumerate([(s, "dissatisfied") for s in pos] + [(s, "satisfied") for s in neg])]
        (tmp_path / f"fold{k}.played.json").write_text(json.dumps(C.to_json(ds, C.report(ds), {})))
    assert crossfit.main(["--out", str(tmp_path), "--folds", "0,1", "--replay-only"]) == 0
    rep = json.loads((tmp_path / "pooled.json").read_text())["report"]
    jddc = rep["set:jddc"]["dialogue"]
    assert jddc["dialogues"] == 9 and jddc["dissatisfied"] == 3
    assert jddc["auc_max_risk_dissatisfied"] == pytest.approx(C.auc([70, 40, 30], [10, 50, 20, 60, 5, 15]), abs=1e-4)
    assert jddc["satisfied_reaching_yellow"] == pytest.approx(2 / 6, abs=1e-4)
    assert rep["per_fold"] == {"0": {"set:jddc": pytest.approx(C.auc([70, 40], [10, 50, 20]), abs=1e-4)},
                               "1": {"set:jddc": pytest.approx(C.auc([30], [60, 5, 15]), abs=1e-4)}}
    lo, hi = jddc["auc_95_interval"]
    assert lo <= jddc["auc_max_risk_dissatisfied"] <= hi


ANGRY = ["Where is my refund?", "This is unacceptable!!! I have waited three weeks!",
         "I want a manager NOW, I will file a formal complaint", "Worst service ever, I am furious!!!"]
CALM = ["Hello, what are your opening hours?", "Thanks, and where can I find my invoice?", "Great, thank you!"]


def _dialogue(i, texts, outcome):
    d = Dialogue(id=f"h{i}", source="hand", language="en", outcome=outcome)
    for t in texts:
        d.turns.append(DialogueTurn("customer", t))
        d.turns.append(DialogueTurn("agent", "Let me check that for you."))
    return d


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory), capacity=1024,
                 agent_capacity=64)
    ds = [_dialogue(0, ANGRY, "dissatisfied"), _dialogue(1, CALM, "satisfied"),
          _dialogue(2, ANGRY[::-1], "dissatisfied"), _dialogue(3, CALM[:2], "satisfied")]
    with ServiceThread(cfg) as svc:
        return C.play(ds, svc.stub(), keep_indicators=True)


def test_play_answers_every_turn_in_order(played):
    assert [len(p.turns) for p in played] == [8, 6, 8, 4]
    assert [t.speaker for t in played[0].turns[:2]] == ["customer", "agent"]
    assert set(played[0].turns[0].indicators) == set(INDICATORS)


def test_report_ranks_the_angry_dialogues_above_the_calm_ones(played):
    rep = C.report(played)
    d = rep["all"]["dialogue"]
    assert d["dialogues"] == 4 and d["dissatisfied"] == 2 and d["satisfied"] == 2
    assert d["auc_max_risk_dissatisfied"] == 1.0
    sat = [p for p in played if p.outcome == "satisfied"]
    assert d["satisfied_reaching_yellow"] == np.mean([p.max_level >= C.YELLOW for p in sat])
    assert d["dissatisfied_reaching_yellow"] == 1.0
    assert rep["set:hand"]["dialogue"] == {k: v for k, v in d.items()}


def test_policy_fit_gives_a_valid_policy_that_beats_the_start_on_its_data(tmp_path):
    from yujing.service.paths import DEFAULT_POLICY
    from yujing.service.policy import load_policy

    base = F.read_policy(DEFAULT_POLICY)
    rng = np.random.default_rng(0)
    # synthetic fit data: dissatisfied dialogues carry negation, satisfied ones only sentiment noise
    X, starts, dis = [], [], []
    for k in range(60):
        starts.append(len(X))
        bad = k % 2 == 0
        for _ in range(5):
            row = np.zeros(len(INDICATORS))
            row[INDICATORS.index("sentiment_ewma")] = rng.uniform(0.5, 1.0)      # both look negative
            row[INDICATORS.index("neg_share_turns")] = rng.uniform(0.5, 1.0)
            row[INDICATORS.index("negation_share")] = rng.uniform(0.6, 1.0) if bad else 0.0
            X.append(row)
        dis.append(bad)
    dis = np.array(dis)
    data = F.FitData(np.array(X), np.array(starts), dis, ~dis, np.zeros(len(dis), bool))
    w0 = np.array([base["weights"][n] for n in INDICATORS], float)
    w0[INDICATORS.index("negation_share")] = 0.0
    before = F.figures(data, w0, 50, 25, None)
    w = F.fit(data, w0, 50, 25, None, fa_target=0.0)
    after = F.figures(data, w, 50, 25, None)
    assert F.objective(after, 0.0, 0.0) > F.objective(before, 0.0, 0.0)
    assert after.false_alarms == 0.0 and after.detection == 1.0
    assert w[INDICATORS.index("agent_fatigue")] == 0.0
    text = F.rewrite_weights(DEFAULT_POLICY.read_text(), dict(zip(INDICATORS, w.tolist())), "test+fit")
    path = tmp_path / "candidate.toml"
    path.write_text(text)
    pol = load_policy(path)
    assert pol.version == "test+fit"
    assert F.read_policy(path)["weights"]["negation_share"] == pytest.approx(w[INDICATORS.index("negation_share")])


def test_policy_fit_figures_by_set_are_each_sets_own():
    # two sets: in "a" the dissatisfied dialogue scores highest, in "b" the satisfied one does
    n = len(INDICATORS)
    j = INDICATORS.index("negation_share")

    def rows(v):
        r = np.zeros((2, n))
        r[:, j] = v
        return r
    X = np.concatenate([rows(1.0), rows(0.1), rows(0.1), rows(1.0)])
    data = F.FitData(X, np.array([0, 2, 4, 6]), np.array([True, False, True, False]),
                     np.array([False, True, False, True]), np.zeros(4, bool), np.array(["a", "a", "b", "b"]))
    w = np.zeros(n)
    w[j] = 60.0
    by = F.figures_by_set(data, w, 50, 25)
    assert by["a"].auc == 1.0 and by["a"].detection == 1.0 and by["a"].false_alarms == 0.0
    assert by["b"].auc == 0.0 and by["b"].detection == 0.0 and by["b"].false_alarms == 1.0
    assert by["all"].auc == 0.5
    sub = F.subset(data, data.source == "b")
    assert sub.X.shape == (4, n) and sub.starts.tolist() == [0, 2]


def test_calm_requests_figures_count_negatives_and_blue():
    from yujing.training.indomain.calm_requests import figures, one_turn_dialogues

    texts = ["a", "b", "c", "d"]
    ds = one_turn_dialogues("x", texts)
    assert [len(d.turns) for d in ds] == [1, 1, 1, 1] and ds[2].turns[0].text == "c"
    played = [C.PlayedDialogue(d.id, d.source, "en", d.outcome, [C.PlayedTurn("customer", "neutral", lab, s, 1)])
              for d, lab, s in zip(ds, ["negative", "neutral", "negative", "neutral"], [30.0, 10.0, 24.9, 25.0])]
    f = figures(played, texts, top=2)
    assert f["negative"] == 0.5 and f["at_blue_or_above"] == 0.5
    assert f["highest"] == [(30.0, "a"), (25.0, "d")]
