"""The scheduler's threads, and the units of real models waiting on it.

The policy has its own exact tests (test_fair_queue.py); here: worker threads really
block and wake, a unit whose request expires while it waits is dropped and counted,
and each kind of served model (LLMEngine, ContinuousBatcher, the vision Batcher)
waits for its turn and sheds what expired.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from runtime.llm.continuous_batching import ContinuousBatcher
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams
from runtime.server.core.admission import Admission
from runtime.server.core.batcher import Batcher
from runtime.server.core.fair_queue import Schedule
from runtime.server.core.generation import StopCondition
from runtime.server.core.scheduler import UNGATED, Scheduler, placement
from runtime.vision.serving_config import BatchingConfig

pytestmark = pytest.mark.timeout(60)


def two_models(cores: int = 2, slots: int = 2) -> Scheduler:
    scheduler = Scheduler({"cpu": cores, "gpu": 1})
    scheduler.set("llm", Schedule(slots=slots))
    scheduler.set("vit", Schedule(slots=slots))
    return scheduler


class Held:
    """A unit of `name` that holds its turn from another thread until released."""

    def __init__(self, scheduler: Scheduler, name: str):
        self.release = threading.Event()
        started = threading.Event()

        def hold() -> None:
            with scheduler.gate(name).turn() as run:
                assert run
                started.set()
                self.release.wait(30)

        self.thread = threading.Thread(target=hold)
        self.thread.start()
        assert started.wait(10)

    def end(self) -> None:
        self.release.set()
        self.thread.join(10)


def test_models_on_every_core_take_turns_and_the_busy_time_is_measured():
    scheduler = two_models()
    running: list[str] = []
    overlaps = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        gate = scheduler.gate(name)
        for _ in range(20):
            with gate.turn() as run:
                assert run
                with lock:
                    running.append(name)
                    overlaps.append(len(running))
                time.sleep(0.002)
                with lock:
                    running.remove(name)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("llm", "vit")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert max(overlaps) == 1  # each wants both cores: never together
    usage = scheduler.usage()
    assert usage["llm"].units == usage["vit"].units == 20
    assert usage["llm"].busy_s >= 20 * 0.002 and usage["vit"].busy_s >= 20 * 0.002


def test_one_thread_models_run_together():
    scheduler = two_models(slots=1)
    held = Held(scheduler, "vit")
    with scheduler.gate("llm").turn(lambda: True) as run:  # would give up if it waited
        assert run
    held.end()


def test_a_unit_that_expires_while_waiting_runs_nothing_and_frees_its_place():
    scheduler = two_models()
    held = Held(scheduler, "vit")
    deadline = time.monotonic() + 0.1
    with scheduler.gate("llm").turn(lambda: time.monotonic() >= deadline) as run:
        waited = time.monotonic() - deadline
    assert run is False and -0.01 <= waited < 1.0
    held.end()
    usage = scheduler.usage()
    assert (usage["llm"].units, usage["llm"].waiting, usage["llm"].running) == (0, 0, 0)
    with scheduler.gate("llm").turn() as run:  # the box is free again
        assert run


def test_the_gate_alone_on_the_box_runs_at_once_and_counts_nothing():
    with UNGATED.turn(lambda: True) as run:
        assert run
    UNGATED.shed(3)


def test_placement_follows_the_backend_and_threads():
    cores = Scheduler.for_host().capacity["cpu"]
    assert placement("onnxruntime", ["CPUExecutionProvider"], 1) == ("cpu", 1)
    assert placement("onnxruntime", ["CPUExecutionProvider"], 0) == ("cpu", cores)
    assert placement("onnxruntime", ["CUDAExecutionProvider", "CPUExecutionProvider"], 0) \
        == ("gpu", 1)
    assert placement("tensorrt", [], 0) == ("gpu", 1)


# ---- real models' units --------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_llama_package) -> LLMEngine:
    return LLMEngine.load(tiny_llama_package)


def test_an_llm_request_whose_deadline_passes_while_it_waits_is_shed(engine):
    scheduler = two_models()
    engine.gate = scheduler.gate("llm")
    try:
        held = Held(scheduler, "vit")
        stop = StopCondition(deadline=time.monotonic() + 0.1)
        events = list(engine.generate("To be", SamplingParams(max_new_tokens=8), stop))
        held.end()
        assert [e.finish_reason for e in events] == ["cancelled"]
        assert events[-1].stats.completion_tokens == 0
        usage = scheduler.usage()["llm"]
        assert (usage.shed, usage.units) == (1, 0)
        # With the box free, every step of a request takes one turn.
        events = list(engine.generate("To be", SamplingParams(max_new_tokens=8,
                                                              ignore_eos=True)))
        assert events[-1].stats.completion_tokens == 8
        assert scheduler.usage()["llm"].units == 8  # the prefill and 7 decode steps
    finally:
        engine.gate = UNGATED


def test_batched_streams_whose_deadline_passes_while_the_step_waits_are_shed(engine,
                                                                           monkeypatch):
    scheduler = two_models()
    step = engine.step

    def slow_step(*args, **kwargs):  # 100 steps take 0.5 s at least: deadlines come first
        time.sleep(0.005)
        return step(*args, **kwargs)

    monkeypatch.setattr(engine, "step", slow_step)
    batcher = ContinuousBatcher(engine, slots=2, capacity=128)
    batcher.gate = scheduler.gate("llm")
    try:
        params = SamplingParams(max_new_tokens=100, ignore_eos=True)
        deadline = time.monotonic() + 0.3
        streams = [batcher.generate("To be", params, StopCondition(deadline)) for _ in range(2)]
        first = [next(stream) for stream in streams]  # both prefilled: they decode now
        assert all(event.finish_reason is None for event in first)
        held = Held(scheduler, "vit")  # takes the next turn; holds it past both deadlines
        ends = [list(stream)[-1] for stream in streams]
        held.end()
        assert [end.finish_reason for end in ends] == ["cancelled", "cancelled"]
        assert all(0 < end.stats.completion_tokens < 100 for end in ends)
        assert scheduler.usage()["llm"].shed == 2
    finally:
        batcher.close()


def test_batched_requests_whose_deadline_passes_before_their_prefill_are_shed(engine):
    scheduler = two_models()
    batcher = ContinuousBatcher(engine, slots=2, capacity=128)
    batcher.gate = scheduler.gate("llm")
    try:
        held = Held(scheduler, "vit")
        deadline = time.monotonic() + 0.1
        streams = [batcher.generate("To be", SamplingParams(max_new_tokens=8),
                                    StopCondition(deadline)) for _ in range(2)]
        ends = [list(stream) for stream in streams]
        held.end()
        assert [[e.finish_reason for e in events] for events in ends] == [["cancelled"]] * 2
        usage = scheduler.usage()["llm"]
        assert (usage.shed, usage.units) == (2, 0)
    finally:
        batcher.close()


def test_vision_requests_that_leave_while_their_batch_waits_are_shed():
    scheduler = two_models()
    gate = scheduler.gate("vit")
    batches: list[int] = []

    def run_batch(rows: np.ndarray) -> np.ndarray:
        batches.append(len(rows))
        return rows * 2

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher("vit", run_batch, executor, BatchingConfig(16, 0.0), gate=gate)
            try:
                held = Held(scheduler, "llm")
                staying = asyncio.ensure_future(batcher.submit(np.ones((1, 3))))
                leaving = asyncio.ensure_future(batcher.submit(np.ones((2, 3))))
                await asyncio.sleep(0.1)  # the batch is due and waits for its turn
                leaving.cancel()  # its client leaves
                await asyncio.sleep(0.05)
                await asyncio.to_thread(held.end)
                result = await staying
                assert result.outputs.tolist() == [[2.0, 2.0, 2.0]]
            finally:
                batcher.close()

    asyncio.run(main())
    assert batches == [1]
    usage = scheduler.usage()["vit"]
    assert (usage.shed, usage.units) == (1, 1)


def test_a_request_that_leaves_the_admission_queue_is_shed():
    shed: list[int] = []

    async def main() -> None:
        admission = Admission("llm", max_concurrent=1, max_queue=4, on_shed=shed.append)
        await admission.acquire()
        waiting = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0.01)
        waiting.cancel()  # deadline passed in the queue
        with pytest.raises(asyncio.CancelledError):
            await waiting
        admission.release()
        assert admission.active == 0 and admission.queued == 0

    asyncio.run(main())
    assert shed == [1]
