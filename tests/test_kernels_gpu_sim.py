"""The GPU kernels (numba.cuda) under the CUDA simulator agree with the CPU kernels.

Runs in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the simulator must be chosen before
numba.cuda is first imported, and the rest of the suite uses the real CPU target).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from yujing.kernels import layout as L
    from yujing.kernels.update_gpu import update_batch, group_by
    from tests.kernel_cases import every_weight_pf, random_history, run_cpu

    seed, n, n_sessions, n_agents, batch = map(int, sys.argv[1:6])
    rng = np.random.default_rng(seed)
    ti, tf, th = random_history(rng, n, n_sessions=n_sessions, n_agents=n_agents)
    pf = every_weight_pf()
    of_cpu, oi_cpu, s_cpu, a_cpu = run_cpu(ti, tf, th, pf, batch, n_sessions, n_agents)

    s = L.new_session_arrays(n_sessions)
    a = L.new_agent_arrays(n_agents)
    ofs, ois = [], []
    for lo in range(0, n, batch):
        b_ti, b_tf, b_th = ti[:, lo:lo+batch].copy(), tf[:, lo:lo+batch].copy(), th[lo:lo+batch].copy()
        m = b_ti.shape[1]
        of = np.zeros((L.OF_ROWS, m)); oi = np.zeros((L.OI_ROWS, m), np.int64)
        update_batch(s["sf"], s["si"], s["sh"], s["sc"], s["sb"], s["sw"], a["ai"], a["aw"],
                     b_ti, b_tf, b_th, pf, np.zeros(m), of, oi)
        ofs.append(of); ois.append(oi)
    of_gpu, oi_gpu = np.concatenate(ofs, 1), np.concatenate(ois, 1)
    result = {
        "max_abs_diff_of": float(np.max(np.abs(of_gpu - of_cpu))),
        "oi_equal": bool(np.array_equal(oi_gpu, oi_cpu)),
        "state_equal": {k: bool(np.allclose(s[k], s_cpu[k], rtol=1e-6, atol=1e-6)) for k in s},
        "agent_equal": {k: bool(np.array_equal(a[k], a_cpu[k])) for k in a},
        "max_turns_same_session_in_a_batch": int(max(
            np.bincount(ti[L.T_SLOT, lo:lo+batch]).max() for lo in range(0, n, batch))),
    }
    print(json.dumps(result))
""")


def run_sim(*args):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("seed,n,n_sessions,n_agents,batch", [
    (11, 160, 4, 2, 40),    # ~10 turns of each session in every batch: ordering inside a thread
    (12, 120, 30, 5, 120),  # one batch, many sessions: many threads
    (13, 90, 3, 3, 1),      # one turn per launch
])
def test_gpu_kernels_match_cpu_under_simulator(seed, n, n_sessions, n_agents, batch):
    r = run_sim(seed, n, n_sessions, n_agents, batch)
    assert r["max_abs_diff_of"] <= 1e-6, r
    assert r["oi_equal"], r
    assert all(r["state_equal"].values()), r
    assert all(r["agent_equal"].values()), r
    if batch > 1:
        assert r["max_turns_same_session_in_a_batch"] > 1  # the case that could race
