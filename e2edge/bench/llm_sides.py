"""The sides of `e2edge bench llm`, each timed in a process of its own, rounds alternating.

Two runtimes in one process disturb each other: an onnxruntime thread pool that spins
after its run steals the cores the other side's next run needs, and whichever side
runs second finds the caches as the first left them. So every round starts one fresh
process per side, in turn (A B A B ...): it loads its model, makes one warm-up run,
then `runs` timed runs, all with the same explicit thread count. A side's figure is
the median over every timed run of every round; the spread (min, max, and each
round's median) says how steady the machine was.

    jobs = [SideJob("e2edge", package, ids, 128, 5, threads=2), SideJob("ortgenai", ...)]
    results = run_alternating(jobs, rounds=3)   # side -> summary
"""

from __future__ import annotations

import multiprocessing
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class SideJob:
    side: str  # "e2edge" | "e2edge_ort_kernels" | "ortgenai" | "transformers_eager"
    source: str  # the package (e2edge) or the Hugging Face checkpoint (the peers)
    ids: tuple[int, ...]
    new_tokens: int
    runs: int
    threads: int
    quantization: dict | None = None  # the package's, so a peer builds the same precision
    kernels: str | None = None  # e2edge sides: "off" keeps onnxruntime's MatMulNBits, MatMul


def run_side(job: SideJob) -> dict:
    """One round of one side, in the calling process (the child's entry point)."""
    from e2edge.bench import llm

    ids = list(job.ids)
    if job.side in ("e2edge", llm.ABLATION):
        return llm.bench_runtime(job.source, ids, job.new_tokens, job.runs, job.threads,
                                 job.kernels)
    if job.side == "ortgenai":
        from e2edge.bench.ortgenai import bench_ortgenai

        return bench_ortgenai(job.source, job.quantization, ids, job.new_tokens, job.runs,
                              job.threads)
    if job.side == "transformers_eager":
        return llm.bench_transformers(job.source, ids, job.new_tokens, job.runs, job.threads)
    raise ValueError(f"unknown side {job.side!r}")


def run_alternating(jobs: list[SideJob], rounds: int) -> dict[str, dict]:
    """Each side's summary over `rounds` rounds, every run in a fresh process, in turn."""
    context = multiprocessing.get_context("spawn")  # no onnxruntime state inherited
    per_side: dict[str, list[dict]] = {job.side: [] for job in jobs}
    for _ in range(rounds):
        for job in jobs:
            with context.Pool(1) as pool:
                per_side[job.side].append(pool.apply(run_side, (job,)))
            if "skipped" in per_side[job.side][-1]:
                break
    return {job.side: merge_rounds(per_side[job.side], job.threads) for job in jobs}


def merge_rounds(rounds: list[dict], threads: int) -> dict:
    """Rounds of one side -> medians over all their runs, the spread, the first round's
    facts (a peer's build is fresh or cached in the first round only)."""
    first = dict(rounds[0])
    if "skipped" in first:
        return first
    decode = [run for r in rounds for run in r["decode_runs"]]
    prefill = [run for r in rounds for run in r["prefill_runs"]]
    first.update({
        "threads": threads,
        "rounds": len(rounds),
        "decode_tokens_per_s": round(statistics.median(decode), 1),
        "prefill_tokens_per_s": round(statistics.median(prefill), 1),
        "decode_runs": decode,
        "prefill_runs": prefill,
        "decode_spread": {
            "min": min(decode), "max": max(decode),
            "relative": round((max(decode) - min(decode)) / statistics.median(decode), 3),
            "round_medians": [r["decode_tokens_per_s"] for r in rounds],
        },
    })
    return first
