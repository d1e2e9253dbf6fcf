"""The tegrastats power source: a child `tegrastats --interval MS`, one sample per line.

`TegrastatsReader` owns the child process and nothing else: it starts it, hands every
line to a callback with the monotonic time it arrived, and restarts the child with
exponential back-off when it exits (tegrastats killed, a driver hiccup). The parsing
lives in `tegrastats_parse`; `TegrastatsSource` glues the two behind `PowerSource`.
"""

from __future__ import annotations

import collections
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

from runtime.errors import BackendUnavailable
from runtime.power.sample import PowerSample
from runtime.power.source import PowerSource
from runtime.power.tegrastats_parse import parse_line

logger = logging.getLogger(__name__)

# Unparsed lines are logged at WARNING for the first few, then once every this many.
_WARN_FIRST_SKIPPED = 3
_WARN_EVERY_SKIPPED = 1000


class TegrastatsReader:
    """Runs `tegrastats --interval MS` and calls `on_line(line, t)` for each line it prints.

    The child is restarted when it exits; the wait before a restart doubles from
    `backoff_initial_s` up to `backoff_max_s`, and falls back to the initial value once
    a child has run for `backoff_reset_s`.
    """

    def __init__(
        self,
        interval_ms: int,
        on_line: Callable[[str, float], None],
        executable: str = "tegrastats",
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        backoff_reset_s: float = 10.0,
    ):
        self.interval_ms = interval_ms
        self.on_line = on_line
        self.executable = executable
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.backoff_reset_s = backoff_reset_s
        self.restarts = 0  # children started after the first one
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the first child now, so a missing or broken tegrastats fails here."""
        path = shutil.which(self.executable)
        if path is None:
            raise BackendUnavailable(
                f"power source tegrastats: '{self.executable}' is not on PATH "
                "(it ships with JetPack; pick another power.source off a Jetson)"
            )
        self.executable = path
        self._stop.clear()
        try:
            self._proc = self._spawn()
        except OSError as e:
            raise BackendUnavailable(f"power source tegrastats: cannot run {path}: {e}") from e
        self._thread = threading.Thread(target=self._run, name="tegrastats-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _end_child(proc)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between restarts)."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> subprocess.Popen:
        # stderr joins stdout: an error tegrastats prints becomes an unparsed line,
        # which is counted and logged, instead of a pipe nobody drains.
        return subprocess.Popen(
            [self.executable, "--interval", str(self.interval_ms)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        proc = self._proc
        while not self._stop.is_set():
            if proc is not None:
                started = time.monotonic()
                assert proc.stdout is not None
                for line in proc.stdout:  # ends at the child's exit, or when stop() ends it
                    self.on_line(line.rstrip("\r\n"), time.monotonic())
                code = proc.wait()
                proc.stdout.close()
                if self._stop.is_set():
                    return
                if time.monotonic() - started >= self.backoff_reset_s:
                    backoff = self.backoff_initial_s
                logger.warning(
                    "tegrastats exited with code %s; restarting in %.1f s", code, backoff
                )
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2.0, self.backoff_max_s)
            try:
                proc = self._spawn()
            except OSError as e:
                logger.error("tegrastats restart failed: %s", e)
                proc = None
            else:
                self.restarts += 1
            with self._lock:
                self._proc = proc
            if self._stop.is_set() and proc is not None:
                _end_child(proc)  # stop() came while this child was being started
                return


def _end_child(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TegrastatsSource(PowerSource):
    """Power from the `tegrastats` tool of JetPack (every JetPack from 4 to 7)."""

    name = "tegrastats"

    def __init__(
        self, interval_ms: int, executable: str = "tegrastats", backoff_initial_s: float = 0.5
    ):
        super().__init__(interval_ms)
        self.executable = executable
        self.backoff_initial_s = backoff_initial_s
        self.lines_total = 0
        self.lines_skipped = 0  # lines that yielded no sample
        # Bounded: a consumer that stops reading loses the oldest samples, not memory.
        self._samples: collections.deque[PowerSample] = collections.deque(maxlen=1024)
        self._ready = threading.Condition()
        self._reader: TegrastatsReader | None = None

    @property
    def restarts(self) -> int:
        return self._reader.restarts if self._reader is not None else 0

    @property
    def reader(self) -> TegrastatsReader | None:
        return self._reader

    def start(self) -> None:
        self._reader = TegrastatsReader(
            self.interval_ms,
            self._on_line,
            executable=self.executable,
            backoff_initial_s=self.backoff_initial_s,
        )
        self._reader.start()

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    def next_sample(self, timeout: float) -> PowerSample | None:
        with self._ready:
            if not self._ready.wait_for(lambda: self._samples, timeout):
                return None
            return self._samples.popleft()

    def _on_line(self, line: str, t: float) -> None:
        self.lines_total += 1
        try:
            sample = parse_line(line, t)
        except Exception:  # a parser bug must not stop power readings: log it loudly, go on
            logger.exception("tegrastats line broke the parser: %r", line[:300])
            sample = None
        if sample is None:
            self.lines_skipped += 1
            n = self.lines_skipped
            if n <= _WARN_FIRST_SKIPPED or n % _WARN_EVERY_SKIPPED == 0:
                logger.warning("tegrastats line without power rails (%d so far): %r", n, line[:300])
            return
        with self._ready:
            self._samples.append(sample)
            self._ready.notify()
