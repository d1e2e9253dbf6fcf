"""The onnxruntime-fused decoder graph: GroupQueryAttention over a shared KV buffer.

The plain graph (onnx_graph.py) spells attention, RoPE and RMSNorm in ~40 standard
ops per layer, so both onnxruntime and TensorRT's parser read it. On onnxruntime
each small op costs a kernel launch and a pass over memory; this variant uses the
com.microsoft contrib ops onnxruntime-genai uses instead:

    SkipSimplifiedLayerNormalization   residual add + RMSNorm in one kernel
    FastGelu                           Gemma's tanh-GELU in one kernel instead of ten
    FusedMatMul (transB)               a tied float LM head without reshapes around Gemm
    MatMul (q|k|v packed)              one projection instead of three
    GroupQueryAttention                RoPE, cache append and attention in one kernel,
                                       past and present share one preallocated buffer

IO (B: batch, S: new tokens, M: the cache buffer's length, fixed per session):
    input_ids                   (B, S) int64
    seqlens_k                   (B,) int32: each row's total length - 1
    total_sequence_length       () int32: max over rows of the total length
    past_key_values.{i}.key     (B, n_kv_heads, M, head_dim) float32 (value alike)
    logits                      (B, S, vocab) float32
    present.{i}.key             the same buffer as past (bind both to one tensor)

A row's new tokens sit at positions seqlens_k + 1 - S .. seqlens_k, so rows of one
batch may have different lengths (continuous batching), without a mask input.

The families' extras map onto GroupQueryAttention's attributes: `scale` (Gemma 2/3's
query_pre_attn_scalar), `softcap` (Gemma 2), `local_window_size` (sliding-window layers),
`do_rotary` off for layers without rotary (SmolLM3), and a cos/sin cache of rotary_dim/2
columns for partial rotary (Phi-3). Per-head q/k norms (Qwen3, Gemma 3) run on q and k
before the op, which then takes them unpacked.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporter.errors import CheckpointError
from exporter.llm.decoder_spec import DecoderSpec
from exporter.llm.onnx_graph import DecoderGraphBuilder, rotary_names

# onnxruntime's GroupQueryAttention kernels take heads of a multiple of 16 values and a
# cos/sin cache of a multiple of 8 columns (rotary_dim / 2)
HEAD_MULTIPLE = 16
ROTARY_HALF_MULTIPLE = 8


def check_gqa(spec: DecoderSpec) -> None:
    """CheckpointError naming the feature GroupQueryAttention cannot run for this model."""
    feature = None
    if spec.head_dim % HEAD_MULTIPLE:
        feature = f"head_dim {spec.head_dim} (a multiple of {HEAD_MULTIPLE} is needed)"
    for rotary in spec.rotaries:
        if rotary.dim < spec.head_dim and (rotary.dim // 2) % ROTARY_HALF_MULTIPLE:
            feature = (f"partial rotary over {rotary.dim} of {spec.head_dim} dims (a multiple "
                       f"of {2 * ROTARY_HALF_MULTIPLE} is needed)")
    if feature:
        raise CheckpointError(f"cannot export {spec.model_type} with --attention gqa: "
                              f"GroupQueryAttention does not take {feature}; use "
                              "--attention standard")


class GqaDecoderGraphBuilder(DecoderGraphBuilder):
    """DecoderGraphBuilder whose layers use onnxruntime's fused contrib ops."""

    attention = "gqa"

    def build(self) -> onnx.ModelProto:
        s, g = self.spec, self.g
        check_gqa(s)
        self._shared_constants()
        for index, rotary in enumerate(s.rotaries):
            cos_table, sin_table = rotary.tables(s.context_length)
            half = rotary.dim // 2  # the tables repeat their halves; GQA wants one half
            cos_name, sin_name = rotary_names(index)
            g.const(f"{cos_name}_half", np.ascontiguousarray(cos_table[:, :half]))
            g.const(f"{sin_name}_half", np.ascontiguousarray(sin_table[:, :half]))
        sandwich = s.family.sandwich_norms
        x = self._embed()  # (B, S, hidden)
        h = self.rms_norm(x, "model.layers.0.input_layernorm.weight")
        residual = x
        for i in range(s.num_layers):
            p = f"model.layers.{i}"
            attn = self._attention(i, h)
            if sandwich:  # Gemma 2/3: the attention output is normalised before the residual
                attn = self.rms_norm(attn, f"{p}.post_attention_layernorm.weight")
            ffn_norm = "pre_feedforward_layernorm" if sandwich else "post_attention_layernorm"
            h, residual = self._skip_norm(attn, residual, f"{p}.{ffn_norm}.weight")
            ffn = self._gated_ffn(i, h)  # the norm is fused with the residual
            if sandwich:
                ffn = self.rms_norm(ffn, f"{p}.post_feedforward_layernorm.weight")
            following = (
                f"model.layers.{i + 1}.input_layernorm.weight"
                if i + 1 < s.num_layers else "model.norm.weight"
            )
            h, residual = self._skip_norm(ffn, residual, following)
        logits = self.softcap(self._lm_head(h), s.final_softcap)
        g.node("Identity", [logits], ["logits"], "logits_out")
        return self._model()

    def activation(self, x: str) -> str:
        # onnxruntime fuses SiLU's Sigmoid + Mul itself (QuickGelu) but not the ten ops of
        # the tanh-GELU; FastGelu is exactly gelu_pytorch_tanh.
        if self.spec.activation == "gelu_tanh":
            return self.g.op("FastGelu", [x], "gelu", domain="com.microsoft")
        return super().activation(x)

    def _lm_head(self, x: str) -> str:
        # A tied float table (vocab, hidden) times (B, S, hidden) in one kernel: FusedMatMul
        # takes transB on N-d inputs, where Gemm needs the five reshape ops around it.
        s = self.spec
        if not s.tie_word_embeddings or self.quant is not None:
            return super()._lm_head(x)
        table = self.float_weight("model.embed_tokens.weight", self.w["model.embed_tokens.weight"])
        return self.g.op("FusedMatMul", [x, table], "logits_raw", domain="com.microsoft",
                         transB=1)

    def _skip_norm(self, x: str, residual: str, weight_name: str) -> tuple[str, str]:
        """(RMSNorm(x + residual) * w, x + residual) in one fused kernel."""
        s, g = self.spec, self.g
        weight = (self.w[weight_name] + s.norm_offset).astype(np.float32)  # Gemma: 1 + w
        normed, total = g.unique("norm"), g.unique("resid")
        g.node(
            "SkipSimplifiedLayerNormalization",
            [x, residual, g.const(weight_name, weight)],
            [normed, "", "", total],
            g.unique("SkipSimplifiedLayerNormalization"),
            domain="com.microsoft",
            epsilon=float(s.rms_norm_eps),
        )
        return normed, total

    def _qkv_weight(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """q, k and v projections stacked into one (q + 2 kv, hidden) weight (and bias)."""
        p = f"model.layers.{i}.self_attn"
        parts = [f"{p}.{n}_proj" for n in ("q", "k", "v")]
        weight = np.concatenate([self.w[f"{n}.weight"] for n in parts], axis=0)
        if f"{parts[0]}.bias" not in self.w:
            return weight, None
        return weight, np.concatenate([self.w[f"{n}.bias"] for n in parts])

    def _attention(self, i: int, h: str) -> str:
        s, g = self.spec, self.g
        p = f"model.layers.{i}.self_attn"
        layer = s.layers[i]
        weight, bias = self._qkv_weight(i)
        parts = tuple(f"{p}.{n}_proj.weight" for n in ("q", "k", "v"))
        qkv = self.matmul(h, weight, f"{p}.qkv_proj.weight", "qkv", parts)  # (B, S, q + 2 kv)
        if bias is not None:
            qkv = g.op("Add", [qkv, g.const(f"{p}.qkv_proj.bias", bias)], "qkv_bias")
        inputs = [qkv, "", ""]
        if s.family.qk_norm:
            inputs = self._normed_qkv(i, qkv)
        attrs = {"scale": s.attention_scale, "do_rotary": int(layer.rotary is not None)}
        if layer.rotary is not None:
            cos_name, sin_name = rotary_names(layer.rotary)
            rotary_inputs = [f"{cos_name}_half", f"{sin_name}_half"]
            attrs["rotary_interleaved"] = 0
        else:
            rotary_inputs = []
        if layer.window:
            attrs["local_window_size"] = layer.window
        if s.attn_softcap:
            attrs["softcap"] = float(s.attn_softcap)
        context = g.unique("attn")
        g.node(
            "GroupQueryAttention",
            [*inputs, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
             "seqlens_k", "total_sequence_length", *rotary_inputs],
            [context, f"present.{i}.key", f"present.{i}.value"],
            f"gqa_{i}",
            domain="com.microsoft",
            num_heads=s.num_heads,
            kv_num_heads=s.num_kv_heads,
            **attrs,
        )
        return self.linear(context, f"{p}.o_proj.weight", "o")

    def _normed_qkv(self, i: int, qkv: str) -> list[str]:
        """[q, k, v] (B, S, heads * hd) each, q and k RMS-normalised per head."""
        s, g = self.spec, self.g
        p = f"model.layers.{i}.self_attn"
        q_rows, kv_rows = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        g.const("qkv_split", np.array([q_rows, kv_rows, kv_rows], dtype=np.int64))
        g.const("merge_last", np.array([0, 0, -1], dtype=np.int64))
        q, k, v = g.op("Split", [qkv, "qkv_split"], "qkv_part", n_out=3, axis=-1)
        normed = []
        for x, part, shape in ((q, "q", "q_shape"), (k, "k", "kv_shape")):
            heads = g.op("Reshape", [x, shape], f"{part}_heads")  # (B, S, heads, hd)
            heads = self.rms_norm(heads, f"{p}.{part}_norm.weight")
            normed.append(g.op("Reshape", [heads, "merge_last"], f"{part}_normed"))
        return [*normed, v]

    def _model(self) -> onnx.ModelProto:
        s, g = self.spec, self.g
        f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
        kv = ["batch", s.num_kv_heads, "max_sequence_length", s.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence_length"]),
            helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
            helper.make_tensor_value_info("total_sequence_length", i32, []),
        ]
        outputs = [helper.make_tensor_value_info(
            "logits", f32, ["batch", "sequence_length", s.vocab_size])]
        for i in range(s.num_layers):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", f32, kv))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", f32, kv))
        return g.model(f"{s.model_type}_decoder_gqa", inputs, outputs, contrib=True)
