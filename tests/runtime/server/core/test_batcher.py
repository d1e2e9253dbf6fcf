"""The dynamic batcher on its own: grouping, splitting back, errors, cancellation, queue."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from runtime.server.core import batcher as batcher_module
from runtime.server.core.batcher import Batcher
from runtime.server.guard.errors import QueueFull
from runtime.vision.serving_config import BatchingConfig

pytestmark = pytest.mark.timeout(30)


class Model:
    """run_batch that records each batch's rows and can be held until released."""

    def __init__(self, hold: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, rows: np.ndarray) -> np.ndarray:  # (B, 1) -> (B, 2)
        self.batches.append([int(r) for r in rows[:, 0]])
        self.started.release()
        assert self.release.wait(10)
        if (rows < 0).any():
            raise RuntimeError("negative rows")
        return np.concatenate([rows, rows * 10], axis=1)


def _rows(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)[:, None]  # (n, 1)


def _run(coroutine_fn, model, config, max_concurrent=1, max_queue=64):
    async def main():
        with ThreadPoolExecutor(max_concurrent) as executor:
            batcher = Batcher("m", model, executor, config, max_concurrent, max_queue)
            try:
                return await coroutine_fn(batcher)
            finally:
                batcher.close()

    return asyncio.run(main())


def test_requests_within_the_delay_share_a_batch_and_get_their_own_rows():
    model = Model()

    async def go(batcher):
        results = await asyncio.gather(*(batcher.submit(_rows(i, 100 + i)) for i in range(5)))
        return results, batcher.batches

    results, batches = _run(go, model, BatchingConfig(max_batch=16, max_delay_ms=200))
    assert batches == 1 and model.batches == [[0, 100, 1, 101, 2, 102, 3, 103, 4, 104]]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs, [[i, 10 * i], [100 + i, 10 * (100 + i)]])
        assert result.batch_size == 10 and result.queue_s >= 0 and result.run_s >= 0


def test_batches_fill_up_to_max_batch_in_arrival_order_and_never_split_a_request():
    model = Model()

    async def go(batcher):
        requests = [_rows(i) for i in range(6)] + [_rows(10, 11, 12, 13, 14), _rows(20)]
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    results = _run(go, model, BatchingConfig(max_batch=4, max_delay_ms=200))
    assert model.batches == [[0, 1, 2, 3], [4, 5], [10, 11, 12, 13, 14], [20]]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 2, 2, 5, 1]
    assert [int(r.outputs[0, 0]) for r in results] == [0, 1, 2, 3, 4, 5, 10, 20]


def test_max_batch_1_runs_every_request_alone():
    model = Model()

    async def go(batcher):
        return await asyncio.gather(*(batcher.submit(_rows(i)) for i in range(4)))

    results = _run(go, model, BatchingConfig(max_batch=1, max_delay_ms=0))
    assert model.batches == [[0], [1], [2], [3]] and {r.batch_size for r in results} == {1}


def test_an_idle_model_waits_max_delay_for_company():
    model = Model()

    async def go(batcher):
        return await batcher.submit(_rows(1))

    result = _run(go, model, BatchingConfig(max_batch=8, max_delay_ms=30))
    assert result.queue_s >= 0.03 and result.batch_size == 1


def test_a_failing_batch_fails_its_requests_only():
    model = Model()

    async def go(batcher):
        bad = await asyncio.gather(batcher.submit(_rows(1)), batcher.submit(_rows(-1)),
                                   return_exceptions=True)
        good = await batcher.submit(_rows(2))
        return bad, good, batcher.active, batcher.queued

    bad, good, active, queued = _run(go, model, BatchingConfig(max_batch=8, max_delay_ms=50))
    assert all(isinstance(e, RuntimeError) and "negative rows" in str(e) for e in bad)
    np.testing.assert_array_equal(good.outputs, [[2, 20]])
    assert (active, queued) == (0, 0)


def test_a_cancelled_waiting_request_never_runs():
    model = Model(hold=True)

    async def go(batcher):
        first = asyncio.ensure_future(batcher.submit(_rows(1)))
        await asyncio.to_thread(model.started.acquire)  # batch [1] holds the only worker
        ahead = asyncio.ensure_future(batcher.submit(_rows(2)))
        leaving = asyncio.ensure_future(batcher.submit(_rows(3)))
        staying = asyncio.ensure_future(batcher.submit(_rows(4)))
        await asyncio.sleep(0.01)
        assert (batcher.queued, batcher.active) == (3, 1)
        leaving.cancel()
        await asyncio.sleep(0)
        assert batcher.queued == 2
        model.release.set()
        return await first, await ahead, await staying

    first, ahead, staying = _run(go, model, BatchingConfig(max_batch=1, max_delay_ms=0))
    assert model.batches == [[1], [2], [4]]
    np.testing.assert_array_equal(staying.outputs, [[4, 40]])


def test_the_worker_takes_the_next_batches_without_the_event_loop():
    """A worker that finishes a batch takes the next one itself, so the model keeps
    running while the event loop is busy elsewhere (here: blocked)."""
    model = Model(hold=True)

    async def go(batcher):
        first = asyncio.ensure_future(batcher.submit(_rows(1, 2)))
        await asyncio.to_thread(model.started.acquire)
        full = asyncio.ensure_future(batcher.submit(_rows(3, 4)))
        partial = asyncio.ensure_future(batcher.submit(_rows(5)))
        await asyncio.sleep(0.01)
        assert batcher.queued == 2 and batcher.active == 1
        model.release.set()
        # Both later batches start while the event loop is blocked here.
        started_while_blocked = [model.started.acquire(timeout=5) for _ in range(2)]
        return started_while_blocked, await first, await full, await partial

    started, *_ = _run(go, model, BatchingConfig(max_batch=2, max_delay_ms=0))
    assert started == [True, True]
    assert model.batches == [[1, 2], [3, 4], [5]]


def test_a_full_queue_refuses_at_once():
    model = Model(hold=True)

    async def go(batcher):
        running = asyncio.ensure_future(batcher.submit(_rows(1)))
        await asyncio.to_thread(model.started.acquire)
        ahead = asyncio.ensure_future(batcher.submit(_rows(2)))  # next in line
        waiting = asyncio.ensure_future(batcher.submit(_rows(3)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match=r"model 'm' is busy: 1 requests in batches and 2 "
                                            r"queued \(max_queue 2\)"):
            await batcher.submit(_rows(4))
        model.release.set()
        return await running, await ahead, await waiting

    _run(go, model, BatchingConfig(max_batch=1, max_delay_ms=0), max_queue=2)
    assert model.batches == [[1], [2], [3]]


def test_a_refusal_says_how_often_batches_start_under_load():
    """While requests are refused, a queue place frees with each batch taken: the
    refusals' retry hint is the running mean of the time between two such batches (a
    batch's run here, 50 ms). Four clients coming back every 5 ms keep it saturated."""

    def slow(rows: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return rows

    async def go(batcher):
        hints = []
        end = time.monotonic() + 0.6

        async def client(i):
            while time.monotonic() < end:
                try:
                    await batcher.submit(_rows(i))
                except QueueFull as refused:
                    hints.append(refused.retry_after_s)
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(client(i) for i in range(4)))
        return hints

    hints = _run(go, slow, BatchingConfig(max_batch=1, max_delay_ms=0), max_queue=1)
    assert hints[0] is None  # nothing learnt before two batches under load
    assert 0.04 <= hints[-1] < 0.2


def test_batches_run_on_as_many_workers_as_max_concurrent():
    model = Model(hold=True)

    async def go(batcher):
        tasks = [asyncio.ensure_future(batcher.submit(_rows(i))) for i in range(2)]
        for _ in range(2):  # both batches start before either may finish
            assert await asyncio.to_thread(model.started.acquire, True, 5)
        assert batcher.active == 2
        model.release.set()
        return await asyncio.gather(*tasks)

    _run(go, model, BatchingConfig(max_batch=1, max_delay_ms=0), max_concurrent=2)
    assert sorted(model.batches) == [[0], [1]]


def test_an_idle_worker_gives_its_thread_back_and_the_next_request_starts_one(monkeypatch):
    monkeypatch.setattr(batcher_module, "IDLE_EXIT_S", 0.05)
    model = Model()

    async def go(batcher):
        first = await batcher.submit(_rows(1))
        deadline = asyncio.get_running_loop().time() + 5
        while batcher._workers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        idle_workers = batcher._workers
        second = await batcher.submit(_rows(2))
        return first, idle_workers, second

    first, idle_workers, second = _run(go, model, BatchingConfig(max_batch=4, max_delay_ms=0))
    assert idle_workers == 0
    np.testing.assert_array_equal(second.outputs, [[2, 20]])
    assert model.batches == [[1], [2]]


def test_close_fails_the_waiting_requests_lets_the_running_batch_finish_and_frees_the_threads():
    model = Model(hold=True)

    async def go():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher("m", model, executor, BatchingConfig(max_batch=1, max_delay_ms=0))
        running = asyncio.ensure_future(batcher.submit(_rows(1)))
        await asyncio.to_thread(model.started.acquire)
        waiting = asyncio.ensure_future(batcher.submit(_rows(2)))
        await asyncio.sleep(0.01)
        batcher.close()
        with pytest.raises(RuntimeError, match="model 'm' is shut down"):
            await waiting
        with pytest.raises(RuntimeError, match="shut down"):
            await batcher.submit(_rows(3))
        model.release.set()
        result = await running
        await asyncio.to_thread(executor.shutdown, True)  # returns: the worker has stopped
        return result

    result = asyncio.run(asyncio.wait_for(go(), 10))
    np.testing.assert_array_equal(result.outputs, [[1, 10]])
    assert model.batches == [[1]]


def test_many_requests_with_cancellations_on_two_workers_each_get_their_own_rows():
    """Threads and the loop share the queue: under churn every request that is not
    cancelled gets exactly its own rows, and the counters come back to zero."""
    rng = np.random.default_rng(7)

    def model(rows: np.ndarray) -> np.ndarray:  # (B, 1) -> (B, 2), a little slow
        time.sleep(0.0005 * len(rows))
        return np.concatenate([rows, rows * 10], axis=1)

    async def go(batcher):
        tasks, expected, cancelled = [], [], set()
        start = 0
        for i in range(300):
            n = int(rng.integers(1, 4))
            rows = np.arange(start, start + n, dtype=np.int64)[:, None]
            start += n
            tasks.append(asyncio.ensure_future(batcher.submit(rows)))
            expected.append(rows)
            if i % 7 == 3:
                await asyncio.sleep(0)
            if rng.random() < 0.1:
                tasks[-1].cancel()
                cancelled.add(i)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)
        return results, expected, cancelled, batcher.active, batcher.queued

    results, expected, cancelled, active, queued = _run(
        go, model, BatchingConfig(max_batch=8, max_delay_ms=1), max_concurrent=2,
        max_queue=1000)
    for i, (result, rows) in enumerate(zip(results, expected)):
        if i in cancelled:
            assert isinstance(result, asyncio.CancelledError)
        else:
            np.testing.assert_array_equal(result.outputs, np.concatenate([rows, rows * 10], 1))
            assert 1 <= result.batch_size <= 8
    assert (active, queued) == (0, 0)
