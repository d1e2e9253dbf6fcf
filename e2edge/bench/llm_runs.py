"""Timed greedy runs of one side of `e2edge bench llm`, and their summary.

A side is anything with `run_once() -> (prefill tokens/s, decode tokens/s, token ids)`
and `executor` (what ran it): this runtime (llm.RuntimeSide) or a peer
(ortgenai.OrtGenaiSide).
"""

from __future__ import annotations

import contextlib
import statistics
import time

# In a side's own process, the bench's parent lets one side run at a time
# (llm_sides.py sets this to its Turn); elsewhere runs go straight on.
_turn: contextlib.AbstractContextManager = contextlib.nullcontext()


def take_turns(turn: contextlib.AbstractContextManager) -> None:
    """Make every later run of this process wait for its turn (llm_sides.Turn)."""
    global _turn
    _turn = turn


def turn() -> contextlib.AbstractContextManager:
    """Wrap one run: `with turn(): side.run_once()`."""
    return _turn


def timed_runs(side, runs: int) -> dict:
    """One warm-up run, then `runs` timed runs of `side` (a RuntimeSide or a peer's); each
    timed run's window on the system's monotonic clock (`run_windows_s`, comparable across
    the bench's processes: they show that no two sides' runs overlapped)."""
    results, windows = [], []
    for _ in range(runs + 1):  # the first run is the warm-up
        with turn():
            start = time.monotonic()
            prefill, decode, tokens = side.run_once()
            windows.append([round(start, 3), round(time.monotonic(), 3)])
        results.append((prefill, decode))
    return {**summarise_runs(results[1:], side.executor), "run_windows_s": windows[1:],
            "token_ids": tokens}


def summarise_runs(results: list[tuple[float, float]], executor: list[str]) -> dict:
    """(prefill tokens/s, decode tokens/s) of each timed run -> medians, and the runs."""
    return {
        "executor": executor,
        "prefill_tokens_per_s": round(statistics.median(r[0] for r in results), 1),
        "decode_tokens_per_s": round(statistics.median(r[1] for r in results), 1),
        "decode_runs": [round(r[1], 1) for r in results],
        "prefill_runs": [round(r[0], 1) for r in results],
    }
