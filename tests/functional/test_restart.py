"""Sessions survive a graceful restart (issue 14, the snapshot half): ``yujing serve`` on
a data directory writes its tables at SIGTERM and reads them back at start."""
from __future__ import annotations

import time

from yujing.service.contract import pb
from tests.functional.test_alerts import ESCALATING, _drain, _quiet_sla_policy, _serve


def _state(stub, sid):
    s = stub.GetSession(pb.SessionRef(tenant_id="t1", session_id=sid), timeout=10)
    return (dict(s.indicators), s.risk_score, s.level, s.priority, s.turns, s.customer_turns, s.started_ms,
            s.last_turn_ms)


def test_every_session_survives_a_sigterm_and_restart(tmp_path):
    data, policy = tmp_path / "state", str(_quiet_sla_policy(tmp_path))
    now = int(time.time() * 1000) - 5 * 60_000
    p = _serve(data, "--policy", policy)
    try:
        stub = p.stub()
        for s in range(100):
            for k, text in enumerate(ESCALATING[: 1 + s % len(ESCALATING)]):
                stub.Score(pb.Turn(tenant_id="t1", session_id=f"s{s}", turn_id=str(k), text=text,
                                   speaker=pb.CUSTOMER if k % 3 else pb.AGENT, timestamp_ms=now + 15_000 * k,
                                   queue="q", agent_id="a1"), timeout=30)
        before = {f"s{s}": _state(stub, f"s{s}") for s in range(100)}
        rises_before = len(_drain(p.port, pb.AlertQuery(kinds=[pb.LEVEL_RISE], from_oldest=True), 1, 3))
    finally:
        assert p.stop() == 0, p.output()[-3000:]
    assert "snapshot of 100 sessions written" in p.output()
    q = _serve(data, "--policy", policy)
    try:
        stub = q.stub()
        assert "restored 100 sessions" in q.output()
        after = {sid: _state(stub, sid) for sid in before}
        assert after == before
        # the idempotency window came back too: a retried turn is a duplicate, not counted again
        again = stub.Score(pb.Turn(tenant_id="t1", session_id="s5", turn_id="1", text=ESCALATING[1],
                                   speaker=pb.CUSTOMER, timestamp_ms=now + 15_000, queue="q"), timeout=30)
        assert again.duplicate and _state(stub, "s5") == before["s5"]
        # the next turn continues the session; a restored level is not alerted again (only a rise is)
        top = max(before, key=lambda sid: before[sid][2])
        assert before[top][2] >= pb.YELLOW, "the conversations should reach YELLOW"
        r = stub.Score(pb.Turn(tenant_id="t1", session_id=top, turn_id="next", text=ESCALATING[0],
                               speaker=pb.CUSTOMER, timestamp_ms=now + 200_000, queue="q"), timeout=30)
        assert r.customer_turns == before[top][5] + 1
        rises_after = len(_drain(q.port, pb.AlertQuery(kinds=[pb.LEVEL_RISE], from_oldest=True), 1, 3))
        assert rises_after == rises_before + (1 if r.level > before[top][2] else 0)
    finally:
        assert q.stop() == 0, q.output()[-3000:]


def test_after_a_sigkill_the_last_periodic_snapshot_is_restored(tmp_path):
    data, policy = tmp_path / "state", str(_quiet_sla_policy(tmp_path))
    now = int(time.time() * 1000) - 5 * 60_000
    p = _serve(data, "--policy", policy, "--snapshot-interval-s", "0.5")
    try:
        stub = p.stub()
        for s in range(20):
            stub.Score(pb.Turn(tenant_id="t1", session_id=f"k{s}", turn_id="1", text=ESCALATING[s % 6],
                               speaker=pb.CUSTOMER, timestamp_ms=now, queue="q"), timeout=30)
        before = {f"k{s}": _state(stub, f"k{s}") for s in range(20)}
        deadline = time.monotonic() + 20
        while "snapshot of 20 sessions written" not in p.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "snapshot of 20 sessions written" in p.output(), p.output()[-2000:]
        p.proc.kill()
        p.proc.wait(30)
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    q = _serve(data, "--policy", policy)
    try:
        assert "restored 20 sessions" in q.output()
        assert {sid: _state(q.stub(), sid) for sid in before} == before
    finally:
        assert q.stop() == 0, q.output()[-3000:]
