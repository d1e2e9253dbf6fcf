"""The daemon's image-decoding threads, shared by every vision model and service.

Decoding and preprocessing (Pillow, pydicom, numpy) run off the event loop, but not
on asyncio's default executor: that one has up to cpu_count + 4 threads, and on a
small board a small image's decode is mostly Python, so those threads mainly fight
over the GIL with the event loop and the models' workers. Measured on a 2-core VM
(28 px PNGs, 32 clients, `bench serve-vit`, three alternating runs each): 6 decoding
threads 667-689 / 935-980 images/s unbatched / batched, 1 thread 761-784 / 1,074-1,103
(2 threads, one run: no better than 6). Pillow and large numpy operations release the
GIL, so boards with more cores still decode big images in parallel with
`decode_threads` > 1.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


def available_cores() -> int:
    """CPUs this process may run on (a container's or systemd's CPU set, not the board's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decode_thread_count(configured: int) -> int:
    """`decode_threads` from the config; 0 = half the cores, at least one."""
    if configured < 0:
        raise ValueError(f"decode_threads must be >= 0, got {configured}")
    return configured or max(1, available_cores() // 2)


def decode_pool(configured: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(decode_thread_count(configured), thread_name_prefix="e2edge-decode")
