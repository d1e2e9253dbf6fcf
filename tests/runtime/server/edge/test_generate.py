"""The daemon's Generate stream against the engine itself, over real gRPC on a free port.

A real daemon (DaemonThread: the grpc.aio server on its own loop) serves the tiny
exported package; every expectation is the same engine's direct output.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest

from runtime.client import EdgeClient, RemoteError
from runtime.config import DaemonConfig, ModelConfig
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.core.retry_pushback import FreeingPace
from runtime.server.edge import convert
from runtime.server.guard.request_log import REQUEST_LOGGER, RequestRecord
from runtime.server.in_process import DaemonThread

pytestmark = pytest.mark.timeout(60)

PROMPT = "To be, or not to be"
LONG = 200  # tokens; with the short prompt it fits the tiny model's 256-token context


@pytest.fixture(scope="module")
def engine(tiny_llama_package) -> LLMEngine:
    return LLMEngine.load(tiny_llama_package)


def _config(package, **model) -> DaemonConfig:
    return DaemonConfig(listen="127.0.0.1:0", models=(ModelConfig("demo", package, **model),))


@pytest.fixture(scope="module")
def daemon(tiny_llama_package):
    with DaemonThread(_config(tiny_llama_package, max_concurrent=2, max_queue=8), 0) as d:
        yield d


@pytest.fixture(scope="module")
def one_slot(tiny_llama_package):
    """A daemon whose model runs one request at a time and queues one more."""
    with DaemonThread(_config(tiny_llama_package, max_concurrent=1, max_queue=1), 0) as d:
        yield d


@pytest.fixture
def client(daemon):
    with EdgeClient(daemon.target) as c:
        yield c


@pytest.fixture
def request_log(caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)

    def wait_for(request_id: str, timeout_s: float = 10.0) -> RequestRecord:
        """The request's log record once written (a cancelled one: when its worker ends)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in caplog.records:
                request = getattr(record, "e2edge_request", None)
                if request is not None and request.request_id == request_id:
                    return request
            time.sleep(0.01)
        raise AssertionError(f"no request log line for {request_id}")

    return wait_for


def _direct(engine, prompt, **params):
    return list(engine.generate(prompt, SamplingParams(**params)))


def _assert_same_stream(messages, events):
    """Message by message: the same text pieces, token ids and end as the engine's events."""
    assert [m.text for m in messages] == [e.text for e in events]
    assert [list(m.token_ids) for m in messages] == [list(e.token_ids) for e in events]
    last, final = messages[-1], events[-1]
    assert last.finish_reason == convert.FINISH_REASONS[final.finish_reason]
    assert last.stats.prompt_tokens == final.stats.prompt_tokens
    assert last.stats.completion_tokens == final.stats.completion_tokens
    assert all(not m.HasField("stats") for m in messages[:-1])


@pytest.mark.parametrize("params", [
    {"max_new_tokens": 40},
    {"max_new_tokens": 40, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "seed": 7},
    {"max_new_tokens": 40, "temperature": 1.3, "repetition_penalty": 1.2, "seed": 12345},
    {"max_new_tokens": 60, "ignore_eos": True},
], ids=["greedy", "top-k-top-p", "penalty", "ignore-eos"])
def test_stream_equals_the_engine_for_the_same_seed(client, engine, params):
    messages = list(client.generate("demo", PROMPT, **params))
    _assert_same_stream(messages, _direct(engine, PROMPT, **params))
    assert messages[-1].stats.time_to_first_token_s > 0
    assert messages[-1].stats.total_s >= messages[-1].stats.decode_s


def test_stop_strings_and_token_id_prompts_match_the_engine(client, engine):
    text = "".join(e.text for e in _direct(engine, PROMPT, max_new_tokens=60, ignore_eos=True))
    stop = text[20:23]  # a piece of what greedy decoding will write: it must stop there
    assert stop and stop in text
    messages = list(client.generate("demo", PROMPT, max_new_tokens=60, ignore_eos=True,
                                    stop=[stop]))
    _assert_same_stream(messages, _direct(engine, PROMPT, max_new_tokens=60, ignore_eos=True,
                                          stop=(stop,)))
    assert messages[-1].finish_reason == pb.FINISH_REASON_STOP
    assert "".join(m.text for m in messages) == text[: text.index(stop)]

    ids = engine.encode(PROMPT)
    messages = list(client.generate("demo", ids, max_new_tokens=20, temperature=0.9, seed=3))
    _assert_same_stream(messages, _direct(engine, ids, max_new_tokens=20, temperature=0.9,
                                          seed=3))


def test_eight_concurrent_clients_all_get_their_own_stream(daemon, engine):
    prompts = [f"{PROMPT} {i}" for i in range(8)]
    expected = [_direct(engine, p, max_new_tokens=48, temperature=0.9, seed=i)
                for i, p in enumerate(prompts)]
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def one_client(i: int) -> None:
        try:
            with EdgeClient(daemon.target) as c:
                barrier.wait()
                results[i] = list(c.generate("demo", prompts[i], max_new_tokens=48,
                                             temperature=0.9, seed=i))
        except BaseException as e:  # re-raised in the test thread below
            errors.append(e)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for i in range(8):
        _assert_same_stream(results[i], expected[i])


def test_cancel_mid_stream_stops_generation_and_frees_the_slot(one_slot, engine, request_log):
    admission = one_slot.daemon.registry.get("demo").admission
    with EdgeClient(one_slot.target) as c:
        stream = c.generate("demo", PROMPT, max_new_tokens=LONG, ignore_eos=True,
                            request_id="to-cancel")
        first = next(iter(stream))
        assert first.token_ids  # the first token arrived while the rest is being computed
        stream.cancel()
        record = request_log("to-cancel")
        assert record.status == "CANCELLED"
        assert record.finish_reason == "cancelled"
        assert 1 <= record.completion_tokens < LONG  # the worker stopped early
        assert admission.active == 0 and admission.queued == 0
        messages = list(c.generate("demo", PROMPT, max_new_tokens=16))
        _assert_same_stream(messages, _direct(engine, PROMPT, max_new_tokens=16))


def test_deadline_stops_generation_and_frees_the_slot(one_slot, engine, request_log):
    admission = one_slot.daemon.registry.get("demo").admission
    with EdgeClient(one_slot.target) as c:
        full_s = []  # the fastest full generation, warm: the deadline is a quarter of it
        for _ in range(3):
            started = time.monotonic()
            list(c.generate("demo", PROMPT, max_new_tokens=LONG, ignore_eos=True))
            full_s.append(time.monotonic() - started)
        with pytest.raises(RemoteError) as caught:
            list(c.generate("demo", PROMPT, max_new_tokens=LONG, ignore_eos=True,
                            timeout_s=min(full_s) / 4, request_id="late"))
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        record = request_log("late")
        assert record.status == "DEADLINE_EXCEEDED"
        assert record.completion_tokens < LONG
        assert admission.active == 0
        messages = list(c.generate("demo", PROMPT, max_new_tokens=8))
        _assert_same_stream(messages, _direct(engine, PROMPT, max_new_tokens=8))


def _hold_the_slot(daemon, admission, hold: bool) -> None:
    """Take (as a long generation would) or give back the one-slot model's slot."""
    async def change():
        if hold:
            await admission.acquire()
        else:
            admission.release()

    daemon.run_coroutine(change())


def _queued(client, admission, results: dict, max_new_tokens: int) -> threading.Thread:
    """A Generate on its own thread, returned once it waits in the model's queue."""
    thread = threading.Thread(target=lambda: results.setdefault(
        "queued", list(client.generate("demo", PROMPT, max_new_tokens=max_new_tokens))))
    thread.start()
    deadline = time.monotonic() + 10
    while admission.queued < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert admission.queued == 1
    return thread


def test_full_queue_is_refused_at_once_and_the_queued_request_is_served(one_slot, engine):
    admission = one_slot.daemon.registry.get("demo").admission
    _hold_the_slot(one_slot, admission, True)
    results: dict[str, list] = {}
    with EdgeClient(one_slot.target) as c:
        try:
            waiter = _queued(c, admission, results, max_new_tokens=12)
            started = time.monotonic()
            with pytest.raises(RemoteError) as first:
                list(c.generate("demo", PROMPT, max_new_tokens=12))
            assert first.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "busy" in first.value.details
            assert time.monotonic() - started < 2.0  # refused at once, not after a wait
            assert first.value.retry_after_s is None  # no place has freed under load yet
            admission.pace = FreeingPace()
            admission.pace.add(0.25)  # as if places had freed every 250 ms
            with pytest.raises(RemoteError) as second:
                list(c.generate("demo", PROMPT, max_new_tokens=12))
            assert second.value.retry_after_s == 0.25  # the gRPC retry pushback, in ms
        finally:
            _hold_the_slot(one_slot, admission, False)
        waiter.join(30)
    _assert_same_stream(results["queued"], _direct(engine, PROMPT, max_new_tokens=12))


def test_a_client_with_busy_retries_waits_the_pushback_and_is_served(one_slot, engine):
    """EdgeClient(busy_retries=N): gRPC sends a refused Generate again after the daemon's
    retry pushback, and the caller just gets its stream."""
    admission = one_slot.daemon.registry.get("demo").admission
    _hold_the_slot(one_slot, admission, True)
    admission.pace = FreeingPace()  # what earlier tests taught it goes
    admission.pace.add(0.3)  # the daemon will say: retry in 300 ms
    results: dict[str, object] = {}
    with EdgeClient(one_slot.target) as queued_client, \
            EdgeClient(one_slot.target, busy_retries=4) as patient:
        queued = _queued(queued_client, admission, results, max_new_tokens=4)

        def retrying():
            started = time.monotonic()
            results["patient"] = list(patient.generate("demo", PROMPT, max_new_tokens=8))
            results["waited_s"] = time.monotonic() - started

        thread = threading.Thread(target=retrying)
        thread.start()
        time.sleep(0.1)  # its first try is refused by now: the queue is full
        _hold_the_slot(one_slot, admission, False)  # the queued one runs, then frees all
        thread.join(30)
        queued.join(30)
    _assert_same_stream(results["patient"], _direct(engine, PROMPT, max_new_tokens=8))
    assert results["waited_s"] >= 0.25  # it waited the pushback, not gRPC's 50 ms backoff
    with pytest.raises(ValueError, match="busy_retries"):
        EdgeClient(one_slot.target, busy_retries=5)


@pytest.mark.parametrize(("model", "prompt", "options", "code", "field"), [
    ("demo", "", {}, "INVALID_ARGUMENT", "prompt"),
    ("demo", [], {}, "INVALID_ARGUMENT", "prompt"),
    ("demo", [10**6], {}, "INVALID_ARGUMENT", "prompt"),
    ("demo", PROMPT, {"temperature": -1.0}, "INVALID_ARGUMENT", "temperature"),
    ("demo", PROMPT, {"top_p": 0.0}, "INVALID_ARGUMENT", "top_p"),
    ("demo", PROMPT, {"top_p": 1.5}, "INVALID_ARGUMENT", "top_p"),
    ("demo", PROMPT, {"top_k": -3}, "INVALID_ARGUMENT", "top_k"),
    ("demo", PROMPT, {"repetition_penalty": 0.0}, "INVALID_ARGUMENT", "repetition_penalty"),
    ("demo", PROMPT, {"max_new_tokens": 0}, "INVALID_ARGUMENT", "max_new_tokens"),
    ("demo", PROMPT, {"max_new_tokens": 256}, "INVALID_ARGUMENT", "max_new_tokens"),
    ("demo", PROMPT, {"stop": [""]}, "INVALID_ARGUMENT", "stop"),
    ("demo", PROMPT, {"request_id": "x" * 129}, "INVALID_ARGUMENT", "request_id"),
    ("demo", PROMPT, {"request_id": "a\nb"}, "INVALID_ARGUMENT", "request_id"),
    ("", PROMPT, {}, "INVALID_ARGUMENT", "model"),
    ("nope", PROMPT, {}, "NOT_FOUND", None),
])
def test_bad_requests_get_the_right_code_and_the_daemon_serves_on(
    client, engine, model, prompt, options, code, field
):
    with pytest.raises(RemoteError) as caught:
        list(client.generate(model, prompt, **options))
    assert caught.value.code.name == code
    assert caught.value.field == field
    if field:
        assert caught.value.details.startswith(f"{field}: ")
    if code == "NOT_FOUND":
        assert "'nope'" in caught.value.details and "demo" in caught.value.details
    messages = list(client.generate("demo", PROMPT, max_new_tokens=4))
    _assert_same_stream(messages, _direct(engine, PROMPT, max_new_tokens=4))


def test_models_report_the_package_facts(client, tiny_llama_package, engine):
    (info,) = client.list_models()
    assert info == client.get_model("demo")
    manifest = engine.package.manifest
    assert info.state == pb.MODEL_STATE_READY and not info.error
    assert info.kind == pb.MODEL_KIND_LLM
    assert info.package_name == manifest["name"]
    assert info.package_path == str(tiny_llama_package)
    assert info.parameters == manifest["parameters"] > 0
    assert info.bytes == sum(f["bytes"] for f in manifest["files"].values())
    assert info.context_length == engine.context_length
    assert (info.backend, list(info.execution_providers)) == ("onnxruntime",
                                                              ["CPUExecutionProvider"])
    assert info.quantization == "weights fp32, activations fp32"
    assert "gqa package runs on onnxruntime's CPU provider" in info.backend_reason
    # the engine's own account (its KV buffer, the kernel of its fp32 matmuls on this host),
    # then the daemon's batching
    assert info.execution.startswith("shared KV buffer (GroupQueryAttention); fp32 matmuls: ")
    assert info.execution == f"{engine.execution}, 2 slots batched per decode step"
    assert (info.max_concurrent, info.max_queue) == (2, 8)
    with pytest.raises(RemoteError) as caught:
        client.get_model("nope")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_each_request_is_one_log_line(client, request_log):
    messages = list(client.generate("demo", PROMPT, max_new_tokens=5, request_id="logged-1"))
    record = request_log("logged-1")
    assert (record.model, record.method, record.status) == ("demo", "Generate", "OK")
    assert convert.FINISH_REASONS[record.finish_reason] == messages[-1].finish_reason
    assert record.completion_tokens == messages[-1].stats.completion_tokens
    assert record.prompt_tokens == messages[-1].stats.prompt_tokens
    assert record.latency_s >= messages[-1].stats.total_s > 0
    text = record.to_text()
    for part in ("id=logged-1", "model=demo", "status=OK",
                 f"completion_tokens={record.completion_tokens}", "latency_ms="):
        assert part in text
    with pytest.raises(RemoteError):
        list(client.generate("demo", "", request_id="logged-2"))
    failed = request_log("logged-2")
    assert failed.status == "INVALID_ARGUMENT" and failed.error.startswith("prompt:")
