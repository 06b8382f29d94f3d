"""Overlapping batches in the engine (the batcher keeps up to ``--batches-in-flight``
batches out): their model calls run at the same time, but they are applied in the order
``Engine.score`` was called, whatever order the models answer in, and a retry planned
while its original was still unapplied is answered as a duplicate, applied once.

The models are the real in-process ones; only their timing is steered, by holding a
call's answer until the test releases it."""
import asyncio
import time

from yujing.service.config import Config
from yujing.service.contract import pb
from yujing.service.engine import Engine
from yujing.service.policy import load_policy
from yujing.service.session_table import SessionTable
from yujing.service.triton.router import ModelRouter
from yujing.service.validate import validate_turn

from service_models import in_process_repo


class _HeldRouter:
    """The real router; the call whose texts include ``hold_text`` waits for ``release``."""

    def __init__(self, router, hold_text: str):
        self.router, self.hold_text, self.release = router, hold_text, asyncio.Event()
        self.calls = []

    async def classify(self, texts):
        self.calls.append(list(texts))
        result = await self.router.classify(texts)
        if self.hold_text in texts:
            await self.release.wait()
        return result


def _turn(cfg, session, turn_id, text, now):
    return validate_turn(pb.Turn(session_id=session, turn_id=turn_id, speaker=pb.CUSTOMER, text=text), cfg, now)


def test_overlapping_batches_apply_in_call_order_and_a_retry_is_applied_once():
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo()).validate()

    async def run():
        router = ModelRouter(cfg.model_repo, None)
        await router.start()
        try:
            held = _HeldRouter(router, "first batch, held")
            eng = Engine(load_policy(), SessionTable(capacity=64, agent_capacity=4, backend="cpu"), held, 1024)
            now = int(time.time() * 1000)
            first = [_turn(cfg, "s1", "t1", "first batch, held", now),
                     _turn(cfg, "s2", "t1", "我要投诉，三天了还没发货！", now)]
            # the second batch: the next turn of s1, and a retry of s2's turn t1
            second = [_turn(cfg, "s1", "t2", "This is unacceptable, I want a refund now!", now),
                      _turn(cfg, "s2", "t1", "我要投诉，三天了还没发货！", now)]
            a = asyncio.ensure_future(eng.score(first))
            b = asyncio.ensure_future(eng.score(second))
            for _ in range(200):                      # the second's models answer first
                await asyncio.sleep(0.005)
                if len(held.calls) == 2:
                    break
            await asyncio.sleep(0.05)
            assert not a.done() and not b.done()      # the second waits for the first
            held.release.set()
            return await a, await b, eng, held.calls
        finally:
            await router.close()

    first, second, eng, calls = asyncio.run(run())
    assert "first batch, held" in calls[0] and len(calls[1]) == 2      # both model calls were out at once
    # once the first was applied, the second looked its turns up again: the retry is known,
    # and only the turn still fresh went to the models again
    assert calls[2:] == [["This is unacceptable, I want a refund now!"]]
    r1, r2 = pb.TurnRisk.FromString(first[0]), pb.TurnRisk.FromString(second[0])
    assert (r1.customer_turns, r2.customer_turns) == (1, 2)            # s1: t1 applied before t2
    retry = pb.TurnRisk.FromString(second[1])
    assert retry.duplicate and retry.customer_turns == 1               # s2's t1 once, answered as a repeat
    assert retry.risk_score == pb.TurnRisk.FromString(first[1]).risk_score
    assert eng.turns == 3
