"""systemd's notify protocol: readiness, status, watchdog and stopping, from the daemon.

Under `Type=notify` systemd passes `NOTIFY_SOCKET` (a unix datagram socket path, or
`@name` for the abstract namespace) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and
`WATCHDOG_PID`). Each message is one datagram of `KEY=value` lines:

    READY=1           every model is loaded (or failed): the unit becomes active
    STATUS=...        one line shown by `systemctl status e2edge`
    WATCHDOG=1        "still alive"; missing for WATCHDOG_USEC -> systemd kills and restarts
    RELOADING=1       a SIGHUP reload began (READY=1 again when it is over)
    STOPPING=1        the drain began

The watchdog pings come from a task on the daemon's event loop, every half of
WATCHDOG_USEC: when the loop is blocked (a handler stuck in a synchronous call, a
deadlock) the pings stop and systemd restarts the daemon, which a separate thread
would hide. Without NOTIFY_SOCKET (not under systemd, or in tests) every call is a
no-op, so the daemon runs the same everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

from runtime.server.core.registry import ModelState

log = logging.getLogger("e2edge.server")


def _address(value: str) -> str | bytes:
    """NOTIFY_SOCKET -> a socket address: `@name` is `\\0name` in the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds, or None.

    WATCHDOG_PID names the process the watchdog is meant for: a child that inherited
    the environment must not ping on its parent's behalf.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends notify messages to systemd; does nothing when there is no NOTIFY_SOCKET."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None = None):
        self.socket_path = socket_path or None
        self.watchdog_s = watchdog_s if self.socket_path else None
        self._socket: socket.socket | None = None
        if self.socket_path:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Notifier:
        """Read and remove the notify variables, so child processes (tegrastats) do not
        inherit them and talk to systemd in the daemon's name."""
        environ = os.environ if environ is None else environ
        socket_path = environ.get("NOTIFY_SOCKET")
        watchdog_s = watchdog_interval_s(environ, os.getpid())
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)
        return cls(socket_path, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `KEY=value` lines; False when not under systemd.

        A failed send is logged and dropped: systemd being gone (a reload of
        systemd itself, a manual run with a stale variable) must not stop serving.
        """
        if self._socket is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            self._socket.sendto(message, _address(self.socket_path))
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.socket_path, e)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 match the reload it asked for to this one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping every half watchdog timeout from this event loop, until cancelled.

        The sleep, not a thread, paces the pings: a blocked loop misses them.
        """
        if self.watchdog_s is None:
            return
        period = self.watchdog_s / 2
        log.info("systemd watchdog: %.1fs, pinging every %.1fs", self.watchdog_s, period)
        while True:
            self.watchdog()
            await asyncio.sleep(period)

    def start_watchdog(self) -> asyncio.Task | None:
        """The pinging task on the running loop (keep a reference), or None without one."""
        if self.watchdog_s is None:
            return None
        return asyncio.get_running_loop().create_task(self.run_watchdog(),
                                                      name="e2edge-sd-watchdog")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def models_status(entries) -> str:
    """`STATUS=` text for the models of a registry: what is ready and what failed."""
    ready = [e.name for e in entries if e.state is ModelState.READY]
    failed = [e.name for e in entries if e.state is ModelState.FAILED]
    loading = [e.name for e in entries if e.state is ModelState.LOADING]
    parts = [f"ready: {', '.join(ready) or 'none'}"]
    if loading:
        parts.append(f"loading: {', '.join(loading)}")
    if failed:
        parts.append(f"failed: {', '.join(failed)}")
    return "serving; models " + "; ".join(parts)


async def announce_ready(notifier: Notifier, daemon) -> None:
    """READY=1 once every model of the daemon is loaded or failed, with what is served.

    A model that failed does not hold readiness back: the daemon serves the others
    (and says which failed in STATUS); restarting it would not mend a bad package.
    """
    notifier.status(f"loading {len(daemon.registry.entries)} models")
    await daemon.wait_ready()
    notifier.ready(models_status(daemon.registry))
