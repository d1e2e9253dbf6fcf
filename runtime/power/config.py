"""The `power:` section of the daemon's YAML config, validated once here.

  power:
    source: auto          # auto | tegrastats | jtop | hwmon | nvml | none
    interval_ms: 100      # sampling interval
    log: /var/log/e2edge/power.jsonl   # optional JSON-lines power log
    log_max_bytes: 10485760
    log_backups: 3
    idle_window_s: 2.0    # idle baseline measured at start-up (0 = none)
    history_s: 600        # how far back the ring buffer reaches
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from runtime.errors import ConfigError

SOURCE_NAMES: tuple[str, ...] = ("auto", "tegrastats", "jtop", "hwmon", "nvml", "none")
MIN_INTERVAL_MS = 10
MAX_INTERVAL_MS = 60_000


@dataclass(frozen=True)
class PowerConfig:
    """Where power comes from, how often it is read, and where it is logged."""

    source: str = "auto"
    interval_ms: int = 100
    log: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    idle_window_s: float = 2.0
    history_s: float = 600.0

    def __post_init__(self):
        if self.source not in SOURCE_NAMES:
            _fail("source", f"must be one of {', '.join(SOURCE_NAMES)}, got {self.source!r}")
        _check_int("interval_ms", self.interval_ms, MIN_INTERVAL_MS, MAX_INTERVAL_MS)
        if self.log is not None and (not isinstance(self.log, str) or not self.log.strip()):
            _fail("log", f"must be a file path, got {self.log!r}")
        _check_int("log_max_bytes", self.log_max_bytes, 1024, None)
        _check_int("log_backups", self.log_backups, 0, 100)
        _check_number("idle_window_s", self.idle_window_s, 0.0, 600.0)
        _check_number("history_s", self.history_s, 1.0, 86_400.0)
        if self.history_s * 1000.0 < self.interval_ms:
            _fail("history_s", "must hold at least one sampling interval")

    @classmethod
    def from_dict(cls, data: Mapping | None) -> PowerConfig:
        """From the parsed YAML `power:` mapping; absent keys take their defaults."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"power: must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ConfigError(
                f"power: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


def _fail(name: str, message: str):
    raise ConfigError(f"power.{name}: {message}")


def _check_int(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        _fail(name, f"must be {bound}, got {value}")


def _check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, f"must be a number, got {value!r}")
    if not low <= value <= high:
        _fail(name, f"must be between {low} and {high}, got {value}")
