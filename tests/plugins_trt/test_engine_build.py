"""The engine builder's parts that need no GPU: optimisation profiles from the package's
inputs, engine file naming and selection, and the one-line errors a user gets on a machine
without TensorRT or a GPU (this one)."""

from __future__ import annotations

import json

import onnx
import pytest
from package_fixtures import make_ternary_package
from tensorrt_probe import tensorrt_unusable

from e2edge.cli import main as cli_main
from plugins_trt import engine_files
from plugins_trt.engine_builder import BuildOptions, InputSpec, model_inputs, optimization_profiles
from runtime.errors import BackendUnavailable, ConfigError
from runtime.package import load_package

TENSORRT_MISSING = tensorrt_unusable()  # None: tensorrt imports here


@pytest.fixture
def ternary_package(tmp_path):
    return make_ternary_package(tmp_path / "pkg")


# ---- optimisation profiles ------------------------------------------------------------------
LLM_INPUTS = [
    InputSpec("input_ids", ("batch", "sequence_length")),
    InputSpec("attention_mask", ("batch", "total_sequence_length")),
    InputSpec("past_key_values.0.key", ("batch", 2, "past_sequence_length", 16)),
    InputSpec("ffn_keep", (1,)),
]


def test_decoder_gets_consistent_prefill_and_decode_profiles():
    prefill, decode = optimization_profiles(LLM_INPUTS, max_batch=4, max_seq=256, llm=True)
    assert "ffn_keep" not in prefill  # static inputs need no profile
    assert prefill["input_ids"] == ((1, 1), (1, 128), (4, 256))
    assert prefill["past_key_values.0.key"] == ((1, 2, 0, 16), (1, 2, 0, 16), (4, 2, 0, 16))
    assert decode["input_ids"] == ((1, 1), (1, 1), (4, 1))
    assert decode["past_key_values.0.key"] == ((1, 2, 0, 16), (1, 2, 128, 16), (4, 2, 255, 16))
    # every min / opt / max point is one valid decoder call: total = past + sequence
    for profile in (prefill, decode):
        for k in range(3):
            total = profile["attention_mask"][k][1]
            assert total == profile["past_key_values.0.key"][k][2] + profile["input_ids"][k][1]


def test_vision_model_gets_one_batch_profile():
    (profile,) = optimization_profiles(
        [InputSpec("pixels", ("batch", 3, 28, 28))], 16, 512, llm=False
    )
    assert profile == {"pixels": ((1, 3, 28, 28), (16, 3, 28, 28), (16, 3, 28, 28))}
    assert optimization_profiles([InputSpec("pixels", (1, 3, 28, 28))], 16, 512, llm=False) == []


def test_unknown_dynamic_dimension_is_named():
    with pytest.raises(ConfigError, match="input 'x' has a dynamic dimension 'frames'"):
        optimization_profiles([InputSpec("x", ("batch", "frames"))], 1, 8, llm=False)


def test_inputs_are_read_from_the_onnx_graph(ternary_package):
    model = onnx.load(str(load_package(ternary_package).onnx_path))
    assert model_inputs(model) == [InputSpec("pixels", ("batch", 64))]


def test_build_options_are_validated():
    with pytest.raises(ConfigError, match="precision"):
        BuildOptions(precision="int8")
    with pytest.raises(ConfigError, match="max_batch"):
        BuildOptions(max_batch=0)


# ---- engine files ---------------------------------------------------------------------------
def _sidecar(**overrides):
    base = {
        "tensorrt_version": "10.3.0",
        "compute_capability": 87,
        "gpu": "Orin",
        "model_onnx_sha256": "abc",
    }
    return {**base, **overrides}


def test_engine_written_atomically_and_selected(tmp_path):
    stem = engine_files.engine_stem("orin", 87, "10.3.0")
    assert stem == "orin-sm87-trt10.3.0"
    plan = engine_files.write_engine(tmp_path, stem, b"PLAN" * 10, _sidecar())
    assert plan == tmp_path / "engines" / "orin-sm87-trt10.3.0.plan"
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [
        "orin-sm87-trt10.3.0.json",
        "orin-sm87-trt10.3.0.plan",
    ]  # no temporary files left
    sidecar = json.loads((tmp_path / "engines" / "orin-sm87-trt10.3.0.json").read_text())
    assert sidecar["plan_bytes"] == 40 and sidecar["format"] == "e2edge-trt-engine"
    choice = engine_files.select_engine(tmp_path, "orin", 87, "10.3.0", "abc")
    assert choice.plan == plan and choice.reason == ""


def test_engine_selection_says_why_nothing_fits(tmp_path):
    choice = engine_files.select_engine(tmp_path, "orin", 87, "10.3.0", "abc")
    assert choice.plan is None and "has no TensorRT engine" in choice.reason
    assert f"e2edge build-engine {tmp_path}" in choice.reason

    engine_files.write_engine(tmp_path, "orin-sm87-trt10.3.0", b"x", _sidecar())
    other_gpu = engine_files.select_engine(tmp_path, "nvidia-h100", 90, "10.3.0", "abc")
    assert (
        "engines for orin-sm87-trt10.3.0 but none for nvidia-h100-sm90-trt10.3.0"
        in other_gpu.reason
    )
    other_trt = engine_files.select_engine(tmp_path, "orin", 87, "10.7.0", "abc")
    assert other_trt.plan is None and "none for orin-sm87-trt10.7.0" in other_trt.reason
    stale = engine_files.select_engine(tmp_path, "orin", 87, "10.3.0", "changed")
    assert stale.plan is None and "different model.onnx" in stale.reason

    (tmp_path / "engines" / "orin-sm87-trt10.3.0.plan").write_bytes(b"truncat")
    assert (
        "size differs" in engine_files.select_engine(tmp_path, "orin", 87, "10.3.0", "abc").reason
    )
    (tmp_path / "engines" / "orin-sm87-trt10.3.0.json").unlink()
    assert "sidecar" in engine_files.select_engine(tmp_path, "orin", 87, "10.3.0", "abc").reason


# ---- no TensorRT here: clear errors --------------------------------------------------------
@pytest.mark.skipif(
    TENSORRT_MISSING is None, reason="tensorrt imports here: the error cannot occur"
)
def test_build_engine_without_tensorrt_is_one_clear_line(ternary_package, capsys):
    assert cli_main(["build-engine", str(ternary_package), "--precision", "fp16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"e2edge build-engine: error: {TENSORRT_MISSING}"]
    assert err[0].startswith("e2edge build-engine: error: tensorrt ")
    assert "onnxruntime backend runs the package without it" in err[0]
    assert not (ternary_package / "engines").exists()  # nothing half-written


def test_build_engine_refuses_a_gqa_llm_package_with_the_fix(tiny_llama_package, capsys):
    assert cli_main(["build-engine", str(tiny_llama_package)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--attention standard" in err
    assert not (tiny_llama_package / "engines").exists()


def test_a_gqa_package_is_a_limit_of_the_package_not_a_fault(tiny_llama_package):
    from plugins_trt.engine_builder import EngineUnsupported, build_engine

    with pytest.raises(EngineUnsupported, match="--attention standard"):
        build_engine(tiny_llama_package)


def test_build_engine_on_a_missing_package_names_it(tmp_path, capsys):
    assert cli_main(["build-engine", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2edge build-engine: error:") and "nope" in err and "\n" not in err


@pytest.mark.skipif(TENSORRT_MISSING is None, reason="tensorrt imports here")
def test_tensorrt_backend_is_unavailable_with_the_reason(ternary_package):
    from runtime.backends.base import create_backend
    from runtime.backends.tensorrt_backend import TensorRTBackend, tensorrt_unavailable_reason

    package = load_package(ternary_package)
    with pytest.raises(BackendUnavailable) as raised:
        TensorRTBackend(package)
    assert str(raised.value) == TENSORRT_MISSING
    with pytest.raises(BackendUnavailable) as raised:
        create_backend("tensorrt", package.onnx_path, package=package)
    assert str(raised.value) == TENSORRT_MISSING
    assert tensorrt_unavailable_reason(package) == TENSORRT_MISSING


def test_runtime_backend_module_stays_torch_free():
    import subprocess
    import sys

    code = (
        "import sys, runtime.backends.tensorrt_backend, plugins_trt.engine_builder, "
        "plugins_trt.kernels, plugins_trt.engine_files, plugins_trt.trt_plugins, "
        "plugins_trt.trt_library;"
        "bad = [m for m in ('torch', 'transformers', 'onnx', 'tensorrt') if m in sys.modules];"
        "sys.exit(', '.join(bad) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
