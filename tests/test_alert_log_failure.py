"""An alert log that cannot write (a full disk) while the turn log still can: the batch
that raised the alerts is answered as usual (its turns are applied and in the turn log);
the alerts wait in memory, unseen by subscribers and unnumbered, no snapshot is taken
meanwhile, and once the log writes again they are logged in the order they were raised,
before any newer alert. An acknowledgement the log cannot write is refused UNAVAILABLE.
The failure is real: the kernel refuses writes past RLIMIT_FSIZE (EFBIG), as a full disk
refuses them (ENOSPC)."""
from __future__ import annotations

import grpc
import pytest

from yujing.service.config import Config
from yujing.service.contract import pb, pb_grpc
from tests.service_harness import ServiceThread, turn
from tests.service_models import in_process_repo
from tests.test_segment_log import _fail_writes_past

ANGRY = "This is unacceptable! I want a refund now or I will report you to the regulator!"


def _segments(folder):
    return sorted(folder.glob("*.seg"))


def test_alerts_wait_for_the_alert_log_and_are_logged_in_order_once_it_writes(tmp_path, tmp_path_factory):
    state = tmp_path / "state"
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(tmp_path_factory), data_dir=str(state),
                 capacity=256, agent_capacity=16, scan_period_s=60.0, snapshot_interval_s=3600.0)
    svc = ServiceThread(cfg).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            stub, alerts = pb_grpc.RiskScorerStub(ch), pb_grpc.AlertsStub(ch)
            # sessions that rise; then the turn log starts a new segment (as it does at 64 MiB),
            # so a size limit just past the alert log's segment fails only the alert log's
            # next write
            for k in range(8):
                stub.Score(turn(session=f"warm{k}", turn_id="1", text=ANGRY))
            raised_before = svc.call(lambda s: s.hub.log.last_id)
            assert raised_before >= 8, raised_before
            svc.call(lambda s: s.turn_log.log._roll())
            alert_seg, turn_seg = _segments(state / "alerts")[-1], _segments(state / "turns")[-1]
            limit = alert_seg.stat().st_size + 16
            assert turn_seg.stat().st_size + 4096 < limit, (turn_seg.stat().st_size, limit)

            undo = _fail_writes_past(limit)
            try:
                risen = stub.Score(turn(session="full-disk", turn_id="1", text=ANGRY))
                with pytest.raises(grpc.RpcError) as refused_ack:
                    alerts.AckAlert(pb.AckRequest(alert_id=raised_before, by="sup-1"))
                waiting = svc.call(lambda s: [(e.kind, e.session_id) for e, _ in s.hub.unlogged])
                logged_meanwhile = svc.call(lambda s: s.hub.log.last_id)
                snapshot = svc.call(lambda s: s._take_snapshot())
            finally:
                undo()

            # the batch was answered and applied: the service holds the rise
            assert risen.level >= pb.YELLOW and risen.customer_turns == 1 and not risen.duplicate
            assert refused_ack.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "alert log" in refused_ack.value.details()
            assert ("LEVEL_RISE", "full-disk") in waiting
            assert logged_meanwhile == raised_before          # nothing numbered, nothing a subscriber sees
            assert snapshot is None and not list((state / "snapshots").glob("*.snap"))
            assert svc.call(lambda s: s.hub.after(raised_before)) == []

            # the disk has room again; the next pass logs the waiting alerts before a new one
            svc.call(lambda s: setattr(s.hub.log, "_retry_at", 0.0))
            svc.call(lambda s: s.scan_once())
            stub.Score(turn(session="after", turn_id="1", text=ANGRY))
            ack = alerts.AckAlert(pb.AckRequest(alert_id=raised_before, by="sup-1"))
            assert ack.ack.by == "sup-1"
            got = svc.call(lambda s: [(pb.AlertKind.Name(a.kind), a.session_id) for a in s.hub.after(raised_before)])
            sessions = [sid for kind, sid in got if kind == "LEVEL_RISE"]
            assert sessions.index("full-disk") < sessions.index("after"), got
            assert svc.call(lambda s: s.hub.unlogged) == []
            assert svc.call(lambda s: s._take_snapshot()) is not None
    finally:
        svc.stop()


def test_a_waiting_alert_keeps_its_raise_time_and_its_deadline_runs_from_when_it_is_logged(tmp_path):
    """The hub alone on a real segment log: an alert raised while the log cannot write is
    logged at the next try that can, with its own raise time; subscribers could not see
    it before, so its response deadline counts from then; newer alerts come after it."""
    from yujing.service.alerts.events import AlertEvent
    from yujing.service.alerts.hub import AlertHub
    from yujing.service.policy import load_policy
    from yujing.service.storage.segment_log import SegmentLog

    pol = load_policy()
    clock = [1_000_000]
    hub = AlertHub(SegmentLog(tmp_path / "alerts"), pol.version, pol.alerts, lambda: clock[0])
    hub.publish([AlertEvent("LEVEL_RISE", "t", session_id="before", level=2, priority=2)])
    undo = _fail_writes_past(_segments(tmp_path / "alerts")[-1].stat().st_size + 16)
    try:
        assert hub.publish([AlertEvent("LEVEL_RISE", "t", session_id="waits", level=3, priority=4)]) == []
    finally:
        undo()
    assert [e.session_id for e, _ in hub.unlogged] == ["waits"]
    clock[0] += 60_000
    hub.log._retry_at = 0.0                                  # the disk has room again
    out = hub.publish([AlertEvent("LEVEL_RISE", "t", session_id="newer", level=2, priority=2)])
    assert [a.session_id for a in out] == ["waits", "newer"] and out[0].id < out[1].id
    assert out[0].time_ms == 1_000_000                        # raised then
    assert out[0].deadline_ms == 1_060_000 + pol.alerts.deadline_ms(4)   # visible from now
    assert hub.unlogged == [] and [a.session_id for a in hub.after(0)] == ["before", "waits", "newer"]
