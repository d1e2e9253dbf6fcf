"""Memory of the workstation commands: the peak they report (`e2edge prune`, `e2edge export
llm`), and handing freed memory back between an export's phases."""

from __future__ import annotations

import ctypes
import gc
import resource


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS before the next phase.

    glibc keeps freed small and mid-sized blocks in its heap (a 3B package's session frees
    thousands of them), so without a trim the float32 reference would come on top of
    memory nobody uses. Where the C library is not glibc there is nothing to call.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): its allocator returns memory its own way
        return
    libc.malloc_trim(0)
