"""Continuous batching: concurrent streams share decode steps and see what they would alone."""

from __future__ import annotations

import threading

import pytest

from runtime.client import EdgeClient
from runtime.config import DaemonConfig, ModelConfig
from runtime.errors import InvalidRequest
from runtime.llm.continuous_batching import ContinuousBatcher
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams
from runtime.server.in_process import DaemonThread

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["To be", "The quick brown fox jumps over", "Hello", "Once upon a time there"]


@pytest.fixture(scope="module")
def engine(tiny_llama_package) -> LLMEngine:
    return LLMEngine.load(tiny_llama_package)


@pytest.fixture
def batcher(engine):
    batcher = ContinuousBatcher(engine, slots=3, capacity=256)
    yield batcher
    batcher.close()


def _tokens(events) -> list[int]:
    return [t for event in events for t in event.token_ids]


def _params(i: int, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=120 - 17 * i, ignore_eos=True, **extra)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "top_k": 20, "seed": 5}])
def test_batched_streams_get_the_tokens_they_get_alone(engine, batcher, sampling):
    alone = [_tokens(engine.generate(p, _params(i, **sampling))) for i, p in enumerate(PROMPTS)]
    # every request is queued before any is read: the loop must batch them
    streams = [batcher.generate(p, _params(i, **sampling)) for i, p in enumerate(PROMPTS)]
    together = [_tokens(s) for s in streams]
    assert together == alone
    assert batcher.max_batch_seen == 3  # three slots, four requests: one waited and joined
    assert batcher.steps < sum(len(t) for t in alone)  # steps were shared


def test_text_stop_and_stats_are_those_of_a_single_stream(engine, batcher):
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    text = "".join(e.text for e in engine.generate("To be", params))
    stop = text[8:11]
    stopped = SamplingParams(max_new_tokens=30, ignore_eos=True, stop=(stop,))
    events = list(batcher.generate("To be", stopped))
    assert events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == text[:text.index(stop)]
    stats = list(batcher.generate("To be", params))[-1].stats
    assert stats.completion_tokens == 30 and stats.prompt_tokens == len(engine.encode("To be"))
    assert stats.decode_tokens_per_s > 0 and stats.prefill_s > 0


def test_a_cancelled_stream_leaves_and_the_others_go_on(engine, batcher):
    alone = [_tokens(engine.generate(p, _params(0))) for p in PROMPTS[:3]]
    asked = []

    def cancelled_after_five_steps() -> bool:  # the loop asks once per step
        asked.append(1)
        return len(asked) > 5

    streams = [batcher.generate(p, _params(0),
                                cancelled=cancelled_after_five_steps if i == 1 else None)
               for i, p in enumerate(PROMPTS[:3])]
    events = list(streams[1])
    assert events[-1].finish_reason == "cancelled"
    assert _tokens(events) == alone[1][:len(_tokens(events))]
    assert 3 <= len(_tokens(events)) <= 6
    assert [_tokens(streams[0]), _tokens(streams[2])] == [alone[0], alone[2]]
    # the freed slot serves the next request
    assert _tokens(batcher.generate(PROMPTS[3], _params(0))) == _tokens(
        engine.generate(PROMPTS[3], _params(0)))


def test_a_request_longer_than_a_slot_is_refused_at_once(engine):
    small = ContinuousBatcher(engine, slots=2, capacity=16)
    try:
        with pytest.raises(InvalidRequest, match="max_sequence_length"):
            small.generate("To be", SamplingParams(max_new_tokens=15))
        assert _tokens(small.generate("To be", SamplingParams(max_new_tokens=4)))
    finally:
        small.close()


def test_a_failing_step_fails_its_streams_and_the_loop_lives_on(engine, batcher, monkeypatch):
    real_step = engine.step
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected step failure")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "step", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        _tokens(batcher.generate("To be", _params(0)))
    monkeypatch.setattr(engine, "step", real_step)
    assert _tokens(batcher.generate("To be", _params(0))) == _tokens(
        engine.generate("To be", _params(0)))


def test_close_fails_waiting_requests_instead_of_hanging(engine):
    batcher = ContinuousBatcher(engine, slots=1, capacity=256)
    streams = [batcher.generate(p, _params(0)) for p in PROMPTS]
    batcher.close()
    with pytest.raises(RuntimeError):
        for stream in streams:
            _tokens(stream)


def test_the_daemon_batches_concurrent_generate_calls(engine, tiny_llama_package):
    config = DaemonConfig(listen="127.0.0.1:0", models=(
        ModelConfig("demo", tiny_llama_package, max_concurrent=4, max_sequence_length=256),))
    alone = [_tokens(engine.generate(p, _params(0))) for p in PROMPTS]
    results: dict[int, list[int]] = {}
    together = threading.Barrier(len(PROMPTS))

    def stream(i: int, target: str) -> None:
        with EdgeClient(target) as client:
            client.wait_loaded(30)  # connected: the streams start together
            together.wait(30)
            results[i] = _tokens(client.generate("demo", PROMPTS[i], max_new_tokens=120,
                                                 ignore_eos=True))

    with DaemonThread(config, 0) as daemon:
        served = daemon.daemon.registry.get("demo").model
        assert isinstance(served, ContinuousBatcher) and served.slots == 4
        threads = [threading.Thread(target=stream, args=(i, daemon.target)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [results[i] for i in range(4)] == alone
        assert served.max_batch_seen >= 2
