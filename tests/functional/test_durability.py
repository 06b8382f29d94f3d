"""No answered turn is lost (issue 14, the turn log): ``yujing serve`` writes every batch to
its turn log before answering, and a restart replays the log after the last snapshot.

The kill test runs clients that keep conversations going (one turn in flight per
session), SIGKILLs the service under that load, restarts it on the same data directory,
retries the turns that were in flight (a retry of an applied one is a duplicate) and
compares every session with a fresh service fed the same conversations from the start.
"""
from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from tests.functional.test_alerts import ESCALATING, _quiet_sla_policy, _serve
from tests.service_harness import ServiceThread
from yujing.service.config import Config
from yujing.service.contract import pb, pb_grpc

BASE = int(time.time() * 1000) - 3_600_000


def _turn(sid: str, k: int) -> pb.Turn:
    """Turn ``k`` of conversation ``sid``: customers and agents in turn, explicit times (so a
    replay anywhere gives the same state), no agent id (agent windows mix sessions)."""
    return pb.Turn(tenant_id="t1", session_id=sid, turn_id=str(k), text=ESCALATING[(k + len(sid)) % 6],
                   speaker=pb.AGENT if k % 3 == 2 else pb.CUSTOMER, timestamp_ms=BASE + 4_000 * k, queue="q")


def _state(stub, sid):
    s = stub.GetSession(pb.SessionRef(tenant_id="t1", session_id=sid), timeout=10)
    return s.turns, dict(s.indicators), s.risk_score, s.level, s.priority


class Conversations:
    """``threads`` clients, each keeping its sessions going one turn at a time; records the
    turns answered and the one in flight of each session."""

    def __init__(self, port: int, threads: int = 8, sessions_each: int = 6):
        self.stub = pb_grpc.RiskScorerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.answered: dict[str, int] = {}      # session -> turns answered (0 .. answered-1)
        self.in_flight: dict[str, int] = {}
        self.errors: list = []
        self.stop = threading.Event()
        self.sessions = [[f"c{t}-{j}" for j in range(sessions_each)] for t in range(threads)]
        self._threads = [threading.Thread(target=self._run, args=(mine,), daemon=True) for mine in self.sessions]
        for t in self._threads:
            t.start()

    def _run(self, mine):
        for sid in mine:
            self.answered[sid] = 0
        while not self.stop.is_set():
            for sid in mine:
                k = self.answered[sid]
                self.in_flight[sid] = k
                try:
                    self.stub.Score(_turn(sid, k), timeout=10)
                except grpc.RpcError as err:     # the kill: the turn stays in flight
                    self.errors.append(err.code())
                    return
                self.answered[sid] = k + 1
                del self.in_flight[sid]

    def join(self):
        for t in self._threads:
            t.join(20)


@pytest.mark.timeout(400)
def test_sigkill_under_load_loses_no_answered_turn(tmp_path):
    data, policy = tmp_path / "state", str(_quiet_sla_policy(tmp_path))
    p = _serve(data, "--policy", policy, "--durability", "batch", "--snapshot-interval-s", "0.7")
    try:
        conv = Conversations(p.port)
        deadline = time.monotonic() + 60
        while sum(conv.answered.values()) < 1500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "snapshot of" in p.output(), "a periodic snapshot should fall inside the load"
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(30)
        conv.join()
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    answered = dict(conv.answered)
    assert sum(answered.values()) >= 1500
    q = _serve(data, "--policy", policy, "--durability", "batch")
    try:
        stub = q.stub()
        assert "replayed" in q.output(), q.output()[-2000:]
        total = {}
        for sid, n in answered.items():
            turns = _state(stub, sid)[0] if n or sid in conv.in_flight else 0
            # every answered turn is there; the one in flight may or may not have been applied
            assert n <= turns <= n + (1 if sid in conv.in_flight else 0), (sid, n, turns)
            # the client retries the turn in flight (a duplicate if it was applied), then goes on
            r = stub.Score(_turn(sid, n), timeout=10)
            assert r.duplicate == (turns == n + 1), (sid, n, turns)
            for k in range(n + 1, n + 3):
                stub.Score(_turn(sid, k), timeout=10)
            total[sid] = n + 3
        restored = {sid: _state(stub, sid) for sid in total}
    finally:
        assert q.stop() == 0, q.output()[-3000:]
    # the same conversations, from the start, on a service that never crashed
    ref = ServiceThread(Config(port=0, host="127.0.0.1", models="in-process", capacity=4096,
                               policy=policy)).start()
    try:
        rstub = pb_grpc.RiskScorerStub(grpc.insecure_channel(f"127.0.0.1:{ref.port}"))
        for sid, n in total.items():
            for k in range(n):
                rstub.Score(_turn(sid, k), timeout=10)
        for sid in total:
            assert restored[sid] == _state(rstub, sid), sid
    finally:
        ref.stop()


def test_a_restart_replays_ends_and_keeps_retries_duplicates(tmp_path):
    """With no snapshot at all (interval 0, SIGKILL): the log alone rebuilds the sessions,
    an ended session stays ended, and a retried turn is still a duplicate."""
    data, policy = tmp_path / "state", str(_quiet_sla_policy(tmp_path))
    p = _serve(data, "--policy", policy, "--snapshot-interval-s", "0")
    try:
        stub = p.stub()
        for s in range(30):
            for k in range(4):
                stub.Score(_turn(f"e{s}", k), timeout=10)
        stub.EndSession(pb.SessionRef(tenant_id="t1", session_id="e7"), timeout=10)
        before = {f"e{s}": _state(stub, f"e{s}") for s in range(30) if s != 7}
        p.proc.kill()
        p.proc.wait(30)
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    assert not (data / "snapshots").exists() or not any((data / "snapshots").iterdir())
    q = _serve(data, "--policy", policy)
    try:
        stub = q.stub()
        assert "replayed 121 turn-log records (120 turns)" in q.output(), q.output()[-2000:]
        assert {sid: _state(stub, sid) for sid in before} == before
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.SessionRef(tenant_id="t1", session_id="e7"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        again = stub.Score(_turn("e3", 2), timeout=10)
        assert again.duplicate and _state(stub, "e3") == before["e3"]
    finally:
        assert q.stop() == 0, q.output()[-3000:]


@pytest.mark.timeout(300)
def test_sigterm_with_a_stream_backlog_answers_or_refuses_every_turn_and_exits(tmp_path):
    """The finding: with a 22.6 k-turn stream backlog the service still ran 60 s after
    SIGTERM. Now: what is scored within --drain-s is answered, the rest is refused
    UNAVAILABLE (no CANCELLED, no silent end), and the process exits; after the restart
    the sessions hold exactly the answered turns."""
    data = tmp_path / "state"
    p = _serve(data, "--drain-s", "2", "--max-batch", "64")
    streams, answered, ends, unary_codes = 8, {}, {}, []
    stop_unary = threading.Event()

    def stream(i: int):
        sid = f"st{i}"
        turns = (pb.Turn(tenant_id="t1", session_id=sid, turn_id=str(k), text=ESCALATING[k % 6],
                         speaker=pb.CUSTOMER if k % 2 else pb.AGENT, queue="q") for k in range(4000))
        answered[sid] = 0
        try:
            for _ in p.stub().ScoreStream(turns, timeout=120):
                answered[sid] += 1
            ends[sid] = grpc.StatusCode.OK
        except grpc.RpcError as err:
            ends[sid] = err.code()

    def unary(i: int):
        stub, k = p.stub(), 0
        sid = f"un{i}"
        answered[sid] = 0
        while not stop_unary.is_set():
            try:
                stub.Score(pb.Turn(tenant_id="t1", session_id=sid, turn_id=str(k), text="where is my parcel",
                                   speaker=pb.CUSTOMER, queue="q"), timeout=30)
                answered[sid] += 1
                k += 1
            except grpc.RpcError as err:
                unary_codes.append(err.code())
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    return
    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(streams)]
    threads += [threading.Thread(target=unary, args=(i,), daemon=True) for i in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(answered.values()) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        rc = p.proc.wait(60)
        took = time.monotonic() - t0
        stop_unary.set()
        for t in threads:
            t.join(30)
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    out = p.output()
    assert rc == 0, out[-3000:]
    assert took < 2 + 20, f"exit took {took:.1f} s after SIGTERM with --drain-s 2"
    assert len(ends) == streams
    assert set(ends.values()) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, ends
    assert grpc.StatusCode.UNAVAILABLE in ends.values(), "the backlog should not all be answered in time"
    assert set(unary_codes) <= {grpc.StatusCode.UNAVAILABLE}, unary_codes
    q = _serve(data)
    try:
        stub = q.stub()
        for sid, n in answered.items():
            if n:
                assert _state(stub, sid)[0] == n, (sid, n)
    finally:
        assert q.stop() == 0, q.output()[-3000:]
