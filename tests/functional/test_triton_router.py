"""ModelRouter against a real tritonserver: Triton when healthy, in-process when not."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from conftest_triton import (
    INTENT_LABELS, SENTIMENT_KEYWORDS, SENTIMENT_LABELS, make_model_repo, requires_triton, start_triton,
)
from yujing.service.models.artifact import load_model
from yujing.service.triton.launcher import free_port
from yujing.service.triton.router import IN_PROCESS, TRITON, ModelRouter

TEXTS = ["你们的服务太差了，我要投诉！", "谢谢，很满意", "Thanks, great help.", "cancel my bill now"]


async def _until(predicate, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` (each 20 ms) for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.02)


def _expected(model_repo):
    return {m: load_model(model_repo / m / "1" / "artifact").predict_proba(TEXTS) for m in ("sentiment", "intent")}


def _check(result, expected):
    assert result.sentiment.labels == SENTIMENT_LABELS and result.intent.labels == INTENT_LABELS
    assert (result.sentiment.model_version, result.intent.model_version) == ("1", "1")
    np.testing.assert_allclose(result.sentiment.probs, expected["sentiment"], atol=1e-6)
    np.testing.assert_allclose(result.intent.probs, expected["intent"], atol=1e-6)
    assert result.degraded == (result.served_by == IN_PROCESS)
    assert result.sentiment.served_by == result.intent.served_by == result.served_by


def test_in_process_mode_needs_no_triton(model_repo):
    async def go():
        async with ModelRouter(model_repo) as router:
            return router.served_by, await router.classify(TEXTS), await router.classify([])

    served_by, result, empty = asyncio.run(go())
    assert served_by == IN_PROCESS
    assert result.served_by == IN_PROCESS and not result.degraded
    np.testing.assert_allclose(result.sentiment.probs, _expected(model_repo)["sentiment"])
    assert empty.sentiment.probs.shape == (0, 3) and empty.intent.probs.shape == (0, 4)


@pytest.mark.triton
@requires_triton
def test_every_batch_is_answered_while_triton_dies_and_comes_back(triton_server, model_repo):
    expected = _expected(model_repo)
    changes = []

    async def go():
        router = ModelRouter(model_repo, triton_server.grpc_url, deadline_s=2.0, probe_interval_s=0.1,
                             on_state_change=lambda old, new, why: changes.append(new))
        async with router:
            assert router.served_by == TRITON
            results, stop = [], asyncio.Event()

            async def flow():  # the micro-batcher: one batch after another
                while not stop.is_set():
                    results.append(await router.classify(TEXTS))
                    await asyncio.sleep(0.005)

            flows = [asyncio.create_task(flow()) for _ in range(3)]
            await _until(lambda: len(results) >= 10, 10, "batches on Triton")
            triton_server.kill()
            assert await router.wait_for(IN_PROCESS, 10)
            n = len(results)
            await _until(lambda: len(results) >= n + 10, 10, "batches while Triton is down")
            await asyncio.get_running_loop().run_in_executor(None, triton_server.start)
            assert await router.wait_for(TRITON, 20), router.stats
            n = len(results)
            await _until(lambda: len(results) >= n + 10, 10, "batches after Triton came back")
            stop.set()
            await asyncio.gather(*flows)  # a batch that raised would raise here
            return results, router.stats

    results, stats = asyncio.run(go())
    for result in results:
        _check(result, expected)
    kinds = [r.served_by for r in results]
    assert kinds[0] == TRITON and kinds[-1] == TRITON and IN_PROCESS in kinds
    assert changes == [TRITON, IN_PROCESS, TRITON]  # at start, Triton killed, Triton back
    assert stats.breaker_opened == 1 and stats.breaker_closed == 2  # once at start, once after the probe
    # The breaker kept Triton out of the way: few batches paid for a Triton failure.
    assert stats.triton_failures <= 3


@pytest.mark.triton
@requires_triton
def test_a_router_started_before_triton_switches_to_it_by_itself(model_repo):
    port = free_port()

    async def go():
        async with ModelRouter(model_repo, f"127.0.0.1:{port}", probe_interval_s=0.1) as router:
            before = await router.classify(TEXTS)
            server = await asyncio.get_running_loop().run_in_executor(
                None, lambda: start_triton(model_repo, grpc_port=port))
            try:
                assert await router.wait_for(TRITON, 20), router.stats
                after = await router.classify(TEXTS)
            finally:
                server.close()
            return before, after

    before, after = asyncio.run(go())
    assert (before.served_by, before.degraded) == (IN_PROCESS, True)
    assert (after.served_by, after.degraded) == (TRITON, False)


@pytest.mark.triton
@requires_triton
def test_a_slow_triton_is_bypassed_after_the_deadline(tmp_path):
    repo = make_model_repo(tmp_path, {
        "sentiment": dict(labels=SENTIMENT_LABELS, keywords=SENTIMENT_KEYWORDS, sleep_on="SLOW", sleep_s=3.0,
                          sleep_in_triton_only=True),
        "intent": dict(labels=INTENT_LABELS, keywords={}),
    })
    changes = []
    with start_triton(repo) as server:
        async def go():
            async with ModelRouter(repo, server.grpc_url, deadline_s=0.2, probe_interval_s=0.1,
                                   on_state_change=lambda old, new, why: changes.append((new, why))) as router:
                t0 = time.perf_counter()
                slow = await router.classify(["SLOW"])
                waited = time.perf_counter() - t0
                recovered = await router.wait_for(TRITON, 10)
                return slow, waited, recovered, await router.classify(["谢谢"]), router.stats

        slow, waited, recovered, later, stats = asyncio.run(go())
    assert slow.degraded and slow.served_by == IN_PROCESS
    assert waited < 2.0  # the 200 ms deadline and slack, not Triton's 3 s
    assert stats.breaker_opened == 1
    assert changes[1][0] == IN_PROCESS and "200 ms deadline" in changes[1][1]
    assert recovered and later.served_by == TRITON and not later.degraded
