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
with the library built (runtime/kernels/library.py). E2EDGE_INT4_KERNEL=off
keeps MatMulNBits everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.backends.adapted_graph import AdaptedGraph
from runtime.llm import kernel_rewrite
from runtime.onnx_attributes import node_attributes

log = logging.getLogger(__name__)

SETTING = "E2EDGE_INT4_KERNEL"  # auto (default) | off


def setting(value: str | None = None) -> str:
    """The int4 kernel setting: the argument, else $E2EDGE_INT4_KERNEL, else auto."""
    return kernel_rewrite.setting(SETTING, value)


def why_not(providers: list[str], value: str | None = None) -> str | None:
    """None when the kernel can run these providers' graph here, else the reason."""
    return kernel_rewrite.why_not(providers, SETTING, value, "int4")


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
    """A copy of `model` (an onnx.ModelProto, external data not loaded, or an
    AdaptedGraph from an earlier rewrite) with every eligible MatMulNBits on the kernel,
    its packed weights in memory; None when no node is eligible."""
    from onnx import helper

    from runtime.kernels import library as kernel_library

    library = kernel_library.load()
    if isinstance(library, str):
        return None
    graph = kernel_rewrite.graph_of(model)
    initializers = {t.name: t for t in graph.initializer}
    chosen = [node for node in graph.node if eligible(node, initializers)]
    if not chosen:
        return None
    readers = kernel_rewrite.uses(graph)

    def replace(node, values):
        attributes = node_attributes(node)
        n, k = int(attributes["N"]), int(attributes["K"])
        packed, packed_scales = library.pack(values(node.input[1]), values(node.input[2]), n, k)
        stem = node.name or node.output[0]
        names = (f"{stem}/int4_packed", f"{stem}/int4_packed_scales")
        new_node = helper.make_node(kernel_library.OP_TYPE, [node.input[0], *names],
                                    list(node.output), name=node.name,
                                    domain=kernel_library.DOMAIN, K=k, N=n)
        return new_node, {names[0]: packed, names[1]: packed_scales}

    dropped = {name for node in chosen for name in node.input[1:3] if readers[name] == 1}
    adapted = kernel_rewrite.replace_nodes(model, package_dir, chosen, dropped, replace)
    log.info("int4 kernel: %d MatMulNBits nodes on %s", len(chosen), library.path.name)
    return adapted
