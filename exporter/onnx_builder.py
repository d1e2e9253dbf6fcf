"""Writing an ONNX graph op by op: nodes, initializers under unique names, the model around them.

The LLM decoder graphs (exporter/llm/onnx_graph.py, onnx_graph_gqa.py) and the ViT
graph (exporter/vit/onnx_graph.py) are written node by node rather than traced; this
is the bookkeeping they share. Each graph names its nodes its own way, in a small
subclass with an `op` method.

Opset 17 (LayerNormalization) and opset 1 of the com.microsoft contrib domain, IR 8:
readable by onnxruntime >= 1.14 (the builds of JetPack 6) and TensorRT 10's parser.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17
IR_VERSION = 8
CONTRIB_DOMAIN = "com.microsoft"
SHARED_CONSTANT_SIZE = 64  # constants up to this many values (shapes, scalars) are compared


class GraphBuilder:
    """Accumulates the nodes and initializers of one graph, with names that never collide."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        # name -> (dtype, shape, value); the value of small constants only
        self._constants: dict[str, tuple[np.dtype, tuple[int, ...], np.ndarray | None]] = {}

    def unique(self, hint: str) -> str:
        """`{hint}_{n}`, with n counting every name this graph has made."""
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer once; a second call with the same name reuses the first.

        Graphs share shapes and scalars by name across layers, so a second call must
        bring the same value: small constants are compared value by value; a weight
        (which has its own name) only by dtype and shape, to keep no copy of it.
        """
        array = np.asarray(array)
        if name in self._constants:
            dtype, shape, value = self._constants[name]
            same = (dtype, shape) == (array.dtype, array.shape) and (
                value is None or np.array_equal(value, array))
            if not same:
                raise ValueError(f"constant {name!r} defined twice with different values")
            return name
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            array = array.copy(order="C")
        self.initializers.append(numpy_helper.from_array(array, name))
        small = array.size <= SHARED_CONSTANT_SIZE
        self._constants[name] = (array.dtype, array.shape, array if small else None)
        return name

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str,
             **attrs) -> None:
        """Append one node; `domain=...` among attrs names a contrib op's domain."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))

    def model(self, graph_name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto], contrib: bool) -> onnx.ModelProto:
        """The ModelProto of this graph: opset 17, plus the com.microsoft ops when `contrib`.

        Initializers no node reads are left out (a subclass graph may skip shared ones).
        Call it once: the initializers move into the model.
        """
        used = {name for node in self.nodes for name in node.input}
        opsets = [helper.make_opsetid("", OPSET)]
        if contrib:
            opsets.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
        # make_model copies its graph, so the graph goes in without weights; they move in
        # afterwards one at a time (the model copies each, the builder drops it), so a
        # model's weights are never held twice and the builder keeps none afterwards
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs)
        model = helper.make_model(graph, opset_imports=opsets, producer_name="e2edge")
        model.ir_version = IR_VERSION
        initializers, self.initializers = self.initializers, []
        for index, tensor in enumerate(initializers):
            if tensor.name in used:
                model.graph.initializer.append(tensor)
            initializers[index] = None
        return model
