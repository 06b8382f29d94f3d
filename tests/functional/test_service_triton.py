"""The service in its default mode (embedded Triton) over real gRPC: answers name the
model versions in both languages; Triton killed while turns flow: every turn is still
answered (degraded), the supervisor restarts Triton and answers come from it again."""
import os
import signal
import threading
import time

import pytest

from yujing.service.config import Config
from yujing.service.contract import pb
from tests.service_harness import ServiceThread, turn
from tests.service_models import in_process_repo

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def svc():
    s = ServiceThread(Config(port=0, models="embedded", triton_port=0, model_repo=in_process_repo(),
                             capacity=4096, agent_capacity=64, triton_timeout_ms=300)).start()
    yield s
    s.stop()


def test_both_languages_scored_by_triton_with_versions(svc):
    stub = svc.stub()
    for k, text in enumerate(["我要投诉，你们的服务太差了！", "This is the worst service ever, I want a refund!"]):
        r = stub.Score(turn(session=f"lang{k}", text=text))
        assert r.models.served_by == "triton" and not r.degraded
        assert r.models.sentiment_model == "sentiment" and r.models.sentiment_version == "4"
        assert r.models.intent_model == "intent" and r.models.intent_version == "2"
        assert r.models.emotion_model == "emotion" and r.models.emotion_version == "1"
        assert r.models.dissatisfaction_model == "dissatisfaction" and r.models.dissatisfaction_version == "1"
        assert r.emotion.label in r.emotion.labels and len(r.emotion.probabilities) == len(r.emotion.labels)
        assert r.sentiment.label == "negative", (text, r.sentiment)
    # the four models answered by one request per batch to the embedded Triton's heads
    assert svc.call(lambda s: (s.router.triton_calls, s.router.model_calls_per_batch)) == ("combined:heads", 1)


def test_killing_triton_degrades_then_recovers_without_losing_a_turn(svc):
    stub = svc.stub()
    pid = svc.call(lambda s: s.triton.pid)
    answers, errors, stop = [], [], threading.Event()

    def flow():
        k = 0
        while not stop.is_set():
            try:
                answers.append(stub.Score(turn(session=f"flow{k % 7}", turn_id=str(k), text=f"where is my order {k}?"),
                                          timeout=10))
            except Exception as exc:  # any failure is a lost turn
                errors.append(exc)
            k += 1

    t = threading.Thread(target=flow)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any(a.degraded for a in answers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(a.degraded and a.models.served_by == "in-process" for a in answers)
        n_at_degraded = len(answers)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if any(a.models.served_by == "triton" for a in answers[n_at_degraded:]):
                break
            time.sleep(0.1)
        assert any(a.models.served_by == "triton" and not a.degraded for a in answers[n_at_degraded:])
        assert svc.call(lambda s: s.triton.pid) != pid
        deadline = time.monotonic() + 30  # the restarted Triton's heads is used again
        while svc.call(lambda s: s.router.triton_calls) != "combined:heads" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.call(lambda s: s.router.triton_calls) == "combined:heads"
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors[:3]
