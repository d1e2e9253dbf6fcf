"""An upper bound on how fast this machine streams weights: the best of several readers.

Decoding one token reads every weight once, so decode tokens/s <= read rate / bytes
per token. One reader alone can under-measure the rate (a BLAS GEMV that a core's
outstanding misses limit, a thread count that leaves a core idle), and a "ceiling"
that a decode then beats is no ceiling. So the rate is the best of four readers,
each over an fp32 buffer far larger than the last-level cache, each with the same
`threads`, each checked for its result:

    reduction     numpy's add.reduce over one contiguous slice per thread (numpy
                  releases the GIL inside the loop)
    blas_gemv     a matrix-vector product by the BLAS (torch.mv when torch is here,
                  else numpy's) over a (rows, 1024) matrix
    ort_gemv      onnxruntime's own fp32 MatMul, (1, 1024) x (1024, N), with
                  intra_op_num_threads = threads: the kernel family a decode uses
    e2edge_gemv   the same product on e2edge's fp32 kernel (MatMulF32Packed), where this
                  host runs it: what e2edge's fp32 decode streams with

Counted bytes: the buffer's, once per pass. The best run of the best reader is the
ceiling; every reader's runs are in the JSON.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from multiprocessing.pool import ThreadPool

import numpy as np

from e2edge.bench.memory_bandwidth import READ_COUNTING, Bandwidth, measure_read_bandwidth

COLUMNS = 1024  # the GEMVs' reduction length


def _timed(read: Callable[[], float], expected: float, nbytes: int, repeats: int) \
        -> tuple[float, ...]:
    """Bytes/s of each of `repeats` passes after a warm-up; the pass must return `expected`."""
    read()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = read()
        rates.append(nbytes / (time.perf_counter() - start))
        if not np.isclose(value, expected, rtol=1e-3):
            raise RuntimeError(f"a read pass computed {value}, not {expected}")
    return tuple(rates)


def _bandwidth(threads: int, nbytes: int, rates: tuple[float, ...], method: str) -> Bandwidth:
    return Bandwidth(threads, nbytes, max(rates), statistics.median(rates), rates, method,
                     READ_COUNTING)


def reduction_read(threads: int, buffer_bytes: int, repeats: int = 5) -> Bandwidth:
    values = np.ones(buffer_bytes // 4, dtype=np.float32)  # first touch maps the pages
    edges = [values.size * i // threads for i in range(threads + 1)]
    with ThreadPool(threads) as pool:
        def read() -> float:
            parts = pool.map(lambda i: float(np.add.reduce(values[edges[i]:edges[i + 1]],
                                                          dtype=np.float32)), range(threads))
            return sum(parts)

        rates = _timed(read, float(values.size), values.nbytes, repeats)
    return _bandwidth(threads, values.nbytes, rates,
                      f"{threads}-thread numpy add.reduce of a {values.nbytes >> 20} MiB fp32 "
                      "buffer, one contiguous slice per thread")


def onnxruntime_gemv_read(threads: int, buffer_bytes: int, repeats: int = 5,
                          e2edge_kernel: bool = False) -> Bandwidth:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = buffer_bytes // (4 * COLUMNS)
    weights = np.ones((COLUMNS, n), dtype=np.float32)  # (K, N)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    opsets = [helper.make_opsetid("", 17)]
    if e2edge_kernel:
        from runtime.kernels import library as kernel_library

        reason = kernel_library.unavailable("fp32")
        if reason is not None:
            raise RuntimeError(reason)
        library = kernel_library.load()
        weights = library.pack_fp32(weights)  # the same bytes, in the kernel's panels
        node = helper.make_node(kernel_library.FP32_OP_TYPE, ["x", "w"], ["y"],
                                domain=kernel_library.DOMAIN, K=COLUMNS, N=n)
        opsets.append(helper.make_opsetid(kernel_library.DOMAIN, 1))
        options.register_custom_ops_library(str(library.path))
    graph = helper.make_graph(
        [node], "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, COLUMNS]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weights.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    out = np.empty((1, n), dtype=np.float32)
    binding = session.io_binding()  # the matrix is bound once, in place: no copy per pass
    binding.bind_ortvalue_input("w", ort.OrtValue.ortvalue_from_numpy(weights))
    binding.bind_cpu_input("x", np.full((1, COLUMNS), 0.5, dtype=np.float32))
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(out))

    def read() -> float:
        session.run_with_iobinding(binding)
        return float(out[0, -1])

    rates = _timed(read, 0.5 * COLUMNS, weights.nbytes, repeats)
    op = "e2edge MatMulF32Packed" if e2edge_kernel else "MatMul"
    return _bandwidth(threads, weights.nbytes, rates,
                      f"onnxruntime {ort.__version__} {op} (1, {COLUMNS}) x ({COLUMNS}, {n}) "
                      f"fp32, intra_op_num_threads {threads}")


READERS = {
    "reduction": reduction_read,
    "blas_gemv": lambda threads, nbytes, repeats: measure_read_bandwidth(threads, nbytes, repeats),
    "ort_gemv": onnxruntime_gemv_read,
    "e2edge_gemv": lambda threads, nbytes, repeats: onnxruntime_gemv_read(threads, nbytes, repeats,
                                                                          e2edge_kernel=True),
}


def measure_read_ceiling(threads: int = 0, buffer_bytes: int = 1 << 30, repeats: int = 5) \
        -> tuple[Bandwidth, dict[str, dict]]:
    """(the best reader's Bandwidth, every reader's JSON: its runs, or why it did not run)."""
    threads = threads or os.cpu_count() or 1
    readers: dict[str, dict] = {}
    best: Bandwidth | None = None
    for name, reader in READERS.items():
        try:
            bandwidth = reader(threads, buffer_bytes, repeats)
        except (ImportError, RuntimeError, MemoryError) as e:
            readers[name] = {"skipped": f"{type(e).__name__}: {e}"}
            continue
        readers[name] = bandwidth.to_json()
        if best is None or bandwidth.best_bytes_per_s > best.best_bytes_per_s:
            best = bandwidth
    if best is None:
        raise RuntimeError(f"no reader measured the read rate: {readers}")
    return best, readers


def fraction_of_ceiling(tokens_per_s: float, ceiling_tokens_per_s: float) -> dict:
    """A side's share of the ceiling; above 1 the ceiling was under-measured, and said so."""
    fraction = tokens_per_s / ceiling_tokens_per_s
    if fraction > 1.0:
        return {"fraction_of_read_ceiling": None, "read_ceiling_under_measured": True,
                "above_read_ceiling_by": round(fraction, 3)}
    return {"fraction_of_read_ceiling": round(fraction, 3)}
