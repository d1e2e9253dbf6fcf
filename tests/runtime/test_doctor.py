"""`e2edge doctor` run as a user runs it, here: a CPU box without GPU or TensorRT, with
onnxruntime; with a daemon config naming a real LLM package and a real vision package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from vision_package import tiny_vision_package

E2EDGE = [sys.executable, "-m", "e2edge.cli"]


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*E2EDGE, "doctor", *args], capture_output=True, text=True,
                          timeout=120)


def test_doctor_json_describes_this_box():
    import onnxruntime

    run = _doctor("--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["onnxruntime"]["version"] == onnxruntime.__version__
    assert report["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    if not report["gpu"]["present"]:  # this machine: no GPU, and the reason why
        assert report["gpu"]["reason"]
    assert report["tensorrt"]["available"] or report["tensorrt"]["reason"].startswith("tensorrt ")
    assert {"cpu", "memory", "jetson", "cuda_python", "int4_kernel", "power"} <= set(report)
    assert "models" not in report


def test_doctor_prints_a_short_table():
    run = _doctor()
    assert run.returncode == 0, run.stderr
    labels = [line.split()[0] for line in run.stdout.splitlines()[1:]]
    assert labels == ["cpu", "memory", "gpu", "jetson", "onnxruntime", "tensorrt",
                      "cuda-python", "int4-kernel", "fp32-kernel", "power"]


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_llama_package):
    vision = tiny_vision_package(tmp_path_factory)
    path = tmp_path_factory.mktemp("doctor") / "daemon.yaml"
    path.write_text(
        "models:\n"
        f"  - {{name: chat, path: {tiny_llama_package}, backend: auto}}\n"
        f"  - {{name: scans, path: {vision}}}\n"
        f"  - {{name: scans-gpu, path: {vision}, backend: tensorrt}}\n"
    )
    return path


def test_doctor_with_a_config_names_each_model_s_backend_and_why(config):
    run = _doctor("--json", "--config", str(config))
    report = json.loads(run.stdout)
    chat, scans, scans_gpu = report["models"]
    assert report["config"] == str(config)
    assert (chat["kind"], chat["backend"], chat["providers"]) == (
        "llm", "onnxruntime", ["CPUExecutionProvider"])
    assert "KV buffer in host memory" in chat["reason"]
    assert (scans["kind"], scans["configured_backend"], scans["backend"]) == (
        "vision", "onnxruntime", "onnxruntime")
    assert scans["providers"] == ["CPUExecutionProvider"] and scans["reason"]
    if report["tensorrt"]["available"]:
        pytest.skip("tensorrt imports here: the vision package's missing engine is checked "
                    "by the backend selection tests")
    assert scans_gpu["error"] == report["tensorrt"]["reason"]
    assert run.returncode == 1  # a configured model cannot run here


def test_doctor_human_output_lists_the_models(config):
    run = _doctor("--config", str(config))
    out = run.stdout
    assert f"models in {config}:" in out
    assert "chat         llm    -> onnxruntime [CPUExecutionProvider]" in out
    assert "scans        vision -> onnxruntime [CPUExecutionProvider]" in out
    assert "scans-gpu    cannot run here (tensorrt): " in out or run.returncode == 0


def test_doctor_with_a_bad_config_path_is_one_line(tmp_path):
    run = _doctor("--config", str(tmp_path / "missing.yaml"))
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        f"e2edge doctor: error: {tmp_path / 'missing.yaml'}: cannot read the config "
        "(No such file or directory)"]
