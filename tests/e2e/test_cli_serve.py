"""The real command lines: `e2edge serve` as a process, `e2edge generate` and `e2edge models`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.client import EdgeClient, RemoteError
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams

pytestmark = pytest.mark.timeout(120)

E2EDGE = [sys.executable, "-m", "e2edge.cli"]
PROMPT = "First Citizen: Before we proceed"


def _e2edge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*E2EDGE, *args], capture_output=True, text=True, timeout=timeout)


class Serve:
    """`e2edge serve` in a child process, its log in a file."""

    def __init__(self, config: Path, *extra: str):
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [*E2EDGE, "serve", "--config", str(config), *extra],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout_s: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            assert self.process.poll() is None, f"serve exited early:\n{self.log()}"
            time.sleep(0.01)
        raise AssertionError(f"{pattern!r} never appeared in the serve log:\n{self.log()}")

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()


@pytest.fixture
def serve_factory():
    started: list[Serve] = []

    def start(config: Path, *extra: str) -> Serve:
        started.append(Serve(config, *extra))
        return started[-1]

    yield start
    for serve in started:
        serve.stop()


def test_serve_generate_and_models_from_the_command_line(tmp_path, tiny_llama_package,
                                                         serve_factory):
    socket = tmp_path / "e2edge.sock"
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"listen: unix:{socket}\nmodels: [{{name: demo, path: {tiny_llama_package}}}]\n"
    )
    serve = serve_factory(config)
    target = f"unix:{socket}"
    with EdgeClient(target) as client:
        client.wait_loaded(timeout_s=60)

    models = _e2edge("models", "--target", target)
    assert models.returncode == 0, models.stderr
    header, row = models.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "STATE", "KIND"]
    assert row.split()[:5] == ["demo", "ready", "llm", "onnxruntime", "CPU"]

    generated = _e2edge("generate", "--target", target, "--model", "demo", "--max-new-tokens",
                        "24", "--temperature", "0.8", "--seed", "5", PROMPT)
    assert generated.returncode == 0, generated.stderr
    engine = LLMEngine.load(tiny_llama_package)
    events = list(engine.generate(PROMPT, SamplingParams(max_new_tokens=24, temperature=0.8,
                                                         seed=5)))
    assert generated.stdout == "".join(e.text for e in events)
    stats = generated.stderr.strip()
    assert stats.startswith(f"[{events[-1].finish_reason}] ")
    assert f"+ {events[-1].stats.completion_tokens} generated tokens" in stats
    assert "first token" in stats and "tok/s" in stats

    missing = _e2edge("generate", "--target", target, "--model", "nope", PROMPT)
    assert missing.returncode == 1
    assert missing.stdout == ""
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("e2edge generate: error: NOT_FOUND: model 'nope'")

    bad = _e2edge("generate", "--target", target, "--model", "demo", "--top-p", "2", PROMPT)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "e2edge generate: error: INVALID_ARGUMENT: top_p: must be in (0, 1], got 2.0")

    assert serve.stop() == 0
    log = serve.log()
    assert "model=demo method=Generate status=OK" in log
    assert "model=nope method=Generate status=NOT_FOUND" in log


def test_sigterm_drains_in_flight_streams_then_exits_0(tmp_path, tiny_llama_package,
                                                     serve_factory):
    config = tmp_path / "daemon.yaml"
    config.write_text(
        "listen: 127.0.0.1:50051\ngrace_period_s: 30\n"
        f"models:\n  - {{name: demo, path: {tiny_llama_package}, max_concurrent: 1, "
        "max_queue: 4}\n"
    )
    serve = serve_factory(config, "--listen", "127.0.0.1:0")  # the override picks a free port
    target = serve.wait_for_log(r"listening on (127\.0\.0\.1:\d+)")[1]
    client = EdgeClient(target)
    client.wait_loaded(timeout_s=60)
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    n_streams = 5  # one running and four queued (max_queue 4): work left for the drain

    def stream(i: int) -> None:
        try:
            results[i] = list(client.generate("demo", PROMPT, max_new_tokens=200,
                                              ignore_eos=True, seed=i, temperature=0.7))
        except BaseException as e:  # re-raised in the test thread below
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while True:  # SIGTERM once all arrived and some still wait their turn
        info = client.get_model("demo")
        arrived = info.active_requests + info.queued_requests + len(results)
        if info.queued_requests >= 1 and arrived == n_streams:
            break
        assert time.monotonic() < deadline, "the streams were never in flight together"
        time.sleep(0.002)
    # The late client connects first, so its request follows the drain at once: on a
    # fast machine the streams can finish (and the daemon exit) within the time a
    # new connection takes.
    with EdgeClient(target) as late:
        late.list_models()
        serve.process.send_signal(signal.SIGTERM)
        serve.wait_for_log("draining")
        with pytest.raises(RemoteError) as caught:
            list(late.generate("demo", PROMPT, max_new_tokens=4))
    assert caught.value.code.name == "UNAVAILABLE"
    for t in threads:
        t.join(60)
    client.close()
    assert not errors, errors
    for i in range(n_streams):  # every stream that was in flight ran to its end
        assert results[i][-1].stats.completion_tokens == 200
        assert results[i][-1].finish_reason == 1  # FINISH_REASON_LENGTH
    assert serve.process.wait(30) == 0
    assert "SIGTERM received: draining" in serve.log()
    assert serve.log().count("method=Generate status=OK") == n_streams


def test_a_bad_config_fails_start_up_with_one_line(tmp_path):
    config = tmp_path / "daemon.yaml"
    config.write_text("listen: 127.0.0.1:0\nmodels:\n  - name: demo\n    path: x\n    thread: 2\n")
    result = _e2edge("serve", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"e2edge serve: error: {config}:5: models[0].thread: unknown key (known keys here: "
        "backend, batching, image_limits, max_concurrent, max_queue, max_sequence_length, "
        "name, path, priority, providers, share, spin, threads)"
    )
