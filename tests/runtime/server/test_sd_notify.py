"""systemd's notify protocol against a real unix datagram socket, as systemd listens on it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.server.sd_notify import Notifier, watchdog_interval_s

pytestmark = pytest.mark.timeout(90)


class NotifySocket:
    """The listening end systemd would hold: collects (arrival time, message) pairs."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, predicate, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _, message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no matching notify message; got {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify"))
    yield listener, str(tmp_path / "notify")
    listener.close()


def test_ready_status_and_stopping_arrive_as_datagrams(notify_socket):
    listener, path = notify_socket
    notifier = Notifier(path)
    assert notifier.ready("serving; models ready: demo")
    assert notifier.status("reloading\nconfig")  # a newline would start a new KEY= line
    assert notifier.stopping("draining")
    notifier.close()
    listener.wait_for(lambda m: m.startswith("STOPPING=1"))
    assert [m for _, m in listener.messages] == [
        "READY=1\nSTATUS=serving; models ready: demo",
        "STATUS=reloading config",
        "STOPPING=1\nSTATUS=draining",
    ]


def test_abstract_namespace_socket():
    name = f"e2edge-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(b"\0" + name.encode())
    try:
        assert Notifier("@" + name).ready()
        assert listener.wait_for(lambda m: True) == "READY=1"
    finally:
        listener.close()


def test_without_notify_socket_everything_is_a_no_op():
    environ = {"WATCHDOG_USEC": "1000000"}
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    assert not notifier.ready("x")
    assert notifier.start_watchdog() is None


def test_environment_is_read_once_and_removed_for_child_processes(tmp_path):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "3000000",
               "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_environment(environ)
    assert notifier.socket_path == str(tmp_path / "n")
    assert notifier.watchdog_s == 3.0
    assert environ == {"PATH": "/bin"}
    notifier.close()


def test_watchdog_is_only_for_the_process_systemd_named():
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}, 42) == 20.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "42"}, 42) == 20.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval_s({}, 42) is None


def test_watchdog_pings_at_half_the_timeout_and_stop_while_the_loop_is_blocked(notify_socket):
    listener, path = notify_socket
    notifier = Notifier(path, watchdog_s=0.2)  # a ping every 0.1 s
    blocked: dict[str, float] = {}

    async def main() -> None:
        task = notifier.start_watchdog()
        await asyncio.sleep(0.6)
        blocked["from"] = time.monotonic()
        time.sleep(1.0)  # a handler stuck in a synchronous call: the loop cannot run
        blocked["to"] = time.monotonic()
        await asyncio.sleep(0.6)
        task.cancel()

    asyncio.run(main())
    notifier.close()
    time.sleep(0.1)
    pings = [t for t, m in listener.messages if m == "WATCHDOG=1"]
    before = [t for t in pings if t < blocked["from"]]
    during = [t for t in pings if blocked["from"] + 0.05 < t < blocked["to"]]
    after = [t for t in pings if t > blocked["to"]]
    assert 4 <= len(before) <= 8, pings
    assert during == [], "the watchdog pinged while the event loop was blocked"
    assert len(after) >= 4, "the pings did not resume once the loop was free"


def test_serve_reports_ready_pings_the_watchdog_and_says_stopping(tmp_path, notify_socket,
                                                                   tiny_llama_package):
    listener, path = notify_socket
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\ngrace_period_s: 1\n"
        f"models:\n  - name: demo\n    path: {tiny_llama_package}\n"
        f"  - name: broken\n    path: {tmp_path / 'missing'}\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([sys.executable, "-m", "e2edge.cli", "serve", "--config",
                                str(config)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = listener.wait_for(lambda m: m.startswith("READY=1"))
        assert "ready: demo" in ready and "failed: broken" in ready, ready
        assert any(m.startswith("STATUS=loading 2 models") for _, m in listener.messages)
        first_ping = listener.wait_for(lambda m: m == "WATCHDOG=1")
        assert first_ping
        time.sleep(0.5)
        pings = [t for t, m in listener.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 3, "expected a ping every 0.2 s"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        stopping = [m for _, m in listener.messages if m.startswith("STOPPING=1")]
        assert len(stopping) == 1
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = Path(tmp_path / "serve.log").read_text()
    assert "systemd watchdog: 0.4s" in text
