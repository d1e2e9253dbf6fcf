"""Run an int4 package's MatMulNBits nodes on e2edge's own int4 kernel, rewritten at load.

onnxruntime's MatMulNBits kernel reads a decode step's int4 weights at about 40 % of
a 2-core host's bandwidth; ours (runtime/kernels/int4_matmul.c, AVX-512 VNNI) computes
the same products about twice as fast per node. So, in memory, the package on disk
unchanged: each MatMulNBits node at 4 bits, block 32, accuracy level 4 (int8
activations), without zero points, group indices or bias, becomes
ai.e2edge::MatMulInt4Packed over its weights repacked for the kernel. The arithmetic
is MatMulNBits' own (the same int8 codes and integer sums), so logits match it up to
float summation order.

Used only where it is faster: onnxruntime's CPU provider on a CPU with AVX-512 VNNI,
with the library built (runtime/kernels/int4_library.py). E2EDGE_INT4_KERNEL=off
keeps MatMulNBits everywhere.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from runtime.backends.adapted_graph import AdaptedGraph
from runtime.onnx_attributes import node_attributes

log = logging.getLogger(__name__)

SETTING = "E2EDGE_INT4_KERNEL"  # auto (default) | off
SETTINGS = ("auto", "off")


def setting(value: str | None = None) -> str:
    """The int4 kernel setting: the argument, else $E2EDGE_INT4_KERNEL, else auto."""
    chosen = (value or os.environ.get(SETTING) or "auto").strip().lower()
    if chosen not in SETTINGS:
        raise ValueError(f"int4 kernel setting {chosen!r} is not one of {SETTINGS} "
                         f"(argument or ${SETTING})")
    return chosen


def why_not(providers: list[str], value: str | None = None) -> str | None:
    """None when the kernel can run these providers' graph here, else the reason."""
    if setting(value) == "off":
        return f"turned off ({SETTING}=off)"
    if not providers or providers[0] != "CPUExecutionProvider":
        return "not onnxruntime's CPU provider"
    from runtime.kernels.int4_library import unavailable

    return unavailable()


def eligible(node, initializers: dict) -> bool:
    """A MatMulNBits node the kernel computes exactly as onnxruntime would."""
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
        return False
    attributes = node_attributes(node)
    inputs = list(node.input)
    return (attributes.get("bits", 4) == 4 and attributes.get("block_size") == 32
            and attributes.get("accuracy_level", 0) == 4 and attributes.get("K", 0) % 32 == 0
            and len(inputs) >= 3 and not any(inputs[3:])
            and inputs[1] in initializers and inputs[2] in initializers)


def rewrite(model, package_dir: Path) -> AdaptedGraph | None:
    """A copy of `model` (onnx.ModelProto, external data not loaded) with every eligible
    MatMulNBits on the kernel, its packed weights in memory; None when no node is
    eligible."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    from runtime.kernels import int4_library

    library = int4_library.load()
    if isinstance(library, str):
        return None
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    chosen = [node for node in graph.node if eligible(node, initializers)]
    if not chosen:
        return None

    def values(name: str) -> np.ndarray:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(initializers[name])
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(package_dir))
        return numpy_helper.to_array(tensor)

    dropped = {name for node in chosen for name in node.input[1:3] if uses[name] == 1}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(t for t in graph.initializer if t.name not in dropped)
    adapted = AdaptedGraph(out)
    replaced = {}
    for node in chosen:
        attributes = node_attributes(node)
        n, k = int(attributes["N"]), int(attributes["K"])
        packed, packed_scales = library.pack(values(node.input[1]), values(node.input[2]), n, k)
        stem = node.name or node.output[0]
        names = (f"{stem}/int4_packed", f"{stem}/int4_packed_scales")
        adapted.add_weight(names[0], packed)
        adapted.add_weight(names[1], packed_scales)
        replaced[id(node)] = helper.make_node(
            int4_library.OP_TYPE, [node.input[0], *names], list(node.output),
            name=node.name, domain=int4_library.DOMAIN, K=k, N=n)
    del out.graph.node[:]
    out.graph.node.extend(replaced.get(id(node), node) for node in graph.node)
    out.opset_import.append(helper.make_opsetid(int4_library.DOMAIN, 1))
    log.info("int4 kernel: %d MatMulNBits nodes on %s", len(chosen), library.path.name)
    return adapted

