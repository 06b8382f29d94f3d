"""pytest-benchmark version of ``yujing bench peer`` at a small size (opt-in:
``pytest --run-benchmark tests/bench``): the same log through the CPU kernel and the
polars query, outputs asserted equal to 1e-6 on every indicator both compute."""
import numpy as np
import pytest

pytestmark = pytest.mark.benchmark_suite

TURNS, SESSIONS = 100_000, 2_000


@pytest.fixture(scope="module")
def log():
    from yujing.loadtest.bench.peer import generate_log, to_frame
    from yujing.service.policy import load_policy

    pf = load_policy().pf
    ti, tf, th = generate_log(TURNS, SESSIONS, seed=0)
    return pf, ti, tf, th, to_frame(ti, tf)


@pytest.fixture(scope="module")
def results():
    return {}


def test_peer_kernel(benchmark, log, results):
    from yujing.loadtest.bench.peer import run_kernel

    pf, ti, tf, th, _ = log
    run_kernel(ti[:, :4096], tf[:, :4096], th[:4096], pf, 4096, SESSIONS)  # compile
    _, of = benchmark.pedantic(run_kernel, args=(ti, tf, th, pf, 4096, SESSIONS), rounds=5, iterations=1)
    results["kernel"] = (of, benchmark.stats.stats.min)
    benchmark.extra_info["turns_per_s"] = TURNS / benchmark.stats.stats.min


def test_peer_polars(benchmark, log, results):
    from yujing.loadtest.bench.peer import compare, polars_query

    pf, ti, tf, th, df = log
    polars_query(df, pf).collect()
    frame = benchmark.pedantic(lambda: polars_query(df, pf).collect(), rounds=5, iterations=1)
    benchmark.extra_info["turns_per_s"] = TURNS / benchmark.stats.stats.min
    if "kernel" not in results:
        from yujing.loadtest.bench.peer import run_kernel
        results["kernel"] = (run_kernel(ti, tf, th, pf, 4096, SESSIONS)[1], None)
    diffs = compare(results["kernel"][0], frame)
    assert max(diffs.values()) <= 1e-6, diffs
    if results["kernel"][1]:
        benchmark.extra_info["ratio_kernel_over_polars"] = benchmark.stats.stats.min / results["kernel"][1]

