"""The sides of `e2edge bench llm`, each timed in a process of its own, runs alternating.

Two runtimes in one process disturb each other (an onnxruntime pool that spins after its
run steals the cores the other side's next run needs), so every round starts one fresh
process per side: each loads its model, then makes one warm-up run and `runs` timed
runs, all with the same explicit thread count. The runs take turns across the
processes, A B B A (so neither side always runs right after the other), one at a time,
with a pause after each that lets the last side's threads stop spinning: a machine
whose speed drifts over a minute (a shared VM) then drifts under both sides alike,
rather than under whichever process happened to run then. A side's figure is the
median over every timed run of every round; the spread (min, max, and each round's
median) says how steady the machine was.

    jobs = [SideJob("e2edge", package, ids, 128, 5, threads=2), SideJob("ortgenai", ...)]
    results = run_alternating(jobs, rounds=3)   # side -> summary
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
from dataclasses import dataclass

PAUSE_S = 0.5  # after each run: onnxruntime's spinning threads go to sleep well before


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


class Turn:
    """One side's turns: a run starts when the parent lets it (`go`) and says when it
    ended (`done`)."""

    def __init__(self, go, done) -> None:
        self.go, self.done = go, done

    def __enter__(self) -> None:
        self.go.acquire()

    def __exit__(self, *exc) -> None:
        self.done.release()


def _side_process(job: SideJob, turn: Turn, results) -> None:
    """A side's child: its runs wait their turns; its summary (or its error) goes back."""
    from e2edge.bench.llm_runs import take_turns

    take_turns(turn)
    try:
        results.put((job.side, run_side(job)))
    except Exception as e:  # noqa: BLE001 - the parent raises it
        results.put((job.side, e))


def _one_round(jobs: list[SideJob], context) -> dict[str, dict]:
    """Every side in a fresh process at once, their runs alternating A B B A."""
    results = context.Queue()
    turns = {job.side: Turn(context.Semaphore(0), context.Semaphore(0)) for job in jobs}
    processes = {job.side: context.Process(target=_side_process,
                                           args=(job, turns[job.side], results), daemon=True)
                 for job in jobs}
    for process in processes.values():
        process.start()
    ended: set[str] = set()  # sides whose process finished early (skipped, failed)
    for slot in range(max(job.runs for job in jobs) + 1):  # slot 0: the warm-ups
        for job in jobs if slot % 2 == 0 else reversed(jobs):
            if job.side in ended or slot > job.runs:
                continue
            turns[job.side].go.release()
            while not turns[job.side].done.acquire(timeout=0.2):
                if not processes[job.side].is_alive():
                    ended.add(job.side)
                    break
            time.sleep(PAUSE_S)
    summaries: dict[str, dict] = {}
    while len(summaries) < len(jobs):
        try:
            side, summary = results.get(timeout=1.0)
        except queue.Empty:
            dead = [s for s, p in processes.items() if not p.is_alive() and s not in summaries]
            if dead and results.empty():
                raise RuntimeError(f"bench side(s) {dead} ended without a result") from None
            continue
        if isinstance(summary, Exception):
            raise summary
        summaries[side] = summary
    for process in processes.values():
        process.join()
    return summaries


def run_alternating(jobs: list[SideJob], rounds: int) -> dict[str, dict]:
    """Each side's summary over `rounds` rounds: per round a fresh process per side, runs
    taking turns across them. A side that is skipped (no peer at this precision) is not
    started again."""
    context = multiprocessing.get_context("spawn")  # no onnxruntime state inherited
    per_side: dict[str, list[dict]] = {job.side: [] for job in jobs}
    for _ in range(rounds):
        active = [job for job in jobs if not any("skipped" in r for r in per_side[job.side])]
        for side, summary in _one_round(active, context).items():
            per_side[side].append(summary)
    return {job.side: merge_rounds(per_side[job.side], job.threads) for job in jobs}


def merge_rounds(rounds: list[dict], threads: int) -> dict:
    """Rounds of one side -> medians over all their runs, the spread, the first round's
    facts (a peer's build is fresh or cached in the first round only)."""
    first = dict(rounds[0])
    if "skipped" in first:
        return first
    decode = [run for r in rounds for run in r["decode_runs"]]
    prefill = [run for r in rounds for run in r["prefill_runs"]]
    if "run_windows_s" in first:
        first["run_windows_s"] = [w for r in rounds for w in r.get("run_windows_s", [])]
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
