"""The micro-batcher: batches run one at a time in arrival order (so state is applied
in order), a concurrent burst is gathered into batches, a crash fails only its own
batch, and close() drains what is queued."""
import asyncio

import pytest

from yujing.service.batcher import MicroBatcher


def test_batches_run_one_at_a_time_in_arrival_order():
    seen, running = [], []

    async def process(items):
        running.append(1)
        assert len(running) == 1                     # never two batches at once
        await asyncio.sleep(0.02 if items[0] == 0 else 0.0)
        seen.append(list(items))
        running.pop()
        return [x * 10 for x in items]

    async def main():
        b = MicroBatcher(process, max_batch=2, max_delay_ms=0)
        b.start()
        answers = await b.submit_group(list(range(6)))
        await b.close()
        return answers

    answers = asyncio.run(main())
    assert answers == [0, 10, 20, 30, 40, 50]
    assert [x for batch in seen for x in batch] == list(range(6))
    assert max(len(x) for x in seen) == 2


def test_a_failing_batch_fails_only_its_turns():
    async def process(items):
        if 3 in items:
            raise RuntimeError("boom")
        return items

    async def main():
        b = MicroBatcher(process, max_batch=2, max_delay_ms=0)
        b.start()
        results = await b.submit_group(list(range(6)))
        await b.close()
        return results

    results = asyncio.run(main())
    assert results[:2] == [0, 1] and results[4:] == [4, 5]
    assert all(isinstance(r, RuntimeError) for r in results[2:4])


def test_close_finishes_everything_queued():
    async def main():
        b = MicroBatcher(lambda items: asyncio.sleep(0.01, result=items), max_batch=4, max_delay_ms=1)
        b.start()
        group = b.submit_group(list(range(10)))
        single = b.submit(10)
        await b.close()
        return group.result() + [single.result()], b.in_flight

    results, in_flight = asyncio.run(main())
    assert results == list(range(11)) and in_flight == 0


def test_the_wait_estimate_follows_the_cost_of_batches_and_shrugs_off_one_slow_batch():
    async def main():
        b = MicroBatcher(lambda items: asyncio.sleep(0, result=items), max_batch=256, max_delay_ms=0)
        assert b.expected_wait_s(256) == 0.0               # nothing learned yet: no refusal by time
        for _ in range(40):                                 # 10 ms a full batch, 0.5 ms a lone turn
            b._learn(256, 0.010)
            b._learn(1, 0.0005)
        four_batches = b.expected_wait_s(1024)
        b._learn(256, 5.0)                                  # one pause of the process
        after_pause = b.expected_wait_s(1024)
        return four_batches, after_pause

    four_batches, after_pause = asyncio.run(main())
    assert 0.03 < four_batches < 0.06, four_batches          # about 4 x 10 ms
    assert after_pause < 2.5 * four_batches, after_pause


def test_a_cancelled_group_drops_its_turns_not_yet_scored_and_others_go_on():
    seen = []

    async def process(items):
        seen.extend(items)
        await asyncio.sleep(0.01)
        return items

    async def main():
        b = MicroBatcher(process, max_batch=2, max_delay_ms=0)
        dropped = []
        b._on_drop = lambda reason, n: dropped.append((reason, n))
        b.start()
        gone = b.submit_group(list(range(6)))         # its call goes away after the first batch
        await asyncio.sleep(0.005)
        gone.cancel()
        kept = b.submit_group([10, 11])
        empty = b.submit_group([])
        answers = await kept
        await b.close()
        return answers, empty.result(), dropped, b.in_flight

    answers, empty, dropped, in_flight = asyncio.run(main())
    assert answers == [10, 11] and empty == []
    assert seen == [0, 1, 10, 11]                       # 2..5 never reached the engine
    # 0, 1 were being scored when the call went: applied, undelivered; 2..5 dropped unscored
    assert dropped == [("undelivered", 2), ("cancelled", 4)] and in_flight == 0


def test_with_two_in_flight_the_next_full_batch_starts_while_one_waits_and_answers_keep_order():
    started, running, most = [], [], [0]
    first_may_end = None

    async def process(items):
        started.append(list(items))
        running.append(1)
        most[0] = max(most[0], len(running))
        if items[0] == 0:
            await first_may_end.wait()             # the first batch's models are slow
        running.pop()
        return [x * 10 for x in items]

    async def main():
        nonlocal first_may_end
        first_may_end = asyncio.Event()
        b = MicroBatcher(process, max_batch=2, max_delay_ms=0, in_flight_batches=2)
        b.start()
        group = b.submit_group(list(range(5)))     # two full batches queued behind the first
        for _ in range(100):
            await asyncio.sleep(0.001)
            if len(started) == 2:
                break
        out_at_once = len(started)
        assert not group.done()
        first_may_end.set()
        answers = await group
        await b.close()
        return answers, out_at_once, b.in_flight, b.overlapped

    answers, out_at_once, in_flight, overlapped = asyncio.run(main())
    assert out_at_once == 2 and most[0] == 2       # never more than two out
    assert overlapped == 1                         # [2, 3] beside [0, 1]; [4], partial, waited for them
    assert answers == [0, 10, 20, 30, 40] and in_flight == 0
    assert started == [[0, 1], [2, 3], [4]]


def test_with_two_in_flight_a_partial_batch_waits_for_the_one_out():
    started = []
    first_may_end = None

    async def process(items):
        started.append(list(items))
        if items[0] == 0:
            await first_may_end.wait()
        return items

    async def main():
        nonlocal first_may_end
        first_may_end = asyncio.Event()
        b = MicroBatcher(process, max_batch=4, max_delay_ms=0, in_flight_batches=2)
        b.start()
        g1 = b.submit_group([0, 1, 2, 3])
        await asyncio.sleep(0.005)
        g2 = b.submit_group([4, 5])               # less than a batch: not started beside the first
        await asyncio.sleep(0.02)
        seen_while_out = [list(x) for x in started]
        first_may_end.set()
        got = await g1, await g2
        await b.close()
        return seen_while_out, got

    seen_while_out, got = asyncio.run(main())
    assert seen_while_out == [[0, 1, 2, 3]]
    assert got == ([0, 1, 2, 3], [4, 5])


def test_the_arrival_rate_is_counted_over_windows():
    async def main():
        b = MicroBatcher(lambda items: asyncio.sleep(0, result=items), max_batch=256, max_delay_ms=2)
        assert b._rate(100.0) == 0.0                    # the first window begins
        b.submit_group(list(range(50)))
        assert b._rate(100.01) == 0.0                   # shorter than a window: no estimate yet
        assert b._rate(100.1) == pytest.approx(500.0)   # 50 turns in 0.1 s
        b.submit_group(list(range(10)))
        assert b._rate(100.2) == pytest.approx(0.5 * (500.0 + 100.0))  # averaged with the window before
        assert b._rate(100.3) == pytest.approx(0.5 * (300.0 + 0.0))    # nothing arrived: the rate falls
        b.refuse_queued(None)

    asyncio.run(main())


def test_a_batch_gathers_companions_only_when_enough_are_expected_within_the_delay():
    async def main():
        b = MicroBatcher(lambda items: asyncio.sleep(0, result=items), max_batch=256, max_delay_ms=2)
        b.submit(1)
        b._rate_at, b._rate_windows = (0.0, b.arrivals), 1
        b.last_batch_size = 10
        b.arrival_rate = 400.0                           # 0.8 turns expected in 2 ms: take what is there
        slow = b._should_gather(0.01)
        b.arrival_rate = 5000.0                          # 10 expected: wait for them
        fast = b._should_gather(0.02)
        b.last_batch_size = 1                            # a lone caller is never held back
        lone = b._should_gather(0.03)
        b.refuse_queued(None)
        return slow, fast, lone

    assert asyncio.run(main()) == (False, True, False)
