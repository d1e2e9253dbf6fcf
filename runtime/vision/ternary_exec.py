"""How a package's 2-bit MatMulNBits layers run in onnxruntime, chosen at load time.

The package stays 2-bit on disk; at load time the graph can be rewritten in memory:

    packed  run as stored: com.microsoft::MatMulNBits (bits=2). ORT's CPU kernel for
            2 bits dequantises block by block, which is slow for small matrices.
    fp32    unpack once to a float32 (K, N) weight (ternary * scale, exact) and use
            MatMul: the same GEMM as the fp32 model, on the same quantised values.
    fp16    unpack once to a float16 (K, N) weight and run the MatMul in fp16 between
            two Casts: what GPU providers run fastest (tensor cores; ORT's CUDA
            provider has no 2-bit MatMulNBits kernel), at half fp32's weight memory.
            fp16 rounds the scale and the activations to 11 significant bits, so
            results match fp32 to about 1e-3 relative, not exactly.
    int8    unpack to int8 ternary codes T and feed the graph's own uint8 activation
            codes q (QuantizeLinear's output, zero point 128) to an integer GEMM,
            com.microsoft::MatMulIntegerToFloat (u8 x s8, B packed once at load),
            then scale each token's row by its step:
                y = ((q - 128) @ T.T) * s_w * step
            Integer sums are exact, so this is the fp32 result up to fp32 rounding.

All compute the same function (the package's explicit per-token int8 activation grid
is kept), so a choice of mode is a choice of speed (and, for fp16, of rounding) only.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from runtime.activation_grid import ZERO_POINT_U8
from runtime.errors import PackageError
from runtime.onnx_attributes import node_attributes
from runtime.ternary_layout import ZERO_POINT, dequantize, unpack_codes

MODES = ("packed", "fp32", "fp16", "int8")
U8_ZERO_POINT = ZERO_POINT_U8  # the package's activation codes are uint8, zero point 128


def _ternary_nodes(graph) -> list:
    nodes = []
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            if node_attributes(node).get("bits") != 2:
                raise PackageError(f"{node.name}: only bits=2 MatMulNBits can be unpacked")
            if any(name for name in node.input[3:]):
                raise PackageError(
                    f"{node.name}: zero_points, g_idx or bias inputs are not supported"
                )
            nodes.append(node)
    return nodes


def _prune_dead(graph) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _check_zero_point(producer, name: str) -> None:
    """The integer GEMM assumes the exporter's uint8 zero point of 128 on every row."""
    from onnx import numpy_helper

    value = None
    if producer is not None and producer.op_type == "ConstantOfShape":
        value = numpy_helper.to_array(node_attributes(producer)["value"])
    if value is None or value.dtype != np.uint8 or value.reshape(-1).tolist() != [U8_ZERO_POINT]:
        raise PackageError(f"{name}: int8 execution needs uint8 activation codes with zero "
                           f"point {U8_ZERO_POINT}")


def unpack_ternary(model, mode: str):
    """Return a copy of `model` (onnx.ModelProto) with its 2-bit layers run as `mode`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if mode == "packed":
        return out
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: node for node in graph.node for o in node.output}
    new_inits: list = []
    column_of: dict[str, str] = {}  # per-token step (M,) -> its (M, 1) view
    replacements: dict[int, list] = defaultdict(list)  # node index -> nodes replacing it

    for node in _ternary_nodes(graph):
        a = node_attributes(node)
        k, n = int(a["K"]), int(a["N"])
        if node.input[1] not in inits or node.input[2] not in inits:
            raise PackageError(f"{node.name}: packed weights and scales must be initializers")
        packed = numpy_helper.to_array(inits[node.input[1]])  # (N, n_blocks, block/4) uint8
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1)  # (N, n_blocks)
        name = node.name or node.output[0]
        index = list(graph.node).index(node)
        if mode == "fp32":
            weight = dequantize(packed, scales, k).T  # (K, N) float32
            w_name = f"{name}/unpacked_fp32"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
            replacements[index].append(
                helper.make_node("MatMul", [node.input[0], w_name], list(node.output), name=name)
            )
            continue
        if mode == "fp16":
            weight = dequantize(packed, scales, k).T.astype(np.float16)  # (K, N) float16
            w_name, x16, y16 = f"{name}/unpacked_fp16", f"{name}/x_fp16", f"{name}/y_fp16"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
            replacements[index] += [
                helper.make_node("Cast", [node.input[0]], [x16], to=TensorProto.FLOAT16,
                                 name=f"{name}/cast_in"),
                helper.make_node("MatMul", [x16, w_name], [y16], name=name),
                helper.make_node("Cast", [y16], list(node.output), to=TensorProto.FLOAT,
                                 name=f"{name}/cast_out"),
            ]
            continue
        # int8: the layer's input must be DequantizeLinear(q, step, zero_point, axis=0)
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            raise PackageError(
                f"{name}: int8 execution needs the per-token activation quantisation "
                "DequantizeLinear(QuantizeLinear(x)) in front of the layer"
            )
        codes, step = dq.input[0], dq.input[1]
        _check_zero_point(producers.get(dq.input[2]), name)
        nodes = replacements[index]
        if step not in column_of:
            column_of[step] = f"{step}/column"
            nodes.append(helper.make_node("Unsqueeze", [step, "axis_1"], [column_of[step]],
                                          name=f"{step}/unsqueeze"))
        ternary = unpack_codes(packed, k).astype(np.int16) - ZERO_POINT  # (N, K) in {-1,0,1}
        w_name, s_name = f"{name}/codes_s8", f"{name}/weight_scale"
        row_scale = scales[:, 0] if np.all(scales == scales[:, :1]) else None
        if row_scale is None:
            raise PackageError(f"{name}: int8 execution needs one weight scale per row")
        new_inits += [
            numpy_helper.from_array(np.ascontiguousarray(ternary.T.astype(np.int8)), w_name),
            numpy_helper.from_array(row_scale.astype(np.float32), s_name),
        ]
        gemm = f"{name}/int8_gemm"
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat", [codes, w_name, "one", s_name, "act_zero_point_u8"],
                [gemm], name=gemm, domain="com.microsoft",
            ),
            helper.make_node("Mul", [gemm, column_of[step]], list(node.output),
                             name=f"{name}/act_step"),
        ]
    if mode == "int8" and replacements:
        new_inits += [
            numpy_helper.from_array(np.float32(1.0), "one"),
            numpy_helper.from_array(np.uint8(U8_ZERO_POINT), "act_zero_point_u8"),
            numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis_1"),
        ]
    kept = []
    for index, node in enumerate(graph.node):
        kept.extend(replacements.get(index, [node]))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _prune_dead(graph)
    return out
