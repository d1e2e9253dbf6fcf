"""Run an fp32 package's MatMul nodes on e2edge's own fp32 kernel, rewritten at load.

A decode step reads every weight once, so it runs at the rate the weights stream in;
ours (runtime/kernels/fp32_matmul.c, AVX-512) streams them faster than onnxruntime's
MatMul: at 2 threads decode is about 1.1-1.2x faster with the same greedy tokens and
prefill unchanged (docs/results/2026-12-07-fp32-kernel). So, in memory, the package on disk
unchanged: each MatMul whose B is a 2-D float initializer read by no other node becomes
ai.e2edge::MatMulF32Packed over B repacked in panels of 16 columns, the only copy held.
Products are the same multiply-adds in a different order, so logits match MatMul's up
to float rounding.

Used only where it is faster: onnxruntime's CPU provider on a CPU with AVX-512, with the
library built (runtime/kernels/library.py). E2EDGE_FP32_KERNEL=off keeps MatMul
everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.backends.adapted_graph import AdaptedGraph
from runtime.llm import kernel_rewrite

log = logging.getLogger(__name__)

SETTING = "E2EDGE_FP32_KERNEL"  # auto (default) | off
FLOAT = 1  # onnx.TensorProto.FLOAT


def setting(value: str | None = None) -> str:
    """The fp32 kernel setting: the argument, else $E2EDGE_FP32_KERNEL, else auto."""
    return kernel_rewrite.setting(SETTING, value)


def why_not(providers: list[str], value: str | None = None) -> str | None:
    """None when the kernel can run these providers' graph here, else the reason."""
    return kernel_rewrite.why_not(providers, SETTING, value, "fp32")


def eligible(node, initializers: dict, readers) -> bool:
    """A MatMul over a constant 2-D float B that no other node reads (so repacking it
    keeps one copy of the weights)."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return False
    b = initializers.get(node.input[1])
    return (b is not None and b.data_type == FLOAT and len(b.dims) == 2 and all(b.dims)
            and readers[node.input[1]] == 1)


def count(model) -> int:
    """The graph's MatMul nodes (what the kernel could take)."""
    return sum(node.op_type == "MatMul" for node in model.graph.node)


def rewrite(model, package_dir: Path) -> AdaptedGraph | None:
    """A copy of `model` (an onnx.ModelProto, external data not loaded, or an
    AdaptedGraph from an earlier rewrite) with every eligible MatMul on the kernel, its
    packed weights in memory; None when no node is eligible."""
    from onnx import helper

    from runtime.kernels import library as kernel_library

    library = kernel_library.load()
    if isinstance(library, str):
        return None
    graph = kernel_rewrite.graph_of(model)
    initializers = {t.name: t for t in graph.initializer}
    readers = kernel_rewrite.uses(graph)
    chosen = [node for node in graph.node if eligible(node, initializers, readers)]
    if not chosen:
        return None

    def replace(node, values):
        packed = library.pack_fp32(values(node.input[1]))
        k, n = (int(d) for d in initializers[node.input[1]].dims)
        name = f"{node.name or node.output[0]}/fp32_packed"
        new_node = helper.make_node(kernel_library.FP32_OP_TYPE, [node.input[0], name],
                                    list(node.output), name=node.name,
                                    domain=kernel_library.DOMAIN, K=k, N=n)
        return new_node, {name: packed}

    dropped = {node.input[1] for node in chosen}
    adapted = kernel_rewrite.replace_nodes(model, package_dir, chosen, dropped, replace)
    log.info("fp32 kernel: %d MatMul nodes on %s", len(chosen), library.path.name)
    return adapted
