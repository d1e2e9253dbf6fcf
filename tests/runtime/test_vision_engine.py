"""VisionEngine on a real exported tiny package, and the shared preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.errors import InvalidRequest, PackageError
from runtime.vision.preprocess import Preprocessing, preprocess, resize, resize_matrix


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pytest.importorskip("torch")
    from vit_fixtures import make_tiny_vit_checkpoint, write_synthetic_npz

    from exporter.vit.onnx_export import ExportOptions, export_vit

    root = tmp_path_factory.mktemp("engine")
    npz = write_synthetic_npz(root / "synthmnist.npz", channels=1)
    ckpt = make_tiny_vit_checkpoint(root / "ckpt", npz, ternary="all", epochs=4)
    export_vit(ckpt, root / "pkg", ExportOptions(data=str(npz)))
    return root / "pkg", np.load(npz)


def test_classify_raw_uint8_images(package):
    from runtime.vision.engine import VisionEngine

    path, data = package
    engine = VisionEngine(path)
    images, labels = data["test_images"], data["test_labels"][:, 0]
    assert engine.execution == "int8" and engine.labels == ["0", "1", "2"]
    predictions = engine.classify(images, top_k=2)
    assert len(predictions) == len(images)
    for p in predictions:
        assert p.probabilities.shape == (3,) and p.probabilities.sum() == pytest.approx(1.0)
        assert len(p.top) == 2 and p.top[0][1] >= p.top[1][1]
    accuracy = np.mean([int(p.top[0][0]) == y for p, y in zip(predictions, labels)])
    manifest = json.loads((path / "manifest.json").read_text())
    assert accuracy == pytest.approx(manifest["verification"]["package_metrics"]["accuracy"])
    assert accuracy > 0.8
    single = engine.classify(images[0])  # (H, W) grey, one image
    assert single[0].top[0][0] == predictions[0].top[0][0]


def test_execution_modes_agree(package):
    from runtime.vision.engine import VisionEngine

    path, data = package
    images = data["test_images"]
    probs = {mode: VisionEngine(path, execution=mode).probabilities(images)
             for mode in ("packed", "fp32", "fp16", "int8")}
    for mode in ("fp32", "int8"):
        np.testing.assert_allclose(probs[mode], probs["packed"], atol=1e-4)
    # fp16 rounds weights and activations to 11 significant bits: close, not exact.
    np.testing.assert_allclose(probs["fp16"], probs["packed"], atol=5e-3)
    assert (probs["fp16"].argmax(1) == probs["packed"].argmax(1)).mean() >= 0.95


def test_fp16_unpacking_keeps_no_2bit_or_fp32_weights(package):
    import onnx

    from runtime.vision.ternary_exec import unpack_ternary

    path, _ = package
    model = onnx.load(str(path / "model.onnx"))
    unpacked = unpack_ternary(model, "fp16")
    ops = {node.op_type for node in unpacked.graph.node}
    assert "MatMulNBits" in {node.op_type for node in model.graph.node}
    assert "MatMulNBits" not in ops and "Cast" in ops
    weights = [i for i in unpacked.graph.initializer if i.name.endswith("/unpacked_fp16")]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)


def test_auto_execution_is_int8_on_cpu_and_fp16_on_gpu_providers():
    from runtime.vision.engine import auto_execution

    assert auto_execution(["CPUExecutionProvider"]) == "int8"
    assert auto_execution(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "fp16"
    assert auto_execution(["TensorrtExecutionProvider", "CUDAExecutionProvider"]) == "fp16"


def test_rgb_input_is_converted_to_the_models_grey(package):
    from runtime.vision.engine import VisionEngine

    path, data = package
    engine = VisionEngine(path)
    grey = data["test_images"][:4]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_allclose(engine.probabilities(rgb), engine.probabilities(grey), atol=1e-5)


def test_bad_inputs_are_invalid_requests(package):
    from runtime.vision.engine import VisionEngine

    engine = VisionEngine(package[0])
    with pytest.raises(InvalidRequest, match="image"):
        engine.classify(np.zeros((2, 3, 8, 8, 1), np.uint8))
    with pytest.raises(InvalidRequest, match="image"):
        engine.classify(np.array([["a"]]))
    with pytest.raises(InvalidRequest, match="top_k"):
        engine.classify(np.zeros((8, 8), np.uint8), top_k=4)
    with pytest.raises(InvalidRequest, match="pixels"):
        engine.logits(np.zeros((1, 3, 8, 8), np.float32))


def test_engine_refuses_other_packages(package, tmp_path):
    from runtime.vision.engine import VisionEngine

    with pytest.raises(PackageError):
        VisionEngine(tmp_path)
    manifest = json.loads((package[0] / "manifest.json").read_text())
    with pytest.raises(ValueError, match="execution"):
        VisionEngine(package[0], execution="fast")
    assert manifest["kind"] == "vision"


def test_runtime_vision_does_not_import_torch():
    code = ("import sys, runtime.vision.engine, runtime.vision.ternary_exec; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("shape", "size"), [((1, 64, 64, 1), 28), ((3, 40, 52, 3), 32),
                                             ((2, 20, 12, 1), 48)])
def test_resize_is_the_separable_filter_on_every_plane(shape, size):
    """resize's matrix products against the plain sum over both axes, per plane."""
    batch = np.random.default_rng(3).random(shape, dtype=np.float32)
    rows, cols = resize_matrix(shape[1], size), resize_matrix(shape[2], size)
    expected = np.zeros((shape[0], size, size, shape[3]), dtype=np.float64)
    for b in range(shape[0]):
        for c in range(shape[3]):
            expected[b, :, :, c] = rows.astype(np.float64) @ batch[b, :, :, c] @ cols.T
    got = resize(batch, size)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_resize_matrix_identity_and_averaging():
    assert np.array_equal(resize_matrix(7, 7), np.eye(7, dtype=np.float32))
    down = resize_matrix(4, 2)  # each output pixel averages its 2x2 footprint, with neighbours
    np.testing.assert_allclose(down.sum(axis=1), 1.0, rtol=1e-6)
    up = resize_matrix(2, 4)
    np.testing.assert_allclose(up.sum(axis=1), 1.0, rtol=1e-6)
    flat = np.full((1, 5, 5, 1), 0.25, np.float32)
    spec = Preprocessing(size=11, channels=1, mean=(0.0,), std=(1.0,))
    np.testing.assert_allclose(preprocess(flat, spec), 0.25, rtol=1e-6)


def test_preprocess_normalises_and_orders_channels_first():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255
    spec = Preprocessing(size=4, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    out = preprocess(image, spec)
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, -2.0, -1.0])
    with pytest.raises(ValueError, match="mean and std"):
        Preprocessing(size=4, channels=3, mean=(0.5,), std=(0.5,))
