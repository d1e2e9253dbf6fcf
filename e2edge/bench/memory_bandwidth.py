"""This machine's memory bandwidth, and the decode roofline it implies.

Decoding one token reads every weight once, so on a machine whose caches cannot hold
the weights, decode tokens/s can never exceed

    roofline tokens/s = memory bandwidth / bytes read per decoded token

Bytes read per token are the package's weight bytes less the tables the graph only
gathers rows from (the token embedding when it is not also the LM head, the rotary
cos/sin caches): a decode step reads one row of each, not the table. For an fp32
package with a tied embedding that is all of its weight bytes; for an int4 package
whose fp32 embedding sits beside a quantised LM head, it is less than half of them.

The bandwidth is measured, not looked up: a multi-threaded copy of a buffer much
larger than the last-level cache (1 GiB by default; the development VM's L3 is
300 MiB), each thread copying its own contiguous slice with `np.copyto` (numpy
releases the GIL while it copies). Bytes are counted the STREAM "copy" way: every
copied byte is read once and written once, so one copy of B bytes moves 2 B. After
a warm-up copy (it also takes the destination's page faults), the best and the
median of a few timed copies are kept; the roofline uses the best, the highest rate
this machine was seen to sustain.

A copy is not what a decode step does: it only reads. The read ceiling is measured
too, as the weight-streaming rate of the fastest matrix-vector product at hand (BLAS
sgemv through torch, or numpy's when torch is absent) over a matrix as large as the
copy's buffer: counted bytes = the matrix's, once. On the development VM a core
sustains only so many cache misses in flight, so reading is slower than the copy's
read + write count (2 cores: GEMV 29-32 GB/s, copy 43-47 GB/s; a hand-written
AVX-512 read of 16 interleaved streams per core reached 31-32 GB/s), and
`read_ceiling_tokens_per_s` = read rate / bytes per token is what an fp32 decode
could reach if it did nothing but stream its weights.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np

DEFAULT_BUFFER_BYTES = 1 << 30
COUNTING = "read + write bytes (STREAM copy: each copied byte is read once and written once)"
READ_COUNTING = "bytes of the matrix, each read once per product"
GEMV_COLUMNS = 1024  # the matrix's row length; rows fill the buffer


@dataclass(frozen=True)
class Bandwidth:
    threads: int
    buffer_bytes: int  # the copied source (the destination is as large), or the matrix
    best_bytes_per_s: float
    median_bytes_per_s: float
    runs_bytes_per_s: tuple[float, ...]
    method: str = ""
    counted: str = COUNTING

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "counted": self.counted,
            "threads": self.threads,
            "buffer_bytes": self.buffer_bytes,
            "best_gb_s": round(self.best_bytes_per_s / 1e9, 2),
            "median_gb_s": round(self.median_bytes_per_s / 1e9, 2),
            "runs_gb_s": [round(r / 1e9, 2) for r in self.runs_bytes_per_s],
        }


def measure_copy_bandwidth(threads: int = 0, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                           repeats: int = 5) -> Bandwidth:
    """Copy `buffer_bytes` with `threads` threads (0 = os.cpu_count()), `repeats` times."""
    threads = threads or os.cpu_count() or 1
    if buffer_bytes < threads * 4096 or repeats < 1:
        raise ValueError(f"need a buffer of at least 4 KiB per thread and repeats >= 1, got "
                         f"{buffer_bytes} bytes for {threads} threads and {repeats} repeats")
    src = np.empty(buffer_bytes, dtype=np.uint8)  # (buffer_bytes,) uint8
    dst = np.empty_like(src)
    # Slice edges on 4 KiB pages, so no two threads write into the same page.
    edges = [(buffer_bytes * i // threads) // 4096 * 4096 for i in range(threads)] + [buffer_bytes]
    slices = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]

    def fill(part: slice) -> None:  # first touch: the pages get mapped before any timing
        src[part].fill(1)

    def copy(part: slice) -> None:
        np.copyto(dst[part], src[part])

    with ThreadPool(threads) as pool:
        pool.map(fill, slices, chunksize=1)

        def timed_copy() -> float:
            start = time.perf_counter()
            pool.map(copy, slices, chunksize=1)
            return time.perf_counter() - start

        timed_copy()  # warm-up: maps the destination's pages, starts the threads
        rates = tuple(2 * buffer_bytes / timed_copy() for _ in range(repeats))
    if not np.array_equal(dst[:: 1 << 20], src[:: 1 << 20]):
        raise RuntimeError("the bandwidth copy did not copy the buffer")
    method = (f"{threads}-thread np.copyto of a {buffer_bytes / 2**20:.0f} MiB buffer, one "
              "contiguous slice per thread, after one warm-up copy")
    return Bandwidth(threads, buffer_bytes, max(rates), statistics.median(rates), rates, method)


def measure_read_bandwidth(threads: int = 0, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                           repeats: int = 5) -> Bandwidth:
    """The rate a matrix-vector product streams a `buffer_bytes` fp32 matrix (reads only).

    torch's sgemv with `threads` threads when torch is installed (its thread count is
    restored afterwards); otherwise numpy's BLAS with its own thread count.
    """
    threads = threads or os.cpu_count() or 1
    rows = buffer_bytes // (4 * GEMV_COLUMNS)
    if rows < threads or repeats < 1:
        raise ValueError(f"need a matrix of at least {threads} rows and repeats >= 1, got "
                         f"{buffer_bytes} bytes and {repeats} repeats")
    matrix = np.ones((rows, GEMV_COLUMNS), dtype=np.float32)  # first touch maps the pages
    vector = np.full(GEMV_COLUMNS, 0.5, dtype=np.float32)
    try:
        import torch
    except ModuleNotFoundError:
        torch = None
    if torch is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        weights, x = torch.from_numpy(matrix), torch.from_numpy(vector)
        out = torch.empty(rows)

        def product() -> float:
            torch.mv(weights, x, out=out)
            return float(out[-1])

        engine = f"{threads}-thread torch.mv (BLAS sgemv)"
    else:
        out_np = np.empty(rows, dtype=np.float32)

        def product() -> float:
            np.dot(matrix, vector, out=out_np)
            return float(out_np[-1])

        engine = "numpy np.dot (BLAS sgemv, its own thread count)"
    try:
        product()  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            value = product()
            rates.append(matrix.nbytes / (time.perf_counter() - start))
    finally:
        if torch is not None:
            torch.set_num_threads(before)
    if value != 0.5 * GEMV_COLUMNS:
        raise RuntimeError(f"the bandwidth GEMV computed {value}, not {0.5 * GEMV_COLUMNS}")
    method = (f"{engine} of a {matrix.nbytes / 2**20:.0f} MiB fp32 matrix "
              f"({rows} x {GEMV_COLUMNS}) by a vector, after one warm-up product")
    return Bandwidth(threads, matrix.nbytes, max(rates), statistics.median(rates),
                     tuple(rates), method, READ_COUNTING)


def bytes_read_per_token(onnx_path: str | Path, weight_bytes: int) -> tuple[int, list[dict]]:
    """`weight_bytes` less what a decode step skips of gather-only tables; and those tables.

    A table is gather-only when every use of it is the data input of a Gather; a
    decode step reads one row of it: its bytes / its first dimension. An initializer
    used only by Casts (an fp16 package's weight matrices) counts at the Cast's type:
    onnxruntime folds a Cast of a constant when it creates the session, so a decode
    step reads the widened copy.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    uses: dict[str, list[tuple[str, int]]] = {}
    cast_to: dict[str, int] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, position))
        if node.op_type == "Cast":
            cast_to[node.input[0]] = next(a.i for a in node.attribute if a.name == "to")
    skipped, widened, tables = 0, 0, []
    for init in graph.initializer:
        used = uses.get(init.name, [])
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        if used and all(use == ("Cast", 0) for use in used):
            to = onnx.helper.tensor_dtype_to_np_dtype(cast_to[init.name]).itemsize
            widened += int(np.prod(init.dims)) * (to - itemsize)
            continue
        if not used or any(use != ("Gather", 0) for use in used) or len(init.dims) < 2:
            continue
        table = int(np.prod(init.dims)) * itemsize
        skipped += table - table // init.dims[0]
        tables.append({"name": init.name, "shape": list(init.dims), "bytes": table})
    return weight_bytes - skipped + widened, tables


def roofline_tokens_per_s(bandwidth: Bandwidth, bytes_per_token: int) -> float:
    """The decode tokens/s a memory-bound model cannot beat on this machine."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes per token must be positive, got {bytes_per_token}")
    return bandwidth.best_bytes_per_s / bytes_per_token
