"""Builds the ONNX decoder graph of a LLaMA/Gemma-family LLM from its weights.

The families' differences (decoder_spec.py) are a few switches here: per-head q/k
RMSNorm (Qwen3, Gemma 3), norms after attention and around the FFN (Gemma 2/3),
attention and final-logit soft-capping (Gemma 2), sliding-window layers (a second
mask), a rotary table per layer type, partial rotary (Phi-3) and layers without it
(SmolLM3).

The graph is written node by node (as onnxruntime-genai's builder does) rather than
traced, so every layer can have its own FFN width and the graph stays plain ONNX
(opset 17) that both onnxruntime and TensorRT's parser accept.

IO (B: batch, S: new tokens, P: past length, T = P + S):
    input_ids                   (B, S) int64
    attention_mask              (B, T) int64, 1 = real token, 0 = padding
    position_ids                (B, S) int64
    past_key_values.{i}.key     (B, n_kv_heads, P, head_dim) float32   (value alike)
    logits                      (B, S, vocab) float32
    present.{i}.key             (B, n_kv_heads, T, head_dim) float32   (value alike)

Folded at export time, so they cost nothing at run time: the attention scale
(1/sqrt(head_dim), Gemma 2/3: query_pre_attn_scalar^-0.5) into the query projection (or,
with q/k norms, into the query norm's weights), Gemma's (1 + weight) RMSNorm offset into
the norm weights, and gate+up into one matmul per layer.

Weight storage (one place: `float_weight`, `matmul`, `_embed`): float32 initializers;
or float16 ones (--weights fp16) that a Cast widens to float32 before their op, so the
graph computes in float32 exactly as the fp32 one does with the rounded weights; or
MatMulNBits blocks (int8/int4). fp16 covers the weight matrices: projections, FFN,
embedding and lm_head; norms, biases and the rotary tables stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporter.llm.decoder_spec import DecoderSpec
from exporter.llm.weight_quant import EffectiveWeights, WeightQuantConfig, quantize_blockwise
from exporter.onnx_builder import GraphBuilder

MASK_VALUE = -3.0e38  # finite, so a fully masked (padding) row gives no NaN after softmax


def rotary_names(index: int) -> tuple[str, str]:
    """The (cos, sin) table initializers of rotary `index`: rope_cos, rope_sin, rope_cos_1..."""
    suffix = f"_{index}" if index else ""
    return f"rope_cos{suffix}", f"rope_sin{suffix}"


class _DecoderGraph(GraphBuilder):
    """The decoder's nodes: outputs named after what they hold, nodes after their op."""

    def op(self, op_type: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs):
        outputs = [self.unique(hint or op_type.lower()) for _ in range(n_out)]
        self.node(op_type, inputs, outputs, self.unique(op_type), **attrs)
        return outputs[0] if n_out == 1 else outputs


class DecoderGraphBuilder:
    """Turns a DecoderSpec and its HF-named weights into an ONNX ModelProto."""

    def __init__(
        self,
        spec: DecoderSpec,
        weights: Mapping[str, np.ndarray],
        quant: WeightQuantConfig | None = None,
        weight_dtype: type = np.float32,
    ):
        if weight_dtype not in (np.float32, np.float16):
            raise ValueError(f"weight dtype must be float32 or float16, got {weight_dtype}")
        self.spec = spec
        self.w = weights
        self.quant = quant
        self.weight_dtype = weight_dtype  # storage of the float weight matrices
        self.g = _DecoderGraph()
        # HF name -> the float32 weight the graph really computes with, where it differs
        # from the checkpoint's (quantised or fp16-rounded ones), computed when read
        self.effective = EffectiveWeights(weights, quant, weight_dtype)
        self._widened: dict[str, str] = {}  # fp16 initializer -> its Cast to float32

    # ---- weight storage -------------------------------------------------------------
    def float_weight(self, name: str, array: np.ndarray) -> str:
        """A float32 tensor holding `array`: the initializer itself, or, for fp16 storage,
        one Cast of its float16 initializer (onnxruntime folds constant Casts when it
        creates a session, TensorRT when it builds an engine)."""
        stored = self.g.const(name, array.astype(self.weight_dtype, copy=False))
        if self.weight_dtype == np.float32:
            return stored
        if name not in self._widened:
            self._widened[name] = self.g.op("Cast", [stored], "widened", to=TensorProto.FLOAT)
        return self._widened[name]

    # ---- small blocks -------------------------------------------------------------
    def matmul(self, x: str, weight: np.ndarray, name: str, hint: str,
               parts: tuple[str, ...] | None = None, scale: float = 1.0) -> str:
        """x @ weight.T for a (out, in) weight: MatMul over W.T, or MatMulNBits when quantised.

        `weight` stacks the rows of the checkpoint weights `parts` (default: `name`), times
        `scale`; the rounding of each is noted in `effective` (rows round independently).
        """
        for part in (name,) if parts is None else parts:
            self.effective.add(part, quantized=self.quant is not None, scale=scale)
        if self.quant is None:
            return self.g.op("MatMul", [x, self.float_weight(name, weight.T)], hint)
        q = self.quant
        packed, scales = quantize_blockwise(weight, q)
        inputs = [x, self.g.const(f"{name}.q{q.bits}", packed),
                  self.g.const(f"{name}.scales", scales.reshape(-1))]
        return self.g.op(
            "MatMulNBits", inputs, hint, domain="com.microsoft", K=weight.shape[1],
            N=weight.shape[0], bits=q.bits, block_size=q.block_size,
            accuracy_level=q.accuracy_level,
        )

    def linear(self, x: str, weight_name: str, hint: str, scale: float = 1.0) -> str:
        """x @ W.T (+ bias) for the checkpoint's weight `weight_name`, times `scale`."""
        weight = self.w[weight_name] * scale  # (out, in)
        out = self.matmul(x, weight, weight_name, hint, scale=scale)
        bias_name = weight_name.replace(".weight", ".bias")
        if bias_name in self.w:
            out = self.g.op("Add", [out, self.g.const(bias_name, self.w[bias_name] * scale)], hint)
        return out

    def rms_norm(self, x: str, weight_name: str, scale: float = 1.0) -> str:
        """RMSNorm over the last axis, times the weight (and `scale`, folded into it)."""
        s, g = self.spec, self.g
        weight = (self.w[weight_name] + s.norm_offset) * scale  # Gemma: (1 + w), folded
        squared = g.op("Mul", [x, x], "sq")
        mean = g.op("ReduceMean", [squared], "ms", axes=[-1], keepdims=1)
        denom = g.op("Sqrt", [g.op("Add", [mean, "rms_eps"], "mse")], "rms")
        normed = g.op("Div", [x, denom], "normed")
        return g.op("Mul", [normed, g.const(weight_name, weight.astype(np.float32))], "norm")

    def activation(self, x: str) -> str:
        g = self.g
        if self.spec.activation == "silu":
            return g.op("Mul", [x, g.op("Sigmoid", [x], "sig")], "silu")
        # tanh-approximated GELU, as gelu_pytorch_tanh: 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
        f32 = np.float32
        g.const("gelu_k", np.array(0.044715, dtype=f32))
        g.const("gelu_c", np.array(math.sqrt(2.0 / math.pi), dtype=f32))
        g.const("half", np.array(0.5, dtype=f32))
        g.const("one", np.array(1.0, dtype=f32))
        cube = g.op("Mul", [g.op("Mul", [x, x]), x], "x3")
        inner = g.op("Add", [x, g.op("Mul", [cube, "gelu_k"])])
        t = g.op("Tanh", [g.op("Mul", [inner, "gelu_c"])])
        return g.op("Mul", [g.op("Mul", [x, "half"]), g.op("Add", [t, "one"])], "gelu")

    def rotate(self, x: str, cos: str, sin: str, dim: int) -> str:
        """RoPE on the first `dim` dims of each head: x * cos + rotate_half(x) * sin,
        x (B, heads, S, head_dim), cos and sin (B, 1, S, dim); the other dims pass."""
        s, g = self.spec, self.g
        rest = s.head_dim - dim
        if rest:  # partial rotary (Phi-3 / Phi-4-mini): rotate a leading slice
            split = g.const(f"rope_part_{dim}", np.array([dim, rest], dtype=np.int64))
            x, passed = g.op("Split", [x, split], "rope_part", n_out=2, axis=-1)
        halves = g.const(f"rope_split_{dim}", np.array([dim // 2, dim // 2], dtype=np.int64))
        x1, x2 = g.op("Split", [x, halves], "half", n_out=2, axis=-1)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], "rot", axis=-1)
        roped = g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], "roped")
        return g.op("Concat", [roped, passed], "roped", axis=-1) if rest else roped

    # ---- the decoder ----------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        s, g = self.spec, self.g
        self._shared_constants()
        rotaries = []
        for index, rotary in enumerate(s.rotaries):
            cos_name, sin_name = rotary_names(index)
            cos_table, sin_table = rotary.tables(s.context_length)  # (positions, dim)
            g.const(cos_name, cos_table)
            g.const(sin_name, sin_table)
            # (B, 1, S, dim): rows of the tables at each token's position
            cos = g.op("Unsqueeze", [g.op("Gather", [cos_name, "position_ids"]), "axis_1"], "cos")
            sin = g.op("Unsqueeze", [g.op("Gather", [sin_name, "position_ids"]), "axis_1"], "sin")
            rotaries.append((cos, sin, rotary.dim))
        masks = self._attention_bias()  # window (None: full) -> (B, 1, 1, S, T)

        x = self._embed()  # (B, S, hidden)
        for i in range(s.num_layers):
            x = self._layer(i, x, rotaries, masks)
        x = self.rms_norm(x, "model.norm.weight")
        logits = self.softcap(self._lm_head(x), s.final_softcap)
        g.node("Identity", [logits], ["logits"], "logits_out")
        return self._model()

    def softcap(self, x: str, cap: float | None) -> str:
        """cap * tanh(x / cap) (Gemma 2's attention and logit soft-capping); x without a cap."""
        if not cap:
            return x
        g = self.g
        c = g.const(f"softcap_{cap:g}", np.array(cap, dtype=np.float32))
        return g.op("Mul", [g.op("Tanh", [g.op("Div", [x, c])]), c], "capped")

    def _embed(self) -> str:
        """(B, S, hidden) float32 embedding rows of input_ids (Gemma: times sqrt(hidden))."""
        s, g = self.spec, self.g
        name = "model.embed_tokens.weight"
        table = self.w[name]  # (vocab, hidden)
        self.effective.add(name, quantized=False)
        if self.weight_dtype == np.float32 or s.tie_word_embeddings:
            # tied: the lm_head's float32 Cast of the table also feeds the Gather, so an
            # onnxruntime session holds one folded float32 copy, not a float16 one beside it
            x = g.op("Gather", [self.float_weight(name, table), "input_ids"], "embed")
        else:
            # only looked up: gather float16 rows and widen them; the table stays float16
            # in memory (a Cast of a non-constant is not folded)
            rows = g.op("Gather", [g.const(name, table.astype(self.weight_dtype)), "input_ids"],
                        "embed_rows")
            x = g.op("Cast", [rows], "embed", to=TensorProto.FLOAT)
        if s.family.embed_scale:
            scale = np.array(math.sqrt(s.hidden_size), dtype=np.float32)
            x = g.op("Mul", [x, g.const("embed_scale", scale)], "embed_scaled")
        return x

    def _shared_constants(self) -> None:
        s, g = self.spec, self.g
        f32 = np.float32
        g.const("axes_last", np.array([-1], dtype=np.int64))
        g.const("axis_1", np.array([1], dtype=np.int64))
        g.const("rms_eps", np.array(s.rms_norm_eps, dtype=f32))
        g.const("zero_f", np.array(0.0, dtype=f32))
        g.const("mask_value", np.array(MASK_VALUE, dtype=f32))
        g.const("zero_i", np.array(0, dtype=np.int64))
        g.const("one_i", np.array(1, dtype=np.int64))
        g.const("zero_i_axes", np.array([0], dtype=np.int64))
        g.const("pad_axes", np.array([1, 2, 3], dtype=np.int64))
        g.const("heads_shape", np.array([0, s.num_heads, -1, s.head_dim], dtype=np.int64))
        # (B, S, heads*hd) <-> (B, S, heads, hd) and the grouped-query views
        g.const("q_shape", np.array([0, 0, s.num_heads, s.head_dim], dtype=np.int64))
        g.const("kv_shape", np.array([0, 0, s.num_kv_heads, s.head_dim], dtype=np.int64))
        g.const("group_shape", np.array([0, s.num_kv_heads, -1, s.head_dim], dtype=np.int64))
        g.const("merge_shape", np.array([0, 0, s.num_heads * s.head_dim], dtype=np.int64))

    def _attention_bias(self) -> dict[int | None, str]:
        """Additive (B, 1, 1, S, T) biases, 0 where a query may attend and MASK_VALUE
        elsewhere: for full attention (key None) and for each sliding window.

        Query i sits at absolute index P + i; it sees key j when j <= P + i and the
        key is not padding (attention_mask[b, j] == 1); in a window of w also only when
        j > P + i - w (the w latest keys, itself included, as transformers masks).
        """
        g = self.g
        total = g.op("Gather", [g.op("Shape", ["attention_mask"]), "one_i"], "T")
        new = g.op("Gather", [g.op("Shape", ["input_ids"]), "one_i"], "S")
        past = g.op("Sub", [total, new], "P")
        q_index = g.op("Range", [past, total, "one_i"], "q_index")  # (S,)
        k_index = g.op("Range", ["zero_i", total, "one_i"], "k_index")  # (T,)
        keys = g.op("Unsqueeze", [k_index, "zero_i_axes"], "keys")  # (1, T)
        queries = g.op("Unsqueeze", [q_index, "axes_last"], "queries")  # (S, 1)
        causal = g.op("LessOrEqual", [keys, queries], "causal")  # (S, T)
        keep = g.op("Cast", ["attention_mask"], "keep", to=TensorProto.BOOL)
        keep = g.op("Unsqueeze", [keep, "pad_axes"], "keep4")  # (B, 1, 1, 1, T)
        allowed = g.op("And", [causal, keep], "allowed")  # (B, 1, 1, S, T)
        self._score_shapes(new, total)
        biases = {None: g.op("Where", [allowed, "zero_f", "mask_value"], "mask_bias")}
        for window in self.spec.windows:
            start = g.op("Sub", [queries, g.const(f"window_{window}",
                                                  np.array(window, dtype=np.int64))])
            recent = g.op("Greater", [keys, start], "in_window")  # (S, T)
            windowed = g.op("And", [allowed, recent], "allowed_local")
            biases[window] = g.op("Where", [windowed, "zero_f", "mask_value"], "mask_local")
        return biases

    def _score_shapes(self, new: str, total: str) -> None:
        """Dynamic Reshape targets between (B, n_kv, rep*S, T) and (B, n_kv, rep, S, T)."""
        s, g = self.spec, self.g
        rep = s.num_heads // s.num_kv_heads
        s_1d = g.op("Unsqueeze", [new, "zero_i_axes"], "S_1d")
        t_1d = g.op("Unsqueeze", [total, "zero_i_axes"], "T_1d")
        g.const("group_prefix", np.array([0, s.num_kv_heads, rep], dtype=np.int64))
        g.const("flat_prefix", np.array([0, s.num_kv_heads, -1], dtype=np.int64))
        g.node("Concat", ["group_prefix", s_1d, t_1d], ["scores_shape"], "scores_shape", axis=0)
        g.node("Concat", ["flat_prefix", t_1d], ["group_scores_shape"], "group_shape_concat",
               axis=0)

    def _heads(self, x: str, shape: str) -> str:
        """(B, S, heads*hd) -> (B, heads, S, hd)."""
        return self.g.op("Transpose", [self.g.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])

    def _layer(self, i: int, x: str, rotaries: list[tuple[str, str, int]],
               masks: dict[int | None, str]) -> str:
        s, g = self.spec, self.g
        p = f"model.layers.{i}"
        layer = s.layers[i]
        h = self.rms_norm(x, f"{p}.input_layernorm.weight")
        # the attention scale rides on the query: its projection, or its norm when it has
        # one (a norm would undo a scaled projection)
        q_scale = 1.0 if s.family.qk_norm else s.attention_scale
        q = self._heads(self.linear(h, f"{p}.self_attn.q_proj.weight", "q", q_scale), "q_shape")
        k = self._heads(self.linear(h, f"{p}.self_attn.k_proj.weight", "k"), "kv_shape")
        v = self._heads(self.linear(h, f"{p}.self_attn.v_proj.weight", "v"), "kv_shape")
        if s.family.qk_norm:  # over each head's head_dim values
            q = self.rms_norm(q, f"{p}.self_attn.q_norm.weight", s.attention_scale)
            k = self.rms_norm(k, f"{p}.self_attn.k_norm.weight")
        if layer.rotary is not None:
            cos, sin, dim = rotaries[layer.rotary]
            q, k = self.rotate(q, cos, sin, dim), self.rotate(k, cos, sin, dim)
        # the KV cache: (B, n_kv, P, hd) ++ (B, n_kv, S, hd) -> (B, n_kv, T, hd)
        present_k = f"present.{i}.key"
        present_v = f"present.{i}.value"
        g.node("Concat", [f"past_key_values.{i}.key", k], [present_k], f"cache_k_{i}", axis=2)
        g.node("Concat", [f"past_key_values.{i}.value", v], [present_v], f"cache_v_{i}", axis=2)
        # grouped-query attention without repeating K/V: (B, n_kv, rep*S, hd)
        qg = g.op("Reshape", [q, "group_shape"], "q_grouped")
        scores = g.op("MatMul", [qg, g.op("Transpose", [present_k], perm=[0, 1, 3, 2])])
        scores = self.softcap(scores, s.attn_softcap)
        scores = g.op("Reshape", [scores, "scores_shape"], "scores")  # (B, n_kv, rep, S, T)
        probs = g.op("Softmax", [g.op("Add", [scores, masks[layer.window]])], "probs", axis=-1)
        probs = g.op("Reshape", [probs, "group_scores_shape"], "probs_grouped")
        context = g.op("MatMul", [probs, present_v], "ctx")  # (B, n_kv, rep*S, hd)
        context = g.op("Reshape", [context, "heads_shape"], "ctx_heads")  # (B, heads, S, hd)
        context = g.op("Transpose", [context], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, "merge_shape"], "ctx_merged")
        attention = self.linear(context, f"{p}.self_attn.o_proj.weight", "o")
        if s.family.sandwich_norms:
            attention = self.rms_norm(attention, f"{p}.post_attention_layernorm.weight")
        x = g.op("Add", [x, attention], "resid")
        return g.op("Add", [x, self._ffn(i, x)], "resid")

    def _ffn(self, i: int, x: str) -> str:
        p = f"model.layers.{i}"
        if not self.spec.family.sandwich_norms:
            return self._gated_ffn(i, self.rms_norm(x, f"{p}.post_attention_layernorm.weight"))
        h = self.rms_norm(x, f"{p}.pre_feedforward_layernorm.weight")
        return self.rms_norm(self._gated_ffn(i, h), f"{p}.post_feedforward_layernorm.weight")

    def _gated_ffn(self, i: int, h: str) -> str:
        """down(act(gate(h)) * up(h)) on the normalised input h, gate and up in one matmul."""
        g = self.g
        p = f"model.layers.{i}"
        width = self.spec.ffn_widths[i]
        parts = (f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight")
        gate_up = np.concatenate([self.w[part] for part in parts], axis=0)  # (2 * width, hidden)
        both = self.matmul(h, gate_up, f"{p}.mlp.gate_up_proj.weight", "gate_up",
                           parts)  # (B, S, 2 * width)
        g.const(f"{p}.mlp.split", np.array([width, width], dtype=np.int64))
        gate, up = g.op("Split", [both, f"{p}.mlp.split"], "gate", n_out=2, axis=-1)
        product = g.op("Mul", [self.activation(gate), up], "ffn_act")  # (B, S, width)
        return self.linear(product, f"{p}.mlp.down_proj.weight", "down")

    def _lm_head(self, x: str) -> str:
        s, g = self.spec, self.g
        if not s.tie_word_embeddings:
            return self.linear(x, "lm_head.weight", "logits_raw")
        if self.quant is not None:
            # a quantised copy of the tied matrix: decode reads 4 or 8 bits per weight
            embedding = "model.embed_tokens.weight"
            self.effective.add("lm_head.weight", quantized=True, source=embedding)
            return self.matmul(x, self.w[embedding], "lm_head.weight", "logits_raw", ())
        # tied: reuse the embedding matrix through Gemm(transB) instead of storing W.T twice
        g.const("flat_shape", np.array([-1, s.hidden_size], dtype=np.int64))
        flat = g.op("Reshape", [x, "flat_shape"])
        table = self.float_weight("model.embed_tokens.weight", self.w["model.embed_tokens.weight"])
        logits = g.op("Gemm", [flat, table], "logits_flat", transB=1)
        g.const("two_i", np.array([2], dtype=np.int64))
        batch_seq = g.op("Slice", [g.op("Shape", ["input_ids"]), "zero_i_axes", "two_i"])
        g.const("vocab_dim", np.array([s.vocab_size], dtype=np.int64))
        out_shape = g.op("Concat", [batch_seq, "vocab_dim"], axis=0)
        return g.op("Reshape", [logits, out_shape], "logits_raw")

    def _model(self) -> onnx.ModelProto:
        s, g = self.spec, self.g
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        kv = ["batch", s.num_kv_heads, "past_sequence_length", s.head_dim]
        kv_out = ["batch", s.num_kv_heads, "total_sequence_length", s.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence_length"]),
            helper.make_tensor_value_info(
                "attention_mask", i64, ["batch", "total_sequence_length"]
            ),
            helper.make_tensor_value_info("position_ids", i64, ["batch", "sequence_length"]),
        ]
        outputs = [
            helper.make_tensor_value_info(
                "logits", f32, ["batch", "sequence_length", s.vocab_size]
            )
        ]
        for i in range(s.num_layers):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", f32, kv))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", f32, kv_out))
        return g.model(f"{s.model_type}_decoder", inputs, outputs, contrib=self.quant is not None)

