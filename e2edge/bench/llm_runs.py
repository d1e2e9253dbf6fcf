"""Timed greedy runs of one side of `e2edge bench llm`, and their summary.

A side is anything with `run_once() -> (prefill tokens/s, decode tokens/s, token ids)`
and `executor` (what ran it): this runtime (llm.RuntimeSide) or a peer
(ortgenai.OrtGenaiSide).
"""

from __future__ import annotations

import statistics


def timed_runs(side, runs: int) -> dict:
    """One warm-up run, then `runs` timed runs of `side` (a RuntimeSide or a peer's)."""
    results = []
    for _ in range(runs + 1):  # the first run is the warm-up
        prefill, decode, tokens = side.run_once()
        results.append((prefill, decode))
    return {**summarise_runs(results[1:], side.executor), "token_ids": tokens}


def summarise_runs(results: list[tuple[float, float]], executor: list[str]) -> dict:
    """(prefill tokens/s, decode tokens/s) of each timed run -> medians, and the runs."""
    return {
        "executor": executor,
        "prefill_tokens_per_s": round(statistics.median(r[0] for r in results), 1),
        "decode_tokens_per_s": round(statistics.median(r[1] for r in results), 1),
        "decode_runs": [round(r[1], 1) for r in results],
        "prefill_runs": [round(r[0], 1) for r in results],
    }
