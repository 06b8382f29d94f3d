"""The security model over real gRPC and real TLS (README "Security model"): certificates
made here with openssl, a tokens file made with the operator's own command, a real service
(in-process models). Each test is one finding of the issue: without TLS, tokens and tenant
binding, a client who knows a tenant's name reads and ends its sessions."""
from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from google.rpc import error_details_pb2

from yujing.service.config import Config
from yujing.service.contract import pb, pb_grpc
from yujing.service.errors import ConfigError
from yujing.service.security import tokens as T
from tests.service_harness import ServiceThread, assert_same_state, state_copy, turn
from tests.service_models import in_process_repo

ESCALATING = ["this is unacceptable, I am very angry!!", "I want a refund NOW, worst service ever!!!",
              "I want to speak to a manager, I will file a formal complaint!!!"]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict:
    """A test CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=yujing test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return {k: str(d / k) for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def _mint(path: Path, *args) -> str:
    """A token minted by the operator's command (``yujing tokens add``): printed once."""
    from yujing.cli import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["tokens", "add", "--file", str(path), *args]) == 0
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    toks = {t: _mint(path, "--tenant", t) for t in ("acme", "globex", "tiny", "slow")}
    toks["admin"] = _mint(path, "--scope", "admin", "--note", "deploy")
    doc = json.loads(path.read_text())
    doc["quotas"] = {"tiny": {"max_sessions": 2}, "slow": {"turns_per_s": 1, "burst_turns": 2}}
    path.write_text(json.dumps(doc))
    toks["path"] = path
    return toks


def _cfg(**kw) -> Config:
    return Config(port=0, models="in-process", model_repo=in_process_repo(), capacity=1024, agent_capacity=64,
                  max_batch=32, max_delay_ms=1.0, drain_s=1.0, **kw)


@pytest.fixture(scope="module")
def svc(certs, tokens):
    s = ServiceThread(_cfg(tokens=tokens["path"], tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                           metrics_port=0, metrics_tls=True)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def as_(svc, certs, tokens):
    """as_("acme") -> (RiskScorer stub, Alerts stub) over TLS with acme's token."""
    made = {}

    def get(who: str | None):
        if who not in made:
            ch = svc.channel(tls_ca=certs["ca.pem"], token=tokens[who] if who else None)
            made[who] = (pb_grpc.RiskScorerStub(ch), pb_grpc.AlertsStub(ch))
        return made[who]
    return get


def _code(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as e:
        r = fn(*args, timeout=10, **kw)
        if hasattr(r, "__iter__") and not isinstance(r, (pb.TurnRisk, pb.SessionState)):
            list(r)
    return e.value.code(), e.value.details()


def _sid() -> str:
    return "s-" + uuid.uuid4().hex[:10]


# -- TLS -------------------------------------------------------------------------------------
def test_a_tls_client_is_served_and_a_plaintext_one_is_not(svc, as_):
    risk, _ = as_("acme")
    assert risk.Score(turn(_sid(), text="hello"), timeout=10).risk_score >= 0
    plain = pb_grpc.RiskScorerStub(svc.channel())
    code, _ = _code(plain.Score, turn(_sid()))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_without_a_certificate(certs, tokens):
    with ServiceThread(_cfg(tokens=tokens["path"], tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                            tls_client_ca=certs["ca.pem"])) as s:
        no_cert = s.stub(tls_ca=certs["ca.pem"], token=tokens["acme"])
        code, _ = _code(no_cert.Score, turn(_sid()))
        assert code == grpc.StatusCode.UNAVAILABLE
        with_cert = s.stub(tls_ca=certs["ca.pem"], tls_cert=certs["client.pem"], tls_key=certs["client.key"],
                           token=tokens["acme"])
        assert with_cert.Score(turn(_sid()), timeout=10).turn_id == "1"


def test_metrics_are_served_over_https_only(svc, certs):
    url = f"https://localhost:{svc.srv.metrics_port}/metrics"
    ctx = ssl.create_default_context(cafile=certs["ca.pem"])
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        assert b"yujing_auth_refusals_total" in r.read() or r.status == 200
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://localhost:{svc.srv.metrics_port}/metrics", timeout=5).read()


# -- tokens ----------------------------------------------------------------------------------
def _every_call(risk, alerts, tenant="acme"):
    sid = _sid()
    return [
        (risk.Score, turn(sid, tenant_id=tenant)),
        (risk.ScoreBatch, pb.TurnBatch(turns=[turn(sid, tenant_id=tenant)])),
        (risk.ScoreStream, iter([turn(sid, tenant_id=tenant)])),
        (risk.GetSession, pb.SessionRef(tenant_id=tenant, session_id="known")),
        (risk.EndSession, pb.SessionRef(tenant_id=tenant, session_id="known")),
        (alerts.WatchAlerts, pb.AlertQuery(tenant_id=tenant, from_oldest=True)),
        (alerts.AckAlert, pb.AckRequest(tenant_id=tenant, alert_id=1, by="mallory")),
        (alerts.GetQueueHealth, pb.QueueRef(tenant_id=tenant, queue="billing")),
    ]


def test_no_token_or_an_unknown_one_is_unauthenticated_on_every_call_and_changes_nothing(svc, as_, certs):
    as_("admin")[0].Score(turn("known", tenant_id="acme", queue="billing"), timeout=10)
    before = state_copy(svc)
    bogus = svc.channel(tls_ca=certs["ca.pem"], token=T.new_token())
    for risk, alerts in (as_(None), (pb_grpc.RiskScorerStub(bogus), pb_grpc.AlertsStub(bogus))):
        for fn, req in _every_call(risk, alerts):
            code, details = _code(fn, req)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (fn, code, details)
    assert_same_state(before, state_copy(svc))
    assert as_("acme")[0].GetSession(pb.SessionRef(session_id="known"), timeout=10).customer_turns == 1


def test_health_and_reflection_stay_open(svc, certs):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ch = svc.channel(tls_ca=certs["ca.pem"])
    ok = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    answer = next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=10)))
    assert "yujing.v1.RiskScorer" in {s.name for s in answer.list_services_response.service}


def test_another_tenants_token_is_permission_denied_on_every_call_and_changes_nothing(svc, as_):
    as_("admin")[0].Score(turn("known", turn_id="k1", tenant_id="acme", queue="billing"), timeout=10)
    before = state_copy(svc)
    risk, alerts = as_("globex")
    for fn, req in _every_call(risk, alerts, tenant="acme"):
        if fn is risk.ScoreBatch:      # refused per turn, the call itself answers
            assert fn(req, timeout=10).results[0].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            continue
        code, details = _code(fn, req)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "globex" in details, (fn, code, details)
    assert_same_state(before, state_copy(svc))


def test_score_batch_refuses_only_the_other_tenants_turns(svc, as_):
    risk, _ = as_("globex")
    mine, theirs = _sid(), _sid()
    out = risk.ScoreBatch(pb.TurnBatch(turns=[turn(mine), turn(theirs, tenant_id="acme"),
                                              turn(mine, turn_id="2", tenant_id="globex")]), timeout=10)
    kinds = [r.WhichOneof("result") for r in out.results]
    assert kinds == ["risk", "error", "risk"]
    assert out.results[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert out.results[1].error.field == "turns[1].tenant_id"
    assert risk.GetSession(pb.SessionRef(session_id=mine), timeout=10).customer_turns == 2
    code, _ = _code(as_("acme")[0].GetSession, pb.SessionRef(session_id=theirs))
    assert code == grpc.StatusCode.NOT_FOUND


def test_the_guessed_session_attack_finds_nothing_and_ends_nothing(svc, as_):
    """The issue's attack: knowing the tenant's name, guess session ids (the real ones among them)."""
    owner, attacker = as_("acme")[0], as_("globex")[0]
    live = [_sid() for _ in range(20)]
    for sid in live:
        owner.Score(turn(sid, text="my card was charged twice"), timeout=10)
    guesses = live + [_sid() for _ in range(180)]
    before = state_copy(svc)
    found = 0
    for sid in guesses:
        for tenant in ("acme", ""):       # by the tenant's name, or leaving it to the token
            for fn in (attacker.GetSession, attacker.EndSession):
                try:
                    fn(pb.SessionRef(tenant_id=tenant, session_id=sid), timeout=10)
                    found += 1
                except grpc.RpcError as err:
                    assert err.code() == (grpc.StatusCode.PERMISSION_DENIED if tenant else grpc.StatusCode.NOT_FOUND)
    assert found == 0
    assert_same_state(before, state_copy(svc))
    assert all(owner.GetSession(pb.SessionRef(session_id=s), timeout=10).customer_turns == 1 for s in live)


def test_an_empty_tenant_is_the_tokens_and_an_admin_acts_for_any(svc, as_):
    sid = _sid()
    as_("acme")[0].Score(turn(sid), timeout=10)          # tenant_id "" -> acme
    assert svc.call(lambda srv: srv.table.holds(("acme", sid)) and not srv.table.holds(("", sid)))
    admin = as_("admin")[0]
    assert admin.GetSession(pb.SessionRef(tenant_id="acme", session_id=sid), timeout=10).customer_turns == 1
    assert admin.EndSession(pb.SessionRef(tenant_id="acme", session_id=sid), timeout=10).customer_turns == 1


def test_alerts_are_bound_to_the_tokens_tenant(svc, as_):
    for tenant in ("acme", "globex"):
        risk = as_(tenant)[0]
        sid = _sid()
        for k, text in enumerate(ESCALATING):
            risk.Score(turn(sid, turn_id=str(k), text=text, queue="billing"), timeout=10)
    seen = []
    try:
        for a in as_("globex")[1].WatchAlerts(pb.AlertQuery(from_oldest=True), timeout=1.5):
            seen.append(a)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen and {a.tenant_id for a in seen} == {"globex"}
    everyone = []
    try:
        for a in as_("admin")[1].WatchAlerts(pb.AlertQuery(from_oldest=True), timeout=1.5):
            everyone.append(a)
    except grpc.RpcError:
        pass
    theirs = next(a for a in everyone if a.tenant_id == "acme")
    code, _ = _code(as_("globex")[1].AckAlert, pb.AckRequest(alert_id=theirs.id, by="mallory"))
    assert code == grpc.StatusCode.NOT_FOUND     # bound to globex: acme's alert is not there
    ack = as_("acme")[1].AckAlert(pb.AckRequest(alert_id=theirs.id, by="alice"), timeout=10)
    assert ack.ack.by == "alice"


def test_a_token_added_or_revoked_in_the_file_takes_effect_without_a_restart(svc, as_, certs, tokens):
    from yujing.cli import main

    fresh = _mint(tokens["path"], "--tenant", "acme", "--note", "rotating")
    stub = svc.stub(tls_ca=certs["ca.pem"], token=fresh)

    def code_now():
        try:
            stub.GetSession(pb.SessionRef(session_id="nope"), timeout=10)
        except grpc.RpcError as err:
            return err.code()

    def until(code, limit_s=5.0):
        deadline = time.monotonic() + limit_s
        while code_now() != code:
            assert time.monotonic() < deadline, f"not {code} after {limit_s} s"
            time.sleep(0.05)

    until(grpc.StatusCode.NOT_FOUND)          # known: the session is not
    token_id = T.hash_token(fresh)[:12]
    assert main(["tokens", "revoke", "--file", str(tokens["path"]), "--id", token_id]) == 0
    until(grpc.StatusCode.UNAUTHENTICATED)
    assert as_("acme")[0].Score(turn(_sid()), timeout=10)   # the others still work


# -- quotas ----------------------------------------------------------------------------------
def _quota_details(err: grpc.RpcError):
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    kinds = set()
    for d in status.details:
        if d.Is(failure.DESCRIPTOR):
            d.Unpack(failure)
            kinds.add("quota")
        elif d.Is(retry.DESCRIPTOR):
            d.Unpack(retry)
            kinds.add("retry")
    assert kinds == {"quota", "retry"}
    return failure, retry.retry_delay.ToNanoseconds() / 1e9


def test_the_live_sessions_quota_refuses_with_rich_status_and_changes_nothing(svc, as_):
    risk = as_("tiny")[0]
    a, b = _sid(), _sid()
    risk.Score(turn(a), timeout=10)
    risk.Score(turn(b), timeout=10)
    before = state_copy(svc)
    with pytest.raises(grpc.RpcError) as e:
        risk.Score(turn(_sid()), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    failure, retry_s = _quota_details(e.value)
    assert failure.violations[0].subject == "tenant:tiny" and "max_sessions" in failure.violations[0].description
    assert retry_s > 0
    with pytest.raises(grpc.RpcError) as e:           # a batch that would start two more: refused whole
        risk.ScoreBatch(pb.TurnBatch(turns=[turn(_sid()), turn(_sid())]), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_same_state(before, state_copy(svc))
    assert risk.Score(turn(a, turn_id="2"), timeout=10).turn_id == "2"   # its live sessions still score
    risk.EndSession(pb.SessionRef(session_id=a), timeout=10)
    assert risk.Score(turn(_sid()), timeout=10)                         # room again
    assert b"yujing_quota_refusals_total{quota=\"max_sessions\"} 3.0" in svc.srv.metrics.render()


def test_the_turn_rate_quota_refuses_with_a_retry_hint_and_changes_nothing(svc, as_):
    risk = as_("slow")[0]
    sid = _sid()
    risk.Score(turn(sid, turn_id="1"), timeout=10)
    risk.Score(turn(sid, turn_id="2"), timeout=10)        # the burst of 2
    before = state_copy(svc)
    with pytest.raises(grpc.RpcError) as e:
        risk.Score(turn(sid, turn_id="3"), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    failure, retry_s = _quota_details(e.value)
    assert "turns_per_s" in failure.violations[0].description and 0 < retry_s <= 1.0
    with pytest.raises(grpc.RpcError) as e:                # on a stream: the stream ends with it
        list(risk.ScoreStream(iter([turn(sid, turn_id="4")]), timeout=10))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _quota_details(e.value)
    assert_same_state(before, state_copy(svc))
    time.sleep(retry_s)                                   # the hint is honest
    assert risk.Score(turn(sid, turn_id="3"), timeout=10).turn_id == "3"


# -- start-up rules and the clients ----------------------------------------------------------
def test_a_non_loopback_host_without_tokens_refuses_to_start(tokens):
    with pytest.raises(ConfigError, match="--tokens FILE"):
        _cfg(host="0.0.0.0").validate()
    _cfg(host="0.0.0.0", insecure_no_auth=True).validate()
    _cfg(host="0.0.0.0", tokens=tokens["path"]).validate()
    r = subprocess.run([sys.executable, "-m", "yujing.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                        "--models", "in-process", "--data-dir", "none"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a loopback address" in r.stderr and "--insecure-no-auth" in r.stderr


def test_the_ready_line_says_how_the_service_is_secured(certs, tokens):
    from yujing.service.security.tls import describe

    assert "no tokens (loopback only" in describe(_cfg(), None)
    line = describe(_cfg(tokens=tokens["path"], tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                         tls_client_ca=certs["ca.pem"]), 5)
    assert line.startswith("tls on (mTLS), tokens 5 from")
    assert "NO AUTHENTICATION" in describe(_cfg(host="0.0.0.0", insecure_no_auth=True), None)


def test_the_client_commands_take_a_token_and_a_ca(svc, certs, tokens, monkeypatch, capsys):
    from yujing.cli import main

    target = ["--target", f"localhost:{svc.port}", "--tls-ca", certs["ca.pem"]]
    monkeypatch.setenv("YUJING_TOKEN", tokens["acme"])
    assert main(["score", *target, "--session", "cli-sec", "--json", "hello"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["sessionId"] == "cli-sec"
    monkeypatch.delenv("YUJING_TOKEN")
    assert main(["score", *target, "hello"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["alerts", *target, "--token", tokens["globex"], "--tenant", "acme", "--count", "1"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err


# -- the tokens file -------------------------------------------------------------------------
def test_the_file_keeps_only_hashes_and_a_lookup_hashes_once(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    tok, entry = T.add_token(path, "acme")
    assert tok not in path.read_text() and entry["sha256"] == T.hash_token(tok)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    clock = [0.0]
    store = T.TokenStore(path, clock=lambda: clock[0])
    calls = []
    real = T.hash_token
    monkeypatch.setattr(T, "hash_token", lambda t: calls.append(t) or real(t))
    for _ in range(1000):
        assert store.lookup(tok).tenant == "acme"
    assert len(calls) == 1


def test_the_file_is_stat_at_most_once_a_second_and_a_broken_one_keeps_the_last_good(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    tok, entry = T.add_token(path, "acme")
    clock = [0.0]
    store = T.TokenStore(path, clock=lambda: clock[0])
    stats = []
    real_stat = T.os.stat
    monkeypatch.setattr(T.os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    for _ in range(100):
        store.lookup(tok)
    assert path not in stats
    T.revoke_tokens(path, entry["id"])
    stats.clear()
    clock[0] = 1.01
    for _ in range(100):
        assert store.lookup(tok) is None
    assert stats.count(path) == 1
    tok2, _ = T.add_token(path, "globex")
    path.write_text("{ not json")
    clock[0] = 2.02
    assert store.lookup(tok2) is None          # the broken file is not read; the last good set stays
    path.unlink()
    clock[0] = 3.03
    assert len(store) == 0


def test_a_bad_tokens_file_stops_the_start_with_a_message(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tokens": [{"sha256": "abc", "tenant": "acme"}]}))
    with pytest.raises(ConfigError, match=r"tokens\[0\]\.sha256"):
        T.TokenStore(path)
    path.write_text(json.dumps({"tokens": [], "quotas": {"acme": {"turns_per_s": -1}}}))
    with pytest.raises(ConfigError, match="turns_per_s"):
        T.TokenStore(path)


def test_the_load_generator_reaches_a_secured_service_and_keeps_the_token_out_of_its_report(svc, certs, tokens,
                                                                                          tmp_path):
    from yujing.loadtest.cli import run_once
    from yujing.loadtest.runner import RunSpec

    for mode in ("unary", "stream"):
        spec = RunSpec(target=f"localhost:{svc.port}", mode=mode, rate=30, duration=1.0, sessions=20, streams=2,
                       drain_s=5, progress=False, token=tokens["admin"], tls_ca=certs["ca.pem"])   # its traffic spans tenants
        rep = run_once(spec, tmp_path / mode)
        assert rep["sent"] > 0 and rep["answered"] == rep["sent"], rep.get("errors_by_code")
        assert tokens["admin"] not in "".join(p.read_text(errors="replace") for p in (tmp_path / mode).glob("*.json"))


def test_yujing_serve_off_loopback_with_tokens_and_tls(certs, tokens):
    """The real command: --tokens unlocks a non-loopback host; the flags reach the service."""
    from tests.service_harness import ServeProcess

    p = ServeProcess("--host", "0.0.0.0", "--models", "in-process", "--data-dir", "none", "--tokens",
                     str(tokens["path"]), "--tls-cert", certs["server.pem"], "--tls-key", certs["server.key"],
                     "--quota-turns-per-s", "1000", timeout_s=120)
    try:
        assert re.search(r"yujing serving on 0\.0\.0\.0:\d+ .*; tls on, tokens \d+ from ", p.output())
        stub = p.stub(tls_ca=certs["ca.pem"], token=tokens["acme"])
        assert stub.Score(turn(_sid()), timeout=10).turn_id == "1"
        code, _ = _code(p.stub(tls_ca=certs["ca.pem"]).Score, turn(_sid()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert p.stop() == 0


def test_the_tables_count_of_a_tenants_sessions_follows_takes_releases_expiry_and_a_restore():
    from yujing.service.session_table import SessionTable

    t = SessionTable(capacity=8, agent_capacity=2, ttl_ms=1000, backend="cpu")
    t.resolve([("acme", "a"), ("acme", "b"), ("globex", "c"), ("acme", "a")], now_ms=10_000)
    assert (t.live_of("acme"), t.live_of("globex"), t.live_of("nobody")) == (2, 1, 0)
    t.sessions.release(t.sessions.slot_of[("acme", "b")])
    assert t.live_of("acme") == 1
    arrays, meta = t.export()
    again = SessionTable(capacity=8, agent_capacity=2, ttl_ms=1000, backend="cpu")
    again.restore(arrays, meta)
    assert (again.live_of("acme"), again.live_of("globex")) == (1, 1)
    assert again.sweep(now_ms=20_000) == 2 and again.live_of("acme") == again.live_of("globex") == 0
