"""Compaction is exact, the saliency order gives elastic width, pruned checkpoints export."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from exporter.llm.checkpoint import load_torch_model, read_weights
from exporter.llm.export import LLMExportOptions, export_llm
from exporter.magrip.compaction import compact
from exporter.magrip.ffn import NeuronMasks, find_ffns
from exporter.magrip.options import FinetuneOptions, MaskOptions, PruneOptions, SaliencyOptions
from exporter.magrip.pipeline import compact_in_saliency_order, prune_checkpoint
from runtime.llm.engine import LLMEngine

IDS = torch.tensor([[5, 17, 42, 101, 7, 250, 33, 64, 9, 120, 77, 3]])


def _logits(model, masks: NeuronMasks | None = None) -> torch.Tensor:
    ffns = find_ffns(model)
    with torch.no_grad(), (masks or NeuronMasks([None] * len(ffns))).applied(ffns):
        return model(IDS).logits


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_compaction_gives_exactly_the_masked_models_outputs(request, arch):
    model = load_torch_model(request.getfixturevalue(f"tiny_{arch}_checkpoint"))
    rng = np.random.default_rng(0)
    keep = [rng.random(96) < 0.55, rng.random(96) < 0.55]
    masked = _logits(model, NeuronMasks.from_keep([torch.from_numpy(k) for k in keep]))
    compacted = copy.deepcopy(model)
    widths = compact(compacted, [rng.permutation(np.flatnonzero(k)) for k in keep])  # any order
    assert widths == [int(k.sum()) for k in keep]
    torch.testing.assert_close(_logits(compacted), masked, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked, _logits(model), atol=1e-3)  # the masks did something


def test_keeping_a_prefix_of_sorted_neurons_equals_masking_the_rest(tiny_llama_checkpoint):
    model = load_torch_model(tiny_llama_checkpoint)
    windows = np.random.default_rng(0).integers(0, 300, size=(4, 32))
    order, scores = compact_in_saliency_order(model, windows, SaliencyOptions(), None, None)
    assert all((np.diff(s) <= 0).all() for s in scores)  # most salient first
    assert sorted(order[0].tolist()) == list(range(96))  # a permutation when nothing is cut
    k = 40
    prefix = copy.deepcopy(model)
    compact(prefix, [np.arange(k), np.arange(96)])
    rest = torch.ones(96)
    rest[k:] = 0
    torch.testing.assert_close(_logits(prefix), _logits(model, NeuronMasks([rest, None])),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,finetune", [("llama", None), ("gemma", "lora")])
def test_pruned_checkpoint_exports_and_matches_torch(request, tmp_path, data_dir, arch,
                                                     finetune):
    source = request.getfixturevalue(f"tiny_{arch}_checkpoint")
    text = f"{data_dir / 'tinyshakespeare.txt'}@0:0.02"
    options = PruneOptions(
        ratio=0.4, seq_len=32, samples=8, saliency=SaliencyOptions(batch_size=4),
        mask=MaskOptions(steps=4, batch_size=4),
        finetune=FinetuneOptions(steps=4, params=finetune, seq_len=32, batch_size=2)
        if finetune else FinetuneOptions(),
    )
    result = prune_checkpoint(source, text, tmp_path / "pruned", options,
                              train_text=text if finetune else None)

    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    widths = config["intermediate_sizes"]
    assert sum(widths) == round(0.6 * 192) and config["neurons_sorted_by_saliency"] is True
    assert config["e2edge_pruning"]["method"] == "magrip"
    assert config["e2edge_pruning"]["params_after"] < config["e2edge_pruning"]["params_before"]
    assert (tmp_path / "pruned" / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    order = json.loads((tmp_path / "pruned" / "neuron_order.json").read_text())["layers"]
    assert [len(layer["kept"]) for layer in order] == widths
    assert all((np.diff(layer["saliency"]) <= 0).all() for layer in order)
    if finetune is None:  # the saved rows are the source's rows, in the recorded order
        before, after = read_weights(source), read_weights(tmp_path / "pruned")
        name = "model.layers.1.mlp.down_proj.weight"
        np.testing.assert_array_equal(after[name], before[name][:, order[1]["kept"]])
    else:
        assert result.pruning["finetune"]["params"] == "lora"

    package = export_llm(tmp_path / "pruned", tmp_path / "pkg", LLMExportOptions()).package
    engine = LLMEngine.load(package)
    assert engine.package.manifest["llm"]["ffn_widths"] == widths
    ort_logits, _ = engine.forward(IDS.numpy(), 0, engine.empty_cache())
    torch_logits = _logits(load_torch_model(tmp_path / "pruned")).numpy()
    np.testing.assert_allclose(ort_logits, torch_logits, atol=1e-4)
