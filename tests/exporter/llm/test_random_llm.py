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


def test_an_unknown_shape_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "random-llm", "--shape", "gpt-5", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "invalid choice: 'gpt-5'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
