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

from runtime.config_field import setting
from runtime.errors import ConfigError

SOURCE_NAMES: tuple[str, ...] = ("auto", "tegrastats", "jtop", "hwmon", "nvml", "none")
MIN_INTERVAL_MS = 10
MAX_INTERVAL_MS = 60_000


@dataclass(frozen=True)
class PowerConfig:
    """Where power comes from, how often it is read, and where it is logged."""

    source: str = setting("auto", doc=f"""
        {" | ".join(SOURCE_NAMES)}. `auto` takes the first this box has, in this order:
        tegrastats on PATH, jtop (jetson-stats installed and its service running), an
        INA3221 power monitor in hwmon sysfs, NVML with a GPU that reports power, else
        `none`. With `none` responses carry no joules (the fields are absent, never 0)
        and WatchPower is FAILED_PRECONDITION.""")
    interval_ms: int = setting(100, doc=f"""
        Sampling interval in milliseconds, {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}.""")
    log: str | None = setting(None, example="/var/log/e2edge/power.jsonl", doc="""
        A JSON-lines power log (time, total and rails, the requests running), rotated by
        size; absent = no log.""")
    log_max_bytes: int = setting(10 * 1024 * 1024, doc="""
        Size at which the power log is rotated, >= 1024 bytes.""")
    log_backups: int = setting(3, doc="""
        Rotated power-log files kept, 0 to 100.""")
    idle_window_s: float = setting(2.0, doc="""
        Seconds (0 to 600) of readings at start-up that make the idle baseline, from which
        `joules_above_idle` is counted; 0 = no baseline.""")
    history_s: float = setting(600.0, doc="""
        Seconds of readings the daemon keeps in memory (a ring buffer), 1 to 86400 and
        at least one sampling interval. A request's energy is integrated from them; for
        a request longer than this, the oldest reading held stands in for the part of
        its window before it.""")

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
