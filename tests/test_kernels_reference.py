"""The CPU kernel against the plain-Python reference recomputed from the full history."""
import numpy as np
import pytest

from yujing.kernels import layout as L
from yujing.kernels.reference import reference
from tests.kernel_cases import default_pf, every_weight_pf, random_history, run_cpu


def assert_outputs_equal(of, oi, ref_of, ref_oi, tol=1e-6):
    for k, name in enumerate(L.INDICATORS):
        np.testing.assert_allclose(of[k], ref_of[k], rtol=tol, atol=tol, err_msg=f"indicator {name}")
    np.testing.assert_allclose(of[L.OF_SCORE], ref_of[L.OF_SCORE], rtol=tol, atol=tol, err_msg="score")
    np.testing.assert_allclose(of[L.OF_REASON_POINTS:L.OF_REASON_POINTS + 3],
                               ref_of[L.OF_REASON_POINTS:L.OF_REASON_POINTS + 3], rtol=tol, atol=tol,
                               err_msg="reason points")
    for row, name in ((L.OI_LEVEL, "level"), (L.OI_PRIORITY, "priority"), (L.OI_ACTIONS, "actions"),
                      (L.OI_CUSTOMER, "customer turns"), (L.OI_TURNS, "turns"),
                      (L.OI_SESSION_TIME, "session time")):
        np.testing.assert_array_equal(oi[row], ref_oi[row], err_msg=name)


# every_weight: each indicator weighs at least 5 points, so each one's risk rule in the score
# (negative part, beyond the SLA, beyond even odds) is checked, not only the default's weights
@pytest.mark.parametrize("seed,batch,weights", [(1, 1, "default"), (2, 7, "default"), (3, 64, "default"),
                                                (4, 1000, "default"), (5, 1, "every_weight"),
                                                (6, 64, "every_weight")])
def test_cpu_kernel_matches_reference(seed, batch, weights):
    rng = np.random.default_rng(seed)
    ti, tf, th = random_history(rng, 600, n_sessions=6, n_agents=3)
    pf = default_pf() if weights == "default" else every_weight_pf()
    of, oi, _, _ = run_cpu(ti, tf, th, pf, batch, n_slots=6, n_agents=3)
    ref_of, ref_oi = reference(ti, tf, th, pf)
    assert_outputs_equal(of, oi, ref_of, ref_oi)
    if weights == "every_weight":
        np.testing.assert_array_equal(oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3],
                                      ref_oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3])
        assert (oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3] == L.OF_DISSATISFACTION).any()   # it scores


def test_every_indicator_is_exercised():
    """The random histories reach non-zero values of every indicator, so the
    comparison above is not vacuous for any of them."""
    rng = np.random.default_rng(7)
    ti, tf, th = random_history(rng, 800, n_sessions=4, n_agents=2)
    ref_of, _ = reference(ti, tf, th, default_pf())
    for k, name in enumerate(L.INDICATORS):
        assert np.any(ref_of[k] != 0), name
