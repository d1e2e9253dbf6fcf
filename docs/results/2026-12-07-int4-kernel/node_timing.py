"""One int4 matmul node at a time: onnxruntime's MatMulNBits against e2edge's
MatMulInt4Packed, the SmolLM2-135M decode shapes, M = 1, in onnxruntime sessions.

Each graph holds `count` nodes of one shape with different weights (all reading the
same input, so the weights, not one cached matrix, are streamed), run by onnxruntime at
1 and 2 intra-op threads, sides alternating per shape; the time per node is the median
of 100 runs over `count`. Writes node-timing.json beside this file.

    .venv/bin/python docs/results/2026-12-07-int4-kernel/node_timing.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from runtime.host_facts import machine_facts  # noqa: E402
from runtime.kernels import library as kernel_library  # noqa: E402

# (K, N, nodes in the graph): q|k|v, o, gate|up, down, the LM head
SHAPES = [(576, 960, 60), (576, 576, 60), (576, 3072, 40), (1536, 576, 40), (576, 49152, 2)]


def graphs(library, k: int, n: int, count: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    nodes = {"MatMulNBits": [], "MatMulInt4Packed": []}
    weights = {"MatMulNBits": [], "MatMulInt4Packed": []}
    for i in range(count):
        codes = rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8)
        scales = rng.random(n * (k // 32), dtype=np.float32) * 0.02
        packed, packed_scales = library.pack(codes, scales, n, k)
        weights["MatMulNBits"] += [numpy_helper.from_array(codes, f"w{i}"),
                                   numpy_helper.from_array(scales, f"s{i}")]
        weights["MatMulInt4Packed"] += [numpy_helper.from_array(packed, f"w{i}"),
                                        numpy_helper.from_array(packed_scales, f"s{i}")]
        nodes["MatMulNBits"].append(helper.make_node(
            "MatMulNBits", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
            K=k, N=n, bits=4, block_size=32, accuracy_level=4))
        nodes["MatMulInt4Packed"].append(helper.make_node(
            "MatMulInt4Packed", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="ai.e2edge", K=k, N=n))
    out = {}
    for op, domain in (("MatMulNBits", "com.microsoft"), ("MatMulInt4Packed", "ai.e2edge")):
        graph = helper.make_graph(
            nodes[op], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
            [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 1, n])
             for i in range(count)], weights[op])
        out[op] = helper.make_model(graph, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]).SerializeToString()
    return out


def per_node_us(library, model: bytes, k: int, count: int, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(library.path))
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 1, k), dtype=np.float32)
    for _ in range(10):
        session.run(None, {"x": x})
    times = []
    for _ in range(100):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) / count * 1e6


def main() -> None:
    library = kernel_library.load()
    assert not isinstance(library, str), library
    rows = []
    for k, n, count in SHAPES:
        models = graphs(library, k, n, count)
        for threads in (1, 2):
            us = {op: round(per_node_us(library, model, k, count, threads), 1)
                  for op, model in models.items()}
            weight_bytes = n * k // 2 + n * (k // 32) * 4
            rows.append({"K": k, "N": n, "threads": threads, "us_per_node": us,
                         "speedup": round(us["MatMulNBits"] / us["MatMulInt4Packed"], 2),
                         "weight_gb_s": {op: round(weight_bytes / t / 1e3, 1)
                                         for op, t in us.items()}})
            print(rows[-1])
    result = {"benchmark": "int4 matmul node", "machine": machine_facts(),
              "onnxruntime": ort.__version__, "M": 1, "block_size": 32,
              "accuracy_level": 4, "rows": rows}
    Path(__file__).with_name("node-timing.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
