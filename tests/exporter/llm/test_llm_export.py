"""Export of HF LLaMA/Gemma checkpoints to llm packages, checked against PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from llm_fixtures import make_tiny_checkpoint

from exporter.errors import ExportVerificationError
from exporter.llm.checkpoint import load_torch_model
from exporter.llm.export import LLMExportOptions, export_llm
from runtime.llm.engine import LLMEngine
from runtime.package import load_package


def _logits_with_padding(engine: LLMEngine, rows: list[list[int]]) -> np.ndarray:
    """Batch of left-padded prompts through the package in one call."""
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
        positions[b, width - len(row):] = np.arange(len(row))
    cache = engine.empty_cache(batch=len(rows))
    out = engine.backend.run(
        {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **cache}
    )
    return out["logits"]


FIXED_INPUTS = {
    "gqa": ["input_ids", "seqlens_k", "total_sequence_length"],
    "standard": ["input_ids", "attention_mask", "position_ids"],
}


@pytest.mark.parametrize("attention", ["gqa", "standard"])
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_export_writes_a_verified_package(tmp_path, arch, attention):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", arch)
    result = export_llm(checkpoint, tmp_path / "pkg", LLMExportOptions(attention=attention))

    package = load_package(result.package)
    manifest = package.manifest
    assert manifest["kind"] == "llm" and manifest["llm"]["model_type"] == arch
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json"}
    assert manifest["verification"]["greedy_tokens_match"] is True
    assert result.max_logit_diff < 1e-4
    onnx.checker.check_model(str(package.onnx_path))
    names = [i["name"] for i in manifest["io"]["inputs"]]
    assert names[:3] == FIXED_INPUTS[attention]
    assert "past_key_values.1.value" in names
    session_inputs = [i.name for i in LLMEngine.load(result.package).backend.session.get_inputs()]
    assert session_inputs == names
    ops = {node.op_type for node in onnx.load(str(package.onnx_path)).graph.node}
    assert ("GroupQueryAttention" in ops) == (attention == "gqa")
    # Gemma's tanh-GELU: one fused kernel on onnxruntime, plain ops for TensorRT's parser
    assert ("FastGelu" in ops) == (arch == "gemma" and attention == "gqa")
    assert ("Tanh" in ops) == (arch == "gemma" and attention == "standard")
    # Gemma's tied LM head: one FusedMatMul(transB) on onnxruntime, Gemm for TensorRT
    assert ("FusedMatMul" in ops) == (arch == "gemma" and attention == "gqa")
    assert ("Gemm" in ops) == (arch == "gemma" and attention == "standard")
    # nothing but the package is left in the output's parent directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "pkg"]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_batched_past_and_padding_match_pytorch(tmp_path, arch):
    """Dynamic batch, sequence and past length: a padded batch, then one cached step."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", arch, seed=3)
    options = LLMExportOptions(verify=False, attention="standard")
    package = export_llm(checkpoint, tmp_path / "pkg", options).package
    engine = LLMEngine.load(package)
    model = load_torch_model(checkpoint)
    rows = [[5, 9, 14, 77, 120, 33], [42, 7, 8]]
    logits = _logits_with_padding(engine, rows)
    for b, row in enumerate(rows):
        with torch.no_grad():
            expected = model(torch.tensor([row])).logits[0].numpy()
        np.testing.assert_allclose(logits[b, -len(row):], expected, atol=1e-4)

    # a prefill of 4 tokens, then 2 decode steps through the cache
    row = rows[0]
    out, cache = engine.forward(np.asarray([row[:4]]), 0, engine.empty_cache())
    steps = [out[0]]
    for t in range(4, 6):
        out, cache = engine.forward(np.asarray([[row[t]]]), t, cache)
        steps.append(out[0])
    with torch.no_grad():
        expected = model(torch.tensor([row])).logits[0].numpy()
    np.testing.assert_allclose(np.concatenate(steps), expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_gqa_rows_of_different_lengths_decode_together_like_pytorch(tmp_path, arch):
    """Slots prefilled one by one, then one batched step with each row at its own length."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", arch, seed=3)
    package = export_llm(checkpoint, tmp_path / "pkg", LLMExportOptions(verify=False)).package
    engine = LLMEngine.load(package)
    model = load_torch_model(checkpoint)
    rows = [[5, 9, 14, 77, 120, 33], [42, 7, 8], [11]]
    buffer = engine.empty_cache(batch=len(rows), capacity=16)
    for slot, row in enumerate(rows):
        prefill = engine.step(np.asarray([row[:-1] or row]), [max(len(row) - 1, 1)], buffer,
                              first_slot=slot)
        with torch.no_grad():
            expected = model(torch.tensor([row[:-1] or row])).logits[0].numpy()
        np.testing.assert_allclose(prefill[0], expected, atol=1e-4)
    last = [[row[-1]] for row in rows[:2]] + [[64]]
    totals = [len(rows[0]), len(rows[1]), 2]
    logits = engine.step(np.asarray(last), totals, buffer)
    for b, row in enumerate([rows[0], rows[1], [11, 64]]):
        with torch.no_grad():
            expected = model(torch.tensor([row])).logits[0, -1].numpy()
        np.testing.assert_allclose(logits[b, -1], expected, atol=1e-4)


def test_pruned_checkpoint_with_unequal_ffn_widths_exports_and_matches(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "llama", ffn_widths=[96, 40, 17],
                                      num_layers=3)
    assert json.loads((checkpoint / "config.json").read_text())["intermediate_sizes"] == [
        96, 40, 17
    ]
    result = export_llm(checkpoint, tmp_path / "pkg", LLMExportOptions())
    manifest = load_package(result.package).manifest
    assert manifest["llm"]["ffn_widths"] == [96, 40, 17]
    assert manifest["pruning"]["ffn_widths"] == [96, 40, 17]
    assert result.greedy_tokens_match


@pytest.mark.parametrize("options, error", [
    (LLMExportOptions(), 1.01),
    # int8 activations: held to one int8 step of the logits (0.8 %), so 3 % must fail
    (LLMExportOptions(weights="int4", accuracy_level=4), 1.03),
], ids=["fp32", "int4-int8-activations"])
def test_export_fails_loudly_and_writes_nothing_when_logits_differ(
    tmp_path, monkeypatch, options, error
):
    import exporter.llm.export as export

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "llama")
    real_build = export.build_decoder_onnx

    def off_by_a_little(spec, weights, *args):
        weights = dict(weights)
        weights["model.norm.weight"] = weights["model.norm.weight"] * error
        return real_build(spec, weights, *args)

    monkeypatch.setattr(export, "build_decoder_onnx", off_by_a_little)
    with pytest.raises(ExportVerificationError, match="logits differ"):
        export_llm(checkpoint, tmp_path / "pkg", options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e2edge.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_export_llm(tmp_path, tiny_llama_checkpoint):
    result = _cli("export", "llm", "--model", str(tiny_llama_checkpoint),
                  "--out", str(tmp_path / "pkg"))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout and "greedy tokens match" in result.stdout
    package = load_package(tmp_path / "pkg")
    assert package.name == "ckpt"
    # the command's defaults are the CPU deployment format: int4 weights with int8
    # activations (checked exactly against the emulated arithmetic), fused attention
    assert package.manifest["quantization"]["weights"] == "int4"
    assert package.manifest["quantization"]["accuracy_level"] == 4
    assert package.manifest["llm"]["attention"] == "gqa"


@pytest.mark.parametrize(
    "break_checkpoint, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{not json")), "not valid JSON"),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "gpt2"}'),
                       (d / "model.safetensors").write_bytes(b"")),
            "unsupported architecture 'gpt2'",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "llama"}')),
            "no model.safetensors",
        ),
    ],
    ids=["missing", "malformed-config", "unsupported-arch", "no-weights"],
)
def test_cli_bad_checkpoints_give_one_line_and_write_nothing(tmp_path, break_checkpoint, message):
    checkpoint = tmp_path / "ckpt"
    break_checkpoint(checkpoint)
    result = _cli("export", "llm", "--model", str(checkpoint), "--out", str(tmp_path / "pkg"))
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pkg").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pkg")]


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantised_export_is_exact_against_its_dequantised_weights(tmp_path, weights):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "gemma")
    fp32 = export_llm(checkpoint, tmp_path / "fp32", LLMExportOptions())
    result = export_llm(checkpoint, tmp_path / "q", LLMExportOptions(weights=weights))
    assert result.max_logit_diff < 1e-4 and result.greedy_tokens_match
    manifest = load_package(result.package).manifest
    assert manifest["quantization"]["bits"] == int(weights[3:])
    model = onnx.load(str(result.package / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 4 + 1  # qkv, o, gate_up, down in each layer, and lm_head
    assert result.weight_bytes < fp32.weight_bytes


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_int8_activation_export_is_checked_against_emulated_int8_inputs(tmp_path, weights):
    """At accuracy level 4 the reference quantises its linears' inputs like onnxruntime:
    the logits agree far inside one int8 step, and greedy tokens are compared."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "llama")
    result = export_llm(checkpoint, tmp_path / "q",
                        LLMExportOptions(weights=weights, accuracy_level=4))
    manifest = load_package(result.package).manifest
    assert manifest["quantization"]["activations"] == "int8 per block"
    check = manifest["verification"]
    assert result.greedy_tokens_match is True and check["greedy_tokens_checked"] == 32
    assert check["logits_tolerance"] > 1e-4  # one int8 step of the logits' scale
    assert result.max_logit_diff < check["logits_tolerance"] / 10


@pytest.mark.parametrize("tolerance", [1e-4, 1e3], ids=["clear-preference", "near-tie"])
def test_greedy_tokens_may_part_only_at_a_near_tie(tmp_path, monkeypatch, tolerance):
    """The package's 5th token is swapped: a failure when the reference clearly prefers
    its own token, accepted (and recorded) when its top two are within the tolerance."""
    from types import SimpleNamespace

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "llama")
    real_generate = LLMEngine.generate

    def swapped(self, prompt, params, cancelled=None):
        tokens = [t for e in real_generate(self, prompt, params, cancelled) for t in e.token_ids]
        tokens[4] = (tokens[4] + 1) % self.layout.vocab_size
        return [SimpleNamespace(token_ids=[t]) for t in tokens]

    monkeypatch.setattr(LLMEngine, "generate", swapped)
    options = LLMExportOptions(logits_tolerance=tolerance)
    if tolerance < 1:
        with pytest.raises(ExportVerificationError, match="at token 4.*prefers its token"):
            export_llm(checkpoint, tmp_path / "pkg", options)
        return
    result = export_llm(checkpoint, tmp_path / "pkg", options)
    assert result.greedy_tokens_match is False
    assert load_package(result.package).manifest["verification"]["near_tie_at"] == 4
