"""Each call's CPU time on the event loop goes to the model it names, and only that:
real tasks on a real loop, burning real CPU between real sleeps."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections import defaultdict

import pytest

from runtime.server.core import request_cpu


def burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Ledger:
    def __init__(self) -> None:
        self.charged: dict[str, float] = defaultdict(float)
        self.threads: set[int] = set()

    def charge(self, model: str, seconds: float) -> None:
        self.charged[model] += seconds
        self.threads.add(threading.get_ident())


def run_metered(main) -> None:
    async def metered() -> None:
        restore = request_cpu.install(asyncio.get_running_loop())
        try:
            await main()
        finally:
            restore()

    asyncio.run(metered())


def test_a_calls_cpu_time_goes_to_its_model_and_its_sleeps_do_not():
    ledger = Ledger()

    async def call() -> str:
        burn(0.02)  # reading and parsing: before it knows its model
        request_cpu.bill(ledger.charge, "vit")
        for _ in range(3):
            await asyncio.sleep(0.05)  # waiting for its batch: no CPU
            burn(0.01)
        return "answer"

    async def main() -> None:
        assert await asyncio.create_task(call()) == "answer"

    run_metered(main)
    assert set(ledger.charged) == {"vit"}
    # 50 ms burnt, 150 ms asleep; the metering's own cost is microseconds.
    assert 0.048 <= ledger.charged["vit"] <= 0.065


def test_calls_are_charged_apart_and_a_call_may_change_its_model():
    ledger = Ledger()

    async def item(model: str, seconds: float) -> None:
        request_cpu.bill(ledger.charge, model)
        await asyncio.sleep(0)
        burn(seconds)

    async def stream() -> None:
        request_cpu.bill(ledger.charge, "llm")
        burn(0.01)
        child = asyncio.ensure_future(item("vit", 0.03))  # its own task, its own account
        await asyncio.sleep(0)
        request_cpu.bill(ledger.charge, "other")  # what it spent so far stays with "llm"
        burn(0.02)
        await child

    async def main() -> None:
        await asyncio.create_task(stream())

    run_metered(main)
    assert ledger.charged["vit"] == pytest.approx(0.03, abs=0.008)
    assert ledger.charged["llm"] == pytest.approx(0.01, abs=0.008)
    assert ledger.charged["other"] == pytest.approx(0.02, abs=0.008)


def test_work_on_another_thread_is_added_to_the_call_that_asked_for_it():
    ledger = Ledger()

    async def call() -> None:
        request_cpu.bill(ledger.charge, "vit")

        def decode() -> float:
            started = time.thread_time()
            burn(0.03)
            return time.thread_time() - started

        spent = await asyncio.get_running_loop().run_in_executor(None, decode)
        request_cpu.add(spent)

    async def main() -> None:
        await asyncio.create_task(call())

    run_metered(main)
    assert ledger.charged["vit"] >= 0.03
    assert ledger.threads == {threading.get_ident()}  # charged on the loop's thread


def test_results_errors_and_cancellation_pass_through_unchanged():
    ledger = Ledger()

    async def fails() -> None:
        request_cpu.bill(ledger.charge, "llm")
        burn(0.006)
        raise ValueError("bad request")

    async def waits() -> None:
        await asyncio.sleep(10)

    async def never_started() -> None:
        raise AssertionError("a task cancelled before its first step runs nothing")

    async def main() -> None:
        with pytest.raises(ValueError, match="bad request"):
            await asyncio.create_task(fails())
        waiting = asyncio.create_task(waits())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert "waits" in repr(waiting)  # a task still says what it runs
        unstarted = asyncio.create_task(never_started())
        unstarted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unstarted

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        run_metered(main)
        gc.collect()
    assert ledger.charged["llm"] >= 0.006  # a failing call pays for what it did


def test_a_failing_charge_never_fails_the_call(caplog):
    def broken(model: str, seconds: float) -> None:
        raise RuntimeError("scheduler gone")

    async def call() -> str:
        request_cpu.bill(broken, "vit")
        burn(0.01)  # past FLUSH_S: the charge is tried within this step
        await asyncio.sleep(0)
        burn(0.01)
        return "answer"

    async def main() -> None:
        assert await asyncio.create_task(call()) == "answer"

    run_metered(main)
    failures = [r for r in caplog.records if "goes uncharged" in r.getMessage()]
    assert len(failures) == 1  # tried once, then the call is left uncharged


def test_outside_a_metered_loop_billing_does_nothing_and_install_restores():
    ledger = Ledger()
    request_cpu.bill(ledger.charge, "vit")  # no task at all
    request_cpu.add(1.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert loop.get_task_factory() is None
        restore = request_cpu.install(loop)
        factory = loop.get_task_factory()
        again = request_cpu.install(loop)  # a second daemon on this loop: metered once
        assert loop.get_task_factory() is factory
        again()
        assert loop.get_task_factory() is factory
        restore()
        assert loop.get_task_factory() is None

    asyncio.run(main())
    assert ledger.charged == {}
