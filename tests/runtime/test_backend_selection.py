"""choose_backend: every `backend:` value against the boxes it meets (a Jetson with an
engine, a GPU box with onnxruntime-gpu, a CPU box like this one), for LLM and vision
packages. The host is written out, so no GPU is needed; engines are real engine files
with their sidecars (the plan bytes are not read by the choice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins_trt import engine_files
from runtime.backends.selection import BackendChoice, BackendHost, choose_backend
from runtime.config import ModelConfig
from runtime.errors import BackendUnavailable, PackageError
from runtime.package import ModelPackage

SHA = "ab" * 32
ORIN = BackendHost(  # JetPack 6 with onnxruntime-gpu and TensorRT 10.3
    onnxruntime_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                           "CPUExecutionProvider"),
    gpu_name="Orin", engine_target=("orin", 87, "10.3.0"))
GPU_NO_TRT = BackendHost(
    onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    gpu_name="NVIDIA H100 80GB HBM3", tensorrt_missing="tensorrt is not installed: ...")
CPU_BOX = BackendHost(  # this machine
    onnxruntime_providers=("AzureExecutionProvider", "CPUExecutionProvider"),
    gpu_missing="no usable CUDA driver or GPU on this machine",
    tensorrt_missing="tensorrt is not installed: ...")
GPU_BUILD_NO_GPU = BackendHost(
    onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    gpu_missing="no CUDA GPU on this machine", tensorrt_missing="no CUDA GPU on this machine")


def _package(root: Path, kind: str, kv_mode: str | None = None) -> ModelPackage:
    manifest = {"kind": kind, "name": "m", "files": {"model.onnx": {"sha256": SHA}}}
    if kv_mode is not None:
        manifest["llm"] = {"kv_cache": {"mode": kv_mode}}
    root.mkdir(parents=True, exist_ok=True)
    return ModelPackage(root=root, manifest=manifest)


def _with_orin_engine(package: ModelPackage) -> ModelPackage:
    sidecar = {"tensorrt_version": "10.3.0", "compute_capability": 87, "gpu": "Orin",
               "model_onnx_sha256": SHA}
    engine_files.write_engine(package.root, "orin-sm87-trt10.3.0", b"plan", sidecar)
    return package


def _model(backend: str, providers: tuple[str, ...] = ()) -> ModelConfig:
    return ModelConfig(name="m", path=Path("/unused"), backend=backend, providers=providers)


@pytest.fixture(params=["llm", "vision"])
def package(request, tmp_path) -> ModelPackage:
    kv_mode = "concat" if request.param == "llm" else None  # --attention standard
    return _package(tmp_path / "pkg", request.param, kv_mode)


# ---- auto --------------------------------------------------------------------------------
def test_auto_takes_the_engine_that_matches_this_gpu_and_tensorrt(package):
    choice = choose_backend(_model("auto"), _with_orin_engine(package), ORIN)
    assert choice == BackendChoice(
        "tensorrt", (), "auto: engine orin-sm87-trt10.3.0.plan matches this GPU (Orin) and "
                        "TensorRT 10.3.0")


def test_auto_without_a_matching_engine_takes_onnxruntime_cuda_when_it_sees_a_gpu(package):
    choice = choose_backend(_model("auto"), package, ORIN)
    assert (choice.name, choice.providers) == (
        "onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert "has no TensorRT engine" in choice.reason
    assert "onnxruntime-gpu sees Orin" in choice.reason
    other = choose_backend(_model("auto"), package, GPU_NO_TRT)
    assert other.name == "onnxruntime" and "tensorrt is not installed" in other.reason


def test_auto_on_a_cpu_box_takes_the_cpu_provider_and_says_why(package):
    choice = choose_backend(_model("auto"), package, CPU_BOX)
    assert (choice.name, choice.providers) == ("onnxruntime", ("CPUExecutionProvider",))
    assert "tensorrt is not installed" in choice.reason
    assert "onnxruntime-gpu is not installed" in choice.reason
    no_gpu = choose_backend(_model("auto"), package, GPU_BUILD_NO_GPU)
    assert no_gpu.providers == ("CPUExecutionProvider",)
    assert "onnxruntime-gpu is installed but sees no GPU (no CUDA GPU" in no_gpu.reason


def test_the_host_says_why_onnxruntime_cuda_cannot_run_for_every_caller():
    assert CPU_BOX.onnxruntime_cuda_missing() == (
        "onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
    assert GPU_BUILD_NO_GPU.onnxruntime_cuda_missing() == (
        "onnxruntime-gpu is installed but sees no GPU (no CUDA GPU on this machine)")
    assert BackendHost(onnxruntime_missing="no onnxruntime").onnxruntime_cuda_missing() == (
        "no onnxruntime")
    assert ORIN.onnxruntime_cuda_missing() is None


def test_auto_keeps_configured_providers_for_its_onnxruntime_fallback(package):
    choice = choose_backend(_model("auto", ("CPUExecutionProvider",)), package, ORIN)
    assert choice.providers == ("CPUExecutionProvider",) and "configured" in choice.reason


def test_auto_with_no_backend_at_all_says_both_reasons(package):
    host = BackendHost(onnxruntime_missing="onnxruntime cannot be imported",
                       tensorrt_missing="tensorrt is not installed")
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed.*onnxruntime cannot"):
        choose_backend(_model("auto"), package, host)


# ---- tensorrt and onnxruntime as configured ----------------------------------------------
def test_tensorrt_runs_the_engine_or_names_what_is_missing(package):
    assert choose_backend(_model("tensorrt"), _with_orin_engine(package), ORIN).name == "tensorrt"
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed"):
        choose_backend(_model("tensorrt"), package, CPU_BOX)
    h100 = BackendHost(engine_target=("nvidia-h100-80gb-hbm3", 90, "10.3.0"), gpu_name="H100")
    with pytest.raises(BackendUnavailable, match="none for nvidia-h100-80gb-hbm3-sm90-trt10.3.0"):
        choose_backend(_model("tensorrt"), package, h100)


def test_onnxruntime_defaults_differ_for_llm_and_vision(tmp_path):
    llm = choose_backend(_model("onnxruntime"), _package(tmp_path / "l", "llm", "concat"), ORIN)
    assert llm.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                             "CPUExecutionProvider")
    vision = choose_backend(_model("onnxruntime"), _package(tmp_path / "v", "vision"), ORIN)
    assert vision.providers == ("CPUExecutionProvider",)
    assert "unless the config names providers" in vision.reason


def test_onnxruntime_refuses_a_provider_this_box_lacks(package):
    with pytest.raises(BackendUnavailable, match=r"\['CUDAExecutionProvider'\] not available"):
        choose_backend(_model("onnxruntime", ("CUDAExecutionProvider",)), package, CPU_BOX)


# ---- --attention gqa packages: one KV buffer, in host or device memory -------------------
@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_a_gqa_package_takes_onnxruntime_cuda_with_the_buffer_in_device_memory(tmp_path,
                                                                               backend):
    package = _with_orin_engine(_package(tmp_path / "gqa", "llm", "shared_buffer"))
    choice = choose_backend(_model(backend), package, ORIN)  # an engine is never used for it
    assert (choice.name, choice.providers) == ("onnxruntime", ("CUDAExecutionProvider",
                                                               "CPUExecutionProvider"))
    assert "onnxruntime-gpu sees Orin" in choice.reason and "device memory" in choice.reason


def test_a_gqa_package_given_providers_auto_chooses_as_with_none(tmp_path):
    package = _package(tmp_path / "gqa", "llm", "shared_buffer")
    for host in (ORIN, CPU_BOX):
        chosen = choose_backend(_model("onnxruntime", ("auto",)), package, host)
        assert chosen == choose_backend(_model("onnxruntime"), package, host)
    assert choose_backend(_model("auto", ("auto",)), package, ORIN).providers[0] == \
        "CUDAExecutionProvider"


def test_a_gqa_package_stays_on_the_cpu_where_the_gpu_path_lacks_a_part(tmp_path):
    package = _package(tmp_path / "gqa", "llm", "shared_buffer")
    here = choose_backend(_model("auto"), package, CPU_BOX)
    assert here.providers == ("CPUExecutionProvider",)
    assert "onnxruntime-gpu is not installed" in here.reason and "host memory" in here.reason
    no_copy = BackendHost(onnxruntime_providers=ORIN.onnxruntime_providers, gpu_name="Orin",
                          cuda_python_missing="cuda-python is not installed")
    fallback = choose_backend(_model("auto"), package, no_copy)
    assert fallback.providers == ("CPUExecutionProvider",)
    assert "cuda-python is not installed" in fallback.reason


def test_a_gqa_package_with_configured_providers(tmp_path):
    package = _package(tmp_path / "gqa", "llm", "shared_buffer")
    cuda = choose_backend(_model("onnxruntime", ("CUDAExecutionProvider",)), package, ORIN)
    assert cuda.providers == ("CUDAExecutionProvider",) and "device memory" in cuda.reason
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        choose_backend(_model("onnxruntime", ("CUDAExecutionProvider",)), package, CPU_BOX)


def test_a_gqa_package_refuses_tensorrt_with_the_fix(tmp_path):
    package = _package(tmp_path / "gqa", "llm", "shared_buffer")
    with pytest.raises(PackageError, match="--attention standard"):
        choose_backend(_model("tensorrt"), package, ORIN)
    with pytest.raises(PackageError, match="CUDA or CPU provider, not"):
        choose_backend(_model("onnxruntime", ("TensorrtExecutionProvider",)), package, ORIN)


# ---- the host, from host facts -------------------------------------------------------------
def test_the_host_is_read_from_host_facts():
    facts = {
        "gpu": {"present": True, "name": "Orin", "sm": 87, "slug": "orin",
                "source": "CUDA driver (cuda-python)"},
        "tensorrt": {"available": True, "version": "10.3.0"},
        "onnxruntime": {"available": True, "providers": ["CPUExecutionProvider"]},
    }
    host = BackendHost.from_facts(facts)
    assert host.engine_target == ("orin", 87, "10.3.0") and host.tensorrt_missing is None
    nvml_only = {**facts, "gpu": {**facts["gpu"], "source": "NVML"}}
    assert BackendHost.from_facts(nvml_only).engine_target is None
    no_trt = {**facts, "tensorrt": {"available": False, "reason": "tensorrt is not installed"}}
    assert BackendHost.from_facts(no_trt).tensorrt_missing == "tensorrt is not installed"


def test_this_machine_probes_without_raising():
    host = BackendHost.probe()
    assert "CPUExecutionProvider" in host.onnxruntime_providers
    assert host.engine_target is not None or host.tensorrt_missing
