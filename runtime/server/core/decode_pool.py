"""Where the daemon decodes a request's images: on the event loop when they are small,
otherwise on its own few decoding threads. Shared by every vision model and service.

Decoding and preprocessing (Pillow, pydicom, numpy) of a large image take
milliseconds and must not stall the event loop, so they run on a thread. But not on
asyncio's default executor: that one has up to cpu_count + 4 threads, and on a small
board a small image's decode is mostly Python, so those threads mainly fight over the
GIL with the event loop and the models' workers. Measured on a 2-core VM (28 px PNGs,
32 clients, `bench serve-vit`, three alternating runs each): 6 decoding threads
667-689 / 935-980 images/s unbatched / batched, 1 thread 761-784 / 1,074-1,103 (2
threads, one run: no better than 6). Pillow and large numpy operations release the
GIL, so boards with more cores still decode big images in parallel with
`decode_threads` > 1.

A small image is cheaper to decode than to hand to a thread and back (a 28 px PNG:
about 90 us of work against two thread switches and an event-loop wake-up, all under
the GIL), so requests whose images declare at most `decode_inline_max_pixels` pixels
in all (PNG and JPEG headers, raw tensor shapes; DICOM always goes to a thread) are
decoded on the loop itself. Same VM and bench, two runs each: unbatched 723-763 ->
810-830 images/s, batched 1,094-1,112 -> 1,407-1,419; a batch shares one hand-off to
the model among all its requests, so batching gains the most once decoding needs none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from runtime.config import DEFAULT_INLINE_MAX_PIXELS
from runtime.host_facts import usable_cores as available_cores
from runtime.server.core import request_cpu

T = TypeVar("T")


def total_pixels(per_image: Iterable[int | None]) -> int | None:
    """A request's pixels from its images' (None for one not known cheaply: then None)."""
    total = 0
    for pixels in per_image:
        if pixels is None:
            return None
        total += pixels
    return total


def decode_thread_count(configured: int) -> int:
    """`decode_threads` from the config; 0 = half the cores, at least one."""
    if configured < 0:
        raise ValueError(f"decode_threads must be >= 0, got {configured}")
    return configured or max(1, available_cores() // 2)


class ImageDecoding:
    """The daemon's decoding threads and the size under which the loop decodes itself."""

    def __init__(self, threads: int = 0, inline_max_pixels: int = DEFAULT_INLINE_MAX_PIXELS):
        self.executor = ThreadPoolExecutor(decode_thread_count(threads),
                                           thread_name_prefix="e2edge-decode")
        self.inline_max_pixels = inline_max_pixels  # 0: every request goes to a thread

    def inline(self, pixels: int | None) -> bool:
        """Decode on the loop? `pixels`: what the request's images declare (None: unknown)."""
        return pixels is not None and 0 < pixels <= self.inline_max_pixels

    async def run(self, pixels: int | None, prepare: Callable[..., T], *args) -> T:
        """`prepare(*args)` on the loop when `inline(pixels)`, else on a decoding thread."""
        if self.inline(pixels):
            return prepare(*args)
        result, cpu_s = await asyncio.get_running_loop().run_in_executor(
            self.executor, request_cpu.timed, prepare, *args)
        request_cpu.add(cpu_s)  # the call's handling, done on a decoding thread
        return result

    def close(self) -> None:
        self.executor.shutdown(wait=False)
