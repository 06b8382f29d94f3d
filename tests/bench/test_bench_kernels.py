"""pytest-benchmark version of ``yujing bench kernels`` at small sizes (opt-in:
``pytest --run-benchmark tests/bench``). Each test runs in a few seconds."""
import numpy as np
import pytest

from yujing.kernels import layout as L

pytestmark = pytest.mark.benchmark_suite


@pytest.fixture(scope="module")
def pf():
    from yujing.service.policy import load_policy

    return load_policy().pf


@pytest.mark.parametrize("sessions", [10_000, 262_144])
@pytest.mark.parametrize("batch", [256, 4096, 65536])
def test_kernel_updates(benchmark, pf, sessions, batch):
    from yujing.kernels.update_cpu import CpuKernels
    from yujing.loadtest.bench import _init_table, make_batch

    rng = np.random.default_rng(0)
    k = CpuKernels()
    t_ms = 1_700_000_000_000
    s, a = _init_table(k, sessions, rng, pf, t_ms)
    batches = [make_batch(rng, sessions, batch, t_ms + 1000 * (j + 1), pf) for j in range(8)]
    ti0 = batches[0][0].copy()
    ti0[L.T_NEW_AGENT] = 1
    k.apply(s, a, ti0, batches[0][1], batches[0][2], pf)
    it = iter(range(10**9))

    def step():
        ti, tf, th = batches[next(it) % len(batches)]
        k.apply(s, a, ti, tf, th, pf)

    benchmark.pedantic(step, rounds=max(5, 200_000 // batch), iterations=1, warmup_rounds=1)
    benchmark.extra_info["updates_per_s"] = batch / benchmark.stats.stats.mean
    assert np.isfinite(s["sf"]).all()


def test_stream_copy(benchmark):
    a = np.ones(1 << 24)
    b = np.empty_like(a)
    benchmark(np.copyto, b, a)
    benchmark.extra_info["gb_per_s"] = 2 * a.nbytes / benchmark.stats.stats.min / 1e9
