"""The early-warning layer over real gRPC against ``yujing serve`` (in-process models, so a
start takes seconds): the alert stream, resume across a SIGKILL, the SLA scheduler, the
webhook, acknowledgements and escalation."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import queue
import threading
import time
from pathlib import Path

import grpc
import pytest

from yujing.service.contract import pb
from tests.service_harness import ServeProcess

ESCALATING = [
    "hello, my order has not arrived yet",
    "this is really frustrating, it is late again",
    "this is unacceptable, I am very angry!!",
    "I want a refund NOW, worst service ever!!!",
    "I want to speak to a manager, I will file a formal complaint!!!",
    "I will call my lawyer and go to the media!!! USELESS!!!",
]


def _serve(data_dir, *extra):
    return ServeProcess("--models", "in-process", "--capacity", "4096", "--data-dir", str(data_dir),
                        "--scan-period-s", "0.2", *extra, timeout_s=120)


class Follower:
    """A WatchAlerts subscriber in a thread, collecting what it receives."""

    def __init__(self, port: int, query: "pb.AlertQuery"):
        self.got: list = []
        self.error = None
        self.q: queue.Queue = queue.Queue()
        self._call = pb_alerts(port).WatchAlerts(query)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        try:
            for a in self._call:
                self.got.append(a)
                self.q.put(a)
        except grpc.RpcError as err:
            self.error = err

    def wait_for(self, n: int, timeout_s: float = 20.0) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.got)

    def cancel(self):
        self._call.cancel()
        self._t.join(5)


def pb_alerts(port: int):
    from yujing.service.contract import pb_grpc

    return pb_grpc.AlertsStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _converse(stub, session: str, texts, t0: int, queue_name: str = "billing") -> list:
    """Send ``texts`` as customer turns 20 s apart; the answers' levels."""
    levels = []
    for k, text in enumerate(texts):
        r = stub.Score(pb.Turn(session_id=session, turn_id=str(k), text=text, speaker=pb.CUSTOMER,
                               timestamp_ms=t0 + 20_000 * k, queue=queue_name), timeout=30)
        levels.append(r.level)
    return levels


def _rises(levels) -> list:
    """The levels a session rose to, one per rise, from its answers' levels."""
    out, last = [], pb.NONE
    for lv in levels:
        if lv > last:
            out.append(lv)
        last = lv
    return out


def test_one_alert_per_rise_in_order_and_resume_across_sigkill(tmp_path):
    data = tmp_path / "state"
    now = int(time.time() * 1000) - 10 * 60_000      # well inside the TTL, SLA long passed: no scheduler noise
    p = _serve(data, "--policy", str(_quiet_sla_policy(tmp_path)))
    try:
        follower = Follower(p.port, pb.AlertQuery(kinds=[pb.LEVEL_RISE]))
        time.sleep(0.3)
        expected = {}
        for s in range(6):
            levels = _converse(p.stub(), f"s{s}", ESCALATING, now)
            expected[f"s{s}"] = _rises(levels)
        assert all(expected.values()), expected
        total = sum(len(v) for v in expected.values())
        first = follower.wait_for(total // 2)
        assert len(first) >= total // 2
        p.proc.kill()                                 # SIGKILL mid-stream
        p.proc.wait(30)
        follower.cancel()
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    seen = list(follower.got)
    assert seen, "the subscriber got nothing before the kill"

    q = _serve(data, "--policy", str(_quiet_sla_policy(tmp_path)))
    try:
        resumed = Follower(q.port, pb.AlertQuery(kinds=[pb.LEVEL_RISE], after_id=seen[-1].id))
        resumed.wait_for(total - len(seen))
        time.sleep(0.5)
        rest = list(resumed.got)
        all_logged = _drain(q.port, pb.AlertQuery(kinds=[pb.LEVEL_RISE], from_oldest=True), total)
        resumed.cancel()
    finally:
        q.stop()
    ids = [a.id for a in seen + rest]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "a resumed subscriber saw an alert twice or out of order"
    assert [a.id for a in all_logged] == ids, "the subscriber missed alerts the log holds"
    # every alert the first subscriber was sent survived the SIGKILL, unchanged
    by_id = {a.id: a for a in all_logged}
    for a in seen:
        assert by_id[a.id] == a
    # one alert per rise, per session, in the order of the rises
    for sid, rises in expected.items():
        assert [a.level for a in all_logged if a.session_id == sid] == rises, sid


def _drain(port: int, query, n: int, timeout_s: float = 10.0) -> list:
    f = Follower(port, query)
    got = f.wait_for(n, timeout_s)
    time.sleep(0.3)
    got = list(f.got)
    f.cancel()
    return got


def _quiet_sla_policy(tmp_path: Path) -> Path:
    """The default policy with SLAs of a day: the kill test's turns raise no SLA breach."""
    from yujing.service.paths import DEFAULT_POLICY

    text = DEFAULT_POLICY.read_text()
    start = text.index("[sla_seconds]")
    end = text.index("[tiers]")
    rows = "\n".join(f'{ch} = {{ STANDARD = 86400.0, GOLD = 86400.0, DIAMOND = 86400.0, VIP = 86400.0 }}'
                     for ch in ("VOICE", "CHAT", "APP", "SOCIAL", "EMAIL"))
    out = tmp_path / "quiet_sla.toml"
    out.write_text(text[:start] + "[sla_seconds]\n" + rows + "\n\n" + text[end:])
    return out


def test_a_waiting_customer_raises_an_sla_breach_with_no_new_turn(tmp_path):
    p = _serve(tmp_path / "state")
    try:
        follower = Follower(p.port, pb.AlertQuery(kinds=[pb.SLA_BREACH]))
        time.sleep(0.3)
        stub = p.stub()
        sla_ms = 60_000                                  # CHAT, STANDARD in the default policy
        now = int(time.time() * 1000)
        ts = now - sla_ms + 5_000                        # the SLA passes 5 s from now (room for a loaded machine)
        stub.Score(pb.Turn(session_id="waiting", turn_id="1", text="where is my parcel?", speaker=pb.CUSTOMER,
                           timestamp_ms=ts, queue="delivery", agent_id="a7"), timeout=30)
        # an answered customer, same clock: no breach
        stub.Score(pb.Turn(session_id="answered", turn_id="1", text="where is my parcel?", speaker=pb.CUSTOMER,
                           timestamp_ms=ts, queue="delivery"), timeout=30)
        stub.Score(pb.Turn(session_id="answered", turn_id="2", text="it arrives today", speaker=pb.AGENT,
                           timestamp_ms=ts + 1_000, queue="delivery", agent_id="a7"), timeout=30)
        before = stub.GetSession(pb.SessionRef(session_id="waiting"))
        assert 0 < before.waiting_ms < sla_ms and before.sla_ms == sla_ms
        got = follower.wait_for(1, timeout_s=10)
        assert got, "no SLA_BREACH alert"
        a = got[0]
        passed_at = ts + sla_ms
        assert a.session_id == "waiting" and a.queue == "delivery" and a.agent_id == "a7"
        assert passed_at <= a.time_ms <= passed_at + 2_000, (a.time_ms - passed_at)
        assert a.event_time_ms == pytest.approx(passed_at, abs=5)
        assert a.figures["sla_s"] == 60.0 and a.figures["wait_s"] >= 60.0
        assert a.priority >= pb.P1 and a.deadline_ms == a.time_ms + 120 * 60_000
        after = stub.GetSession(pb.SessionRef(session_id="waiting"))
        assert after.waiting_ms >= sla_ms and after.last_turn_ms == before.last_turn_ms
        time.sleep(1.0)                                  # several scheduler passes later: still one
        assert [x.session_id for x in follower.got] == ["waiting"]
        follower.cancel()
    finally:
        assert p.stop() == 0, p.output()[-3000:]


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def test_the_webhook_receives_each_alert_once_signed(tmp_path):
    _Receiver.got = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    secret = b"s3cret-for-the-test"
    (tmp_path / "secret").write_bytes(secret + b"\n")
    p = _serve(tmp_path / "state", "--webhook-url", f"http://127.0.0.1:{httpd.server_address[1]}/hook",
               "--webhook-secret-file", str(tmp_path / "secret"), "--policy", str(_quiet_sla_policy(tmp_path)))
    try:
        now = int(time.time() * 1000)
        levels = _converse(p.stub(), "w1", ESCALATING, now)
        n = len(_rises(levels))
        logged = _drain(p.port, pb.AlertQuery(from_oldest=True), n)
        deadline = time.monotonic() + 10
        while len(_Receiver.got) < len(logged) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert p.stop() == 0, p.output()[-3000:]
        httpd.shutdown()
    assert len(logged) >= n > 0
    ids = [int(h["X-Yujing-Alert-Id"]) for h, _ in _Receiver.got]
    assert ids == [a.id for a in logged], "each alert once, in order"
    for headers, body in _Receiver.got:
        ts = headers["X-Yujing-Timestamp"]
        want = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Yujing-Signature"], want)
        assert headers["X-Yujing-Attempt"] == "1"
        doc = json.loads(body)
        assert int(doc["id"]) == int(headers["X-Yujing-Alert-Id"]) and doc["sessionId"] == "w1"


def _fast_deadline_policy(tmp_path: Path) -> Path:
    """The default policy with a 1.2 s response time for P3 (LEVEL_RISE to BLUE) and P2."""
    from yujing.service.paths import DEFAULT_POLICY

    text = _quiet_sla_policy(tmp_path).read_text()
    old = "response_minutes = { P0 = 15.0, P1 = 120.0, P2 = 2880.0, P3 = 0.0 }"
    assert old in text
    out = tmp_path / "fast_deadline.toml"
    out.write_text(text.replace(old, "response_minutes = { P0 = 0.02, P1 = 0.02, P2 = 0.02, P3 = 0.02 }"))
    assert DEFAULT_POLICY.is_file()
    return out


def test_an_alert_not_acknowledged_by_its_deadline_escalates(tmp_path):
    p = _serve(tmp_path / "state", "--policy", str(_fast_deadline_policy(tmp_path)))
    try:
        stub, alerts = p.stub(), p.alerts()
        follower = Follower(p.port, pb.AlertQuery())
        time.sleep(0.3)
        now = int(time.time() * 1000)
        _converse(stub, "e1", ESCALATING[:3], now, "vip")
        _converse(stub, "e2", ESCALATING[:3], now, "vip")
        got = follower.wait_for(2)
        first = {a.session_id: a for a in got if a.kind == pb.LEVEL_RISE}
        assert {"e1", "e2"} <= set(first)
        acked = alerts.AckAlert(pb.AckRequest(alert_id=first["e1"].id, by="ann", note="on it"), timeout=10)
        assert acked.ack.by == "ann" and acked.ack.on_time
        again = alerts.AckAlert(pb.AckRequest(alert_id=first["e1"].id, by="bob"), timeout=10)
        assert again.ack.by == "ann", "the first acknowledgement stands"
        deadline = time.monotonic() + 10
        esc = []
        while time.monotonic() < deadline and not esc:
            esc = [a for a in follower.got if a.kind == pb.ESCALATION]
            time.sleep(0.05)
        assert esc, "no escalation"
        escalated = {a.escalates_id for a in follower.got if a.kind == pb.ESCALATION}
        assert first["e2"].id in escalated and first["e1"].id not in escalated
        e = next(a for a in esc if a.escalates_id == first["e2"].id)
        assert e.channel == "manager" and e.priority == min(pb.P0, first["e2"].priority + 1)
        late = alerts.AckAlert(pb.AckRequest(alert_id=first["e2"].id, by="carl"), timeout=10)
        assert not late.ack.on_time
        health = alerts.GetQueueHealth(pb.QueueRef(queue="vip"), timeout=10)
        assert 0.0 < health.ack_on_time_share < 1.0     # one on time, at least one missed
        with pytest.raises(grpc.RpcError) as err:
            alerts.AckAlert(pb.AckRequest(alert_id=10**9, by="x"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            alerts.AckAlert(pb.AckRequest(alert_id=first["e2"].id), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "by" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(alerts.WatchAlerts(pb.AlertQuery(kinds=[99]), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "kinds[0]" in err.value.details()
        follower.cancel()
    finally:
        assert p.stop() == 0, p.output()[-3000:]


def test_a_second_service_on_the_same_data_dir_is_refused(tmp_path):
    p = _serve(tmp_path / "state")
    try:
        with pytest.raises(RuntimeError) as err:
            _serve(tmp_path / "state")
        assert "data_dir" in str(err.value) and str(p.proc.pid) in str(err.value)
    finally:
        assert p.stop() == 0, p.output()[-3000:]


CALM = "could you tell me where my parcel is please"
ANGRY = "this is terrible, worst service ever, I am very angry!!"
HOUR = 3_600_000


def _replay(stub, rows, chunk: int = 60) -> list:
    """Send ``rows`` (queue, session, ts, text) as customer turns with ScoreBatch, ``chunk``
    at a time (the trend rules are evaluated as of each micro-batch's latest turn: 60 turns
    here are 20 minutes of the replayed day, as live traffic is milliseconds); the risks."""
    out = []
    for k in range(0, len(rows), chunk):
        batch = pb.TurnBatch(turns=[pb.Turn(session_id=s, turn_id="1", text=t, speaker=pb.CUSTOMER,
                                            timestamp_ms=ts, queue=q) for q, s, ts, t in rows[k:k + chunk]])
        res = stub.ScoreBatch(batch, timeout=120).results
        assert all(r.HasField("risk") for r in res), [r.error for r in res if r.HasField("error")][:3]
        out += [r.risk for r in res]
    return out


def test_a_replayed_day_raises_the_queue_trends_when_they_happen(tmp_path):
    p = _serve(tmp_path / "state", "--capacity", "65536", "--policy", str(_quiet_sla_policy(tmp_path)))
    try:
        stub = p.stub()
        probe = _replay(stub, [("probe", "p-calm", int(time.time() * 1000), CALM),
                               ("probe", "p-angry", int(time.time() * 1000), ANGRY)])
        assert [r.sentiment.label for r in probe] == ["neutral", "negative"], probe
        day0 = (int(time.time() * 1000) // HOUR - 40) * HOUR
        rows = []
        for h in range(24):                      # queue "care": 120 customer turns an hour, 10 % negative,
            share = 0.4 if h == 14 else 0.1      # 40 % in hour 14
            for k in range(120):
                ts = day0 + h * HOUR + k * HOUR // 120
                rows.append(("care", f"c{h}-{k}", ts, ANGRY if (k % 10) < share * 10 else CALM))
        for h in range(27):                      # queue "sales": 60 an hour, 200 an hour in hours 24-26
            n = 200 if h >= 24 else 60
            for k in range(n):
                rows.append(("sales", f"s{h}-{k}", day0 + h * HOUR + k * HOUR // n, CALM))
        complaint = "I will file a formal complaint, my refund never arrived, this is terrible!!"
        for k in range(5):                       # 5 customers, the same complaint, within an hour
            rows.append(("returns", f"r{k}", day0 + 30 * HOUR + k * 600_000, complaint))
        rows.sort(key=lambda r: r[2])
        _replay(stub, rows)
        trend_kinds = [pb.NEGATIVE_SURGE, pb.VOLUME_SPIKE, pb.COMPLAINT_RATE_UP, pb.REPEATED_COMPLAINT]
        got = _drain(p.port, pb.AlertQuery(kinds=trend_kinds, from_oldest=True), 3, timeout_s=10)
        health = p.alerts().GetQueueHealth(pb.QueueRef(queue="care"), timeout=10)
    finally:
        assert p.stop() == 0, p.output()[-3000:]
    whole = [a for a in got if not a.intent_category]
    surge = [a for a in whole if a.kind == pb.NEGATIVE_SURGE]
    assert [a.queue for a in surge] == ["care"], [(pb.AlertKind.Name(a.kind), a.queue) for a in whole]
    assert day0 + 14 * HOUR <= surge[0].event_time_ms < day0 + 15 * HOUR
    assert surge[0].figures["baseline"] == pytest.approx(0.1, abs=0.02)
    assert not [a for a in got if a.queue == "care" and a.event_time_ms < day0 + 14 * HOUR]
    spike = [a for a in whole if a.kind == pb.VOLUME_SPIKE]
    assert [a.queue for a in spike] == ["sales"]
    assert day0 + 24 * HOUR <= spike[0].event_time_ms < day0 + 27 * HOUR
    repeated = [a for a in got if a.kind == pb.REPEATED_COMPLAINT]
    assert [a.queue for a in repeated] == ["returns"] and repeated[0].figures["count"] >= 5
    assert {w.window for w in health.windows} == {"1h", "3h", "24h"} and 0 <= health.health_index <= 100


def test_yujing_alerts_follows_and_acknowledges_and_metrics_count_them(tmp_path):
    import subprocess
    import sys
    import urllib.request

    from tests.service_models import in_process_repo
    from yujing.service.background import ServiceThread
    from yujing.service.config import Config

    cfg = Config(port=0, models="in-process", model_repo=in_process_repo(), capacity=1024,
                 data_dir=tmp_path / "state", metrics_port=0, policy=_quiet_sla_policy(tmp_path))
    with ServiceThread(cfg) as svc:
        levels = _converse(svc.stub(), "cli-1", ESCALATING, int(time.time() * 1000), "billing")
        n = len(_rises(levels))
        cmd = [sys.executable, "-m", "yujing.cli", "alerts", "--target", f"127.0.0.1:{svc.port}",
               "--from-oldest", "--queue", "billing", "--kind", "level_rise", "--count", str(n)]
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        lines = text.strip().splitlines()
        assert len(lines) == n and all("LEVEL_RISE" in ln and "cli-1" in ln for ln in lines), text
        js = subprocess.run(cmd[:-2] + ["--count", "1", "--json"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
        first = json.loads(js)
        assert first["kind"] == "LEVEL_RISE" and first["summaryEn"].startswith("session cli-1 rose to")
        ack = subprocess.run([sys.executable, "-m", "yujing.cli", "alerts", "--target", f"127.0.0.1:{svc.port}",
                              "--ack", first["id"], "--by", "ann"], capture_output=True, text=True, timeout=60)
        assert ack.returncode == 0 and "acknowledged by ann" in ack.stdout, ack.stderr
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{svc.srv.metrics_port}/metrics", timeout=10).read().decode()
    assert f'yujing_alerts_raised_total{{kind="LEVEL_RISE"}} {float(n)}' in metrics, metrics[-2000:]
    assert 'yujing_queue_health_index{queue="billing",tenant=""}' in metrics
    assert "yujing_scan_seconds_count" in metrics and "yujing_alert_log_bytes" in metrics
