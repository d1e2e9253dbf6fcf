"""The contract between the ONNX lowering, the TensorRT plugins and the engine files.

Dependency-free on purpose: the lowering (onnx), the plugins (tensorrt) and the runtime
backend all import it, and none of them may drag in the others' libraries.

TensorRT's ONNX parser maps an unknown node to a plugin by op_type (= plugin name), the
string attributes `plugin_version` and `plugin_namespace`, and converts the node's other
attributes into plugin fields by the names the creator declares (INT attributes become
INT32 fields).

e2edge::PackedTernaryMatMul  inputs  X (..., K) fp16/fp32
                                     words (N, K_pad/16) int32: the MatMulNBits bytes
                                     scales (N, n_blocks) fp32
                             output  Y (..., N), X's dtype
                             fields  K, N, block_size, activation_bits (16 or 8)
e2edge::SparseFFN            inputs  X (..., D), Wg (F, D), Wu (F, D), Wd (F, D) (X's dtype)
                                     active int32: (1,) prefix width, or (A,) neuron ids
                             output  Y (..., D)
                             fields  hidden (D), ffn (F), activation (0 silu, 1 gelu_tanh),
                                     active_mode (0 prefix width, 1 index list)
"""

from __future__ import annotations

PLUGIN_NAMESPACE = "e2edge"
PLUGIN_VERSION = "1"
ONNX_DOMAIN = "e2edge"  # the lowered nodes' domain, so onnx.checker accepts the graph

TERNARY_OP = "PackedTernaryMatMul"
TERNARY_FIELDS = ("K", "N", "block_size", "activation_bits")

FFN_OP = "SparseFFN"
FFN_FIELDS = ("hidden", "ffn", "activation", "active_mode")
FFN_ACTIVATIONS = ("silu", "gelu_tanh")  # field value = index
FFN_MODE_PREFIX = 0
FFN_MODE_INDICES = 1
FFN_KEEP_INPUT = "ffn_keep"  # float32 (1,) graph input: fraction of each FFN's neurons kept

PLUGIN_VERSIONS = {
    f"{PLUGIN_NAMESPACE}::{TERNARY_OP}": PLUGIN_VERSION,
    f"{PLUGIN_NAMESPACE}::{FFN_OP}": PLUGIN_VERSION,
}
