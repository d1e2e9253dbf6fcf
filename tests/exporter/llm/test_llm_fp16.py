"""`e2edge export llm --weights fp16`: half the weight bytes, computed in fp32 like fp32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from llm_fixtures import make_tiny_checkpoint

from e2edge.cli import main
from exporter.llm.checkpoint import load_torch_model
from exporter.llm.export import LLMExportOptions, export_llm
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams
from runtime.package import load_package

PROMPT = [5, 9, 14, 77, 120, 33, 42, 7, 8, 250, 11, 64]
TEXT = ("First Citizen: Before we proceed any further, hear me speak. "
        "To be, or not to be, that is the question. The quick brown fox jumps over the lazy dog.")
ROTARY_TABLES = {"rope_cos", "rope_sin", "rope_cos_half", "rope_sin_half"}


def _rounded_model(checkpoint):
    """The checkpoint in PyTorch with every weight matrix rounded to fp16 and back."""
    model = load_torch_model(checkpoint)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(param.half().float())
    return model


def _logits(engine: LLMEngine, ids: list[int]) -> np.ndarray:
    logits, _ = engine.forward(np.asarray([ids], dtype=np.int64), 0, engine.empty_cache())
    return logits[0]


@pytest.mark.parametrize("attention", ["gqa", "standard"])
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_fp16_export_halves_the_weights_and_matches_the_fp16_rounded_model(
    tmp_path, arch, attention
):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", arch)
    fp32 = export_llm(checkpoint, tmp_path / "fp32",
                      LLMExportOptions(attention=attention, verify=False))
    result = export_llm(checkpoint, tmp_path / "fp16",
                        LLMExportOptions(attention=attention, weights="fp16"))

    manifest = load_package(result.package).manifest
    assert manifest["quantization"]["weights"] == "fp16"
    assert manifest["verification"]["greedy_tokens_match"] is True
    assert result.max_logit_diff < 1e-4
    # every weight matrix is stored as fp16; fp32 stays for norms and the rotary tables
    model = onnx.load(str(result.package / "model.onnx"), load_external_data=False)
    fp32_matrices = {t.name for t in model.graph.initializer
                     if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2}
    assert fp32_matrices <= ROTARY_TABLES
    fp16_names = {t.name for t in model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT16}
    assert "model.embed_tokens.weight" in fp16_names
    assert ("lm_head.weight" in fp16_names) == (arch == "llama")  # gemma ties it
    assert 0.45 < result.weight_bytes / fp32.weight_bytes < 0.56

    # independently of the export's own check: tight against the rounded model, and the
    # rounding is visible against the checkpoint as it is
    engine = LLMEngine.load(result.package)
    rounded = _rounded_model(checkpoint)
    with torch.no_grad():
        expected = rounded(torch.tensor([PROMPT])).logits[0].numpy()
        unrounded = load_torch_model(checkpoint)(torch.tensor([PROMPT])).logits[0].numpy()
    logits = _logits(engine, PROMPT)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert np.abs(logits - unrounded).max() > 1e-4

    n = 16
    ours = [t for event in engine.generate(
        PROMPT, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))
        for t in event.token_ids]
    with torch.no_grad():
        reference = rounded.generate(
            torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
        )[0, len(PROMPT):].tolist()
    assert ours == reference


@pytest.fixture(scope="module")
def llama_packages(tmp_path_factory, tiny_llama_checkpoint):
    """(fp32, fp16) gqa packages of the tiny LLaMA."""
    out = tmp_path_factory.mktemp("fp16-pkgs")
    return tuple(
        export_llm(tiny_llama_checkpoint, out / weights,
                   LLMExportOptions(weights=weights, verify=False)).package
        for weights in ("fp32", "fp16")
    )


def test_eval_ppl_of_the_fp16_package_is_within_half_a_percent_of_fp32(
    tmp_path, llama_packages, capsys
):
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 4)
    ppl = []
    for package in llama_packages:
        report = tmp_path / f"{package.name}.json"
        assert main(["eval", "ppl", "--model", str(package), "--text", str(text),
                     "--window", "48", "--stride", "16", "--json", str(report)]) == 0
        ppl.append(json.loads(report.read_text())["perplexity"])
    assert "perplexity" in capsys.readouterr().out
    fp32, fp16 = ppl
    assert fp32 != fp16  # the weights really differ
    assert abs(fp16 - fp32) / fp32 < 0.005


def test_onnxruntime_folds_the_weight_casts_so_it_computes_on_fp32_matrices(
    tmp_path, llama_packages
):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(llama_packages[1] / "model.onnx"), options,
                         providers=["CPUExecutionProvider"])
    # (its large initializers point into the package's model.onnx.data: names and types suffice)
    graph = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert not [n.name for n in casts if n.input[0] in initializers]
    # the untied embedding is only looked up: it stays fp16, its gathered rows are widened
    fp16 = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16 == ["model.embed_tokens.weight"]
    assert len(casts) == 1


def test_the_tensorrt_lowering_passes_the_fp16_standard_graph_through(
    tmp_path, tiny_llama_checkpoint
):
    from plugins_trt.lowering import lower_model

    package = export_llm(tiny_llama_checkpoint, tmp_path / "pkg", LLMExportOptions(
        weights="fp16", attention="standard", verify=False)).package
    model = onnx.load(str(package / "model.onnx"))
    lowered, report = lower_model(model)
    assert report.unsupported == [] and report.ternary_nodes == []
    assert ([n.op_type for n in lowered.graph.node].count("Cast")
            == [n.op_type for n in model.graph.node].count("Cast") > 7)
    session = ort.InferenceSession(lowered.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    engine = LLMEngine.load(package)
    feeds = {"input_ids": np.asarray([PROMPT]), "attention_mask": np.ones((1, len(PROMPT)),
             dtype=np.int64), "position_ids": np.arange(len(PROMPT))[None],
             **engine.empty_cache()}
    (logits,) = session.run(["logits"], feeds)
    np.testing.assert_allclose(logits[0], _logits(engine, PROMPT), atol=1e-5)


def test_cli_exports_fp16_and_names_it_in_help_and_errors(tmp_path, tiny_llama_checkpoint,
                                                          capsys):
    out = tmp_path / "pkg"
    assert main(["export", "llm", "--model", str(tiny_llama_checkpoint), "--out", str(out),
                 "--weights", "fp16", "--attention", "standard"]) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "greedy tokens match" in printed
    assert load_package(out).manifest["quantization"]["weights"] == "fp16"

    with pytest.raises(SystemExit):
        main(["export", "llm", "--help"])
    assert "fp16" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "llm", "--model", "x", "--out", "y", "--weights", "fp8"])
    assert exit_info.value.code == 2
    assert "'fp16'" in capsys.readouterr().err
    assert main(["export", "llm", "--model", str(tiny_llama_checkpoint), "--out",
                 str(tmp_path / "no"), "--weights", "fp16", "--accuracy-level", "4"]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert "--accuracy-level applies to int8/int4 weights" in error and "fp16" in error
    assert not (tmp_path / "no").exists()
    with pytest.raises(ValueError, match="fp32, fp16, int8, int4"):
        export_llm(tiny_llama_checkpoint, tmp_path / "bad", LLMExportOptions(weights="fp8"))
