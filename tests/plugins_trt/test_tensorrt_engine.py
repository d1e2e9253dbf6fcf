"""End to end on TensorRT: build engines with the e2edge plugins, run them through the
TensorRT backend, compare with onnxruntime on the original package.

Needs tensorrt >= 10, cuda-python and a GPU (a Jetson with JetPack 6, or a workstation);
skipped elsewhere, which includes this project's CI and its GPU check machines."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
from package_fixtures import make_ternary_package
from tensorrt_probe import tensorrt_unusable

from plugins_trt.plugin_spec import FFN_KEEP_INPUT


def _missing() -> str | None:
    if tensorrt_unusable() is not None:
        return tensorrt_unusable()
    from plugins_trt import cuda_driver
    from runtime.errors import BackendUnavailable

    try:
        cuda_driver.gpu_info(0)
    except BackendUnavailable as e:
        return str(e)
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _ort_run(package_dir, feeds):
    session = ort.InferenceSession(
        str(package_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_ternary_engine_matches_onnxruntime(tmp_path):
    from plugins_trt.engine_builder import BuildOptions, build_engine
    from runtime.backends.tensorrt_backend import TensorRTBackend

    package = make_ternary_package(tmp_path / "pkg")
    result = build_engine(package, BuildOptions(precision="fp32", max_batch=4))
    assert result.plan.parent == package / "engines" and result.plan.suffix == ".plan"
    assert result.sidecar["lowering"]["packed_ternary_matmul"] == 1
    backend = TensorRTBackend(package)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        pixels = rng.standard_normal((batch, 64)).astype(np.float32)
        want = _ort_run(package, {"pixels": pixels})["logits"]
        got = backend.run({"pixels": pixels})["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    backend.close()


def test_llm_engine_with_sparse_ffn_decodes_like_onnxruntime(tiny_llama_package_standard, tmp_path):
    from plugins_trt.engine_builder import BuildOptions, build_engine
    from runtime.backends.tensorrt_backend import DeviceTensor, TensorRTBackend
    from runtime.package import load_package

    package = shutil.copytree(tiny_llama_package_standard, tmp_path / "pkg")
    build_engine(package, BuildOptions(precision="fp32", max_seq=64, sparse_ffn=True))
    backend = TensorRTBackend(package)
    llm = load_package(package).manifest["llm"]
    ids = np.array([[5, 17, 42, 7]], np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((1, 4), np.int64),
        "position_ids": np.arange(4, dtype=np.int64)[None],
    }
    for i in range(llm["num_layers"]):
        for part in ("key", "value"):
            feeds[f"past_key_values.{i}.{part}"] = np.zeros(
                (1, llm["num_kv_heads"], 0, llm["head_dim"]), np.float32
            )
    want = _ort_run(package, feeds)
    presents = [n for n in backend.output_names if n.startswith("present.")]
    got = backend.run(feeds, keep=presents)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-3, atol=1e-3)
    assert all(isinstance(got[n], DeviceTensor) for n in presents)

    # one decode step, the KV cache fed back from the GPU without a copy
    step = {
        "input_ids": np.array([[int(want["logits"][0, -1].argmax())]], np.int64),
        "attention_mask": np.ones((1, 5), np.int64),
        "position_ids": np.array([[4]], np.int64),
    }
    past = {n.replace("present.", "past_key_values."): got[n] for n in presents}
    decoded = backend.run({**step, **past})
    host_past = {n: backend.to_numpy(t) for n, t in past.items()}
    want_step = _ort_run(package, {**step, **host_past})
    np.testing.assert_allclose(decoded["logits"], want_step["logits"], rtol=1e-3, atol=1e-3)

    half = backend.run({**step, **past, FFN_KEEP_INPUT: np.array([0.5], np.float32)})
    assert np.abs(half["logits"] - decoded["logits"]).max() > 1e-4  # a narrower FFN
    backend.close()
