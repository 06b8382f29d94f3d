"""The peer benchmark's correctness check, in the default suite at a small size: the plain
reference, the CPU kernel and the polars replay of ``yujing bench peer`` agree on the same
synthetic log (the benchmark suite times the same code at 100,000 turns)."""
import numpy as np


def test_peer_reference_agrees():
    """The plain reference on a small sample agrees with kernel (all 18) and polars (16)."""
    from yujing.kernels import layout as L
    from yujing.kernels.reference import reference
    from yujing.loadtest.bench.peer import POLARS_INDICATORS, generate_log, polars_query, run_kernel, to_frame
    from yujing.service.policy import load_policy

    pf = load_policy().pf
    ti, tf, th = generate_log(800, 20, seed=5)
    rof, _ = reference(ti, tf, th, pf)
    _, kof = run_kernel(ti, tf, th, pf, 256, 20)
    assert np.max(np.abs(kof[:L.N_INDICATORS] - rof[:L.N_INDICATORS])) <= 1e-6
    fr = polars_query(to_frame(ti, tf), pf).collect()
    for name in POLARS_INDICATORS:
        assert np.max(np.abs(fr[name].to_numpy() - rof[L.IND[name]])) <= 1e-6, name
