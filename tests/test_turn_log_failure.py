"""A turn log that cannot write (a full disk): the batch is refused UNAVAILABLE with
nothing applied, later batches too while it cannot, and scoring goes on by itself once
the disk has room, without a restart. The failure is real: the kernel refuses writes past
RLIMIT_FSIZE (EFBIG), as a full disk refuses them (ENOSPC)."""
import asyncio
import time

from yujing.service.config import Config
from yujing.service.contract import pb
from yujing.service.engine import Engine
from yujing.service.errors import StateUnavailable
from yujing.service.policy import load_policy
from yujing.service.session_table import SessionTable
from yujing.service.storage.turn_log import TurnLog
from yujing.service.triton.router import ModelRouter
from yujing.service.validate import validate_turn

from service_models import in_process_repo
from test_segment_log import _fail_writes_past


def test_a_batch_the_turn_log_cannot_write_is_refused_and_scoring_resumes_when_it_can(tmp_path):
    cfg = Config(port=0, models="in-process", model_repo=in_process_repo()).validate()

    def turn(tid):
        return validate_turn(pb.Turn(session_id="disk", turn_id=tid, speaker=pb.CUSTOMER, text="where is my order?"),
                             cfg, int(time.time() * 1000))

    async def run():
        router = ModelRouter(cfg.model_repo, None)
        await router.start()
        try:
            eng = Engine(load_policy(), SessionTable(capacity=64, agent_capacity=4, backend="cpu"), router, 1024)
            eng.turn_log = TurnLog(tmp_path / "turns")
            first = await eng.score([turn("1")])
            active = sorted((tmp_path / "turns").glob("*.seg"))[-1]
            await router.classify(["warm"])               # nothing but the log write in the window below
            undo = _fail_writes_past(active.stat().st_size + 10)
            try:
                refused = await eng.score([turn("2")])
            finally:
                undo()
            eng.turn_log.log._retry_at = float("inf")      # still failing: refused without a try
            still = await eng.score([turn("2")])
            eng.turn_log.log._retry_at = 0.0               # the disk has room again
            later = await eng.score([turn("2")])
            return first, refused, still, later, eng
        finally:
            await router.close()

    first, refused, still, later, eng = asyncio.run(run())
    assert pb.TurnRisk.FromString(first[0]).customer_turns == 1
    for answer in (refused[0], still[0]):
        assert isinstance(answer, StateUnavailable) and "nothing was applied" in answer.message
    assert "File too large" in refused[0].message and "File too large" in still[0].message
    got = pb.TurnRisk.FromString(later[0])
    assert got.customer_turns == 2 and not got.duplicate      # the refused tries changed nothing
    assert eng.turns == 2
