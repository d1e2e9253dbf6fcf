"""What a decoder-only checkpoint computes, as the ONNX graph builders need it.

The config is read through transformers' own config class of its model_type, so the
package sees the layer types, rope parameters and windows exactly as transformers (the
reference every export is verified against) derives them, whichever config.json format
the checkpoint was published with. Anything the graphs cannot reproduce exactly is refused
in one line that names the model_type and the feature.

Families (model_type) and what each adds to the LLaMA decoder:
    llama, mistral, qwen2, smollm3, phi3   the LLaMA graph (Mistral and Phi-3: a sliding
                                           window on every layer when the config sets one;
                                           Qwen2: q/k/v biases; SmolLM3: layers without
                                           rotary; Phi-3: fused projections, partial rotary)
    qwen3                                  RMSNorm over each query and key head
    gemma                                  (1 + w) RMSNorm, sqrt(hidden) embedding scale
    gemma2                                 + norms after attention and around the FFN,
                                           query_pre_attn_scalar, attention and logit
                                           soft-capping, local (sliding) / global layers
    gemma3_text                            + q/k norms, a rotary table per layer type
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.errors import CheckpointError
from exporter.llm.checkpoint_weights import CheckpointWeights


@dataclass(frozen=True)
class Family:
    """The facts of a model_type that change the graph."""

    norm_offset: float = 0.0  # Gemma: RMSNorm multiplies by (1 + weight)
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    sandwich_norms: bool = False  # Gemma 2/3: RMSNorm after attention and around the FFN too
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm of each query and key head
    query_pre_attn_scalar: bool = False  # Gemma 2/3: scores scaled by it^-0.5, not head_dim's


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(),
    "qwen3": Family(qk_norm=True),
    "smollm3": Family(),
    "phi3": Family(),
    "gemma": Family(norm_offset=1.0, embed_scale=True),
    "gemma2": Family(1.0, True, sandwich_norms=True, query_pre_attn_scalar=True),
    "gemma3_text": Family(1.0, True, sandwich_norms=True, qk_norm=True,
                          query_pre_attn_scalar=True),
}
# model_types people try that are refused for a named reason
REFUSED = {
    "gemma3": "the multimodal Gemma 3 (Gemma3ForConditionalGeneration) is not supported; its "
              "text-only checkpoints (Gemma3ForCausalLM, model_type gemma3_text) are",
    **{moe: "mixture-of-experts FFNs are not supported"
       for moe in ("mixtral", "qwen2_moe", "qwen3_moe", "phimoe", "olmoe", "deepseek_v3",
                   "llama4", "granitemoe", "dbrx", "jamba")},
}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"}
# rope types with one table for every position; "dynamic" recomputes its frequencies as
# the sequence grows, which a position-indexed table cannot follow
ROPE_TYPES = ("default", "linear", "llama3", "longrope")


@dataclass(frozen=True)
class Rotary:
    """One rotary embedding: the inverse frequencies of its rotated dims and a cos/sin factor."""

    inv_freq: tuple[float, ...]  # (dim / 2,): the first `dim` dims of each head rotate
    scaling: float = 1.0  # longrope's attention factor multiplies cos and sin

    @property
    def dim(self) -> int:
        return 2 * len(self.inv_freq)

    def tables(self, positions: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, dim) float32 cos and sin, the layout HF's rotate_half expects."""
        inv_freq = np.asarray(self.inv_freq, dtype=np.float64)
        freqs = np.outer(np.arange(positions, dtype=np.float64), inv_freq)  # (P, dim/2)
        emb = np.concatenate([freqs, freqs], axis=1)  # (P, dim)
        return ((np.cos(emb) * self.scaling).astype(np.float32),
                (np.sin(emb) * self.scaling).astype(np.float32))


@dataclass(frozen=True)
class LayerAttention:
    window: int | None  # sliding window: a query sees the `window` latest keys, itself included
    rotary: int | None  # index into DecoderSpec.rotaries; None: no rotary embedding (SmolLM3)


@dataclass(frozen=True)
class DecoderSpec:
    """What the exporter and runtime need to know about a decoder-only LLM."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_widths: tuple[int, ...]  # per layer: the FFN intermediate width
    activation: str  # "silu" | "gelu_tanh"
    rms_norm_eps: float
    context_length: int  # the longest sequence the package accepts
    tie_word_embeddings: bool
    family: Family
    attention_scale: float  # multiplies q.k before the softmax
    rotaries: tuple[Rotary, ...]
    layers: tuple[LayerAttention, ...]
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    context_limit: str | None = None  # why context_length is below the config's maximum

    @property
    def max_ffn_width(self) -> int:
        return max(self.ffn_widths)

    @property
    def norm_offset(self) -> float:
        return self.family.norm_offset

    @property
    def windows(self) -> tuple[int, ...]:
        """The distinct sliding windows of the layers, smallest first."""
        return tuple(sorted({layer.window for layer in self.layers if layer.window}))


def _refuse(model_type: str, feature: str) -> CheckpointError:
    return CheckpointError(f"cannot export {model_type}: {feature}")


def check_architecture(config: dict[str, Any]) -> str:
    """The config's model_type, or CheckpointError naming what is unsupported."""
    model_type = config.get("model_type")
    if model_type in REFUSED:
        raise _refuse(model_type, REFUSED[model_type])
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"unsupported architecture {model_type!r} "
            f"(architectures={config.get('architectures')}); supported: {sorted(FAMILIES)}"
        )
    experts = max(int(config.get(key) or 0)
                  for key in ("num_local_experts", "num_experts", "n_routed_experts"))
    if experts > 1:
        raise _refuse(model_type, f"mixture-of-experts FFNs ({experts} experts) are not "
                                  "supported")
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise _refuse(model_type, f"pre-quantised weights (quantization_config {method}) are "
                                  "not supported; export the bf16/fp16/fp32 checkpoint")
    return model_type


def hf_config(config: dict[str, Any]):
    """config.json as transformers' config class of its model_type reads it."""
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(config["model_type"], **fields)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"config.json: transformers cannot read it as "
                              f"{config.get('model_type')!r} ({e})") from e


def decoder_spec(config: dict[str, Any], weights: CheckpointWeights) -> DecoderSpec:
    """The DecoderSpec of a checkpoint; raises CheckpointError naming what is unsupported."""
    model_type = check_architecture(config)
    family = FAMILIES[model_type]
    hf = hf_config(config)
    act_name = getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")
    if act_name not in ACTIVATIONS:
        raise _refuse(model_type, f"FFN activation {act_name!r} is not supported")
    for flag, feature in (("mlp_bias", "FFN biases (mlp_bias) are"),
                          ("use_bidirectional_attention", "bidirectional attention is")):
        if getattr(hf, flag, False):
            raise _refuse(model_type, f"{feature} not supported")
    num_layers, num_heads = int(hf.num_hidden_layers), int(hf.num_attention_heads)
    head_dim = int(getattr(hf, "head_dim", None) or hf.hidden_size // num_heads)
    rotaries, layer_rotary, context_length, limit = _rotaries(model_type, hf, head_dim)
    widths = tuple(_ffn_width(weights, i) for i in range(num_layers))
    declared = config.get("intermediate_sizes")
    if declared is not None and tuple(declared) != widths:
        raise CheckpointError(
            f"config.json intermediate_sizes {declared} disagree with the weights {list(widths)}"
        )
    scalar = hf.query_pre_attn_scalar if family.query_pre_attn_scalar else head_dim
    return DecoderSpec(
        model_type=model_type,
        vocab_size=int(hf.vocab_size),
        hidden_size=int(hf.hidden_size),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(getattr(hf, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        ffn_widths=widths,
        activation=ACTIVATIONS[act_name],
        rms_norm_eps=float(getattr(hf, "rms_norm_eps", 1e-6)),
        context_length=context_length,
        tie_word_embeddings=(bool(getattr(hf, "tie_word_embeddings", False))
                             or "lm_head.weight" not in weights),
        family=family,
        attention_scale=float(scalar) ** -0.5,
        rotaries=rotaries,
        layers=tuple(LayerAttention(_window(hf, i, context_length), layer_rotary[i])
                     for i in range(num_layers)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=_as_tuple(config.get("eos_token_id")),
        attn_softcap=getattr(hf, "attn_logit_softcapping", None),
        final_softcap=getattr(hf, "final_logit_softcapping", None),
        context_limit=limit,
    )


def _ffn_width(weights: CheckpointWeights, layer: int) -> int:
    name = f"model.layers.{layer}.mlp.gate_proj.weight"
    if name not in weights:
        raise CheckpointError(f"weights have no {name}: not a gated-FFN decoder")
    return weights.shape(name)[0]


def _window(hf, layer: int, context_length: int) -> int | None:
    """Layer `layer`'s sliding window as transformers applies it (None: full attention).

    Families with layer_types window exactly their "sliding_attention" layers; Mistral and
    Phi-3 window every layer when the config has a sliding_window. A window as long as
    the context changes nothing.
    """
    window = getattr(hf, "sliding_window", None)
    layer_types = getattr(hf, "layer_types", None)
    if layer_types is not None and layer_types[layer] != "sliding_attention":
        return None
    return int(window) if window and window < context_length else None


def _rope_parameters(hf, layer_type: str | None) -> dict[str, Any]:
    params = hf.rope_parameters or {}
    return params[layer_type] if layer_type in params else params


def _rotaries(model_type: str, hf, head_dim: int):
    """(distinct rotaries, per-layer rotary index or None, context length, its limit note)."""
    context, limit = int(hf.max_position_embeddings), None
    layer_types = getattr(hf, "layer_types", None) or ["full_attention"] * hf.num_hidden_layers
    uses_rope = getattr(hf, "no_rope_layers", None) or [1] * hf.num_hidden_layers
    rotaries: list[Rotary] = []
    per_layer: list[int | None] = []
    by_type: dict[str, int] = {}
    for layer_type, rope in zip(layer_types, uses_rope):
        if not rope:
            per_layer.append(None)
            continue
        if layer_type not in by_type:
            params = _rope_parameters(hf, layer_type)
            rope_type = params.get("rope_type", "default")
            if rope_type not in ROPE_TYPES:
                raise _refuse(model_type, f"rope type {rope_type!r} is not supported "
                                          f"(supported: {', '.join(ROPE_TYPES)})")
            by_type[layer_type] = len(rotaries)
            rotaries.append(_rotary(hf, params, rope_type, layer_type, head_dim))
            if rope_type == "longrope":
                original = int(params.get("original_max_position_embeddings")
                               or hf.original_max_position_embeddings)
                if original < context:
                    context = original
                    limit = (f"longrope: past original_max_position_embeddings ({original}) "
                             "transformers switches every position to the long factors; the "
                             "package keeps the short ones and stops there")
        per_layer.append(by_type[layer_type])
    return tuple(rotaries), per_layer, context, limit


def _rotary(hf, params: dict[str, Any], rope_type: str, layer_type: str, head_dim: int) -> Rotary:
    """The rotary of one layer type, computed by transformers' own rope functions."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if rope_type == "default":
        base = float(params["rope_theta"])
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return Rotary(tuple(inv_freq.tolist()))
    layered = isinstance(hf.rope_parameters, dict) and layer_type in hf.rope_parameters
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](
        hf, None, **({"layer_type": layer_type} if layered else {}))
    if len(inv_freq) * 2 != dim:
        raise CheckpointError(f"rope {rope_type}: {len(inv_freq)} frequencies for {dim} "
                              "rotated dims")
    return Rotary(tuple(inv_freq.tolist()), float(scaling))


def _as_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)

