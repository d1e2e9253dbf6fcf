"""The ViT as an ONNX graph, written op by op from the PyTorch weights.

    pixel_values (B, C, S, S) float32 -> logits (B, n_classes) float32

Tokens flow as a 2-D (B*N, D) matrix, one row per token, so that per-token
quantisation is ONNX's per-axis (axis 0) quantisation. Full-precision linears are
MatMul (weights stored (K, N)); ternary linears are

    step = Div(Max(ReduceMax(x), Neg(ReduceMin(x)), eps), 127)       (B*N,) per token
    q    = QuantizeLinear(x, step, zero_point=128, axis=0)            (B*N, K) uint8
    y    = MatMulNBits(DequantizeLinear(q, step, 128, axis=0), packed, scales;
                       bits=2, block_size, K, N)

i.e. exactly BitLinear's inference arithmetic (exporter/vit/ternary.py): the per-token
int8 activation codes are explicit standard QDQ ops, so the package means the same
thing on every backend (a runtime may feed q to an integer GEMM instead, see
runtime/vision/ternary_exec.py), and `accuracy_level` only chooses how ORT multiplies.
The packed bytes are runtime/ternary_layout.py's layout. q, k and v are fused into one matrix (one
activation quantisation, one GEMM); a ternary fused matrix keeps each part's absmean
scale in its rows' block scales. The attention scale 1/sqrt(head_dim) is folded into
the q rows.

Attention is bidirectional and grouped: the query heads that share a K/V head are
stacked as rows, q viewed as (B, KV, N*group, dh), so one K/V head serves its group
in one GEMM per image without copying K or V (multi-query attention is KV = 1,
where the views are free reshapes).

Opset 17 (LayerNormalization) and com.microsoft opset 1 (MatMulNBits, Gelu), IR 8,
so the file also loads in the onnxruntime builds of JetPack 6.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from exporter.onnx_builder import GraphBuilder
from exporter.vit.model import ViT
from exporter.vit.ternary import ACT_LEVELS, EPS, BitLinear
from runtime.activation_grid import ZERO_POINT_U8
from runtime.ternary_layout import check_block_size, pack_ternary

ACT_ZERO_POINT = ZERO_POINT_U8  # uint8 activation codes: q + 128, what integer GEMMs take
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


def block_size_for(k: int, max_block_size: int) -> int:
    """The largest power of two <= max_block_size that does not pad K beyond the next
    power of two: one scale per row when K fits in a block, no wasted padding."""
    check_block_size(max_block_size)
    return min(max_block_size, max(16, 1 << (k - 1).bit_length()))


@dataclass
class GraphFacts:
    """What the export records in the manifest."""

    bytes_by_part: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ternary_layers: list[dict] = field(default_factory=list)
    ternary_bytes: int = 0
    parameters: int = 0


class _VitGraph(GraphBuilder):
    """The ViT's nodes, each named `{scope}/{op}_{n}` so every name shows its layer; the
    bytes of each weight are counted under its part of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.facts = GraphFacts()
        self.zero_points: str | None = None

    def weight(self, name: str, value: np.ndarray, part: str) -> str:
        self.facts.bytes_by_part[part] += np.asarray(value).nbytes
        return self.const(name, value)

    def op(self, op_type: str, inputs: list[str], scope: str, **attrs) -> str:
        output = self.unique(f"{scope}/{op_type}")
        self.node(op_type, inputs, [output], output, **attrs)
        return output


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _quantize_activations(b: _VitGraph, x: str, name: str) -> str:
    """BitLinear's per-token int8 grid on (M, K) rows: DequantizeLinear(QuantizeLinear(x))."""
    first = b.zero_points is None
    if first:
        b.const("c_act_levels", np.array([ACT_LEVELS], dtype=np.float32))
        b.const("c_eps", np.array([EPS], dtype=np.float32))
    high = b.op("ReduceMax", [x], name, axes=[-1], keepdims=0)  # (M,)
    low = b.op("Neg", [b.op("ReduceMin", [x], name, axes=[-1], keepdims=0)], name)
    step = b.op("Div", [b.op("Max", [high, low, "c_eps"], name), "c_act_levels"], name)
    if first:  # one (M,) uint8 vector of 128s serves every quantiser in the graph
        b.zero_points = b.op("ConstantOfShape", [b.op("Shape", [step], "act_zero_point")],
                             "act_zero_point", value=helper.make_tensor(
                                 "zero_point", TensorProto.UINT8, [1], [ACT_ZERO_POINT]))
    q = b.op("QuantizeLinear", [x, step, b.zero_points], name, axis=0)  # (M, K) uint8
    return b.op("DequantizeLinear", [q, step, b.zero_points], name, axis=0)


def _linear(
    b: _VitGraph, x: str, layers: list[torch.nn.Linear], name: str, part: str,
    max_block_size: int, accuracy_level: int, row_gain: list[float] | None = None,
) -> str:
    """y = x @ concat(W_i * gain_i).T for the given linears (all ternary or all not)."""
    gains = row_gain or [1.0] * len(layers)
    ternary = isinstance(layers[0], BitLinear)
    if any(isinstance(layer, BitLinear) != ternary for layer in layers):
        raise ValueError(f"{name}: cannot fuse ternary and full-precision linears")
    if any(layer.bias is not None for layer in layers):
        raise ValueError(f"{name}: block linears are bias-free in this model")
    k = layers[0].in_features
    if not ternary:
        weight = np.concatenate([_np(layer.weight) * g for layer, g in zip(layers, gains)])
        return b.op("MatMul", [x, b.weight(f"{name}.weight", weight.T, part)], name)  # (K, N)
    codes, row_scales = [], []
    for layer, gain in zip(layers, gains):
        ternary_w, scale = layer.ternary_weight()
        codes.append(ternary_w.numpy().astype(np.int8))
        row_scales.append(np.full(layer.out_features, float(scale) * gain, dtype=np.float32))
    ternary_w = np.concatenate(codes)  # (N, K) in {-1, 0, 1}
    n = ternary_w.shape[0]
    block = block_size_for(k, max_block_size)
    packed, scales = pack_ternary(ternary_w, np.concatenate(row_scales), block)
    # packed (N, n_blocks, block // 4) uint8, 4 codes per byte, low bits first
    # scales (N, n_blocks) float32, stored flat as MatMulNBits wants
    xq = _quantize_activations(b, x, name)
    inputs = [
        xq, b.weight(f"{name}.packed", packed, part),
        b.weight(f"{name}.scales", scales.reshape(-1), part),
    ]
    b.facts.ternary_bytes += packed.nbytes + scales.nbytes
    b.facts.ternary_layers.append({"name": name, "K": k, "N": n, "block_size": block})
    return b.op(
        "MatMulNBits", inputs, name, domain="com.microsoft", K=k, N=n, bits=2,
        block_size=block, accuracy_level=accuracy_level,
    )


def _layer_norm(b: _VitGraph, x: str, norm: torch.nn.LayerNorm, name: str) -> str:
    scale = b.weight(f"{name}.weight", _np(norm.weight), "norms")
    bias = b.weight(f"{name}.bias", _np(norm.bias), "norms")
    return b.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=norm.eps)


def _shape(b: _VitGraph, name: str, dims: list[int]) -> str:
    return b.const(name, np.asarray(dims, dtype=np.int64))



def _grouped_attention(
    b: _VitGraph, q: str, k: str, v: str, name: str,
    n: int, kv: int, group: int, dh: int, rows: str,
) -> str:
    """Bidirectional attention of `group` query heads per K/V head, (B*N, .) rows in and out.

    The query heads that share a K/V head are stacked as rows: q (B*N, D) is viewed
    as (B, KV, N*g, dh), row n*g + j holding token n's head j of that group, so each
    K/V head needs one (N*g, dh) x (dh, N) GEMM per image instead of g small ones,
    and the context comes back in q's column order. For multi-query attention
    (KV = 1) every view is a free reshape; only k is transposed.
    """
    def swap_1_2(x: str, dims: list[int], label: str) -> str:
        """Reshape to dims, then swap axes 1 and 2; a reshape alone when KV = 1."""
        swapped = [dims[0], dims[2], dims[1], dims[3]]
        if kv == 1:  # moving an axis of size 1 keeps the memory order
            return b.op("Reshape", [x, _shape(b, f"shape_{label}_t", swapped)], name)
        x = b.op("Reshape", [x, _shape(b, f"shape_{label}", dims)], name)
        return b.op("Transpose", [x], name, perm=[0, 2, 1, 3])

    q = swap_1_2(q, [-1, n, kv, group * dh], "q")  # (B, KV, N, g*dh)
    q = b.op("Reshape", [q, _shape(b, "shape_q_rows", [-1, kv, n * group, dh])], name)
    k = b.op("Reshape", [k, _shape(b, "shape_kv", [-1, n, kv, dh])], name)
    k = b.op("Transpose", [k], name, perm=[0, 2, 3, 1])  # (B, KV, dh, N)
    v = swap_1_2(v, [-1, n, kv, dh], "kv")  # (B, KV, N, dh)
    probs = b.op("Softmax", [b.op("MatMul", [q, k], name)], name, axis=-1)  # (B, KV, N*g, N)
    ctx = b.op("MatMul", [probs, v], name)  # (B, KV, N*g, dh)
    ctx = swap_1_2(ctx, [-1, kv, n, group * dh], "ctx")  # (B, N, KV, g*dh)
    return b.op("Reshape", [ctx, rows], name)  # (B*N, D); heads in q's order


def build_vit_onnx(
    model: ViT, max_block_size: int = 128, accuracy_level: int = 0
) -> tuple[onnx.ModelProto, GraphFacts]:
    cfg = model.config
    d, dh, kv, group = cfg.width, cfg.head_dim, cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads
    b = _VitGraph()

    # Patch embedding: the linear over (c, py, px)-flattened patches is a strided Conv.
    p = cfg.patch_size
    conv_w = _np(model.patch_embed.weight).reshape(d, cfg.channels, p, p)
    x = b.op("Conv", [INPUT_NAME, b.weight("patch_embed.weight", conv_w, "patch_embed"),
                      b.weight("patch_embed.bias", _np(model.patch_embed.bias), "patch_embed")],
             "patch_embed", kernel_shape=[p, p], strides=[p, p])  # (B, D, g, g)
    x = b.op("Reshape", [x, _shape(b, "shape_tokens_t", [0, d, -1])], "patch_embed")
    x = b.op("Transpose", [x], "patch_embed", perm=[0, 2, 1])  # (B, N, D)
    x = b.op("Add", [x, b.weight("pos_embed", _np(model.pos_embed), "pos_embed")], "pos_embed")
    rows = _shape(b, "shape_rows", [-1, d])
    x = b.op("Reshape", [x, rows], "tokens")  # (B*N, D): one row per token

    n = cfg.n_tokens
    split_sizes = b.const("split_qkv", np.asarray([d, kv * dh, kv * dh], dtype=np.int64))
    fold = 1.0 / math.sqrt(dh)
    for i, block in enumerate(model.blocks):
        name = f"blocks.{i}"
        attn = block.attn
        h = _layer_norm(b, x, block.norm1, f"{name}.norm1")
        qkv = _linear(b, h, [attn.q, attn.k, attn.v], f"{name}.attn.qkv", "attention",
                      max_block_size, accuracy_level, row_gain=[fold, 1.0, 1.0])
        q_flat, k_flat, v_flat = (f"{name}.attn.{part}" for part in "qkv")
        b.node("Split", [qkv, split_sizes], [q_flat, k_flat, v_flat], f"{name}.attn.split",
               axis=-1)
        ctx = _grouped_attention(b, q_flat, k_flat, v_flat, name, n, kv, group, dh, rows)
        out = _linear(b, ctx, [attn.o], f"{name}.attn.o", "attention",
                      max_block_size, accuracy_level)
        x = b.op("Add", [x, out], name)
        h = _layer_norm(b, x, block.norm2, f"{name}.norm2")
        h = _linear(b, h, [block.ffn.fc1], f"{name}.ffn.fc1", "ffn", max_block_size,
                    accuracy_level)
        h = b.op("Gelu", [h], name, domain="com.microsoft")  # exact erf GELU
        h = _linear(b, h, [block.ffn.fc2], f"{name}.ffn.fc2", "ffn", max_block_size,
                    accuracy_level)
        x = b.op("Add", [x, h], name)

    x = b.op("Reshape", [x, _shape(b, "shape_tokens", [-1, n, d])], "pool")  # (B, N, D)
    pooled = b.op("ReduceMean", [x], "pool", axes=[1], keepdims=0)  # (B, D)
    pooled = _layer_norm(b, pooled, model.norm, "norm")
    logits = b.op("MatMul", [pooled, b.weight("head.weight", _np(model.head.weight).T, "head")],
                  "head")
    b.node("Add", [logits, b.weight("head.bias", _np(model.head.bias), "head")], [OUTPUT_NAME],
           "head/Add_out")

    pixels = ["batch", cfg.channels, cfg.image_size, cfg.image_size]
    onnx_model = b.model(
        "bitmed_vit",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, pixels)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", cfg.n_classes])],
        contrib=True,
    )
    onnx.checker.check_model(onnx_model)
    b.facts.bytes_by_part = dict(b.facts.bytes_by_part)
    b.facts.parameters = sum(p.numel() for p in model.parameters())
    return onnx_model, b.facts
