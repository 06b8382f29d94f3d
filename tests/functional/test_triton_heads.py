"""The combined model ``heads`` on a real tritonserver: the same answers as one call per
model, one call per batch, the fallback when Triton dies, deploys that reach it."""
from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest

from conftest_triton import (
    COMMITTED_REPO, INTENT_KEYWORDS, INTENT_LABELS, SENTIMENT_KEYWORDS, SENTIMENT_LABELS, make_model_repo,
    requires_triton, start_triton, write_keyword_artifact,
)
from yujing.service.triton.client import TritonClientError, TritonModelClient, serving_version, set_serving_version
from yujing.service.triton.deploy import DeployError, deploy_model_async
from yujing.service.triton.launcher import TritonServer
from yujing.service.triton.router import IN_PROCESS, TRITON, ModelRouter

pytestmark = [pytest.mark.triton, requires_triton]

TEXTS = ["你们的服务太差了，我要投诉！", "谢谢，问题解决了，很满意", "Thanks, that was great.",
         "I am angry, cancel my account", "查一下账单", "", "where's my refund??? order #12345"]
FIVE_LABELS = ("very_negative", "negative", "neutral", "positive", "very_positive")


async def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.02)


def _same(a, b, served_by=TRITON) -> None:
    """Two ClassifyResults with the same content (names, versions, labels, probabilities)."""
    assert (a.served_by, a.degraded) == (b.served_by, b.degraded) == (served_by, served_by != TRITON)
    for x, y in ((a.sentiment, b.sentiment), (a.intent, b.intent), (a.emotion, b.emotion),
                 (a.dissatisfaction, b.dissatisfaction)):
        if x is None or y is None:
            assert x is y is None
            continue
        assert (x.model_name, x.model_version, x.labels, x.served_by, x.languages) == \
            (y.model_name, y.model_version, y.labels, y.served_by, y.languages)
        np.testing.assert_array_equal(x.probs, y.probs)


def test_heads_answers_what_one_call_per_model_answers_for_the_trained_models():
    with TritonServer(COMMITTED_REPO, ["sentiment", "emotion", "intent", "dissatisfaction", "heads"], allow_http=False,
                      allow_metrics=False, startup_timeout_s=120) as server:
        async def go():
            results = {}
            for combined in ("heads", None):
                async with ModelRouter(COMMITTED_REPO, server.grpc_url, emotion_model="emotion",
                                       dissatisfaction_model="dissatisfaction", deadline_s=30,
                                       combined_model=combined) as router:
                    results[combined] = ((router.triton_calls, router.model_calls_per_batch),
                                         await router.classify(TEXTS),
                                         await router.classify(TEXTS * 40), await router.classify([]))
            async with ModelRouter(COMMITTED_REPO, emotion_model="emotion",
                                   dissatisfaction_model="dissatisfaction") as local:
                results["in-process"] = await local.classify(TEXTS)
            return results

        results = asyncio.run(go())
    assert results["heads"][0] == ("combined:heads", 1) and results[None][0] == ("per-model", 4)
    assert results["heads"][1].dissatisfaction.labels == ("other", "dissatisfied")
    for one, per_model in zip(results["heads"][1:], results[None][1:]):
        _same(one, per_model)
    local, heads = results["in-process"], results["heads"][1]
    for x, y in ((local.sentiment, heads.sentiment), (local.intent, heads.intent), (local.emotion, heads.emotion),
                 (local.dissatisfaction, heads.dissatisfaction)):
        assert (x.model_name, x.model_version, x.labels) == (y.model_name, y.model_version, y.labels)
        np.testing.assert_array_equal(x.probs, y.probs)


@pytest.mark.parametrize("over", ["grpc", "http"])
def test_heads_refuses_a_version_it_did_not_load_and_answers_the_other_requests(triton_server, over):
    async def go():
        http_url = triton_server.http_url if over == "http" else None
        async with TritonModelClient(triton_server.grpc_url, http_url=http_url) as client:
            return await asyncio.gather(
                *(client.infer_heads("heads", [f"谢谢 {k}"], {"sentiment": "1", "intent": "1"}) for k in range(8)),
                client.infer_heads("heads", ["谢谢"], {"sentiment": "7", "intent": "1"}),
                client.infer_heads("heads", ["谢谢"], {"emotion": ""}),
                return_exceptions=True)

    *good, unknown_version, absent_member = asyncio.run(go())
    for answer in good:
        assert {m: v for m, (_, v) in answer.items()} == {"sentiment": "1", "intent": "1"}
        assert answer["sentiment"][0].shape == (1, 3) and answer["intent"][0].shape == (1, 4)
    assert isinstance(unknown_version, TritonClientError) and unknown_version.status == "NOT_FOUND"
    assert "has not loaded sentiment v7" in str(unknown_version)
    assert isinstance(absent_member, TritonClientError) and "no 'emotion'" in str(absent_member)


@pytest.mark.parametrize("over", ["grpc", "http"])
def test_batches_go_through_heads_and_fall_back_when_triton_dies(triton_server, model_repo, over):
    async def go():
        http_url = triton_server.http_url if over == "http" else None
        async with ModelRouter(model_repo, triton_server.grpc_url, deadline_s=2.0, probe_interval_s=0.1,
                               triton_http_url=http_url) as router:
            assert router.triton_calls == "combined:heads"
            before = await router.classify(TEXTS)
            triton_server.kill()
            down = await router.classify(TEXTS)
            assert router.served_by == IN_PROCESS and router.model_calls_per_batch == 1  # one in-process pass
            await asyncio.get_running_loop().run_in_executor(None, triton_server.start)
            assert await router.wait_for(TRITON, 20), router.stats
            return before, down, await router.classify(TEXTS), router.triton_calls

    before, down, after, calls = asyncio.run(go())
    assert before.served_by == after.served_by == TRITON and calls == "combined:heads"
    assert (down.served_by, down.degraded) == (IN_PROCESS, True)
    for result in (down, after):
        for x, y in ((result.sentiment, before.sentiment), (result.intent, before.intent)):
            assert (x.model_name, x.model_version, x.labels) == (y.model_name, y.model_version, y.labels)
            np.testing.assert_array_equal(x.probs, y.probs)


def test_without_heads_or_with_a_model_heads_lacks_the_router_calls_each_model(tmp_path):
    repo = make_model_repo(tmp_path, {
        "sentiment": dict(labels=SENTIMENT_LABELS, keywords=SENTIMENT_KEYWORDS),
        "intent": dict(labels=INTENT_LABELS, keywords=INTENT_KEYWORDS),
    })
    shutil.copytree(repo / "sentiment", repo / "sentiment_alt")
    cfg = repo / "sentiment_alt" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "sentiment"', 'name: "sentiment_alt"'))
    with start_triton(repo, ["sentiment", "sentiment_alt", "intent"]) as server:
        async def go(**kw):
            async with ModelRouter(repo, server.grpc_url, **kw) as router:
                return router.triton_calls, await router.classify(TEXTS)

        no_heads = asyncio.run(go())
        server.load_model("heads")
        lacking = asyncio.run(go(sentiment_model="sentiment_alt"))
        with_heads = asyncio.run(go())
    assert no_heads[0] == "per-model" and lacking[0] == "per-model" and with_heads[0] == "combined:heads"
    _same(no_heads[1], with_heads[1])
    assert lacking[1].sentiment.model_name == "sentiment_alt" and lacking[1].served_by == TRITON
    np.testing.assert_array_equal(lacking[1].sentiment.probs, with_heads[1].sentiment.probs)


def test_a_deployed_version_is_served_through_heads(triton_server, model_repo, tmp_path):
    new = write_keyword_artifact(tmp_path / "new", "sentiment", FIVE_LABELS,
                                 {"very_negative": ["投诉"], "very_positive": ["谢谢"]})

    set_serving_version(model_repo, "sentiment", 1)  # else "the newest" would serve v2 at once

    async def go():
        async with ModelRouter(model_repo, triton_server.grpc_url, version_poll_s=0.1) as router:
            async with TritonModelClient(triton_server.grpc_url) as client:
                with pytest.raises(TritonClientError, match="has not loaded sentiment v2"):
                    await client.infer_heads("heads", ["谢谢"], {"sentiment": "2"})
                result = await deploy_model_async(new, "sentiment", model_repository=model_repo, switch=False,
                                                  triton_url=triton_server.grpc_url, triton_key=triton_server.key)
                # checked and loaded in heads beside v1; the service still asks for v1
                held = await client.infer_heads("heads", ["谢谢"], {"sentiment": "2"})
                still = await router.classify(["谢谢"])
                result = await deploy_model_async(new, "sentiment", model_repository=model_repo,
                                                  triton_url=triton_server.grpc_url, triton_key=triton_server.key)
                await _until(lambda: router.versions["sentiment"] == result.version, 5, "the router to switch")
                after = await router.classify(["谢谢"])
                return held, still, result, after, router.triton_calls, router.stats

    held, still, result, after, calls, stats = asyncio.run(go())
    assert held["sentiment"][1] == "2" and held["sentiment"][0].shape == (1, 5)
    assert still.sentiment.model_version == "1" and still.served_by == TRITON
    assert result.version == "3" and result.checked_on_triton
    assert calls == "combined:heads" and stats.triton_failures == 0
    assert after.served_by == TRITON and after.sentiment.model_version == "3"
    assert after.sentiment.labels == FIVE_LABELS
    assert FIVE_LABELS[int(np.argmax(after.sentiment.probs[0]))] == "very_positive"


def test_a_version_that_heads_refuses_is_rolled_back_in_heads_too(triton_server, model_repo, tmp_path):
    """A new version that its own model loads and answers, but that heads cannot load:
    refused, removed, heads reloaded without it; the service goes on through heads at v1."""
    new = write_keyword_artifact(tmp_path / "new", "sentiment", FIVE_LABELS,
                                 {"very_negative": ["投诉"], "very_positive": ["谢谢"]}, fail_in_heads=True)

    async def go():
        async with ModelRouter(model_repo, triton_server.grpc_url, version_poll_s=0.1) as router:
            before = await router.classify(TEXTS)
            with pytest.raises(DeployError) as info:
                await deploy_model_async(new, "sentiment", model_repository=model_repo,
                                         triton_url=triton_server.grpc_url, triton_key=triton_server.key)
            async with TritonModelClient(triton_server.grpc_url, headers=triton_server.control_headers) as client:
                ready = await client.ready_versions("sentiment")
                heads_ready = await client.is_model_ready("heads")
                with pytest.raises(TritonClientError, match="has not loaded sentiment v2") as refused:
                    await client.infer_heads("heads", ["谢谢"], {"sentiment": "2"})
            await asyncio.sleep(0.3)  # a few version polls: nothing to switch to
            after = await router.classify(TEXTS)
            return str(info.value), ready, heads_ready, refused.value.status, before, after, router

    error, ready, heads_ready, status, before, after, router = asyncio.run(go())
    assert "Triton refused to reload heads with sentiment v2" in error and "fail_in_heads" in error
    assert "version 2 removed" in error and "Triton reloaded the previous versions" in error
    assert ready == ["1"] and heads_ready and status == "NOT_FOUND"
    assert serving_version(model_repo, "sentiment") == "1" and not (model_repo / "sentiment" / "2").exists()
    assert router.triton_calls == "combined:heads" and router.stats.triton_failures == 0
    _same(before, after)


def test_the_dissatisfaction_model_is_deployed_through_heads(tmp_path):
    """The trained dissatisfaction model beside test sentiment and intent models: heads
    answers it, a new version (the same weights, as v2) is checked through heads and served."""
    repo = make_model_repo(tmp_path)
    shutil.copytree(COMMITTED_REPO / "dissatisfaction", repo / "dissatisfaction",
                    ignore=shutil.ignore_patterns("serving_version"))
    texts = ["你们这什么破服务，我要投诉！", "好的谢谢", "I want a refund"]
    server = start_triton(repo)
    try:
        async def go():
            async with ModelRouter(repo, server.grpc_url, dissatisfaction_model="dissatisfaction",
                                   version_poll_s=0.1, deadline_s=30) as router:
                before = await router.classify(texts)
                calls = router.triton_calls
                result = await deploy_model_async(COMMITTED_REPO / "dissatisfaction" / "1" / "artifact",
                                                  "dissatisfaction", model_repository=repo,
                                                  triton_url=server.grpc_url, triton_key=server.key)
                await _until(lambda: router.versions["dissatisfaction"] == result.version, 5, "the router to switch")
                return before, calls, result, await router.classify(texts), router.triton_calls

        before, calls, result, after, calls_after = asyncio.run(go())
    finally:
        server.close()
    assert calls == calls_after == "combined:heads"
    assert result.version == "2" and result.previous_version == "1" and result.checked_on_triton
    assert before.dissatisfaction.model_version == "1" and after.dissatisfaction.model_version == "2"
    assert after.served_by == TRITON and after.dissatisfaction.labels == ("other", "dissatisfied")
    np.testing.assert_array_equal(before.dissatisfaction.probs, after.dissatisfaction.probs)
    assert before.dissatisfaction.probs[0, 1] > 0.5 > before.dissatisfaction.probs[1, 1]
