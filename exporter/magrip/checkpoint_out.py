"""Write a pruned checkpoint: a normal HF checkpoint directory, plus what pruning decided.

- model.safetensors + config.json from `save_pretrained`, in the source's dtype;
  config.json also gets `intermediate_sizes` (per-layer FFN widths),
  `neurons_sorted_by_saliency: true` and `e2edge_pruning` (method, ratio, widths,
  parameters before/after, ...), which `exporter.llm.checkpoint` reads back;
- neuron_order.json: per layer, the kept neurons as indices of the source
  checkpoint's neurons, most salient first; the saved weights are in this order;
- the source's tokenizer and generation files, copied.

Everything is written to a temporary sibling directory that is renamed into place,
so an interrupted run never leaves a half checkpoint at the destination.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.atomic_dir import AtomicDirectory

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "generation_config.json", "added_tokens.json", "chat_template.jinja",
)
NEURON_ORDER_FORMAT = "e2edge-neuron-order"
NEURON_ORDER_VERSION = 1


def source_dtype(model_dir: Path) -> torch.dtype:
    """The floating dtype the source checkpoint's weights are stored in."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    with safe_open(str(files[0]), framework="pt") as f:
        name = next(iter(f.keys()))
        dtype = f.get_slice(name).get_dtype()
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(dtype, torch.float32)


def neuron_order_document(orders: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                          source_widths: Sequence[int]) -> dict[str, Any]:
    """orders[l]: source indices of the saved neurons; scores[l]: their saliency, same order."""
    return {
        "format": NEURON_ORDER_FORMAT,
        "version": NEURON_ORDER_VERSION,
        "meaning": "per layer, the kept FFN neurons as indices of the source checkpoint's "
                   "neurons, most salient first; the saved weights hold them in this order, "
                   "so keeping the first k neurons of a layer keeps its k most salient",
        "layers": [
            {
                "layer": layer,
                "source_width": int(width),
                "kept": [int(i) for i in order],
                "saliency": [round(float(v), 6) for v in scores[layer]],
            }
            for layer, (order, width) in enumerate(zip(orders, source_widths))
        ],
    }


def copy_source_files(source_dir: Path, out: Path) -> None:
    """Copy the source's tokenizer and generation files (those it has) into `out`."""
    for name in TOKENIZER_FILES:
        if (Path(source_dir) / name).is_file():
            shutil.copyfile(Path(source_dir) / name, Path(out) / name)


def save_pruned_checkpoint(
    model: nn.Module,
    source_dir: Path,
    out: Path,
    pruning: dict[str, Any],
    neuron_order: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` (already compacted) as a checkpoint at `out`; return `out`.

    `source_dir` provides the tokenizer and generation files (copy_source_files).
    """
    widths = [int(w) for w in pruning["ffn_widths"]]
    with AtomicDirectory(out) as target:
        save_model = model if dtype in (None, torch.float32) else _cast_copy(model, dtype)
        save_model.save_pretrained(target.dir)
        copy_source_files(source_dir, target.dir)
        config_path = target.dir / "config.json"
        config = json.loads(config_path.read_text())
        config["intermediate_size"] = max(widths)
        config["intermediate_sizes"] = widths
        config["neurons_sorted_by_saliency"] = True
        config["e2edge_pruning"] = pruning
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        (target.dir / "neuron_order.json").write_text(json.dumps(neuron_order) + "\n")
        return target.commit()


def _cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(dtype)

