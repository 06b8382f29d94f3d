"""`yujing models deploy` against a running service (embedded Triton): the next answers
carry the new version; a broken model directory is refused and the old one keeps serving."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from yujing.service.config import Config
from tests.service_harness import ServiceThread, turn
from tests.service_models import in_process_repo

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]


def deploy(path, name, repo, url, key_file):
    return subprocess.run([sys.executable, "-m", "yujing.cli", "models", "deploy", str(path), "--name", name,
                           "--model-repository", str(repo), "--triton-url", url, "--triton-key-file", str(key_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def wait_for_version(stub, version, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    k = 0
    while time.monotonic() < deadline:
        r = stub.Score(turn(session="deploy", turn_id=f"w{version}-{k}", text="the delivery was late again"))
        if r.models.sentiment_version == version:
            return r
        k += 1
        time.sleep(0.2)
    raise AssertionError(f"answers never carried sentiment version {version}: last {r.models}")


def test_deploy_switches_the_service_and_a_broken_model_is_refused(tmp_path):
    repo = tmp_path / "model_repo"
    shutil.copytree(in_process_repo(), repo, ignore=shutil.ignore_patterns("serving_version", "__pycache__"))
    svc = ServiceThread(Config(port=0, models="embedded", triton_port=0, model_repo=repo, capacity=1024,
                               agent_capacity=16)).start()
    try:
        stub = svc.stub()
        url, key_file = svc.call(lambda s: (s.triton.grpc_url, s.triton.key_file))
        first = stub.Score(turn(session="deploy", turn_id="0", text="hello"))
        assert first.models.sentiment_version == "4" and first.models.served_by == "triton"

        # roll the review-trained version 1 out again as version 5
        good = deploy(repo / "sentiment" / "1" / "artifact", "sentiment", repo, url, key_file)
        assert good.returncode == 0, good.stdout + good.stderr
        r = wait_for_version(stub, "5")
        assert r.models.served_by == "triton" and not r.degraded

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model.json").write_text("{not json")
        bad = deploy(broken, "sentiment", repo, url, key_file)
        assert bad.returncode != 0 and "model.json" in (bad.stdout + bad.stderr)
        assert not (repo / "sentiment" / "6").exists()
        for k in range(5):
            r = stub.Score(turn(session="deploy", turn_id=f"after-{k}", text="still late"))
            assert r.models.sentiment_version == "5" and r.models.served_by == "triton"
    finally:
        svc.stop()
