"""`e2edge serve` as a child process, the way a robot stack meets the daemon."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def daemon_process(config_path: Path) -> Iterator[subprocess.Popen]:
    """Run `e2edge serve --config config_path`; SIGTERM it on exit and insist on status 0."""
    child = subprocess.Popen(
        [sys.executable, "-m", "e2edge.cli", "serve", "--config", str(config_path)]
    )
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        if child.wait(timeout=30) != 0:
            raise RuntimeError(f"the daemon exited with status {child.returncode}")
