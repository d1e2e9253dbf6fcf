"""Hugging Face LLaMA/Gemma-family checkpoints: read the architecture, weights and tokenizer.

A checkpoint is a local directory with config.json and model.safetensors (or a
sharded model.safetensors.index.json). FFN widths are read per layer from the
weights, so a MAGRIP-pruned checkpoint whose layers have different widths
(recorded as `intermediate_sizes` in config.json) loads as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import E2edgeError
from runtime.llm.tokenizer import Tokenizer

# model_type -> the facts of its family that change the graph
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"norm_offset": 0.0, "embed_scale": False},
    "mistral": {"norm_offset": 0.0, "embed_scale": False},
    "qwen2": {"norm_offset": 0.0, "embed_scale": False},
    "gemma": {"norm_offset": 1.0, "embed_scale": True},
}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"}


class CheckpointError(E2edgeError):
    """A checkpoint directory is missing, malformed, or of an unsupported architecture."""


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
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    norm_offset: float  # Gemma's RMSNorm multiplies by (1 + weight)
    embed_scale: bool  # Gemma scales embeddings by sqrt(hidden_size)
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @property
    def max_ffn_width(self) -> int:
        return max(self.ffn_widths)


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise CheckpointError(f"{model_dir}: checkpoint directory does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; not a Hugging Face checkpoint")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _weight_files(model_dir: Path) -> list[Path]:
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    if (model_dir / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{model_dir}: only pytorch_model.bin found; e2edge loads safetensors only "
            "(no pickle): convert it with transformers' save_pretrained(safe_serialization=True)"
        )
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_weights(model_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint as float32 numpy arrays (bf16/fp16 are widened)."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    weights: dict[str, np.ndarray] = {}
    for path in _weight_files(model_dir):
        if not path.is_file():
            raise CheckpointError(f"{path}: weight shard listed in the index is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    weights[name] = f.get_tensor(name).float().numpy()
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors ({e})") from e
    return weights


def _ffn_widths(weights: dict[str, np.ndarray], num_layers: int) -> tuple[int, ...]:
    widths = []
    for i in range(num_layers):
        name = f"model.layers.{i}.mlp.gate_proj.weight"
        if name not in weights:
            raise CheckpointError(f"weights have no {name}: not a gated-FFN decoder")
        widths.append(int(weights[name].shape[0]))
    return tuple(widths)


def _as_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def check_architecture(config: dict[str, Any]) -> str:
    """The config's model_type, or CheckpointError naming the unsupported one."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"unsupported architecture {model_type!r} "
            f"(architectures={config.get('architectures')}); supported: {sorted(FAMILIES)}"
        )
    return model_type


def decoder_spec(config: dict[str, Any], weights: dict[str, np.ndarray]) -> DecoderSpec:
    """The DecoderSpec of a checkpoint; raises CheckpointError naming what is unsupported."""
    model_type = check_architecture(config)
    family = FAMILIES[model_type]
    act_name = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    if act_name not in ACTIVATIONS:
        raise CheckpointError(f"unsupported FFN activation {act_name!r}")
    try:
        hidden = int(config["hidden_size"])
        num_layers = int(config["num_hidden_layers"])
        num_heads = int(config["num_attention_heads"])
        vocab = int(config["vocab_size"])
    except KeyError as e:
        raise CheckpointError(f"config.json has no {e.args[0]!r}") from e
    rope = config.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type") or (config.get("rope_scaling") or {}).get("rope_type")
    rope_scaling = None
    if rope_type not in (None, "default"):
        rope_scaling = dict(config.get("rope_scaling") or rope)
        if rope_scaling.get("rope_type", rope_type) not in ("linear", "llama3"):
            raise CheckpointError(f"unsupported rope scaling {rope_type!r}")
        rope_scaling["rope_type"] = rope_type
    widths = _ffn_widths(weights, num_layers)
    declared = config.get("intermediate_sizes")
    if declared is not None and tuple(declared) != widths:
        raise CheckpointError(
            f"config.json intermediate_sizes {declared} disagree with the weights {list(widths)}"
        )
    tie = bool(config.get("tie_word_embeddings", False)) or "lm_head.weight" not in weights
    return DecoderSpec(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
        head_dim=int(config.get("head_dim") or hidden // num_heads),
        ffn_widths=widths,
        activation=ACTIVATIONS[act_name],
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=tie,
        attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        norm_offset=family["norm_offset"],
        embed_scale=family["embed_scale"],
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=_as_tuple(config.get("eos_token_id")),
    )


def checkpoint_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The checkpoint's tokenizer as the runtime will use it after export.

    The BOS rule is the exporter's: prepend BOS exactly when the checkpoint's Hugging
    Face tokenizer does, so a checkpoint and its package see the same token ids.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no tokenizer.json")
    bos = read_config(model_dir).get("bos_token_id")
    bare = Tokenizer(path, bos_token_id=bos, add_bos=False)
    hf = AutoTokenizer.from_pretrained(model_dir)
    probe = "Hello world"
    add_bos = bos is not None and hf(probe)["input_ids"] == [bos, *bare.encode(probe)]
    return Tokenizer(path, bos_token_id=bos, add_bos=add_bos)


def load_torch_model(model_dir: str | Path):
    """A transformers model of the checkpoint, with each layer's own FFN width.

    Stock `from_pretrained` assumes one `intermediate_size`; a pruned checkpoint has
    one per layer, so the MLP projections are resized before the weights load.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    raw_config = read_config(model_dir)
    check_architecture(raw_config)
    weights = read_weights(model_dir)
    spec = decoder_spec(raw_config, weights)
    config = AutoConfig.from_pretrained(model_dir)
    config.intermediate_size = spec.max_ffn_width
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for layer, width in zip(model.model.layers, spec.ffn_widths):
        resize_mlp(layer.mlp, width)
    state = {name: torch.from_numpy(array) for name, array in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and spec.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(
            f"{model_dir}: weights do not fit the {spec.model_type} architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if spec.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    return model


def resize_mlp(mlp, width: int) -> None:
    """Replace a gated MLP's projections by (uninitialised) ones of FFN width `width`."""
    import torch

    def like(linear, out_features: int, in_features: int) -> torch.nn.Linear:
        return torch.nn.Linear(in_features, out_features, bias=linear.bias is not None)

    hidden = mlp.gate_proj.in_features
    mlp.gate_proj = like(mlp.gate_proj, width, hidden)
    mlp.up_proj = like(mlp.up_proj, width, hidden)
    mlp.down_proj = like(mlp.down_proj, hidden, width)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width
