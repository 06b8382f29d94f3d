"""Inference over Triton's HTTP endpoint (``service/triton/http_infer.py``) against a real
tritonserver: the same answers as gRPC, errors with the same status names, a pool whose
connections never hand one request's answer to another, and a restart survived."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest_triton import SENTIMENT_KEYWORDS, SENTIMENT_LABELS, make_model_repo, requires_triton, start_triton
from tests.service_harness import ServiceThread, turn
from yujing.service.config import Config
from yujing.service.triton.client import TritonClientError, TritonModelClient
from yujing.service.triton.http_infer import HttpInference, HttpInferenceError
from yujing.service.triton.launcher import free_port

pytestmark = [pytest.mark.triton, requires_triton]

TEXTS = ["你们的服务太差了，我要投诉！", "谢谢，问题解决了，很满意", "Thanks, that was great.", "",
         "I am angry, cancel my account " * 200, "查一下账单 \U0001F621 \x00 end"]


def _on_both(server, calls) -> dict:
    """``await calls(client)`` with a gRPC-only client and with one sending its inference
    requests over HTTP: {"grpc": ..., "http": ...}."""
    async def go():
        out = {}
        for name, http_url in (("grpc", None), ("http", server.http_url)):
            async with TritonModelClient(server.grpc_url, http_url=http_url) as client:
                out[name] = await calls(client)
        return out

    return asyncio.run(go())


def test_http_answers_what_grpc_answers_per_model_and_through_heads(triton_server):
    async def calls(client):
        return (await client.infer("sentiment", TEXTS), await client.infer("intent", TEXTS, model_version="1"),
                await client.infer_heads("heads", TEXTS, {"sentiment": "1", "intent": ""}),
                await client.infer_heads("heads", TEXTS[:1], {"sentiment": ""}))

    out = _on_both(triton_server, calls)
    (s_g, i_g, h_g, one_g), (s_h, i_h, h_h, one_h) = out["grpc"], out["http"]
    for (p_g, v_g), (p_h, v_h) in ((s_g, s_h), (i_g, i_h), (h_g["sentiment"], h_h["sentiment"]),
                                   (h_g["intent"], h_h["intent"]), (one_g["sentiment"], one_h["sentiment"])):
        assert v_g == v_h == "1"
        assert p_h.dtype == np.float32 and p_h.shape == p_g.shape
        np.testing.assert_array_equal(p_h, p_g)
    assert s_h[0].shape == (len(TEXTS), 3) and h_h.keys() == {"sentiment", "intent"}
    assert s_h[0][0].argmax() == SENTIMENT_LABELS.index("negative")       # 太差, 投诉


def test_errors_carry_the_status_names_the_grpc_client_gives(triton_server):
    async def calls(client):
        return await asyncio.gather(client.infer("nosuch", ["x"]), client.infer("sentiment", ["x"], model_version="9"),
                                    client.infer_heads("heads", ["x"], {"sentiment": "7"}), return_exceptions=True)

    out = _on_both(triton_server, calls)
    for g, h in zip(out["grpc"], out["http"]):
        assert isinstance(g, TritonClientError) and isinstance(h, TritonClientError), (g, h)
        assert h.status == g.status == "NOT_FOUND", (g, h)
    assert "has not loaded sentiment v7" in str(out["http"][2])


def test_concurrent_requests_on_a_small_pool_each_get_their_own_answer(triton_server):
    texts = [f"{'谢谢 ' * (k % 4)}{'生气 ' * (k % 3)}request {k}" for k in range(40)]

    async def go():
        pool = HttpInference(triton_server.http_url, max_connections=3)
        try:
            alone = [await pool.infer("sentiment", [t], ["PROBABILITIES"]) for t in texts]
            together = await asyncio.gather(*(pool.infer("sentiment", [t], ["PROBABILITIES"]) for t in texts))
            return alone, together, len(pool._idle)
        finally:
            await pool.close()

    alone, together, idle = asyncio.run(go())
    for (a, va), (b, vb) in zip(alone, together):
        assert va == vb == "1"
        np.testing.assert_array_equal(a["PROBABILITIES"], b["PROBABILITIES"])
    assert len({a["PROBABILITIES"].tobytes() for a, _ in alone}) > 5       # the texts do differ
    assert 1 <= idle <= 3                                                  # kept alive, at most the pool's size


def test_a_timed_out_request_leaves_no_answer_behind_for_the_next(tmp_path):
    repo = make_model_repo(tmp_path, {"sentiment": dict(labels=SENTIMENT_LABELS, keywords=SENTIMENT_KEYWORDS,
                                                        sleep_on="SLOW", sleep_s=0.6)}, combined=False)
    server = start_triton(repo)
    try:
        async def go():
            pool = HttpInference(server.http_url, max_connections=1)     # one connection: any reuse would show
            try:
                with pytest.raises(HttpInferenceError) as slow:
                    await pool.infer("sentiment", ["SLOW 谢谢"], ["PROBABILITIES"], timeout_s=0.1)
                after = await pool.infer("sentiment", ["生气 生气"], ["PROBABILITIES"], timeout_s=5)
                await asyncio.sleep(0.8)     # the slow answer has arrived by now on the closed connection
                later = await pool.infer("sentiment", ["生气 生气"], ["PROBABILITIES"], timeout_s=5)
                return slow.value, after, later
            finally:
                await pool.close()

        slow, after, later = asyncio.run(go())
    finally:
        server.close()
    assert slow.status == "DEADLINE_EXCEEDED"
    for answer, _ in (after, later):
        assert answer["PROBABILITIES"][0].argmax() == SENTIMENT_LABELS.index("negative")
    np.testing.assert_array_equal(after[0]["PROBABILITIES"], later[0]["PROBABILITIES"])


def test_a_restarted_triton_is_reached_on_a_new_connection(triton_server):
    async def go():
        async with TritonModelClient(triton_server.grpc_url, http_url=triton_server.http_url) as client:
            before = await client.infer("sentiment", TEXTS)
            await asyncio.get_running_loop().run_in_executor(None, triton_server.restart)   # same ports
            return before, await client.infer("sentiment", TEXTS)

    before, after = asyncio.run(go())
    np.testing.assert_array_equal(before[0], after[0])


def test_nothing_listening_is_unavailable():
    async def go():
        async with TritonModelClient(f"127.0.0.1:{free_port()}", http_url=f"127.0.0.1:{free_port()}") as client:
            return await asyncio.gather(client.infer("sentiment", ["x"]), return_exceptions=True)

    [error] = asyncio.run(go())
    assert isinstance(error, TritonClientError) and error.status == "UNAVAILABLE"
    assert "cannot connect" in str(error)


def test_a_malformed_address_is_refused():
    for url in ("localhost", "localhost:http", ":8000"):
        with pytest.raises(ValueError, match="expected host:port"):
            HttpInference(url)


def test_an_external_triton_gets_the_inference_requests_on_its_http_url(triton_server, model_repo):
    def score(**settings):
        svc = ServiceThread(Config(port=0, models="external", triton_url=triton_server.grpc_url, model_repo=model_repo,
                                   emotion_model="", dissatisfaction_model="", capacity=1024, agent_capacity=16,
                                   triton_key_file=triton_server.key_file, **settings)).start()
        try:
            r = svc.stub().Score(turn(session="external", text="谢谢"))
            return r.models.served_by, r.degraded, svc.call(lambda s: s.router.client.http_url)
        finally:
            svc.stop()

    nothing_there = f"127.0.0.1:{free_port()}"
    assert score(triton_http_url=triton_server.http_url) == ("triton", False, triton_server.http_url)
    # the inference requests do go to that URL: with nothing there, the turns are scored in-process
    assert score(triton_http_url=nothing_there) == ("in-process", True, nothing_there)
    assert score(triton_http_url=nothing_there, triton_inference="grpc") == ("triton", False, None)
