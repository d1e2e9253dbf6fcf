"""A real daemon on its own event loop in a background thread.

For the callers that are not async themselves and want the daemon in their
process: the serve benchmark and the tests. Clients still talk to it over real
gRPC (loopback TCP or a unix socket), exactly as they would to `e2edge serve`.

    with DaemonThread(config) as daemon:      # returns once every model is loaded
        client = EdgeClient(daemon.target)
"""

from __future__ import annotations

import asyncio
import threading

from runtime.config import DaemonConfig
from runtime.server.daemon import Daemon, create_server


class DaemonThread:
    def __init__(self, config: DaemonConfig, grace_s: float | None = None):
        self.config = config
        self.grace_s = grace_s
        self.daemon: Daemon | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="e2edge-daemon", daemon=True)

    @property
    def target(self) -> str:
        if self.daemon is None:
            raise RuntimeError("the daemon is not started")
        return self.daemon.target

    def start(self, timeout_s: float = 120.0) -> DaemonThread:
        """Start serving and wait until every model is loaded (or failed to load)."""
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"the daemon did not start within {timeout_s}s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain (the grace period given at construction, else the config's) and join."""
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the daemon did not stop within {timeout_s}s")

    def run_coroutine(self, coroutine, timeout_s: float = 10.0):
        """Run a coroutine on the daemon's loop (to look at its state from a test)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.daemon, _ = await create_server(self.config)
            await self.daemon.start()
            await self.daemon.wait_ready()
        except Exception as e:  # handed to start(), which raises it in the caller
            self._error = e
            self._started.set()
            if self.daemon is not None:
                await self.daemon.stop(0)
            return
        self._started.set()
        await self._stop.wait()
        await self.daemon.stop(self.grace_s)

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
