"""A tiny model package whose one layer is MatMulNBits bits=2 (for the engine tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.package_writer import PackageWriter
from runtime.ternary_layout import pack_ternary


def make_ternary_package(out: Path, seed: int = 0) -> Path:
    """pixels (batch, 64) -> MatMulNBits bits=2 (N=10, block 32) -> logits (batch, 10)."""
    rng = np.random.default_rng(seed)
    packed, scales = pack_ternary(rng.integers(-1, 2, size=(10, 64)), np.float32(0.1), 32)
    node = helper.make_node(
        "MatMulNBits",
        ["pixels", "w", "s"],
        ["logits"],
        domain="com.microsoft",
        K=64,
        N=10,
        bits=2,
        block_size=32,
    )
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    with PackageWriter(out) as w:
        onnx.save(model, str(w.dir / "model.onnx"))
        return w.commit({"kind": "vision", "name": "tiny-ternary"})
