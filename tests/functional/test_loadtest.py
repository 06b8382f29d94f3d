"""The load generator against a real service (in-process models), briefly, in each mode:
the JSON report's counts add up, it carries what the picture shows (settings, commit, the
latency CDF, errors by status, whole-second throughput, whether the generator kept up) and
the PNG plot is written."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import pytest

from yujing.service.config import Config
from tests.service_harness import ServiceThread
from tests.service_models import in_process_repo

from yujing.loadtest import report as R
from yujing.loadtest.cli import add_subcommand, run_knee, run_once
from yujing.loadtest.runner import RunSpec
from yujing.loadtest.traffic import ConversationTraffic, FileTraffic


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory),
                 capacity=16384, agent_capacity=2048, drain_s=0.5, metrics_port=0)
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
    _check_new_fields(data)
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (1150, 1400)    # the whole figure, not a stub
    return data


def _check_new_fields(data: dict) -> None:
    st = data["settings"]
    assert st["mode"] == data["mode"] and st["target_rate"] == data["target_rate"]
    assert st["duration_s"] == data["duration_s"] and st["sessions"] == data["sessions"]
    assert st["streams"] == (data["streams"] if data["mode"] == "stream" else None)
    assert st["batch_size"] == (data["batch_size"] if data["mode"] == "batch" else None)
    # the commit: a short hash of this checkout (HEAD may move while others commit: it must exist)
    assert data["commit_source"] == "git"
    assert re.fullmatch(r"[0-9a-f]{7,40}", data["commit"]), data["commit"]
    here = Path(R.__file__).resolve().parent
    assert subprocess.run(["git", "-C", str(here), "cat-file", "-e", data["commit"] + "^{commit}"]).returncode == 0
    # kept up: one flag, said twice, and the plain run's exit status
    assert data["generator_kept_up"] is (not data["generator"]["bottleneck"])
    assert data["generator"]["exit_status"] == (0 if data["generator_kept_up"] else 3)
    # errors by status: the same counts as errors_by_code, most first
    rows = data["errors_by_status"]
    assert {r["status"]: r["count"] for r in rows} == data["errors_by_code"]
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
    # the CDF from the HDR histogram: percentiles up, latencies never down, ends at the max
    cdf = data["latency_cdf"]
    assert cdf["count"] == data["answered"]
    pts = cdf["points"]
    if data["answered"]:
        pcts = [p["percentile"] for p in pts]
        lats = [p["latency_ms"] for p in pts]
        assert pcts == sorted(set(pcts)) and pcts[-1] == 100.0 and 50.0 in pcts and 99.0 in pcts
        assert lats == sorted(lats) and lats[-1] == data["latency_ms"]["max"]
        assert dict(zip(pcts, lats))[99.0] == data["latency_ms"]["p99"]
    else:
        assert pts == []
    # throughput over whole seconds of the schedule only
    ts = data["throughput_series"]
    # the schedule ends by count: a Poisson one a little before or after duration_s
    assert abs(ts["send_span_s"] - data["duration_s"]) < 0.35 * data["duration_s"]
    assert ts["full_buckets"] == int(ts["send_span_s"] + 1e-6)
    if ts["full_buckets"] == 0:                                     # under a second: one bucket, scaled
        assert ts["partial_bucket"] == "scaled" and [p["second"] for p in ts["points"]] == [0]
        return
    assert ts["partial_bucket"] == "dropped"
    assert [p["second"] for p in ts["points"]] == list(range(ts["full_buckets"]))
    by_s = {p["second"]: p for p in data["per_second"]}
    for p in ts["points"]:
        got = by_s.get(p["second"], {"sent": 0, "answered": 0, "errors": 0})
        assert (p["sent"], p["answered"], p["errors"]) == (got["sent"], got["answered"], got["errors"])


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


def test_partial_last_second_left_out_and_server_batches(service, tmp_path):
    """A 2.5 s run: the throughput series has the 2 whole seconds; the half second (which did
    send) and the drain are not plotted as a collapse; --metrics-url's batch sizes and the p99
    target are in the report."""
    spec = RunSpec(target=f"127.0.0.1:{service.port}", mode="batch", rate=80, duration=2.5, sessions=100,
                   batch_size=4, batch_linger_ms=10, arrival="constant", seed=3, drain_s=5, progress=False)
    url = f"http://127.0.0.1:{service.srv.metrics_port}/metrics"
    rep = run_once(spec, tmp_path, metrics_url=url, p99_target_ms=10_000)
    data = _check(rep, tmp_path)
    ts = data["throughput_series"]
    assert ts["send_span_s"] == 2.5                                # constant arrivals: 200 turns, 1/80 s apart
    assert ts["full_buckets"] == 2 and [p["second"] for p in ts["points"]] == [0, 1]
    assert 2 in ts["dropped_seconds"]
    sec2 = next(p for p in data["per_second"] if p["second"] == 2)
    assert 0 < sec2["sent"] <= 0.6 * 80                            # the partial second did send: half a second
    assert all(p["sent"] >= 0.9 * 80 for p in ts["points"])        # whole seconds only: no collapse
    assert data["p99_target_ms"] == data["settings"]["p99_target_ms"] == 10_000 and data["p99_target_met"]
    assert data["settings"]["metrics_url"] == url
    sb = data["server_batches"]
    assert sb and sb["batches"] > 0 and sb["turns"] >= data["answered"] > 0


def test_run_shorter_than_a_second_is_scaled():
    per_second = [{"second": 0, "sent": 30, "answered": 25, "errors": 1}, {"second": 1, "sent": 0, "answered": 4,
                                                                           "errors": 0}]
    ts = R.throughput_series(per_second, 0.5)
    assert ts["partial_bucket"] == "scaled" and ts["full_buckets"] == 0 and ts["dropped_seconds"] == [1]
    assert ts["points"] == [{"second": 0, "sent": 60.0, "answered": 50.0, "errors": 2.0, "scale": 2.0}]
    assert [p["second"] for p in R.throughput_series(per_second, 1.0)["points"]] == [0]
    assert R.send_span_s({"duration": 10.0, "max_turns": 50, "rate": 20.0}) == 2.5


def test_title_names_the_run(service, tmp_path):
    spec = RunSpec(target=f"127.0.0.1:{service.port}", mode="stream", rate=30, duration=1.0, sessions=77,
                   streams=3, drain_s=5, progress=False)
    data = _check(run_once(spec, tmp_path), tmp_path)
    title = "\n".join(R.title_lines(data))
    for part in ("stream", "30/s", "1 s", "77 sessions", "77 concurrent", "3 streams", data["commit"]):
        assert part in title, (part, title)


def test_generator_bottleneck_exit_3_and_said_in_json(service, tmp_path):
    """A lag limit no generator meets: exit status 3, generator_kept_up false; --p99-target-ms
    works on a plain run."""
    ap = argparse.ArgumentParser()
    add_subcommand(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["loadtest", "--target", f"127.0.0.1:{service.port}", "--rate", "40", "--duration", "1",
                       "--drain-s", "5", "--max-lag-ms", "0.000001", "--p99-target-ms", "0.001", "--quiet",
                       "--out", str(tmp_path)])
    assert a.func(a) == 3
    data = _check({"sent": json.loads((tmp_path / "report.json").read_text())["sent"]}, tmp_path)
    assert data["generator_kept_up"] is False and data["generator"]["exit_status"] == 3
    assert any("lag" in w for w in data["generator"]["warnings"])
    assert data["p99_target_ms"] == 0.001 and data["p99_target_met"] is False


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
