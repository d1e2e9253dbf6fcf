"""An independent check of `e2edge bench llm`'s speed-up: both runtimes in one process.

The bench runs each side in a process of its own. This check does it the other way
a sceptical reader would: both models loaded side by side in this process, with the
same explicit thread count, and runs alternating one by one in A B B A order (e2edge,
pause, peer, pause, peer, pause, e2edge, ...), so neither side always runs first after
the other. The pause lets each onnxruntime pool stop spinning before the other side's
run. If the two methods disagree by more than a few percent, one of them
measures the machine rather than the runtimes.
"""

from __future__ import annotations

import statistics
import time

from e2edge.bench.llm_sides import PAUSE_S


def alternate_in_one_process(package: str, checkpoint: str, quantization: dict | None,
                             ids: list[int], new_tokens: int, runs: int, threads: int) -> dict:
    from e2edge.bench.llm import RuntimeSide
    from e2edge.bench.ortgenai import OrtGenaiSide, build_model, builder_arguments, import_ortgenai

    arguments, why_not = builder_arguments(quantization)
    if arguments is None:
        return {"skipped": why_not}
    model_dir, _ = build_model(checkpoint, arguments, import_ortgenai().__version__)
    sides = {"e2edge": RuntimeSide(package, ids, new_tokens, threads),
             "ortgenai": OrtGenaiSide(model_dir, ids, new_tokens, threads)}
    decode: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(runs + 1):  # the first round warms both up
        order = list(sides.items())
        for name, side in order if round_index % 2 == 0 else reversed(order):
            _, tokens_per_s, _ = side.run_once()
            if round_index:
                decode[name].append(round(tokens_per_s, 1))
            time.sleep(PAUSE_S)
    medians = {name: statistics.median(runs_) for name, runs_ in decode.items()}
    return {
        "method": f"both in one process, runs alternating A B B A, {PAUSE_S}s pause after each",
        "threads": threads,
        "decode_runs": decode,
        "decode_tokens_per_s": {name: round(m, 1) for name, m in medians.items()},
        "decode_speedup": round(medians["e2edge"] / medians["ortgenai"], 3),
    }
