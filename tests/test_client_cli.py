"""`yujing score`: a person's client for a running service (real gRPC, real command)."""
import json
import subprocess
import sys

import pytest

from yujing.service.config import Config
from tests.service_harness import ServiceThread
from tests.service_models import in_process_repo


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = ServiceThread(Config(port=0, models="in-process", model_repo=in_process_repo(), capacity=1024,
                             agent_capacity=16)).start()
    yield s
    s.stop()


def _score(svc, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "yujing", "score", "--target", f"127.0.0.1:{svc.port}", *args],
                          capture_output=True, text=True, input=stdin, timeout=120)


def test_texts_are_one_session_and_print_readably(svc):
    r = _score(svc, "--session", "cli-1", "你好，请问怎么开发票？", "都三天了还没到，我要投诉！")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("risk ") == 2 and "customer: 你好" in r.stdout and "session cli-1" in r.stdout
    assert svc.stub().GetSession(__import__("yujing.service.contract", fromlist=["pb"]).pb.SessionRef(
        session_id="cli-1")).customer_turns == 2


def test_reasons_print_as_words_in_the_turns_language(svc):
    r = _score(svc, "都三天了还没到，我要投诉！", "This is unacceptable, I want to speak to your manager!")
    assert r.returncode == 0, r.stderr
    zh, en = r.stdout.split("customer: This is unacceptable")
    assert "because  客户要求升级" in zh and "the customer asked for a manager" not in zh
    assert "because  the customer asked for a manager" in en and "客户" not in en
    assert "(+0.0)" not in r.stdout          # a reason that adds nothing is not shown


def test_a_jsonl_conversation_from_stdin_with_json_answers(svc):
    conv = "\n".join(json.dumps(t, ensure_ascii=False) for t in (
        {"speaker": "customer", "text": "Where is my refund?"},
        {"speaker": "agent", "text": "Let me check.", "agent_id": "a1"},
        {"speaker": "customer", "text": "Thanks!"}))
    r = _score(svc, "--file", "-", "--json", "--session", "cli-2", stdin=conv)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(l) for l in r.stdout.splitlines()]
    assert [a["turnId"] for a in answers] == ["t1", "t2", "t3"] and all("riskScore" in a or "level" in a for a in answers)


def test_a_bad_value_is_refused_with_a_clear_message(svc):
    r = _score(svc, "--speaker", "robot", "hello")
    assert r.returncode != 0 and "speaker 'robot'" in r.stderr and "customer" in r.stderr
