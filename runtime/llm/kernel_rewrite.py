"""What the load-time rewrites onto e2edge's CPU kernels share (int4_kernel.py, fp32_kernel.py).

Each rewrite picks the nodes its kernel computes and packs their weights; the steps
around that are the same: the on/off setting (an argument, else an environment
variable), whether this host runs the kernel at all, and a copy of the graph with the
chosen nodes replaced, their old weights dropped and the packed ones held in memory
(runtime/backends/adapted_graph.py). The package on disk is never changed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from runtime.backends.adapted_graph import AdaptedGraph

SETTINGS = ("auto", "off")


def setting(variable: str, value: str | None = None) -> str:
    """A kernel's setting: the argument, else $`variable`, else auto."""
    chosen = (value or os.environ.get(variable) or "auto").strip().lower()
    if chosen not in SETTINGS:
        raise ValueError(f"kernel setting {chosen!r} is not one of {SETTINGS} "
                         f"(argument or ${variable})")
    return chosen


def why_not(providers: list[str], variable: str, value: str | None, weights: str) -> str | None:
    """None when the `weights` ("int4" or "fp32") kernel can run these providers' graph
    here, else the reason."""
    if setting(variable, value) == "off":
        return f"turned off ({variable}=off)"
    if not providers or providers[0] != "CPUExecutionProvider":
        return "not onnxruntime's CPU provider"
    from runtime.kernels.library import unavailable

    return unavailable(weights)


def graph_of(source):
    """The onnx graph of `source`: an onnx.ModelProto, or an AdaptedGraph from an earlier
    rewrite."""
    return (source.model if isinstance(source, AdaptedGraph) else source).graph


def uses(graph) -> Counter:
    """How many node inputs name each value."""
    return Counter(name for node in graph.node for name in node.input)


Replacement = tuple  # (the new onnx.NodeProto, {packed weight name: numpy array})


def replace_nodes(source, package_dir: Path, chosen: list, dropped: set[str],
                  replace: Callable[[object, Callable], Replacement]) -> AdaptedGraph:
    """A copy of `source` (an onnx.ModelProto, external data not loaded, or an AdaptedGraph
    from an earlier rewrite, whose in-memory weights it keeps) with each node of `chosen`
    swapped for `replace(node, values)`'s node, whose packed weights are added in memory;
    `values(name)` reads an initializer as a numpy array. Initializers named in `dropped`
    leave the graph (the caller drops only those no other node reads)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    from runtime.kernels.library import DOMAIN

    earlier = source.weights if isinstance(source, AdaptedGraph) else {}
    model = source.model if isinstance(source, AdaptedGraph) else source
    initializers = {t.name: t for t in model.graph.initializer}

    def values(name: str):
        if name in earlier:  # an earlier rewrite's weight: in memory, not in the package
            return earlier[name]
        tensor = onnx.TensorProto()
        tensor.CopyFrom(initializers[name])
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(package_dir))
        return numpy_helper.to_array(tensor)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name not in dropped)
    adapted = AdaptedGraph(out, {name: a for name, a in earlier.items() if name not in dropped})
    replaced = {}
    for node in chosen:
        new_node, weights = replace(node, values)
        for name, array in weights.items():
            adapted.add_weight(name, array)
        replaced[id(node)] = new_node
    del out.graph.node[:]
    out.graph.node.extend(replaced.get(id(node), node) for node in model.graph.node)
    if not any(opset.domain == DOMAIN for opset in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return adapted
