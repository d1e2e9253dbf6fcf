"""Where a served model's units of work (a prefill, a decode step, a vision batch) wait
for their turn on the box: the interface the engines use, defined below the daemon.

The daemon's scheduler (runtime/server/core/scheduler.py) hands each model a gate that
implements it; an engine used on its own (tests, benchmarks) runs UNGATED.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol


class StepGate(Protocol):
    """Where a served model's units of work wait for their turn on the box."""

    def turn(self, expired: Callable[[], bool] | None = None,
             more: Callable[[], bool] | None = None) -> AbstractContextManager[bool]:
        """Wait for the turn; the value says whether to run (False: `expired()` while it
        waited, and the unit is dropped). Leaving the block ends the unit; `more()`, asked
        then, says the model has work ready for its next unit."""
        ...

    def shed(self, requests: int = 1) -> None:
        """Count requests dropped before they ran."""
        ...


class _Ungated:
    """Alone on the box: every unit runs at once, nothing is counted."""

    def turn(self, expired: Callable[[], bool] | None = None,
             more: Callable[[], bool] | None = None) -> AbstractContextManager[bool]:
        return contextlib.nullcontext(True)

    def shed(self, requests: int = 1) -> None:
        pass


UNGATED: StepGate = _Ungated()
