"""The load generator against a real service (in-process models), briefly, in each mode:
the JSON report's counts add up and the PNG plot is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from yujing.service.config import Config
from tests.service_harness import ServiceThread
from tests.service_models import in_process_repo

from yujing.loadtest.cli import run_knee, run_once
from yujing.loadtest.runner import RunSpec
from yujing.loadtest.traffic import ConversationTraffic, FileTraffic


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=16384, agent_capacity=2048, grace_s=0.5)
    svc = ServiceThread(cfg).start()
    yield svc
    svc.stop()


def _check(rep: dict, out: Path, name: str = "report") -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert data["sent"] == data["answered"] + data["errors"]
    assert data["errors"] == sum(data["errors_by_code"].values())
    assert data["sent"] == rep["sent"] > 0
    png = out / f"{name}.png"
    assert png.exists() and png.stat().st_size > 1000
    assert sum(p["sent"] for p in data["per_second"]) == data["sent"]
    return data


@pytest.mark.parametrize("mode", ["unary", "stream", "batch"])
def test_modes_counts_add_up(service, tmp_path, mode):
    spec = RunSpec(target=f"127.0.0.1:{service.port}", mode=mode, rate=60, duration=2.0, sessions=200,
                   batch_size=8, batch_linger_ms=20, streams=3, seed=5, drain_s=5, progress=False)
    rep = run_once(spec, tmp_path)
    data = _check(rep, tmp_path)
    assert data["answered"] > 0.9 * data["sent"]          # a healthy service answers
    assert data["latency_ms"]["p50"] is not None and data["latency_ms"]["max"] >= data["latency_ms"]["p99"]
    assert data["mode"] == mode


def test_errors_are_counted_not_lost(service, tmp_path):
    """Turns the service refuses (a bad file row) are errors by code; sent still adds up."""
    import polars as pl

    rows = {"session_id": ["f1", "f1", "", "f2"], "turn_id": ["1", "2", "3", "1"],
            "speaker": ["CUSTOMER", "AGENT", "CUSTOMER", "1"], "text": ["退款呢？", "稍等", "no session", "hi"],
            "timestamp_ms": [1_700_000_000_000, 1_700_000_005_000, 1_700_000_006_000, 1_700_000_007_000]}
    f = tmp_path / "turns.csv"
    pl.DataFrame(rows).write_csv(f)
    spec = RunSpec(target=f"127.0.0.1:{service.port}", mode="unary", rate=40, duration=1.0, turns_file=str(f),
                   arrival="constant", drain_s=5, progress=False, run_id="file")
    rep = run_once(spec, tmp_path / "out")
    data = _check(rep, tmp_path / "out")
    assert data["errors_by_code"].get("INVALID_ARGUMENT", 0) >= 1


def test_unreachable_target_counts_errors(tmp_path):
    spec = RunSpec(target="127.0.0.1:1", mode="unary", rate=20, duration=1.0, drain_s=2, timeout_s=1,
                   progress=False)
    rep = run_once(spec, tmp_path)
    data = _check(rep, tmp_path)
    assert data["answered"] == 0 and data["errors"] == data["sent"]


def test_knee_two_steps(service, tmp_path):
    spec = RunSpec(target=f"127.0.0.1:{service.port}", mode="unary", rate=40, duration=1.0, drain_s=5,
                   progress=False)
    knee = run_knee(spec, tmp_path, p99_target_ms=10_000, step=2.0, max_steps=2)
    assert len(knee["steps"]) == 2 and knee["knee_rate"] == 80
    assert (tmp_path / "knee.json").exists() and (tmp_path / "knee.png").stat().st_size > 1000


def test_traffic_is_deterministic_and_lazy():
    a = ConversationTraffic(seed=9, sessions=1_000_000, concurrent=100, run_id="x")
    b = ConversationTraffic(seed=9, sessions=1_000_000, concurrent=100, run_id="x")
    ta = [a.next_turn() for _ in range(2000)]
    tb = [b.next_turn() for _ in range(2000)]
    strip = lambda t: (t.session_id, t.turn_id, t.speaker, t.text, t.event, t.tenant_id)  # noqa: E731
    assert [strip(t) for t in ta] == [strip(t) for t in tb]
    assert len(a.live) == 100                                       # only the live conversations are held
    texts = " ".join(t.text for t in ta)
    assert "12315" in texts or "lawyer" in texts or "律师" in texts or "regulator" in texts
    per = {}
    for t in ta:                                                    # each session's clock never goes back
        assert t.timestamp_ms >= per.get(t.session_id, 0)
        per[t.session_id] = t.timestamp_ms
    # shards never share a session
    s0 = {ConversationTraffic(seed=1, sessions=50, shard=0, shards=2).next_turn().session_id for _ in range(1)}
    s1 = {t.session_id for t in [ConversationTraffic(seed=1, sessions=50, shard=1, shards=2).next_turn()]}
    assert not (s0 & s1)


def test_file_traffic_parquet(tmp_path):
    import polars as pl

    f = tmp_path / "t.parquet"
    pl.DataFrame({"session_id": ["a", "b"], "turn_id": ["1", "1"], "speaker": [1, 2],
                  "text": ["hello", "hi"], "channel": ["VOICE", "CHAT"]}).write_parquet(f)
    ft = FileTraffic(f)
    got = [ft.next_turn() for _ in range(5)]
    assert [t.session_id for t in got] == ["a", "b", "a", "b", "a"]
    assert got[2].turn_id == "1#1"                                  # replays are new turns, not duplicates
