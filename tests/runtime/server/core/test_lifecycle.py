"""SIGHUP reload on a real `e2edge serve` process: models come, go and swap under load."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from runtime.client import EdgeClient, RemoteError
from runtime.client_security import ClientSecurity
from runtime.proto.e2edge.v1 import runtime_pb2 as pb

pytestmark = pytest.mark.timeout(120)

STREAM_TOKENS = 200  # with the short prompt this fits the tiny model's 256-token context
STREAMS_PER_MODEL = 12  # one running, the rest queued (max_queue 16)
DEEP_LAYERS = 16  # the tiny model decodes ~15,000 tok/s: all streams could end unseen


@pytest.fixture(scope="module")
def deep_llama_package(tmp_path_factory) -> Path:
    """The tiny model with 16 layers instead of 2: streams that last long enough to be
    watched while a reload lands, however fast the machine."""
    from llm_fixtures import make_tiny_package

    return make_tiny_package(tmp_path_factory.mktemp("deep-llama"), num_layers=DEEP_LAYERS)


class Serve:
    """`e2edge serve` in a child process on a unix socket, its log in a file."""

    def __init__(self, tmp_path: Path, config_text: str, env: dict | None = None):
        self.config = tmp_path / "daemon.yaml"
        self.config.write_text(config_text)
        self.target = f"unix:{tmp_path / 'e2edge.sock'}"
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "e2edge.cli", "serve", "--config", str(self.config),
             "--listen", self.target], stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout_s: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the log:\n{self.log()}")

    def reload(self, config_text: str, timeout_s: float = 60) -> str:
        """Rewrite the config, send SIGHUP, and return the reload's summary line."""
        before = len(re.findall(r"reload (done|refused)", self.log()))
        self.config.write_text(config_text)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = re.findall(r"reload (?:done|refused).*", self.log())
            if len(lines) > before:
                return lines[before]
            assert self.process.poll() is None, f"serve exited:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"no reload summary in the log:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()


@pytest.fixture
def serve(tmp_path):
    started: list[Serve] = []

    def start(config_text: str, env: dict | None = None) -> Serve:
        started.append(Serve(tmp_path, config_text, env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def _models_yaml(**models: tuple[Path, int]) -> str:
    """models name=(package, max_queue), one generation slot each."""
    lines = ["grace_period_s: 5", "models:"]
    for name, (package, max_queue) in models.items():
        lines += [f"  - name: {name}", f"    path: {package}", "    max_concurrent: 1",
                  f"    max_queue: {max_queue}"]
    return "\n".join(lines) + "\n"


class Streams:
    """Long generations on one model from background threads; what each one got.

    Every thread connects first and then waits at `together` (shared by all the
    streams of a test), so all the requests reach the daemon at once: sent one by
    one, the first could finish on a fast machine before the last had arrived, and
    the daemon would never hold them all at the same time.
    """

    def __init__(self, target: str, model: str, count: int, together: threading.Barrier):
        self.results: list[tuple[int, int] | RemoteError] = []  # (finish_reason, tokens)
        self.started = threading.Event()
        self.count = count
        self._threads = [threading.Thread(target=self._run, args=(target, model, together))
                         for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self, target: str, model: str, together: threading.Barrier) -> None:
        with EdgeClient(target) as client:
            client.list_models()  # connected before the barrier
            together.wait(30)
            try:
                tokens, last = 0, None
                for last in client.generate(model, "To be", max_new_tokens=STREAM_TOKENS,
                                            ignore_eos=True):
                    tokens += len(last.token_ids)
                    self.started.set()
                self.results.append((last.finish_reason, tokens))
            except RemoteError as e:
                self.results.append(e)

    def join(self) -> list:
        for thread in self._threads:
            thread.join(60)
        return self.results


def _wait_admitted(client: EdgeClient, streams: dict[str, Streams],
                   timeout_s: float = 30) -> None:
    """Block until every stream of each model has reached the daemon, some still held.

    A stream whose RPC has not reached the daemon when the reload lands is a new request
    for a removed model, so NOT_FOUND would be right for it: wait until none is in flight.
    A stream has arrived when the daemon holds it (running or queued) or it has ended;
    the ended ones are counted before the daemon is asked, so none is counted twice.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ended = {name: len(s.results) for name, s in streams.items()}
        held = {m.name: m.active_requests + m.queued_requests for m in client.list_models()}
        if all(held.get(name, 0) + ended[name] >= s.count for name, s in streams.items()):
            assert all(held.get(name, 0) > 0 for name in streams), (
                f"every stream of a model ended before the reload: held {held}, "
                f"ended {ended}")
            return
        time.sleep(0.02)
    raise AssertionError(f"not every stream reached the daemon: held {held}, ended {ended}")


def test_reload_adds_removes_and_swaps_models_without_cutting_streams(
        tmp_path, serve, deep_llama_package):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.1)
    pkg = deep_llama_package
    daemon = serve(_models_yaml(steady=(pkg, 16), leaving=(pkg, 16), swapped=(pkg, 16)),
                   env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    with EdgeClient(daemon.target) as client:  # connected before the streams: no lag
        client.wait_loaded(60)
        # Twelve streams of 200 tokens per model, one at a time, on a 16-layer model:
        # long enough on a fast machine that some are still held when the reload lands.
        together = threading.Barrier(2 * STREAMS_PER_MODEL)
        steady = Streams(daemon.target, "steady", STREAMS_PER_MODEL, together)
        leaving = Streams(daemon.target, "leaving", STREAMS_PER_MODEL, together)
        _wait_admitted(client, {"steady": steady, "leaving": leaving})
    assert steady.started.wait(30) and leaving.started.wait(30)

    hammer_codes: list[str] = []
    hammering = threading.Event()

    def hammer() -> None:  # short requests on the swapped model, all through the reload
        with EdgeClient(daemon.target) as client:
            while not hammering.is_set():
                try:
                    list(client.generate("swapped", "To be", max_new_tokens=2))
                    hammer_codes.append("OK")
                except RemoteError as e:
                    hammer_codes.append(e.code.name)

    hammer_thread = threading.Thread(target=hammer)
    hammer_thread.start()
    summary = daemon.reload(_models_yaml(steady=(pkg, 16), swapped=(pkg, 8), added=(pkg, 4)))
    time.sleep(0.2)
    hammering.set()
    hammer_thread.join(30)

    assert "removed: leaving" in summary and "added: added" in summary, summary
    assert "replaced: swapped" in summary and "unchanged: steady" in summary, summary
    expected = (pb.FINISH_REASON_LENGTH, STREAM_TOKENS)
    assert steady.join() == [expected] * STREAMS_PER_MODEL, \
        "a stream on an untouched model was disturbed"
    assert leaving.join() == [expected] * STREAMS_PER_MODEL, "the removed model's streams were cut"
    assert hammer_codes and set(hammer_codes) == {"OK"}, hammer_codes

    with EdgeClient(daemon.target) as client:
        models = {m.name: m for m in client.list_models()}
        assert set(models) == {"steady", "swapped", "added"}
        assert models["swapped"].max_queue == 8
        assert all(m.state == pb.MODEL_STATE_READY for m in models.values())
        assert list(client.generate("added", "To be", max_new_tokens=3))[-1].finish_reason
        with pytest.raises(RemoteError) as caught:
            list(client.generate("leaving", "To be", max_new_tokens=3))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
    drained = daemon.wait_for_log(r"model leaving \(.*\) retired after draining ([\d.]+)s")
    assert float(drained[1]) > 0, "the removed model did not wait for its streams"

    messages = []
    while True:
        try:
            messages.append(notify.recv(4096).decode())
        except TimeoutError:
            break
    notify.close()
    reloading = [i for i, m in enumerate(messages) if m.startswith("RELOADING=1")]
    assert len(reloading) == 1
    assert any(m.startswith("READY=1") for m in messages[reloading[0]:])


def test_a_package_that_fails_to_load_leaves_the_old_one_serving(
        tmp_path, serve, tiny_llama_package):
    corrupt = tmp_path / "corrupt-pkg"
    shutil.copytree(tiny_llama_package, corrupt)
    onnx = corrupt / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))

    daemon = serve(_models_yaml(demo=(tiny_llama_package, 16)))
    with EdgeClient(daemon.target) as client:
        client.wait_loaded(60)
        summary = daemon.reload(_models_yaml(demo=(corrupt, 16)))
        assert "failed demo:" in summary and "previous version keeps serving" in summary
        assert "model.onnx" in summary, "the failure should name the damaged file"
        assert "needs a restart" not in summary  # --listen beats the file's default
        model = client.get_model("demo")
        assert model.state == pb.MODEL_STATE_READY
        assert model.package_path == str(tiny_llama_package)
        assert list(client.generate("demo", "To be", max_new_tokens=3))[-1].finish_reason

        summary = daemon.reload("models: [{name: demo, path: x, threads: four}]\n")
        assert "reload refused, nothing changed" in summary and "threads" in summary
        summary = daemon.reload(_models_yaml(demo=(tiny_llama_package, 16))
                                + "max_message_bytes: 65536\n")
        assert "needs a restart to change: max_message_bytes" in summary
        assert "unchanged: demo" in summary
        assert list(client.generate("demo", "To be", max_new_tokens=3))[-1].finish_reason

        token = "reloaded-token-0123456789abcdef"
        (tmp_path / "tokens").write_text(token + "\n")
        summary = daemon.reload(_models_yaml(demo=(tiny_llama_package, 16))
                                + f"auth: {{tokens_file: {tmp_path / 'tokens'}}}\n")
        assert "unchanged: demo" in summary
        with pytest.raises(RemoteError) as caught:
            client.list_models()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        with EdgeClient(daemon.target, security=ClientSecurity(token=token)) as authed:
            assert [m.name for m in authed.list_models()] == ["demo"]
        daemon.reload(_models_yaml(demo=(tiny_llama_package, 16)))  # auth off again
        assert [m.name for m in client.list_models()] == ["demo"]
    assert daemon.stop() == 0
