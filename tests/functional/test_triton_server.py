"""A real tritonserver (the nvidia-pytriton wheel's) on our model repository, real gRPC."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest_triton import (
    COMMITTED_REPO, INTENT_LABELS, SENTIMENT_LABELS, TESTS_DIR, make_model_repo, requires_triton, start_triton,
    write_keyword_artifact,
)
from yujing.service.models.artifact import load_model
from yujing.service.triton.client import TritonClientError, TritonModelClient, read_labels
from yujing.service.triton.deploy import MODEL_PY
from yujing.service.triton.heads import members_of
from yujing.service.triton.launcher import TritonServer, TritonServerError, discover_models

pytestmark = [pytest.mark.triton, requires_triton]

TEXTS = ["你们的服务太差了，我要投诉！", "谢谢，问题解决了，很满意", "Thanks, that was great.",
         "I am angry, cancel my account", "查一下账单"]


def test_committed_model_py_is_the_one_deploy_writes():
    for model in ("sentiment", "intent", "intent_banking77"):
        assert (COMMITTED_REPO / model / "1" / "model.py").read_text() == MODEL_PY
        config = (COMMITTED_REPO / model / "config.pbtxt").read_text()
        assert f'name: "{model}"' in config and "KIND_CPU" in config


def test_serves_zh_and_en_texts_with_the_artifacts_probabilities(triton_server, model_repo):
    local = load_model(model_repo / "sentiment" / "1" / "artifact")

    async def go():
        async with TritonModelClient(triton_server.grpc_url, model_repo) as client:
            assert await client.is_server_ready()
            assert await client.is_model_ready("sentiment", "1")
            probs, version = await client.infer("sentiment", TEXTS, timeout_s=5)
            iprobs, iversion = await client.infer("intent", TEXTS, timeout_s=5)
            meta = await client.model_metadata("intent")
            return probs, version, iprobs, iversion, meta, client.labels("intent", iversion)

    probs, version, iprobs, iversion, meta, intent_labels = asyncio.run(go())
    assert (version, iversion) == ("1", "1")
    assert probs.dtype == np.float32 and probs.shape == (len(TEXTS), len(SENTIMENT_LABELS))
    assert iprobs.shape == (len(TEXTS), len(INTENT_LABELS)) and intent_labels == INTENT_LABELS
    np.testing.assert_allclose(probs, local.predict_proba(TEXTS), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert SENTIMENT_LABELS[probs[0].argmax()] == "negative"
    assert SENTIMENT_LABELS[probs[1].argmax()] == "positive"
    assert meta["name"] == "intent" and meta["outputs"][0]["name"] == "PROBABILITIES"


def test_batch_larger_than_max_batch_size_is_split(triton_server, model_repo):
    texts = [f"text {i} 谢谢" for i in range(2500)]

    async def go():
        async with TritonModelClient(triton_server.grpc_url, max_batch_size=1024) as client:
            return await client.infer("sentiment", texts, timeout_s=10)

    probs, version = asyncio.run(go())
    assert probs.shape == (2500, 3) and version == "1"
    np.testing.assert_allclose(probs[0], probs[-1])


def test_each_models_own_max_batch_size_is_respected(tmp_path):
    """The transformer models take at most 64 texts per request; the client asks Triton each
    model's max_batch_size instead of sending its own (larger) batches."""
    repo = make_model_repo(tmp_path)
    cfg = repo / "sentiment" / "config.pbtxt"
    text = cfg.read_text(encoding="utf-8")
    assert "max_batch_size: 1024" in text
    cfg.write_text(text.replace("max_batch_size: 1024", "max_batch_size: 8"), encoding="utf-8")
    texts = [f"text {i} 谢谢" for i in range(100)]
    with start_triton(repo) as server:
        async def go():
            async with TritonModelClient(server.grpc_url) as client:     # default: up to 1024
                return await client.infer("sentiment", texts, timeout_s=10), await client.infer(
                    "intent", texts, timeout_s=10)
        (s_probs, _), (i_probs, _) = asyncio.run(go())
    assert s_probs.shape == (100, 3) and i_probs.shape[0] == 100


def test_eval_scorer_answers_in_the_callers_order(triton_server, model_repo):
    """`yujing models eval --triton-url` sends texts sorted by length (less padding) in
    requests of the model's max_batch_size: the rows must come back where the caller put them."""
    from yujing.training.evaluate import triton_scorer
    texts = [t * k for k in (9, 1, 4) for t in TEXTS] * 30          # 450 texts, lengths shuffled
    probs = triton_scorer(triton_server.grpc_url, "sentiment")(texts)
    local = load_model(model_repo / "sentiment" / "1" / "artifact").predict_proba(texts)
    np.testing.assert_allclose(probs, local, atol=1e-6)


def test_bad_utf8_request_is_answered_with_an_error_not_a_crash(triton_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        bad = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"\xff\xfe"], [b"ok"]], dtype=object))
        with pytest.raises(Exception, match="not valid UTF-8"):
            client.infer("sentiment", [bad])
        good = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        good.set_data_from_numpy(np.array([["谢谢".encode()]], dtype=object))
        assert client.infer("sentiment", [good]).as_numpy("PROBABILITIES").shape == (1, 3)
    finally:
        client.close()


def test_model_failure_on_one_request_spares_the_others(tmp_path):
    from conftest_triton import SENTIMENT_KEYWORDS, make_model_repo
    repo = make_model_repo(tmp_path, {"sentiment": dict(labels=SENTIMENT_LABELS, keywords=SENTIMENT_KEYWORDS,
                                                        fail_on="BOOM", sleep_on="WAIT", sleep_s=1.0)})
    with start_triton(repo) as server:
        async def go():
            async with TritonModelClient(server.grpc_url) as client:
                # "WAIT" holds the model instance so the next requests queue into one batch.
                first = asyncio.create_task(client.infer("sentiment", ["WAIT"], timeout_s=5))
                await asyncio.sleep(0.1)
                rest = [client.infer("sentiment", [t], timeout_s=5) for t in ("ok", "BOOM", "谢谢", "fine")]
                return [await first, *await asyncio.gather(*rest, return_exceptions=True)]

        results = asyncio.run(go())
        stats = _inference_stats(server, "sentiment")
    # The four late requests were one execution, which the BOOM failed only in part.
    assert stats["execution_count"] < 5, stats
    assert isinstance(results[2], TritonClientError) and "BOOM" in str(results[2])
    for r in (results[0], results[1], results[3], results[4]):
        assert isinstance(r, tuple) and r[0].shape == (1, 3)


def _inference_stats(server, model):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    return {"execution_count": int(stats.get("execution_count", 0)),
            "inference_count": int(stats.get("inference_count", 0))}


def test_labels_come_from_the_repository(model_repo):
    assert read_labels(model_repo, "intent", "1") == INTENT_LABELS
    (model_repo / "intent" / "1" / "artifact" / "model.json").unlink()
    assert read_labels(model_repo, "intent") == INTENT_LABELS  # labels.txt beside the config


def test_a_model_that_cannot_load_fails_start_with_the_log_tail(model_repo):
    write_keyword_artifact(model_repo / "sentiment" / "1" / "artifact", "sentiment", SENTIMENT_LABELS, {},
                           fail_load=True)
    server = TritonServer(model_repo, ["sentiment"], allow_http=False, allow_metrics=False,
                          env={"YUJING_LOADER_MODULES": "conftest_triton"},
                          extra_pythonpath=[TESTS_DIR], startup_timeout_s=60)
    with pytest.raises(TritonServerError, match="marked fail_load"):
        server.start()
    assert not server.is_running()
    server.close()


def test_stop_leaves_no_process_behind(model_repo):
    server = start_triton(model_repo, ["sentiment"])
    pid = server.pid
    assert server.is_ready()
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the process group (tritonserver + Python stubs) is gone
    server.close()


def test_tritonserver_dies_with_the_process_that_started_it(model_repo):
    # The owner is SIGKILLed (no atexit, no stop()): PR_SET_PDEATHSIG must take the server down.
    script = (
        "import sys, time\n"
        f"sys.path[:0] = [{str(TESTS_DIR)!r}, {str(TESTS_DIR.parent)!r}]\n"
        "from conftest_triton import start_triton\n"
        f"server = start_triton(__import__('pathlib').Path({str(model_repo)!r}), ['sentiment'])\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        # the wrapper exec'd the server itself: the pid we hold is tritonserver's
        assert os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "tritonserver"
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid), "tritonserver outlived the process that started it"
    finally:
        owner.kill()
        owner.wait(10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_discover_models_skips_models_without_artifacts(model_repo):
    shutil.copytree(COMMITTED_REPO / "intent_banking77", model_repo / "intent_banking77",
                    ignore=shutil.ignore_patterns("artifact"))
    assert discover_models(model_repo) == ["intent", "sentiment", "heads"]
    shutil.rmtree(model_repo / "intent")
    shutil.rmtree(model_repo / "sentiment")
    assert discover_models(model_repo) == []  # heads alone, without its members, cannot load


@pytest.mark.skipif(not any(COMMITTED_REPO.glob("*/*/artifact/model.json")),
                    reason="the trainer's artifacts are not in model_repo/ yet")
def test_committed_repository_serves_the_trainers_artifacts():
    models = discover_models(COMMITTED_REPO)
    assert "heads" in models
    singles = [m for m in models if not members_of(COMMITTED_REPO / m)]
    with TritonServer(COMMITTED_REPO, models, allow_http=False, allow_metrics=False,
                      startup_timeout_s=120) as server:
        async def go():
            async with TritonModelClient(server.grpc_url, COMMITTED_REPO) as client:
                single = {m: (await client.infer(m, TEXTS, timeout_s=60), client) for m in singles}
                heads = await client.infer_heads("heads", TEXTS, {m: "" for m in members_of(COMMITTED_REPO / "heads")},
                                                 timeout_s=60)
                return single, heads

        answers, heads = asyncio.run(go())
    for model, ((probs, version), client) in answers.items():
        labels = client.labels(model, version)
        assert probs.shape == (len(TEXTS), len(labels)), model
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert sorted(heads) == ["dissatisfaction", "emotion", "intent", "sentiment"]
    for model, (probs, version) in heads.items():  # heads answers each member's serving version
        assert version == answers[model][0][1], model
        np.testing.assert_array_equal(probs, answers[model][0][0])
