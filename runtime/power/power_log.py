"""The power log: one JSON line per sample, rotated by size.

Each line:
  {"time": 1767225600.123, "t": 8123.456, "total_mw": 4520.0,
   "rails_mw": {"POM_5V_IN": 4520.0, ...}, "active": ["req-7", "req-9"], ...}

`time` is wall-clock (Unix seconds) for people and other logs, `t` the monotonic
time the energy meter uses; `active` lists the requests running at that sample.
Loads and temperatures follow when the source reports them.

Rotation works like logging's RotatingFileHandler: when the next line would take
the file past `max_bytes`, FILE becomes FILE.1, FILE.1 becomes FILE.2, ... and the
oldest of `backups` is dropped (with backups = 0 the file is just truncated).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from runtime.power.sample import PowerSample


def log_record(sample: PowerSample, active_ids: Iterable[str] = ()) -> dict:
    """The JSON object written for one sample."""
    wall = time.time() - (time.monotonic() - sample.t)
    return {"time": round(wall, 3), **sample.to_dict(), "active": list(active_ids)}


class PowerLog:
    """Appends samples to a JSON-lines file with size-based rotation; thread-safe."""

    def __init__(self, path: str | Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 3):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be >= 0, got {backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._size = self.path.stat().st_size

    def write(self, sample: PowerSample, active_ids: Iterable[str] = ()) -> None:
        line = json.dumps(log_record(sample, active_ids), separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._file.closed:
                raise ValueError(f"power log {self.path} is closed")
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()  # readable live by `tail -f` and by a crash post-mortem
            self._size += len(data)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> PowerLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._size = 0
