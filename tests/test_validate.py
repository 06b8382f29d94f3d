"""Validation's one combined test for a plainly valid turn (the fast path) agrees with the
checks one by one: every turn either passes both with the same PendingTurn or is refused
by the slow path with the message naming the field; and a refusal inside a batch is named
by the turn's place."""
import random

from yujing.service.config import Config
from yujing.service.contract import pb
from yujing.service.errors import InvalidTurn, PermissionDenied
from yujing.service.validate import MIN_TIMESTAMP_MS, _validate_slowly, validate_turn

NOW = 1_800_000_000_000


def _outcome(fn, turn, cfg):
    try:
        p = fn(turn, cfg, NOW)
    except InvalidTurn as err:
        return ("refused", err.message, err.field)
    return ("ok", p.key, p.idem, p.ts_ms, p.now_ms, p.turn is turn)


def _random_turn(rng: random.Random, cfg: Config) -> pb.Turn:
    def some_id(required: bool):
        kind = rng.random()
        if kind < 0.1 and not required:
            return ""
        if kind < 0.02:
            return ""
        lim = cfg.max_id_bytes
        n = rng.choice([1, 5, 9, lim // 4] if rng.random() < 0.9 else [lim // 4 + 1, lim // 3, lim // 2, lim, lim + 1])
        alphabet = rng.choice(["abc", "会话", "é", "😀"])
        return "".join(rng.choice(alphabet) for _ in range(n))

    def enum_value(enum, zero_ok):
        vals = list(enum.values())
        r = rng.random()
        if r < 0.02:
            return 0
        if r < 0.04:
            return max(vals) + rng.randint(1, 5)
        return rng.choice(vals)

    text_len = rng.choice([0, 10, 10, 10, cfg.max_text_bytes // 4, cfg.max_text_bytes // 4 + 1,
                           cfg.max_text_bytes // 3, cfg.max_text_bytes + 1])
    skew = int(cfg.max_future_skew_s * 1000)
    ts = rng.choice([0, 0, 0, NOW, NOW, NOW + 1000, -5, 1_700_000_000, MIN_TIMESTAMP_MS - 1, MIN_TIMESTAMP_MS,
                     NOW + skew, NOW + skew + 1])
    return pb.Turn(tenant_id=some_id(False), session_id=some_id(True), turn_id=some_id(True),
                   agent_id=some_id(False), queue=some_id(False),
                   text=rng.choice(["好", "a", "é"]) * text_len,
                   speaker=enum_value(pb.Speaker, False), channel=enum_value(pb.Channel, True),
                   customer_tier=enum_value(pb.CustomerTier, True), event=enum_value(pb.Event, True),
                   timestamp_ms=ts)


def test_the_fast_path_agrees_with_the_checks_one_by_one():
    cfg = Config()
    rng = random.Random(7)
    seen = {"ok": 0, "refused": 0}
    for _ in range(3000):
        turn = _random_turn(rng, cfg)
        fast, slow = _outcome(validate_turn, turn, cfg), _outcome(_validate_slowly, turn, cfg)
        assert fast == slow, (turn, fast, slow)
        seen[fast[0]] += 1
    assert seen["ok"] > 200 and seen["refused"] > 200, seen      # both sides exercised


def test_a_refusal_inside_a_batch_names_the_turn():
    err = InvalidTurn("session_id is required", "session_id").within("turns[3].")
    assert (err.message, err.field, str(err)) == ("turns[3].session_id is required", "turns[3].session_id",
                                                  "turns[3].session_id is required")
    denied = PermissionDenied("tenant_id 'b': this token acts for tenant 'a' only", "tenant_id").within("turns[0].")
    assert isinstance(denied, PermissionDenied) and denied.field == "turns[0].tenant_id"
