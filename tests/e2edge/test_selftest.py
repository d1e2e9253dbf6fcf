"""`e2edge selftest` as a user runs it here (a CPU box: no GPU, no onnxruntime-gpu, no
TensorRT): it builds its tiny packages, passes them on onnxruntime CPU, says why the
other backends are absent; it takes packages built elsewhere without torch, reports a
corrupt one in its row, and exits non-zero when a backend disagrees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e2edge.cli import main
from e2edge.selftest import llm_check
from e2edge.selftest.backends import Absent, Placement, place
from e2edge.selftest.command import require
from e2edge.selftest.packages import LLM_VARIANTS, VISION_NAME
from runtime.backends.selection import BackendHost
from runtime.errors import BackendUnavailable
from runtime.package import load_package

MODELS = [f"llm-{attention}-{weights}" for attention, weights in LLM_VARIANTS] + [VISION_NAME]


def _selftest(*args: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python, "-m", "e2edge.cli", "selftest", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`e2edge selftest --json --out DIR`: (the process, its JSON, DIR)."""
    pytest.importorskip("torch", reason="building the selftest's packages needs torch")
    out = tmp_path_factory.mktemp("selftest")
    run = _selftest("--json", "--out", str(out))
    assert run.returncode == 0, run.stderr
    return run, json.loads(run.stdout), out


@pytest.fixture
def cpu_only(built):
    machine = built[1]["machine"]
    if machine["gpu"]["present"] or machine["tensorrt"]["available"]:
        pytest.skip("this box has a GPU or TensorRT: the absent rows are not absent")


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["backend"]): r for r in report["rows"]}


def test_builds_its_packages_and_passes_them_on_onnxruntime_cpu(built):
    _, report, out = built
    assert json.loads((out / "selftest.json").read_text()) == report
    assert report["packages"]["source"] == "built"
    assert sorted(Path(p).name for p in report["packages"]["paths"]) == sorted(MODELS)
    assert {"cpu", "gpu", "onnxruntime", "tensorrt"} <= set(report["machine"])
    rows = _rows(report)
    for model in MODELS:
        cpu = rows[model, "onnxruntime-cpu"]
        assert cpu["status"] == "passed" and cpu["providers"] == ["CPUExecutionProvider"]
    llm = rows["llm-gqa-int4", "onnxruntime-cpu"]
    assert llm["reference"] and llm["numbers"]["decode_tokens_per_s"] > 0
    vit = rows[VISION_NAME, "onnxruntime-cpu"]["numbers"]  # int8 codes against as stored
    assert vit["execution"] == "int8" and vit["top1_agreement"] == 1.0
    assert vit["max_abs_probability_diff"] <= vit["probability_tolerance"] == 1e-4
    assert vit["images_per_s_batch_1"] > 0 and vit["images_per_s_batch_16"] > 0
    assert report["summary"]["result"] == "passed" and report["summary"]["failed"] == 0


def test_says_why_each_gpu_backend_is_absent_here(built, cpu_only):
    rows = _rows(built[1])
    for model in MODELS:
        cuda, tensorrt = rows[model, "onnxruntime-cuda"], rows[model, "tensorrt"]
        assert cuda["status"] == tensorrt["status"] == "absent"
        assert cuda["reason"] == ("onnxruntime has no CUDA provider (onnxruntime-gpu is not "
                                  "installed)")
        assert tensorrt["reason"].startswith("tensorrt ")
    kernels = built[1]["kernels"]
    assert kernels["status"] == "absent" and kernels["reason"].startswith("no GPU: ")
    assert built[1]["summary"]["absent"] == 2 * len(MODELS)


def test_runs_packages_built_elsewhere_without_torch_and_prints_a_table(built, cpu_only):
    run = _selftest("--packages", str(built[2] / "packages"), python=("-X", "importtime"))
    assert run.returncode == 0, run.stderr
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in run.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and not imported & {"torch", "transformers"}
    lines = run.stdout.splitlines()
    assert lines[0].startswith("e2edge ") and " selftest on " in lines[0]
    assert lines[1] == f"packages: {len(MODELS)} from {built[2] / 'packages'}"
    assert lines[2].split() == ["model", "backend", "status", "result"]
    table = [line.split()[:3] for line in lines[3:3 + 3 * len(MODELS) + 1]]
    assert ["vit-ternary", "onnxruntime-cpu", "passed"] in table
    assert ["llm-standard-fp32", "tensorrt", "absent"] in table
    assert table[-1] == ["kernels", "cuda", "absent"]
    assert lines[-1] == f"{len(MODELS)} passed, 0 failed, {2 * len(MODELS)} absent: passed"


def test_require_gpu_here_is_one_line_saying_what_is_missing(cpu_only):
    run = _selftest("--require", "gpu")
    assert run.returncode == 1
    assert run.stdout == ""
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("e2edge selftest: error: --require gpu: no GPU backend here: ")
    assert "onnxruntime-gpu is not installed" in line and "tensorrt is not installed" in line


def test_a_corrupt_package_fails_its_row_and_the_others_still_run(built, tmp_path):
    packages = tmp_path / "packages"
    for name in ("llm-standard-fp32", VISION_NAME):
        shutil.copytree(built[2] / "packages" / name, packages / name)
    onnx = packages / VISION_NAME / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-64] + bytes(64))
    run = _selftest("--packages", str(packages), "--json")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    rows = _rows(json.loads(run.stdout))
    broken = rows[VISION_NAME, "onnxruntime-cpu"]
    assert broken["status"] == "failed"
    assert broken["reason"] == f"{onnx}: sha256 does not match the manifest (corrupt file)"
    assert rows["llm-standard-fp32", "onnxruntime-cpu"]["status"] == "passed"


def test_without_torch_or_packages_it_says_what_to_do_and_nothing_fails():
    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now fails
            "from e2edge.cli import main\n"
            "sys.exit(main(['selftest']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1] == "packages: absent (1)"
    [note] = [line for line in lines if line.startswith("(1) ")]
    assert "torch is not installed" in note
    assert "`e2edge selftest --packages DIR/packages` here" in note
    assert lines[-1].startswith("0 passed, 0 failed, 0 absent: ")


def test_a_directory_without_packages_is_one_line(tmp_path, capsys):
    assert main(["selftest", "--packages", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"e2edge selftest: error: --packages {tmp_path}: holds no model package "
                   "(no */manifest.json)")


def test_a_backend_that_disagrees_fails_the_selftest(built, tmp_path, monkeypatch, capsys):
    """The CPU row's int8 execution made wrong on purpose: class 0 gains a logit."""
    from runtime.vision.engine import VisionEngine

    right = VisionEngine.logits

    def wrong(self, pixels):
        logits = right(self, pixels)
        return logits + (self.execution != "packed") * np.eye(logits.shape[1])[0]

    monkeypatch.setattr(VisionEngine, "logits", wrong)
    packages = tmp_path / "packages"
    shutil.copytree(built[2] / "packages" / VISION_NAME, packages / VISION_NAME)
    assert main(["selftest", "--packages", str(packages), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [cpu] = [r for r in report["rows"] if r["backend"] == "onnxruntime-cpu"]
    assert cpu["status"] == "failed" and cpu["reason"].startswith("max |probability diff| ")
    assert report["summary"] == {**report["summary"], "failed": 1, "result": "failed"}


# ---- the LLM comparison --------------------------------------------------------------------
def test_two_attention_forms_of_one_model_agree_through_the_llm_check(built):
    """gqa (shared KV buffer) and standard (concatenated cache) exports of the same
    weights: the forced decode steps give the same logits, and the same greedy tokens."""
    packages = built[2] / "packages"

    def on_cpu(name: str) -> Placement:
        return Placement(packages / name, "onnxruntime", ("CPUExecutionProvider",), "test")

    gqa = llm_check.run(on_cpu("llm-gqa-fp32"))
    standard = llm_check.run(on_cpu("llm-standard-fp32"), reference=gqa)
    assert gqa.logits.shape == (len(gqa.prompt_ids) + llm_check.GREEDY_TOKENS - 1, 300)
    numbers, problems = llm_check.compare(gqa, standard, "fp32")
    assert problems == [] and numbers["greedy_tokens_match"]
    assert numbers["max_abs_logit_diff"] < 1e-4 * np.abs(gqa.logits).max()


def _llm_run(tokens: list[int], logits: np.ndarray) -> llm_check.LLMRun:
    return llm_check.LLMRun([5, 6], tokens, logits, ["test"])


def test_greedy_tokens_may_part_only_at_a_near_tie():
    logits = np.zeros((3, 4), np.float32)  # prompt of 2: rows 1, 2 predict tokens 0, 1
    logits[1, :2] = [5.0, 4.9999]  # token 0: a near tie between 0 and 1
    logits[2, 2] = 5.0  # token 1: clearly 2
    reference = _llm_run([0, 2], logits)
    numbers, problems = llm_check.compare(reference, _llm_run([1, 3], logits), "fp16")
    assert problems == [] and numbers["near_tie_at"] == 0
    assert not numbers["greedy_tokens_match"]
    numbers, problems = llm_check.compare(reference, _llm_run([0, 3], logits), "fp16")
    assert problems == ["greedy tokens part at token 1: 3 where the reference has 2, whose "
                        "logit leads by 5"]


def test_nan_logits_are_a_wrong_result():
    logits = np.ones((3, 4), np.float32)
    numbers, problems = llm_check.compare(_llm_run([0, 0], logits),
                                          _llm_run([0, 0], logits * np.nan), "tf32")
    assert len(problems) == 1 and problems[0].startswith("max |logit diff| nan exceeds ")


# ---- which backends take which package, on boxes written by hand ---------------------------
JETSON = BackendHost(  # onnxruntime-gpu and TensorRT 10.3 on an Orin
    onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    gpu_name="Orin", engine_target=("orin", 87, "10.3.0"))
GPU_NO_TRT = BackendHost(onnxruntime_providers=JETSON.onnxruntime_providers, gpu_name="H100",
                         tensorrt_missing="tensorrt is not installed: ...")


def test_a_gqa_package_runs_on_onnxruntime_cuda_and_is_absent_on_tensorrt(built, tmp_path):
    package = load_package(built[2] / "packages" / "llm-gqa-int4")
    gqa = place("onnxruntime-cuda", package, JETSON, tmp_path)
    assert gqa.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert "device memory" in gqa.reason
    with pytest.raises(Absent, match="--attention gqa"):
        place("tensorrt", package, JETSON, tmp_path)
    standard = load_package(built[2] / "packages" / "llm-standard-fp32")
    cuda = place("onnxruntime-cuda", standard, JETSON, tmp_path)
    assert cuda.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (cuda.path, cuda.backend) == (standard.root, "onnxruntime")


def test_require_names_what_the_box_lacks():
    require("gpu", JETSON)
    require("tensorrt", JETSON)
    require("gpu", GPU_NO_TRT)
    with pytest.raises(BackendUnavailable, match=r"^--require tensorrt: tensorrt is not"):
        require("tensorrt", GPU_NO_TRT)
