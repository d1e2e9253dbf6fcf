"""Hugging Face decoder checkpoints: read the config, the weights and the tokenizer.

A checkpoint is a local directory with config.json and model.safetensors, or a sharded
model.safetensors.index.json with its shards, in bf16, fp16 or fp32; weights are read one
tensor at a time (checkpoint_weights.py). What the config means for the graph is
decoder_spec.py. FFN widths are read per layer from the weights, so a MAGRIP-pruned
checkpoint whose layers have different widths (recorded as `intermediate_sizes` in
config.json) loads as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exporter.errors import CheckpointError
from exporter.llm.checkpoint_weights import CheckpointWeights
from exporter.llm.decoder_spec import check_architecture, decoder_spec, hf_config
from exporter.llm.weight_quant import EffectiveWeights
from runtime.llm.tokenizer import Tokenizer

__all__ = ["CheckpointError", "checkpoint_tokenizer", "load_torch_model", "read_config",
           "read_weights", "resize_mlp", "torch_weight_name"]


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


def read_weights(model_dir: str | Path, config: dict[str, Any] | None = None
                 ) -> CheckpointWeights:
    """The checkpoint's weights, each read as float32 when asked for (bf16/fp16 widened).

    `config` (default: the checkpoint's config.json) gives the head counts a fused
    qkv_proj splits by.
    """
    config = config if config is not None else read_config(Path(model_dir))
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 0) // heads)
    return CheckpointWeights(model_dir, (heads * head_dim, kv_heads * head_dim,
                                         kv_heads * head_dim))


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


def load_torch_model(model_dir: str | Path, effective: EffectiveWeights | None = None):
    """A float32 transformers model of the checkpoint, with each layer's own FFN width.

    Stock `from_pretrained` assumes one `intermediate_size`; a pruned checkpoint has one
    per layer, so the MLP projections are resized before the weights load. The model is
    built without initialising its weights and each weight is copied in from its shard
    in blocks of rows, so loading holds the float32 model and one block besides.

    `effective`: a package's weights by the exporter's (unfused) names, to use instead of
    the checkpoint's: fp16-rounded ones are written over the checkpoint's a block of rows
    at a time; int8/int4 ones replace their linears by BlockQuantizedLinear, which holds
    the codes (1 byte per weight; a quantised copy of a tied embedding gets its own).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    model_dir = Path(model_dir)
    raw_config = read_config(model_dir)
    check_architecture(raw_config)
    weights = read_weights(model_dir, raw_config)
    spec = decoder_spec(raw_config, weights)
    config = hf_config(raw_config)
    config.intermediate_size = spec.max_ffn_width
    with no_init_weights():  # every weight is overwritten below; its pages stay untouched
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        for layer, width in zip(model.model.layers, spec.ffn_widths):
            resize_mlp(layer.mlp, width)
    if spec.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    parameters = dict(model.named_parameters())  # a tied lm_head under the embedding's name
    missing = sorted(set(parameters) - set(weights.files))
    unexpected = sorted(set(weights.files) - set(parameters)
                        - ({"lm_head.weight"} if spec.tie_word_embeddings else set()))
    if missing or unexpected:
        raise CheckpointError(
            f"{model_dir}: weights do not fit the {spec.model_type} architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    quantized = _quantized_linears(weights, effective) if effective else {}
    with torch.no_grad():
        for name, parameter in parameters.items():
            if name.removesuffix(".weight") not in quantized:  # never touched: never resident
                weights.copy_stored(name, parameter)
        for module, parts in quantized.items():
            _swap_in_quantized(model, module, parts, effective)
        for name in effective or ():
            if not effective.quantized(name):
                _replace_weight(model, weights, effective, name)
    model.eval()
    return model


def _quantized_linears(weights: CheckpointWeights, effective: EffectiveWeights
                       ) -> dict[str, list[str]]:
    """transformers module name -> the quantised weights (exporter's names) whose rows it
    stacks, in order: one each, or Phi-3's q, k, v in a qkv_proj; a tied LM head's own."""
    parts: dict[str, list[tuple[int, str]]] = {}
    for name in effective:
        if effective.quantized(name):
            rows = weights.stored(name).rows if name in weights else None
            module = torch_weight_name(weights, name).removesuffix(".weight")
            parts.setdefault(module, []).append(((rows or (0, 0))[0], name))
    return {module: [name for _, name in sorted(found)] for module, found in parts.items()}


def _swap_in_quantized(model, module: str, parts: list[str], effective: EffectiveWeights) -> None:
    """Replace linear `module` by one holding the package's codes for its weight."""
    from exporter.llm.quantized_linear import BlockQuantizedLinear

    linear = model.get_submodule(module)
    swapped = BlockQuantizedLinear.from_effective(effective, parts, linear.bias)
    if swapped.out_features != linear.out_features:
        raise CheckpointError(f"{module}: the package quantises {swapped.out_features} of its "
                              f"{linear.out_features} rows")
    model.set_submodule(module, swapped)


def torch_weight_name(weights: CheckpointWeights, name: str) -> str:
    """The transformers parameter holding weight `name` (Phi-3: the fused one of a part)."""
    return weights.stored(name).name if name in weights else name


def _replace_weight(model, weights: CheckpointWeights, effective: EffectiveWeights,
                    name: str) -> None:
    """Overwrite weight `name` (an unfused name: a block of rows of a fused weight) with
    its effective (fp16-rounded) value, block by block."""
    import torch

    target = model.get_parameter(torch_weight_name(weights, name))
    rows = weights.stored(name).rows if name in weights else None
    offset = rows[0] if rows else 0
    step, total = effective.block_rows(name), effective.shape(name)[0]
    for start in range(0, total, step):
        stop = min(start + step, total)
        target[offset + start:offset + stop].copy_(
            torch.from_numpy(effective.rows(name, start, stop)))


def resize_mlp(mlp, width: int) -> None:
    """Replace a gated MLP's projections by (uninitialised) ones of FFN width `width`.

    Phi-3's MLP keeps gate and up fused (gate_up_proj, 2 * width rows)."""
    import torch

    def like(linear, out_features: int, in_features: int) -> torch.nn.Linear:
        return torch.nn.Linear(in_features, out_features, bias=linear.bias is not None)

    hidden = mlp.down_proj.out_features
    if hasattr(mlp, "gate_up_proj"):
        mlp.gate_up_proj = like(mlp.gate_up_proj, 2 * width, hidden)
    else:
        mlp.gate_proj = like(mlp.gate_proj, width, hidden)
        mlp.up_proj = like(mlp.up_proj, width, hidden)
    mlp.down_proj = like(mlp.down_proj, hidden, width)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width
