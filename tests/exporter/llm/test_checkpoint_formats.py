"""Checkpoints as published: weight dtypes and shards, and one-line refusals of what is not
supported, which write nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from family_checkpoints import make_family_checkpoint

from e2edge.cli import main
from exporter.llm.checkpoint import read_weights
from exporter.llm.export import LLMExportOptions, export_llm


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return make_family_checkpoint(tmp_path_factory.mktemp("llama3") / "ckpt", "llama3")


def _edit_config(checkpoint, out, **changes):
    """A copy of `checkpoint` at `out` with config.json keys changed (None: removed)."""
    shutil.copytree(checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                 if v is not None}))
    return out


def _export_refused(capsys, tmp_path, checkpoint, *args) -> str:
    """The one line `e2edge export llm` prints when it refuses; nothing is written."""
    capsys.readouterr()  # what building the checkpoint printed
    code = main(["export", "llm", "--model", str(checkpoint), "--out", str(tmp_path / "pkg"),
                 *args])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "pkg").exists()
    return err


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_fp16_and_fp32_checkpoints_export_too(tmp_path, dtype):
    checkpoint = make_family_checkpoint(tmp_path / "ckpt", "qwen2", dtype=dtype)
    result = export_llm(checkpoint, tmp_path / "pkg", LLMExportOptions())
    assert result.greedy_tokens_match is True and result.max_logit_diff < 1e-4


def test_weights_are_widened_exactly_and_fused_ones_split_by_name(tmp_path):
    from safetensors.torch import load_file

    checkpoint = make_family_checkpoint(tmp_path / "phi3", "phi3")
    weights = read_weights(checkpoint)
    stored = {}
    for shard in sorted(checkpoint.glob("model-*.safetensors")):
        stored.update(load_file(shard))
    qkv = stored["model.layers.0.self_attn.qkv_proj.weight"]  # (q 64 + k 32 + v 32, 64) bf16
    assert qkv.dtype == torch.bfloat16 and "model.layers.0.self_attn.qkv_proj.weight" not in weights
    q, k, v = (weights[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    assert (q.shape, k.shape, v.shape) == ((64, 64), (32, 64), (32, 64))
    np.testing.assert_array_equal(np.concatenate([q, k, v]), qkv.float().numpy())
    gate = weights["model.layers.1.mlp.gate_proj.weight"]
    up = weights["model.layers.1.mlp.up_proj.weight"]
    fused = stored["model.layers.1.mlp.gate_up_proj.weight"].float().numpy()
    np.testing.assert_array_equal(np.concatenate([gate, up]), fused)
    assert weights.parameters() == sum(t.numel() for t in stored.values())


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="mixtral", num_local_experts=8),
     "cannot export mixtral: mixture-of-experts FFNs are not supported"),
    (dict(num_local_experts=4), "cannot export llama: mixture-of-experts FFNs (4 experts)"),
    (dict(model_type="gemma3"), "cannot export gemma3: the multimodal Gemma 3"),
    (dict(quantization_config={"quant_method": "awq"}),
     "cannot export llama: pre-quantised weights (quantization_config awq)"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
     "cannot export llama: rope type 'dynamic' is not supported"),
    (dict(mlp_bias=True), "cannot export llama: FFN biases (mlp_bias) are not supported"),
    (dict(hidden_act="relu"), "cannot export llama: FFN activation 'relu' is not supported"),
    (dict(model_type="gpt2"), "unsupported architecture 'gpt2'"),
], ids=["moe-type", "moe-config", "gemma3-multimodal", "pre-quantised", "dynamic-rope",
        "mlp-bias", "activation", "unknown-type"])
def test_unsupported_features_are_refused_in_one_line(tmp_path, capsys, llama3, changes,
                                                      message):
    checkpoint = _edit_config(llama3, tmp_path / "ckpt", **changes)
    assert message in _export_refused(capsys, tmp_path, checkpoint)


def test_pre_quantised_tensors_are_refused_by_name(tmp_path, capsys, llama3):
    from safetensors.torch import load_file, save_file

    checkpoint = _edit_config(llama3, tmp_path / "ckpt")
    shard = sorted(checkpoint.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.int8)
    save_file(tensors, shard, metadata={"format": "pt"})
    err = _export_refused(capsys, tmp_path, checkpoint)
    assert f"{name} is stored as I8" in err and shard.name in err


def test_a_rotary_groupqueryattention_cannot_take_is_refused_for_gqa_only(tmp_path, capsys):
    """Partial rotary over 8 of 32 dims: onnxruntime's kernel wants multiples of 16."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
    checkpoint = make_family_checkpoint(tmp_path / "ckpt", "phi3", rope_parameters=rope)
    err = _export_refused(capsys, tmp_path, checkpoint, "--attention", "gqa")
    assert ("cannot export phi3 with --attention gqa: GroupQueryAttention does not take "
            "partial rotary over 8 of 32 dims") in err and "--attention standard" in err
    result = export_llm(checkpoint, tmp_path / "std", LLMExportOptions(attention="standard"))
    assert result.greedy_tokens_match is True


def test_a_missing_shard_is_named(tmp_path, capsys, llama3):
    checkpoint = _edit_config(llama3, tmp_path / "ckpt")
    shard = sorted(checkpoint.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert f"{shard.name}: weight shard listed in the index is missing" in _export_refused(
        capsys, tmp_path, checkpoint)
