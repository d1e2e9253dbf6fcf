"""ONNX lowering for TensorRT: swap ops TensorRT cannot run for e2edge plugin nodes.

- `com.microsoft::MatMulNBits` with bits=2 -> `e2edge::PackedTernaryMatMul` over the same
  weight bytes. The uint8 (N, n_blocks, block_size/4) initializer becomes an int32
  (N, K_pad/16) initializer with identical raw bytes: 16 codes per little-endian word is how
  the layout is defined (runtime/ternary_layout.py), and TensorRT has no uint8 weights for a
  plugin input. fp32 scales are reused as they are (fp16 scales are widened to fp32); a
  bias input becomes an Add after the plugin. accuracy_level=4 (int8 activations on ORT)
  selects the W2A8 kernel unless LoweringOptions.activation_bits says otherwise.
- On request, a gated FFN block (MatMul to gate and up, fused as one MatMul + Split or as
  two MatMuls, an elementwise activation, Mul, MatMul down) -> `e2edge::SparseFFN`, whose
  active width is ceil(ffn_keep * F) of each layer: `ffn_keep` is a new float32 (1,) graph
  input, so one engine runs the model at any FFN width. The activation is recognised by
  what it computes (evaluated with onnx.reference on probe values), not by its node
  pattern, so any decomposition of silu or tanh-GELU is found.

Every lowered node carries `plugin_namespace` and `plugin_version`, which TensorRT's ONNX
parser needs to find the plugin creator (plugins_trt/plugin_spec.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from plugins_trt import plugin_spec as spec
from plugins_trt.reference import ACTIVATION_FUNCTIONS, packed_to_words
from runtime.onnx_attributes import node_attributes
from runtime.ternary_layout import CODES_PER_BYTE, check_block_size, padded_k

log = logging.getLogger(__name__)

STANDARD_DOMAINS = ("", "ai.onnx")
_MAX_ACTIVATION_NODES = 24


class LoweringError(ValueError):
    """A node looks like a lowering target but cannot be rewritten faithfully."""


@dataclass(frozen=True)
class LoweringOptions:
    sparse_ffn: bool = False  # also lower gated FFN blocks to SparseFFN
    activation_bits: int | None = None  # None: 8 where accuracy_level == 4, else 16
    # FFN layer index (graph order) -> neuron ids, most salient first, for packages whose
    # weights are not stored in saliency order (MAGRIP's are: exporter/magrip/compaction.py),
    # so that the prefix kept at a given ffn_keep is the most salient neurons.
    neuron_order: Mapping[int, Sequence[int]] = field(default_factory=dict)


@dataclass
class LoweringReport:
    ternary_nodes: list[str] = field(default_factory=list)
    ffn_blocks: list[str] = field(default_factory=list)
    skipped_ffn: list[str] = field(default_factory=list)  # "node: reason"
    unsupported: list[str] = field(default_factory=list)  # nodes TensorRT cannot import

    def summary(self) -> dict[str, Any]:
        return {
            "packed_ternary_matmul": len(self.ternary_nodes),
            "sparse_ffn": len(self.ffn_blocks),
            "skipped_ffn": list(self.skipped_ffn),
            "unsupported": list(self.unsupported),
        }


class _Graph:
    """Lookups over a GraphProto: initializers, producers, consumers, fresh names."""

    def __init__(self, graph: onnx.GraphProto, opsets: Sequence[onnx.OperatorSetIdProto]):
        self.graph = graph
        self.opsets = list(opsets)
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self._names = set(self.inits) | set(self.producer) | {i.name for i in graph.input}

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def add_initializer(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def only_feeds(self, tensor: str, nodes: Sequence[onnx.NodeProto]) -> bool:
        """True when `tensor` is consumed by `nodes` alone and is no graph output."""
        ids = {id(n) for n in nodes}
        return tensor not in self.outputs and all(id(c) in ids for c in self.consumers[tensor])


def _plugin_node(op: str, inputs: list[str], outputs: list[str], name: str, **fields: int):
    return helper.make_node(
        op,
        inputs,
        outputs,
        name=name,
        domain=spec.ONNX_DOMAIN,
        plugin_namespace=spec.PLUGIN_NAMESPACE,
        plugin_version=spec.PLUGIN_VERSION,
        **fields,
    )


# ---- MatMulNBits bits=2 -> PackedTernaryMatMul --------------------------------------------
def _lower_matmulnbits(
    g: _Graph, node: onnx.NodeProto, options: LoweringOptions, report: LoweringReport
) -> list[onnx.NodeProto] | None:
    attrs = node_attributes(node)
    label = node.name or node.output[0]
    if attrs.get("bits", 4) != 2:
        return None  # left alone; listed as unsupported at the end
    k, n, block_size = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
    check_block_size(block_size)
    a, b, scales, zero_points, g_idx, bias = (list(node.input) + [""] * 6)[:6]
    if zero_points:
        raise LoweringError(
            f"{label}: MatMulNBits with zero_points is not the packed ternary layout "
            "(runtime/ternary_layout.py uses the default zero point 2)"
        )
    if g_idx:
        raise LoweringError(f"{label}: MatMulNBits with g_idx (act-order) is not supported")
    packed = g.array(b)
    if packed is None:
        raise LoweringError(f"{label}: the packed weight {b!r} must be an initializer")
    n_blocks = padded_k(k, block_size) // block_size
    expected = (n, n_blocks, block_size // CODES_PER_BYTE)
    if packed.dtype != np.uint8 or packed.shape != expected:
        raise LoweringError(
            f"{label}: weight {b!r} is {packed.dtype}{packed.shape}, expected uint8{expected}"
        )
    scale = g.array(scales)
    if scale is None or scale.size != n * n_blocks:
        raise LoweringError(
            f"{label}: scales {scales!r} must be an initializer of {n * n_blocks} values"
        )

    words = g.add_initializer(packed_to_words(packed), f"{b}.words")  # same bytes, int32 view
    if scale.dtype != np.float32:
        scales = g.add_initializer(scale.astype(np.float32), f"{scales}.fp32")
    bits = options.activation_bits or (8 if attrs.get("accuracy_level", 0) == 4 else 16)
    out = node.output[0]
    plugin_out = g.fresh(f"{out}.nobias") if bias else out
    nodes = [
        _plugin_node(
            spec.TERNARY_OP,
            [a, words, scales],
            [plugin_out],
            label,
            K=k,
            N=n,
            block_size=block_size,
            activation_bits=bits,
        )
    ]
    if bias:
        nodes.append(
            helper.make_node("Add", [plugin_out, bias], [out], name=g.fresh(f"{label}.bias"))
        )
    report.ternary_nodes.append(label)
    return nodes


# ---- gated FFN -> SparseFFN ---------------------------------------------------------------
@dataclass
class _FfnMatch:
    x: str
    gate: np.ndarray  # (F, D)
    up: np.ndarray  # (F, D)
    down_name: str | None  # initializer (F, D) reused as it is; None: widened by a Cast
    down: np.ndarray
    activation: str
    nodes: list[onnx.NodeProto]  # everything the SparseFFN node replaces


def _weight_2d(g: _Graph, node: onnx.NodeProto) -> tuple[np.ndarray | None, list]:
    """(the MatMul's constant 2-D weight, the Cast nodes that only widen it for this MatMul).

    An fp16 package stores a weight as fp16 with a Cast to fp32 in front of its MatMul:
    the weight is the Cast's value, and the Cast goes with the MatMul it feeds.
    """
    if node.op_type != "MatMul" or node.domain not in STANDARD_DOMAINS:
        return None, []
    w, casts = g.array(node.input[1]), []
    cast = g.producer.get(node.input[1])
    if w is None and cast is not None and cast.op_type == "Cast" and g.only_feeds(
        node.input[1], [node]
    ):
        source = g.array(cast.input[0])
        if source is not None:
            dtype = helper.tensor_dtype_to_np_dtype(node_attributes(cast)["to"])
            w, casts = source.astype(dtype), [cast]
    return (w, casts) if w is not None and w.ndim == 2 else (None, [])


def _activation_nodes(g: _Graph, out: str) -> tuple[list[onnx.NodeProto], str] | None:
    """Nodes computing `out` from exactly one non-constant tensor (returned as the leaf).
    The walk stops at MatMul outputs and graph inputs; None when the source is not unique."""
    nodes: list[onnx.NodeProto] = []
    leaves: set[str] = set()
    seen: set[str] = set()
    stack = [out]
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in seen or tensor in g.inits:
            continue
        seen.add(tensor)
        producer = g.producer.get(tensor)
        if producer is None or producer.op_type in ("MatMul", "Split"):
            leaves.add(tensor)
            continue
        if producer not in nodes:
            nodes.append(producer)
        if producer.op_type != "Constant":
            stack.extend(producer.input)
        if len(nodes) > _MAX_ACTIVATION_NODES:
            return None
    if len(leaves) != 1:
        return None
    order = {id(n): i for i, n in enumerate(g.graph.node)}
    return sorted(nodes, key=lambda n: order[id(n)]), leaves.pop()


def _classify_activation(
    g: _Graph, nodes: list[onnx.NodeProto], leaf: str, out: str, dtype: np.dtype
) -> str | None:
    """Which of plugin_spec.FFN_ACTIVATIONS the nodes compute, by evaluating them."""
    from onnx.reference import ReferenceEvaluator

    consts = {name for node in nodes for name in node.input if name in g.inits}
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    probe_graph = helper.make_graph(
        nodes,
        "activation_probe",
        [helper.make_tensor_value_info(leaf, onnx_type, None)],
        [helper.make_tensor_value_info(out, onnx_type, None)],
        [g.inits[c] for c in consts],
    )
    model = helper.make_model(probe_graph, opset_imports=list(g.opsets))
    probe = np.linspace(-6.0, 6.0, 97).reshape(1, 97).astype(dtype)
    try:
        (value,) = ReferenceEvaluator(model).run(None, {leaf: probe})
    except Exception as e:  # an op the reference evaluator lacks: not an activation we know
        log.info("activation probe failed: %s", e)
        return None
    tol = 1e-2 if np.dtype(dtype) == np.float16 else 1e-5
    for name in spec.FFN_ACTIVATIONS:
        want = ACTIVATION_FUNCTIONS[name](probe.astype(np.float64))
        if np.shape(value) == probe.shape and np.abs(value - want).max() <= tol * max(
            1.0, np.abs(want).max()
        ):
            return name
    return None


def _match_ffn(g: _Graph, down: onnx.NodeProto) -> tuple[_FfnMatch | None, str]:
    """(match, "") or (None, reason) for a down-projection MatMul candidate."""
    down_w, down_casts = _weight_2d(g, down)
    mul = g.producer.get(down.input[0])
    if down_w is None or mul is None or mul.op_type != "Mul" or mul.domain not in STANDARD_DOMAINS:
        return None, ""  # not an FFN shape at all: no report
    sources = [g.producer.get(t) for t in mul.input]
    if not any(s is not None and s.op_type in ("MatMul", "Split") for s in sources):
        return None, ""  # e.g. a norm's scale feeding a projection
    f, d = down_w.shape
    if not g.only_feeds(down.input[0], [down]):
        return None, "the gated product is used elsewhere"
    for act_out, up in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        up_src = g.producer.get(up)
        found = _activation_nodes(g, act_out)
        if up_src is None or found is None:
            continue
        act_nodes, gate = found
        nodes = [*down_casts, *act_nodes, mul, down]
        if up_src.op_type == "Split":  # fused gate_up MatMul, then Split
            split = up_src
            fused = g.producer.get(split.input[0])
            fused_w, casts = _weight_2d(g, fused) if fused is not None else (None, [])
            sizes = g.array(split.input[1]) if len(split.input) > 1 and split.input[1] else None
            if sizes is None:
                sizes = node_attributes(split).get("split")  # opset < 13 keeps the sizes here
            if (
                fused_w is None
                or list(split.output) != [gate, up]
                or node_attributes(split).get("axis", 0) != -1
                or fused_w.shape != (d, 2 * f)
                or (sizes is not None and list(sizes) != [f, f])
            ):
                continue
            x, gate_w, up_w = fused.input[0], fused_w[:, :f].T, fused_w[:, f:].T
            nodes = [*casts, fused, split, *nodes]
            private = [(split.input[0], [split]), (gate, act_nodes), (up, [mul])]
        else:  # separate gate and up MatMuls on the same input
            gate_mm = g.producer.get(gate)
            gate_w, gate_casts = _weight_2d(g, gate_mm) if gate_mm is not None else (None, [])
            up_w, up_casts = _weight_2d(g, up_src)
            if gate_w is None or up_w is None or gate_mm.input[0] != up_src.input[0]:
                continue
            if gate_w.shape != (d, f) or up_w.shape != (d, f):
                continue
            x, gate_w, up_w = up_src.input[0], gate_w.T, up_w.T
            nodes = [*gate_casts, *up_casts, gate_mm, up_src, *nodes]
            private = [(gate, act_nodes), (up, [mul])]
        for node in act_nodes:
            private += [(o, act_nodes + [mul]) for o in node.output]
        if not all(g.only_feeds(t, users) for t, users in private):
            return None, "an intermediate FFN tensor is used elsewhere"
        activation = _classify_activation(g, act_nodes, gate, act_out, down_w.dtype)
        if activation is None:
            return None, "the activation is neither silu nor tanh-GELU"
        down_name = None if down_casts else down.input[1]
        return _FfnMatch(x, gate_w, up_w, down_name, down_w, activation, nodes), ""
    return None, "no gate/up MatMul pair with an elementwise activation feeds the product"


def _lower_ffn(
    g: _Graph, match: _FfnMatch, layer: int, options: LoweringOptions, out: str, label: str
):
    f, d = match.down.shape
    gate, up, down_name = match.gate, match.up, match.down_name
    order = options.neuron_order.get(layer)
    if order is not None:
        perm = np.asarray(order, dtype=np.int64)
        if sorted(perm.tolist()) != list(range(f)):
            raise LoweringError(
                f"{label}: neuron order for FFN {layer} is not a permutation of {f} neurons"
            )
        gate, up = gate[perm], up[perm]
        down_name = g.add_initializer(match.down[perm], f"{label}.down_rows")
    elif down_name is None:  # the package widened an fp16 weight with a Cast
        down_name = g.add_initializer(match.down, f"{label}.down_rows")
    gate_name = g.add_initializer(gate, f"{label}.gate_rows")
    up_name = g.add_initializer(up, f"{label}.up_rows")
    f_const = g.add_initializer(np.array([f], dtype=np.float32), f"{label}.ffn_width")
    kept = g.fresh(f"{label}.kept")
    ceil = g.fresh(f"{label}.kept_ceil")
    width = g.fresh(f"{label}.active_width")
    return [
        helper.make_node(
            "Mul", [spec.FFN_KEEP_INPUT, f_const], [kept], name=g.fresh(f"{label}.keep")
        ),
        helper.make_node("Ceil", [kept], [ceil], name=g.fresh(f"{label}.ceil")),
        helper.make_node(
            "Cast", [ceil], [width], name=g.fresh(f"{label}.width"), to=TensorProto.INT32
        ),
        _plugin_node(
            spec.FFN_OP,
            [match.x, gate_name, up_name, down_name, width],
            [out],
            label,
            hidden=d,
            ffn=f,
            activation=spec.FFN_ACTIVATIONS.index(match.activation),
            active_mode=spec.FFN_MODE_PREFIX,
        ),
    ]


# ---- the pass -------------------------------------------------------------------------------
def lower_model(
    model: onnx.ModelProto, options: LoweringOptions = LoweringOptions()
) -> tuple[onnx.ModelProto, LoweringReport]:
    """A lowered copy of `model` (weights loaded) and what was done; `model` is untouched."""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    graph = lowered.graph
    g = _Graph(graph, lowered.opset_import)
    report = LoweringReport()
    replaced: dict[int, list[onnx.NodeProto]] = {}  # node index -> replacement nodes
    removed: set[int] = set()
    index = {id(node): i for i, node in enumerate(graph.node)}

    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            new = _lower_matmulnbits(g, node, options, report)
            if new is not None:
                replaced[index[id(node)]] = new

    if options.sparse_ffn:
        layer = 0
        for node in list(graph.node):
            if (
                index[id(node)] in removed
                or index[id(node)] in replaced
                or node.op_type != "MatMul"
            ):
                continue
            match, reason = _match_ffn(g, node)
            label = node.name or node.output[0]
            if match is None:
                if reason:
                    report.skipped_ffn.append(f"{label}: {reason}")
                continue
            ffn_label = g.fresh(f"sparse_ffn_{layer}")
            replaced[index[id(node)]] = _lower_ffn(
                g, match, layer, options, node.output[0], ffn_label
            )
            removed.update(index[id(n)] for n in match.nodes if n is not node)
            report.ffn_blocks.append(ffn_label)
            layer += 1
        if report.ffn_blocks:
            graph.input.append(
                helper.make_tensor_value_info(spec.FFN_KEEP_INPUT, TensorProto.FLOAT, [1])
            )

    new_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        if i in replaced:
            new_nodes.extend(replaced[i])
        elif i not in removed:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    if not any(o.domain == spec.ONNX_DOMAIN for o in lowered.opset_import):
        lowered.opset_import.append(helper.make_opsetid(spec.ONNX_DOMAIN, 1))
    for node in graph.node:
        if not _parser_can_import(node):
            bits = (f" bits={node_attributes(node).get('bits', 4)}"
                    if node.op_type == "MatMulNBits" else "")
            label = node.name or node.output[0]
            report.unsupported.append(f"{label}: {node.domain}::{node.op_type}{bits}")
    return lowered, report


def _parser_can_import(node: onnx.NodeProto) -> bool:
    """TensorRT's ONNX parser dispatches on op_type alone: a node of another domain is
    imported when its op_type is a standard ONNX op (com.microsoft::Gelu runs as Gelu);
    any other op_type is looked up as a plugin, and only ours are registered."""
    if node.domain in (*STANDARD_DOMAINS, spec.ONNX_DOMAIN):
        return True
    return onnx.defs.has(node.op_type)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def save_lowered(model: onnx.ModelProto, path: Path) -> Path:
    """Write the lowered model with its weights in one external file beside it (the form
    TensorRT's parse_from_file reads). The model's tensors point into that file afterwards:
    copying a multi-GB model first would double the memory of an edge build."""
    path = Path(path)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=1024,
    )
    return path
