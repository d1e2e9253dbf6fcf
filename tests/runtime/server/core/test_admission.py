"""Admission: slots, a FIFO queue, refusal at once when full, and clean give-ups."""

from __future__ import annotations

import asyncio

import pytest

from runtime.server.core.admission import Admission
from runtime.server.guard.errors import QueueFull


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_slots_then_queue_then_refusal():
    async def scenario():
        admission = Admission("m", max_concurrent=2, max_queue=1)
        await admission.acquire()
        await admission.acquire()
        assert (admission.active, admission.queued) == (2, 0)
        waiting = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert admission.queued == 1 and not waiting.done()
        with pytest.raises(QueueFull, match="'m' is busy: 2 running and 1 queued"):
            await admission.acquire()  # refused at once, no waiting
        admission.release()  # the slot passes straight to the waiter
        await waiting
        assert (admission.active, admission.queued) == (2, 0)
        admission.release()
        admission.release()
        assert admission.active == 0

    _run(scenario())


def test_waiters_are_served_in_arrival_order():
    async def scenario():
        admission = Admission("m", max_concurrent=1, max_queue=5)
        order = []

        async def request(i):
            async with admission.slot():
                order.append(i)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(request(i) for i in range(6)))
        assert order == list(range(6))
        assert (admission.active, admission.queued) == (0, 0)

    _run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_without_a_slot():
    async def scenario():
        admission = Admission("m", max_concurrent=1, max_queue=1)
        await admission.acquire()
        waiting = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (admission.active, admission.queued) == (1, 0)
        admission.release()
        assert admission.active == 0
        await admission.acquire()  # the freed queue place and slot are usable again
        assert admission.active == 1

    _run(scenario())


def test_a_waiter_cancelled_as_the_slot_arrives_hands_it_on():
    async def scenario():
        admission = Admission("m", max_concurrent=1, max_queue=2)
        await admission.acquire()
        first = asyncio.create_task(admission.acquire())
        second = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        admission.release()  # the slot is handed to `first`...
        first.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        await second  # the slot moved on instead of leaking
        assert (admission.active, admission.queued) == (1, 0)

    _run(scenario())


def test_no_queue_means_busy_is_refused():
    async def scenario():
        admission = Admission("m", max_concurrent=1, max_queue=0)
        async with admission.slot():
            with pytest.raises(QueueFull):
                await admission.acquire()
        async with admission.slot():
            assert admission.active == 1

    _run(scenario())


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError):
        Admission("m", max_concurrent=0, max_queue=1)
    with pytest.raises(ValueError):
        Admission("m", max_concurrent=1, max_queue=-1)


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


def test_a_refusal_says_how_often_places_free_under_load(monkeypatch):
    """The retry hint is the running mean of the intervals between two ends of requests
    while others wait (retry_pushback.py); an end with nobody waiting starts nothing."""
    import runtime.server.core.admission as admission_module

    clock = _FakeClock()
    monkeypatch.setattr(admission_module, "time", clock)

    async def refused_hint(admission):
        with pytest.raises(QueueFull) as refused:
            await admission.acquire()
        return refused.value.retry_after_s

    async def pass_slot_after(admission, seconds):
        """A waiter queues; `seconds` later the running request ends and it takes over."""
        waiter = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        clock.now += seconds
        admission.release()
        await waiter

    async def scenario():
        admission = Admission("m", max_concurrent=1, max_queue=1)
        await admission.acquire()
        admission.release()  # nobody waited: no interval
        await admission.acquire()
        waiter = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert await refused_hint(admission) is None  # nothing learnt yet
        admission.release()  # under load: the first end starts an interval
        await waiter
        await pass_slot_after(admission, 0.3)
        waiter = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert await refused_hint(admission) == pytest.approx(0.3)
        clock.now += 0.5
        admission.release()
        await waiter
        waiter = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert await refused_hint(admission) == pytest.approx(0.3 + 0.2 * (0.5 - 0.3))
        admission.release()
        await waiter
        admission.release()

    _run(scenario())


def test_the_retry_hint_stays_within_bounds():
    from runtime.server.core.retry_pushback import MAX_PUSHBACK_S, MIN_PUSHBACK_S, FreeingPace

    pace = FreeingPace()
    assert pace.retry_after_s() is None
    pace.add(0.0)
    assert pace.retry_after_s() == MIN_PUSHBACK_S
    pace = FreeingPace()
    pace.add(3600.0)
    assert pace.retry_after_s() == MAX_PUSHBACK_S
