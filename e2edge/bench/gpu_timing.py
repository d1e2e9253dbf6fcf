"""GPU time per call of a function that launches work, for the kernel benchmarks.

Python's launch overhead is hidden: a GPU sleep longer than the time Python needs to queue
the timed loop runs first, so the events measure the GPU's time per call alone. Weights
that should come from DRAM are rotated through enough copies to miss the L2 cache (copies).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any


def l2_bytes() -> int:
    import torch

    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) or 50 << 20)


def copies(nbytes: int, limit_bytes: int = 3 << 30) -> int:
    """How many copies of a weight set make every call miss L2 (at least 2)."""
    wanted = max(2, math.ceil(3 * l2_bytes() / max(nbytes, 1)))
    return int(max(1, min(wanted, 256, limit_bytes // max(nbytes, 1))))


def gpu_time_us(fn: Callable[[int], Any], iters: int = 100, reps: int = 5) -> dict[str, Any]:
    """Median GPU microseconds per fn(i) call, Python launch overhead hidden."""
    import torch

    from plugins_trt.cuda_driver import gpu_info

    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        fn(i)
    cpu_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    sleep = getattr(torch.cuda, "_sleep", None)
    clock_hz = (gpu_info().clock_khz or 1_500_000) * 1e3
    cycles = int((2.0 * cpu_s + 1e-3) * clock_hz)
    samples = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        if sleep is not None:
            sleep(cycles)
        start.record()
        for i in range(iters):
            fn(i)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / iters)
    return {
        "us": statistics.median(samples),
        "us_min": min(samples),
        "launch_overhead_hidden": sleep is not None,
        "cpu_us_per_call": cpu_s * 1e6 / iters,
    }
