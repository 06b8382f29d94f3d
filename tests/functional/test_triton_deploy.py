"""`yujing models deploy`: a new version goes live only after Triton loaded and checked it."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from conftest_triton import SENTIMENT_KEYWORDS, SENTIMENT_LABELS, requires_triton, write_keyword_artifact
from yujing.service.triton.client import TritonModelClient, serving_version
from yujing.service.triton.deploy import DeployError, deploy_model, deploy_model_async, main
from yujing.service.triton.router import TRITON, ModelRouter

FIVE_LABELS = ("very_negative", "negative", "neutral", "positive", "very_positive")
FIVE_KEYWORDS = {"very_negative": ["投诉", "terrible"], "very_positive": ["谢谢", "great"]}


async def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.triton
@requires_triton
def test_deployed_version_with_a_new_label_set_is_picked_up_by_the_running_router(
        triton_server, model_repo, tmp_path):
    new = write_keyword_artifact(tmp_path / "new-sentiment", "sentiment", FIVE_LABELS, FIVE_KEYWORDS)

    async def go():
        async with ModelRouter(model_repo, triton_server.grpc_url, version_poll_s=0.1) as router:
            before = await router.classify(["谢谢, great"])
            result = await deploy_model_async(new, "sentiment", model_repository=model_repo,
                                              triton_url=triton_server.grpc_url, triton_key=triton_server.key)
            await _until(lambda: router.versions["sentiment"] == result.version, 5, "the router to switch")
            after = await router.classify(["谢谢, great"])
            async with TritonModelClient(triton_server.grpc_url, headers=triton_server.control_headers) as client:
                ready = await client.ready_versions("sentiment")
            return before, result, after, ready

    before, result, after, ready = asyncio.run(go())
    assert (result.version, result.previous_version, result.checked_on_triton) == ("2", "1", True)
    assert result.labels == FIVE_LABELS and ready == ["1", "2"]
    assert serving_version(model_repo, "sentiment") == "2"
    assert (model_repo / "sentiment" / "2" / "artifact" / "model.json").is_file()
    assert before.sentiment.model_version == "1" and before.sentiment.labels == SENTIMENT_LABELS
    assert after.served_by == TRITON and not after.degraded
    assert after.sentiment.model_version == "2" and after.sentiment.labels == FIVE_LABELS
    assert FIVE_LABELS[int(np.argmax(after.sentiment.probs[0]))] == "very_positive"
    assert after.intent.model_version == "1"  # the other model is untouched


@pytest.mark.triton
@requires_triton
def test_broken_artifacts_are_refused_and_the_old_version_keeps_serving(triton_server, model_repo, tmp_path):
    no_meta = tmp_path / "no-meta"
    no_meta.mkdir()
    (no_meta / "weights.bin").write_bytes(b"\0" * 16)
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "model.json").write_text("{not json", encoding="utf-8")
    # Loads here, fails inside Triton's Python stub: refused by the Triton load step.
    triton_only = write_keyword_artifact(tmp_path / "triton-only", "sentiment", SENTIMENT_LABELS,
                                         SENTIMENT_KEYWORDS, fail_in_triton=True)

    async def go():
        errors = []
        async with ModelRouter(model_repo, triton_server.grpc_url, version_poll_s=0.1) as router:
            for path in (no_meta, bad_json, triton_only):
                with pytest.raises(DeployError) as info:
                    await deploy_model_async(path, "sentiment", model_repository=model_repo,
                                             triton_url=triton_server.grpc_url, triton_key=triton_server.key)
                errors.append(str(info.value))
                result = await router.classify(["谢谢"])
                assert (result.served_by, result.sentiment.model_version) == (TRITON, "1"), errors[-1]
            async with TritonModelClient(triton_server.grpc_url, headers=triton_server.control_headers) as client:
                probs, version = await client.infer("sentiment", ["谢谢"], timeout_s=5)
                ready = await client.ready_versions("sentiment")
            return errors, version, ready, router.stats

    errors, version, ready, stats = asyncio.run(go())
    assert "no model.json" in errors[0]
    assert "not valid JSON" in errors[1]
    assert "Triton refused to load sentiment v2" in errors[2] and "fail_in_triton" in errors[2]
    assert "version 2 removed" in errors[2]
    assert version == "1" and ready == ["1"]
    assert sorted(p.name for p in (model_repo / "sentiment").iterdir() if p.name.isdigit()) == ["1"]
    assert serving_version(model_repo, "sentiment") == "1"
    assert not (model_repo / "sentiment" / "serving_version").exists()
    assert stats.triton_failures == 0  # the refused versions never reached the service


def test_deploy_without_triton_checks_in_process_and_switches(model_repo, tmp_path, capsys):
    new = write_keyword_artifact(tmp_path / "new", "sentiment", FIVE_LABELS, FIVE_KEYWORDS)
    assert main([ "deploy", str(new), "--name", "sentiment", "--model-repository", str(model_repo),
                  "--no-triton"]) == 0
    assert "deployed sentiment v2 (was v1)" in capsys.readouterr().out
    assert serving_version(model_repo, "sentiment") == "2"
    assert json.loads((model_repo / "sentiment" / "2" / "artifact" / "model.json").read_text())["labels"] == \
        list(FIVE_LABELS)

    broken = write_keyword_artifact(tmp_path / "broken", "sentiment", SENTIMENT_LABELS, {}, fail_on="ok")
    assert main(["deploy", str(broken), "--name", "sentiment", "--model-repository", str(model_repo),
                 "--no-triton"]) == 1
    assert "fails on the smoke set" in capsys.readouterr().err
    assert serving_version(model_repo, "sentiment") == "2"
    with pytest.raises(DeployError, match="not a model of"):
        deploy_model(new, "no_such_model", model_repository=model_repo, triton_url=None)
