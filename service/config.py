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

from service.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPO = REPO_ROOT / "model_repo"


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None        # Prometheus /metrics; None: off
    # session table
    backend: str = "auto"                  # cpu | gpu | auto
    capacity: int = 1 << 20                # sessions (1,048,576); up to 4,194,304 and beyond
    agent_capacity: int = 1 << 16
    ttl_s: float = 30 * 60.0               # idle sessions expire after this
    evict_min_idle_s: float = 60.0         # only sessions idle this long may be evicted when full
    # micro-batcher
    max_batch: int = 256                   # turns per kernel launch
    max_delay_ms: float = 2.0              # wait at most this long to fill a batch
    # admission control: unary and batch calls are refused (RESOURCE_EXHAUSTED) while this
    # many turns are accepted and not yet answered; streams are bounded by their window
    max_pending_turns: int = 32_768
    # calls gRPC core may hold before the service picks them up; beyond it gRPC core itself
    # cancels calls (its default, 1,000 to 3,000 with random early drop, cancelled bursts)
    max_pending_rpcs: int = 65_536
    # limits on what a client may send
    max_text_bytes: int = 16 * 1024
    max_id_bytes: int = 128
    max_batch_turns: int = 4096            # turns in one ScoreBatch request
    max_future_skew_s: float = 300.0       # timestamps further ahead of the server clock are refused
    idempotency_window: int = 262_144      # answers kept for repeated turn_ids
    # models
    models: str = "embedded"               # embedded (start Triton) | external (--triton-url) | in-process
    triton_url: str | None = None
    triton_port: int = 8001                # the embedded Triton's gRPC port (0: a free one)
    model_repo: Path = DEFAULT_MODEL_REPO
    sentiment_model: str = "sentiment"
    intent_model: str = "intent"
    triton_timeout_ms: float = 500.0
    # policy and shutdown
    policy: Path | None = None             # None: service/policy_default.toml
    grace_s: float = 5.0
    extra: dict = field(default_factory=dict)

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
        need(0 <= self.max_delay_ms <= 1000, "max_delay_ms", f"{self.max_delay_ms}: expected 0 .. 1000")
        need(1 <= self.max_pending_turns <= 1 << 24, "max_pending_turns", "expected 1 .. 16,777,216")
        need(1 <= self.max_pending_rpcs <= 1 << 24, "max_pending_rpcs", "expected 1 .. 16,777,216")
        need(1 <= self.max_text_bytes <= 1 << 22, "max_text_bytes", "expected 1 B .. 4 MiB")
        need(1 <= self.max_id_bytes <= 4096, "max_id_bytes", "expected 1 .. 4096")
        need(1 <= self.max_batch_turns <= 1 << 20, "max_batch_turns", "expected 1 .. 1,048,576")
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
        need(self.triton_timeout_ms > 0, "triton_timeout_ms", "must be > 0")
        need(Path(self.model_repo).is_dir(), "model_repo", f"{self.model_repo} is not a directory")
        need(self.policy is None or Path(self.policy).is_file(), "policy", f"{self.policy} does not exist")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def data_dir() -> Path:
    """The shared data sets: $YUJING_DATA_DIR, else ../shared/data beside the repo."""
    return Path(os.environ.get("YUJING_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
