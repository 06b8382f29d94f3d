"""Checks every field a client can send, before anything is queued.

A turn that fails a check is refused with INVALID_ARGUMENT naming the field (an
:class:`~yujing.service.errors.InvalidTurn`), and nothing of it reaches the session table.
"""
from __future__ import annotations

from yujing.service.config import Config
from yujing.service.contract import pb
from yujing.service.engine import PendingTurn
from yujing.service.errors import InvalidTurn

# A timestamp in milliseconds below this (1973-03-03) is almost surely one sent in seconds
# (1.79e9 s is 2026; read as ms it is January 1970): refused, with a message saying so.
MIN_TIMESTAMP_MS = 100_000_000_000

_ENUMS = tuple((name, enum, frozenset(enum.values()), zero_ok) for name, enum, zero_ok in (
    ("speaker", pb.Speaker, False),
    ("channel", pb.Channel, True),
    ("customer_tier", pb.CustomerTier, True),
    ("event", pb.Event, True),
))


def check_id(value: str, name: str, limit: int, required: bool, prefix: str = "") -> None:
    """Refuse (InvalidTurn naming ``prefix + name``) a missing required id or one over ``limit``
    UTF-8 bytes; every id-like field a client sends is checked here."""
    if required and not value:
        raise InvalidTurn(f"{prefix}{name} is required", prefix + name)
    # UTF-8 takes at most 4 bytes a character: encode only when that could pass the limit
    if len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
        raise InvalidTurn(f"{prefix}{name} is longer than {limit} bytes", prefix + name)


def session_key(ref, cfg: Config, prefix: str = "") -> tuple[str, str]:
    check_id(ref.tenant_id, "tenant_id", cfg.max_id_bytes, False, prefix)
    check_id(ref.session_id, "session_id", cfg.max_id_bytes, True, prefix)
    return (ref.tenant_id, ref.session_id)


def validate_turn(turn, cfg: Config, now_ms: int, prefix: str = "") -> PendingTurn:
    """A :class:`PendingTurn` for a valid turn; raises :class:`InvalidTurn` otherwise.

    ``prefix`` names the turn inside a batch (``"turns[3]."``) in messages and fields.
    """
    key = session_key(turn, cfg, prefix)
    check_id(turn.turn_id, "turn_id", cfg.max_id_bytes, True, prefix)
    check_id(turn.agent_id, "agent_id", cfg.max_id_bytes, False, prefix)
    check_id(turn.queue, "queue", cfg.max_id_bytes, False, prefix)
    text_bytes = len(turn.text.encode("utf-8")) if len(turn.text) * 4 > cfg.max_text_bytes else 0
    if text_bytes > cfg.max_text_bytes:
        raise InvalidTurn(f"{prefix}text is {text_bytes} bytes; the limit is {cfg.max_text_bytes}",
                          prefix + "text")
    for name, enum, valid, zero_ok in _ENUMS:
        v = getattr(turn, name)
        if v == 0 and not zero_ok:
            raise InvalidTurn(f"{prefix}{name} is required (one of "
                              f"{', '.join(n for n in enum.keys()[1:])})", prefix + name)
        if v not in valid:
            raise InvalidTurn(f"{prefix}{name} = {v} is not a known {enum.DESCRIPTOR.name} value",
                              prefix + name)
    ts = turn.timestamp_ms
    if ts < 0:
        raise InvalidTurn(f"{prefix}timestamp_ms = {ts} is negative", prefix + "timestamp_ms")
    if 0 < ts < MIN_TIMESTAMP_MS:
        raise InvalidTurn(f"{prefix}timestamp_ms = {ts} looks like seconds, not milliseconds since the "
                          f"epoch (it would be {ts / 86_400_000:.1f} days after 1970-01-01); send "
                          f"milliseconds, or 0 for the server clock", prefix + "timestamp_ms")
    if ts > now_ms + cfg.max_future_skew_s * 1000:
        raise InvalidTurn(f"{prefix}timestamp_ms = {ts} is more than {cfg.max_future_skew_s:g} s ahead "
                          f"of the server clock ({now_ms})", prefix + "timestamp_ms")
    return PendingTurn(turn=turn, key=key, idem=(turn.tenant_id, turn.session_id, turn.turn_id),
                       ts_ms=ts or now_ms, now_ms=now_ms)
