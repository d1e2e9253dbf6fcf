"""`e2edge train random-llm`: a random-weight checkpoint of a named shape that exports."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from e2edge.cli import main
from exporter.llm.random_checkpoint import SHAPES, Shape


def test_random_llm_writes_a_checkpoint_of_the_shape(tmp_path, capsys, monkeypatch):
    # a tiny stand-in beside the real shapes: SmolLM2-135M takes half a gigabyte
    monkeypatch.setitem(SHAPES, "tiny-test", Shape("llama", 320, 32, 2, 4, 2, 48, 128,
                                                   10000.0, True))
    out = tmp_path / "random"
    assert main(["train", "random-llm", "--shape", "tiny-test", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
        32, 2, 48)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings and (out / "tokenizer.json").is_file()

    again = tmp_path / "again"
    assert main(["train", "random-llm", "--shape", "tiny-test", "--out", str(again)]) == 0
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_random_llm_writes_bf16_shards_that_export(tmp_path, monkeypatch):
    """Published checkpoints' form: bf16 shards with an index, read back by transformers."""
    import torch

    from exporter.llm.checkpoint import read_weights
    from exporter.llm.export import LLMExportOptions, export_llm

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    monkeypatch.setitem(SHAPES, "tiny-3b-like", Shape("llama", 320, 64, 2, 4, 2, 96, 128,
                                                      500000.0, True, scaling))
    out = tmp_path / "random"
    assert main(["train", "random-llm", "--shape", "tiny-3b-like", "--out", str(out),
                 "--max-shard-size", "30KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / shard).is_file() for shard in shards)
    assert not (out / "model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["rope_parameters"]["rope_type"] == "llama3"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.tie_word_embeddings
    assert read_weights(out).parameters() == sum(p.numel() for p in model.parameters())
    result = export_llm(out, tmp_path / "pkg", LLMExportOptions())
    assert result.greedy_tokens_match is not None and result.max_logit_diff < 1e-4


def test_an_unknown_shape_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "random-llm", "--shape", "gpt-5", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "invalid choice: 'gpt-5'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
