"""A vision package on one backend: class probabilities for a fixed batch of images and
images per second; and how they compare with onnxruntime CPU's.

The reference is the package as stored and as its exporter verified it against
PyTorch: onnxruntime CPU running the 2-bit MatMulNBits layers as they are ("packed").
Every backend row, the CPU one included (int8 codes, as the daemon serves it there),
must give probabilities within a tolerance of the reference's and the same top-1 class,
except at a near tie: an image whose two best reference classes lie within twice the
tolerance may go either way.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from e2edge.selftest.backends import Placement

IMAGES = 16  # one batch of seeded random images, also the batch that is timed
BATCH_1_RUNS = 20
BATCH_RUNS = 5
PROBABILITY_TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 5e-3}


@dataclass
class VisionRun:
    probabilities: np.ndarray  # (IMAGES, n_classes) float32
    providers: list[str]
    execution: str  # how the 2-bit layers ran (runtime/vision/ternary_exec.py)
    numbers: dict[str, Any] = field(default_factory=dict)  # timings


def images(engine) -> np.ndarray:
    """(IMAGES, size, size, 3) uint8: the same pixels on every backend."""
    size = engine.preprocessing.size
    return np.random.default_rng(0).integers(0, 256, (IMAGES, size, size, 3), dtype=np.uint8)


def reference(path, cpu_run: VisionRun) -> VisionRun:
    """onnxruntime CPU on the graph as stored, untimed (the CPU row runs int8 codes)."""
    from runtime.vision.engine import VisionEngine

    engine = VisionEngine(path, execution="packed", providers=["CPUExecutionProvider"])
    return VisionRun(engine.probabilities(images(engine)), engine.providers, engine.execution)


def run(placement: Placement, reference: VisionRun | None = None) -> VisionRun:
    """The package on `placement` (the same images whatever the reference)."""
    from runtime.vision.engine import VisionEngine

    engine = VisionEngine(placement.path, backend=placement.backend,
                          providers=list(placement.providers) or None)
    batch = images(engine)
    probabilities = engine.probabilities(batch)
    numbers = {
        "images_per_s_batch_1": _images_per_s(engine, batch[:1], BATCH_1_RUNS),
        f"images_per_s_batch_{IMAGES}": _images_per_s(engine, batch, BATCH_RUNS),
    }
    return VisionRun(probabilities, engine.providers, engine.execution, numbers)


def _images_per_s(engine, batch: np.ndarray, runs: int) -> float:
    """Raw images in, probabilities out (preprocessing included); the median run."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.probabilities(batch)
        seconds.append(time.perf_counter() - started)
    return round(len(batch) / statistics.median(seconds), 1)


def arithmetic(backend_arithmetic: str, manifest: dict[str, Any], run: VisionRun) -> str:
    """fp16 when the 2-bit layers were unpacked to fp16 (onnxruntime's GPU providers)."""
    return "fp16" if run.execution == "fp16" else backend_arithmetic


def compare(reference: VisionRun, run: VisionRun,
            arithmetic: str) -> tuple[dict[str, Any], list[str]]:
    """(numbers, what disagrees): probabilities within tolerance, top-1 the same."""
    tolerance = PROBABILITY_TOLERANCE[arithmetic]
    if run.probabilities.shape != reference.probabilities.shape:
        return {}, [f"probabilities of shape {run.probabilities.shape}, the reference's "
                    f"{reference.probabilities.shape}"]
    diff = float(np.abs(run.probabilities - reference.probabilities).max())
    ranked = np.sort(reference.probabilities, axis=1)
    near_tie = ranked[:, -1] - ranked[:, -2] <= 2 * tolerance
    differs = run.probabilities.argmax(1) != reference.probabilities.argmax(1)
    numbers = {
        "max_abs_probability_diff": diff,
        "probability_tolerance": tolerance,
        "arithmetic": arithmetic,
        "execution": run.execution,
        "images": len(differs),
        "top1_agreement": float(1.0 - differs.mean()),
        "near_ties": int(near_tie.sum()),
    }
    problems = []
    if not diff <= tolerance:  # NaN fails too
        problems.append(f"max |probability diff| {diff:.3g} exceeds {tolerance:.3g} "
                        f"({arithmetic})")
    wrong = np.flatnonzero(differs & ~near_tie)
    if len(wrong):
        problems.append(f"top-1 differs on {len(wrong)} of {len(differs)} images away from a "
                        f"near tie (first: image {wrong[0]})")
    return numbers, problems
