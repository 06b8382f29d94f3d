"""The service configuration: one typed object, built once from the command line (or
by tests), validated with messages that name the setting.

    >>> c = Config(port=0, capacity=1024)
    >>> c.validate().capacity
    1024
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from yujing.service.errors import ConfigError
from yujing.service.paths import DEFAULT_MODEL_REPO, default_state_dir, state_dir_arg



def setting(default, help: str, *, flag: bool = True, choices=None, type=None, cli_default=None):
    """A field of :class:`Config` with its ``--help`` text: the command line is generated
    from these fields (``yujing.cli``), so a setting is written once. ``cli_default`` (a
    function) gives the command line a default other than the field's (``--data-dir``: the
    command keeps state in a default directory, a ``Config()`` in code keeps none)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "type": type,
                                            "cli_default": cli_default})


def _host_port(url: str) -> bool:
    host, sep, port = url.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


@dataclass
class Config:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(50051, "gRPC port (0: any free port)")
    metrics_port: int | None = setting(None, "serve Prometheus /metrics on this port (default: off)", type=int)
    # session table
    backend: str = setting("auto", "kernel backend: the GPU when CuPy sees one (auto), or cpu / gpu",
                           choices=("auto", "cpu", "gpu"))
    capacity: int = setting(1 << 20, "session table slots (4,194,304 and more work)")
    agent_capacity: int = setting(1 << 16, "agent table slots (per-agent fatigue windows)")
    ttl_s: float = setting(30 * 60.0, "seconds of inactivity (server clock) after which a session expires")
    evict_min_idle_s: float = setting(
        60.0, "when the table is full, only sessions idle at least this many seconds may be evicted "
              "(else the turn is refused RESOURCE_EXHAUSTED)")
    # micro-batcher
    max_batch: int = setting(256, "turns per micro-batch (one model call and one kernel launch)")
    max_delay_ms: float = setting(2.0, "how long a batch waits for more turns while traffic is concurrent and "
                                       "at least two more are expected in that time; a lone sequential caller "
                                       "is not held back")
    batches_in_flight: int = setting(2, "micro-batches out at once: while one waits for the models, the next "
                                        "(when a full one is queued) has its model call started; batches are "
                                        "still applied in order (1: one batch at a time)")
    # admission control: unary and batch calls are refused (RESOURCE_EXHAUSTED) while this
    # many turns are accepted and not yet answered; streams are bounded by their window
    max_pending_turns: int = setting(32_768, "admission control: refuse Score/ScoreBatch (RESOURCE_EXHAUSTED) "
                                             "while this many turns wait to be answered (streams' unread "
                                             "answers included)")
    max_queue_ms: float = setting(1000.0, "admission by time: refuse turns (RESOURCE_EXHAUSTED) that would wait "
                                          "longer than this to be scored, by the batcher's estimate; 0: no bound")
    stream_window: int = setting(256, "turns one ScoreStream may have admitted and not yet sent back before its "
                                      "reader waits for its client to read")
    # calls gRPC core may hold before the service picks them up; beyond it gRPC core itself
    # cancels calls (its default, 1,000 to 3,000 with random early drop, cancelled bursts)
    max_pending_rpcs: int = setting(65_536, "calls gRPC core may queue before the service picks them up")
    # limits on what a client may send
    max_text_bytes: int = setting(16 * 1024, "longest turn text accepted, in UTF-8 bytes")
    max_id_bytes: int = setting(128, "longest id (tenant, session, turn, agent, queue) accepted, in bytes")
    max_batch_turns: int = setting(4096, "most turns in one ScoreBatch request")
    max_request_bytes: int = setting(16 << 20, "largest request message gRPC accepts, in bytes (a bigger "
                                               "ScoreBatch is refused RESOURCE_EXHAUSTED before it is parsed)")
    max_future_skew_s: float = setting(300.0, "timestamps further ahead of the server clock are refused")
    idempotency_window: int = setting(262_144, "answers kept to recognise a repeated (tenant, session, turn) id")
    # models
    models: str = setting("embedded", "where the models run: an embedded Triton server, an external one "
                                      "(--triton-url), or in-process only (default: embedded, or external "
                                      "when --triton-url is given)",
                          choices=("embedded", "external", "in-process"))
    triton_url: str | None = setting(None, "host:port of an external Triton (implies --models external)", type=str)
    triton_inference: str = setting("http", "protocol of the inference requests, the hot path: http (the embedded "
                                            "Triton's HTTP port on loopback, or --triton-http-url; about a third of "
                                            "the gRPC client's CPU a request) or grpc. An external Triton without "
                                            "--triton-http-url gets them over gRPC",
                                    choices=("http", "grpc"))
    triton_http_url: str | None = setting(None, "host:port of the external Triton's HTTP endpoint, for its inference "
                                                "requests (see --triton-inference)", type=str)
    triton_port: int = setting(8001, "gRPC port of the embedded Triton, what `yujing models deploy` talks to "
                                     "(0: any free port)")
    triton_key_file: Path | None = setting(
        None, "the key of Triton's restricted protocols, one line <header-key>=<value>: the embedded Triton's "
              "is written there (0600) at every start (default: DATA_DIR/triton.key, or the Triton's run "
              "directory without a data dir); for an external Triton, the key it was started with (sent on "
              "every call)", type=Path)
    model_repo: Path = setting(DEFAULT_MODEL_REPO, "Triton model repository", type=Path)
    sentiment_model: str = setting("sentiment", "sentiment model name in the repository (e.g. sentiment_e5)")
    intent_model: str = setting("intent", "intent model name in the repository (e.g. intent_banking77)")
    emotion_model: str = setting("emotion", "emotion model name in the repository ('' for none)")
    dissatisfaction_model: str = setting("dissatisfaction", "dissatisfaction model name in the repository: "
                                                            "P(dissatisfied) of a customer's words ('' for none)")
    combined_model: str = setting("heads", "Triton model that answers all the models in one call per batch "
                                           "(model_repo/heads); '' for one call per model")
    triton_timeout_ms: float = setting(500.0, "deadline of one Triton call before the in-process fallback answers")
    # policy and shutdown
    policy: Path | None = setting(None, "risk policy TOML (default: the packaged service/policy_default.toml)",
                                  type=Path)
    drain_s: float = setting(10.0, "on SIGINT/SIGTERM: seconds to answer the turns already accepted (new calls "
                                   "get UNAVAILABLE); turns still unscored then are refused UNAVAILABLE, the state "
                                   "is snapshotted and the process exits")
    # security (README "Security model"; service/security/)
    tokens: Path | None = setting(None, "tokens file (`yujing tokens add` mints one): every call but health and "
                                        "reflection then needs `authorization: Bearer <token>`, bound to its "
                                        "tenant; re-read when it changes", type=Path)
    insecure_no_auth: bool = setting(False, "serve without tokens on an address other than loopback (refused "
                                            "otherwise): anyone who reaches the port acts for any tenant")
    tls_cert: Path | None = setting(None, "TLS certificate chain (PEM) of the gRPC port, with --tls-key", type=Path)
    tls_key: Path | None = setting(None, "TLS private key (PEM) of --tls-cert", type=Path)
    tls_client_ca: Path | None = setting(None, "CA (PEM) that signs client certificates: require one (mTLS)",
                                         type=Path)
    metrics_tls: bool = setting(False, "serve /metrics over HTTPS with --tls-cert/--tls-key (and client "
                                       "certificates when --tls-client-ca)")
    quota_max_sessions: int = setting(0, "live sessions one tenant may hold (0: no limit; the tokens file's "
                                         "quotas override it per tenant)")
    quota_turns_per_s: float = setting(0.0, "turns per second one tenant may send, sustained (0: no limit)")
    quota_burst_turns: float = setting(0.0, "turns one tenant may send at once above its rate (0: one second's worth)")
    # state on disk and the early-warning layer
    data_dir: Path | None = setting(
        None, "directory for the service's state (the alert log); 'none': keep alerts in memory only. "
              "The command's default is $YUJING_STATE_DIR, else $XDG_STATE_HOME/yujing, else "
              "~/.local/state/yujing; one service per directory", type=state_dir_arg, cli_default=default_state_dir)
    snapshot_interval_s: float = setting(300.0, "write a snapshot of the tables this often (and always at "
                                                "SIGTERM); what a SIGKILL loses is at most this much (0: only at SIGTERM)")
    durability: str = setting("batch", "the turn log (in --data-dir): 'batch' writes each micro-batch to the OS "
                                       "before its answers (survives a process crash), 'fsync' also syncs it to the "
                                       "disk (survives a power loss), 'none' writes about once a second (a crash "
                                       "loses up to that)", choices=("none", "batch", "fsync"))
    alert_retention_days: float = setting(7.0, "alerts older than this are dropped from the alert log")
    alert_retention_mb: float = setting(1024.0, "the alert log is kept under this many MiB (oldest dropped first)")
    scan_period_s: float = setting(1.0, "how often the scheduler re-evaluates every live session at the server "
                                        "clock (SLA breaches, alert deadlines)")
    webhook_url: str | None = setting(None, "POST every alert as JSON to this http(s) URL (optional)", type=str)
    webhook_secret_file: Path | None = setting(None, "file holding the webhook's HMAC-SHA256 secret "
                                                     "(X-Yujing-Signature header)", type=Path)
    extra: dict = field(default_factory=dict, metadata={"flag": False})

    def validate(self) -> "Config":
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ConfigError(f"config {name}: {msg}", name)

        need(0 <= self.port <= 65535, "port", f"{self.port} is not a TCP port")
        need(self.backend in ("cpu", "gpu", "auto"), "backend", f"{self.backend!r}: expected cpu, gpu or auto")
        need(1 <= self.capacity <= 1 << 26, "capacity", f"{self.capacity}: expected 1 .. 67,108,864 sessions")
        need(1 <= self.agent_capacity <= 1 << 24, "agent_capacity", f"{self.agent_capacity} out of range")
        need(self.ttl_s > 0, "ttl_s", "must be > 0")
        need(self.evict_min_idle_s >= 0, "evict_min_idle_s", "must be >= 0")
        need(1 <= self.max_batch <= 65536, "max_batch", f"{self.max_batch}: expected 1 .. 65,536")
        need(1 <= self.batches_in_flight <= 8, "batches_in_flight", f"{self.batches_in_flight}: expected 1 .. 8")
        need(0 <= self.max_delay_ms <= 1000, "max_delay_ms", f"{self.max_delay_ms}: expected 0 .. 1000")
        need(1 <= self.max_pending_turns <= 1 << 24, "max_pending_turns", "expected 1 .. 16,777,216")
        need(1 <= self.max_pending_rpcs <= 1 << 24, "max_pending_rpcs", "expected 1 .. 16,777,216")
        need(1 <= self.max_text_bytes <= 1 << 22, "max_text_bytes", "expected 1 B .. 4 MiB")
        need(1 <= self.max_id_bytes <= 4096, "max_id_bytes", "expected 1 .. 4096")
        need(1 <= self.max_batch_turns <= 1 << 20, "max_batch_turns", "expected 1 .. 1,048,576")
        one_turn = self.max_text_bytes + 5 * self.max_id_bytes + 256
        need(one_turn <= self.max_request_bytes <= 1 << 30, "max_request_bytes",
             f"{self.max_request_bytes}: expected {one_turn:,} (one turn of the longest text and ids) .. 1 GiB")
        need(0 <= self.max_queue_ms <= 600_000, "max_queue_ms", f"{self.max_queue_ms}: expected 0 .. 600,000")
        need(1 <= self.stream_window <= 1 << 20, "stream_window", f"{self.stream_window}: expected 1 .. 1,048,576")
        need(self.max_batch_turns <= self.max_pending_turns, "max_pending_turns",
             f"{self.max_pending_turns} is below max_batch_turns ({self.max_batch_turns}): a full "
             "ScoreBatch could never be admitted")
        need(self.max_future_skew_s >= 0, "max_future_skew_s", "must be >= 0")
        need(self.idempotency_window >= 0, "idempotency_window", "must be >= 0")
        need(self.models in ("embedded", "external", "in-process"), "models",
             f"{self.models!r}: expected embedded, external or in-process")
        need(self.models != "external" or bool(self.triton_url), "triton_url",
             "external models need --triton-url host:port")
        need(0 <= self.triton_port <= 65535, "triton_port", f"{self.triton_port} is not a TCP port")
        need(self.triton_inference in ("http", "grpc"), "triton_inference",
             f"{self.triton_inference!r}: expected http or grpc")
        need(self.triton_http_url is None or self.models == "external", "triton_http_url",
             "is for an external Triton (--triton-url); the embedded one's HTTP port is chosen at its start")
        need(self.triton_http_url is None or _host_port(self.triton_http_url), "triton_http_url",
             f"{self.triton_http_url!r}: expected host:port")
        need(self.triton_timeout_ms > 0, "triton_timeout_ms", "must be > 0")
        need(self.models != "external" or self.triton_key_file is None or Path(self.triton_key_file).is_file(),
             "triton_key_file", f"{self.triton_key_file} does not exist")
        need(Path(self.model_repo).is_dir(), "model_repo", f"{self.model_repo} is not a directory")
        need(self.policy is None or Path(self.policy).is_file(), "policy", f"{self.policy} does not exist")
        need(self.snapshot_interval_s == 0 or self.snapshot_interval_s >= 0.1, "snapshot_interval_s",
             "expected 0 (only at SIGTERM) or at least 0.1 s")
        need(self.durability in ("none", "batch", "fsync"), "durability",
             f"{self.durability!r}: expected none, batch or fsync")
        need(0 <= self.drain_s <= 3600, "drain_s", f"{self.drain_s}: expected 0 .. 3600 s")
        need(self.alert_retention_days > 0, "alert_retention_days", "must be > 0")
        need(self.alert_retention_mb >= 1, "alert_retention_mb", "must be at least 1 MiB")
        need(0.05 <= self.scan_period_s <= 60, "scan_period_s", f"{self.scan_period_s}: expected 0.05 .. 60 s")
        need(not self.webhook_url or self.webhook_url.startswith(("http://", "https://")), "webhook_url",
             f"{self.webhook_url!r}: expected an http:// or https:// URL")
        need(self.quota_max_sessions >= 0, "quota_max_sessions", "must be >= 0 (0: no limit)")
        need(self.quota_turns_per_s >= 0, "quota_turns_per_s", "must be >= 0 (0: no limit)")
        need(self.quota_burst_turns >= 0, "quota_burst_turns", "must be >= 0")
        from yujing.service.security import tls

        tls.check(self)
        need(self.webhook_secret_file is None or Path(self.webhook_secret_file).is_file(), "webhook_secret_file",
             f"{self.webhook_secret_file} does not exist")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

