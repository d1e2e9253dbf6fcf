"""GroupQueryAttention in fp16, for onnxruntime's CUDA provider, rewritten at load time.

onnxruntime's CUDA kernel for com.microsoft::GroupQueryAttention exists for float16 and
bfloat16 only; the package's graph is float32 (what the CPU provider runs best). Left
as it is, the CUDA provider would hand every attention node back to the CPU, copying
the KV buffer across each step. So, in memory, the package on disk unchanged:

    q|k|v (fp32) -> Cast fp16 -> GroupQueryAttention -> Cast fp32 -> the rest (fp32)
    rope cos/sin -> Cast fp16 (once per table; onnxruntime folds it at load)
    past_key_values.* / present.* graph IO: float16 (the KV buffer is fp16 on the GPU)

The matmuls, norms and the LM head stay fp32 (MatMulNBits int4 runs on the GPU as it
is). fp16 attention rounds q, k, v and the cache to 11 significant bits: logits match
the fp32 graph to about 1e-3 relative, as onnxruntime-genai's fp16 CUDA models do.
"""

from __future__ import annotations

KV_PREFIXES = ("past_key_values.", "present.")
ACTIVATION_INPUTS = (0, 1, 2)  # query (or packed q|k|v), key, value
ROPE_INPUTS = (7, 8)  # cos_cache, sin_cache


def fp16_attention(model):
    """A copy of `model` (onnx.ModelProto, external data not loaded) with each
    GroupQueryAttention and the KV cache IO in float16; see the module doc."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(KV_PREFIXES):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    half_of: dict[str, str] = {}  # fp32 tensor -> its fp16 cast, for the shared rope tables
    nodes = []
    for node in graph.node:
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        for index in (*ACTIVATION_INPUTS, *ROPE_INPUTS):
            if index >= len(node.input) or not node.input[index]:
                continue
            name = node.input[index]
            if name not in half_of:
                half_of[name] = f"{name}/fp16"
                nodes.append(helper.make_node("Cast", [name], [half_of[name]],
                                              to=TensorProto.FLOAT16, name=f"{name}/to_fp16"))
            node.input[index] = half_of[name]
        attention = node.output[0]
        node.output[0] = f"{attention}/fp16"
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [attention],
                                      to=TensorProto.FLOAT, name=f"{attention}/to_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    return out
