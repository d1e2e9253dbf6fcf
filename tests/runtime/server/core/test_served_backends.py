"""The daemon serves each model on the backend chosen for it and says why (GetModel)."""

from __future__ import annotations

import pytest
from vision_package import tiny_vision_package

from runtime.client import EdgeClient
from runtime.config import DaemonConfig, ModelConfig
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.in_process import DaemonThread

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_llama_package):
    package = tiny_vision_package(tmp_path_factory)
    config = DaemonConfig(listen="127.0.0.1:0", models=(
        ModelConfig("vision-auto", package, backend="auto"),
        ModelConfig("vision-trt", package, backend="tensorrt"),
        ModelConfig("vision-cuda", package, providers=("CUDAExecutionProvider",)),
        ModelConfig("llm-auto", tiny_llama_package, backend="auto"),
        ModelConfig("llm-cuda", tiny_llama_package, providers=("CUDAExecutionProvider",)),
    ))
    with DaemonThread(config, grace_s=0) as d:
        yield d


@pytest.fixture
def models(daemon):
    with EdgeClient(daemon.target) as client:
        return {m.name: m for m in client.list_models()}


def test_auto_picks_onnxruntime_here_and_says_why(models):
    vision, llm = models["vision-auto"], models["llm-auto"]
    assert vision.state == pb.MODEL_STATE_READY and vision.backend == "onnxruntime"
    assert list(vision.execution_providers) == ["CPUExecutionProvider"]
    assert vision.backend_reason.startswith("auto: no TensorRT engine")
    assert "onnxruntime has no CUDA provider" in vision.backend_reason
    assert vision.execution.startswith("ternary as int8 codes")
    assert llm.state == pb.MODEL_STATE_READY and llm.backend == "onnxruntime"
    assert llm.backend_reason


def test_what_cannot_run_here_fails_with_one_line_naming_what_is_missing(models):
    trt = models["vision-trt"]
    assert trt.state == pb.MODEL_STATE_FAILED and "\n" not in trt.error
    assert "tensorrt" in trt.error.lower()
    cuda = models["vision-cuda"]
    assert cuda.state == pb.MODEL_STATE_FAILED
    assert "onnxruntime-gpu is not installed" in cuda.error
    llm = models["llm-cuda"]
    assert llm.state == pb.MODEL_STATE_FAILED and "onnxruntime-gpu is not installed" in llm.error
