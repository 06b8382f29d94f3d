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
# the values a valid turn may carry, for the one combined test: the same sets, without 0
# where 0 ("not set") is refused
_SPEAKERS, _CHANNELS, _TIERS, _EVENTS = (valid if zero_ok else valid - {0} for _, _, valid, zero_ok in _ENUMS)


def check_id(value: str, name: str, limit: int, required: bool) -> None:
    """Refuse (InvalidTurn naming ``name``) a missing required id or one over ``limit``
    UTF-8 bytes; every id-like field a client sends is checked here."""
    if required and not value:
        raise InvalidTurn(f"{name} is required", name)
    # UTF-8 takes at most 4 bytes a character: encode only when that could pass the limit
    if len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
        raise InvalidTurn(f"{name} is longer than {limit} bytes", name)


def session_key(ref, cfg: Config) -> tuple[str, str]:
    check_id(ref.tenant_id, "tenant_id", cfg.max_id_bytes, False)
    check_id(ref.session_id, "session_id", cfg.max_id_bytes, True)
    return (ref.tenant_id, ref.session_id)


def validate_turn(turn, cfg: Config, now_ms: int) -> PendingTurn:
    """A :class:`PendingTurn` for a valid turn; raises :class:`InvalidTurn` otherwise (a
    turn inside a batch: the handler names it with :meth:`InvalidTurn.within`).

    Each field is read once; a turn whose every field is plainly within its limits (the
    usual case) passes on one combined test, and only a turn that might fail goes through
    the checks one by one, which find the field to name.
    """
    tenant, session, turn_id = turn.tenant_id, turn.session_id, turn.turn_id
    speaker, channel, tier, event = turn.speaker, turn.channel, turn.customer_tier, turn.event
    ts = turn.timestamp_ms
    id4 = cfg.max_id_bytes // 4
    if (session and turn_id and len(tenant) <= id4 and len(session) <= id4 and len(turn_id) <= id4
            and len(turn.agent_id) <= id4 and len(turn.queue) <= id4 and len(turn.text) * 4 <= cfg.max_text_bytes
            and speaker in _SPEAKERS and channel in _CHANNELS and tier in _TIERS and event in _EVENTS
            and (ts == 0 or MIN_TIMESTAMP_MS <= ts <= now_ms + cfg.max_future_skew_s * 1000)):
        return PendingTurn(turn=turn, key=(tenant, session), idem=(tenant, session, turn_id),
                           ts_ms=ts or now_ms, now_ms=now_ms)
    return _validate_slowly(turn, cfg, now_ms)


def _validate_slowly(turn, cfg: Config, now_ms: int) -> PendingTurn:
    """The checks one by one, in the order the refusals name them (the first failing one)."""
    key = session_key(turn, cfg)
    check_id(turn.turn_id, "turn_id", cfg.max_id_bytes, True)
    check_id(turn.agent_id, "agent_id", cfg.max_id_bytes, False)
    check_id(turn.queue, "queue", cfg.max_id_bytes, False)
    text_bytes = len(turn.text.encode("utf-8")) if len(turn.text) * 4 > cfg.max_text_bytes else 0
    if text_bytes > cfg.max_text_bytes:
        raise InvalidTurn(f"text is {text_bytes} bytes; the limit is {cfg.max_text_bytes}", "text")
    for name, enum, valid, zero_ok in _ENUMS:
        v = getattr(turn, name)
        if v == 0 and not zero_ok:
            raise InvalidTurn(f"{name} is required (one of "
                              f"{', '.join(n for n in enum.keys()[1:])})", name)
        if v not in valid:
            raise InvalidTurn(f"{name} = {v} is not a known {enum.DESCRIPTOR.name} value", name)
    ts = turn.timestamp_ms
    if ts < 0:
        raise InvalidTurn(f"timestamp_ms = {ts} is negative", "timestamp_ms")
    if 0 < ts < MIN_TIMESTAMP_MS:
        raise InvalidTurn(f"timestamp_ms = {ts} looks like seconds, not milliseconds since the "
                          f"epoch (it would be {ts / 86_400_000:.1f} days after 1970-01-01); send "
                          f"milliseconds, or 0 for the server clock", "timestamp_ms")
    if ts > now_ms + cfg.max_future_skew_s * 1000:
        raise InvalidTurn(f"timestamp_ms = {ts} is more than {cfg.max_future_skew_s:g} s ahead "
                          f"of the server clock ({now_ms})", "timestamp_ms")
    return PendingTurn(turn=turn, key=key, idem=(turn.tenant_id, turn.session_id, turn.turn_id),
                       ts_ms=ts or now_ms, now_ms=now_ms)
