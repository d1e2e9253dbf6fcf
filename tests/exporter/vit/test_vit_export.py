"""Export: real tiny checkpoints to real packages, checked by onnxruntime against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from vit_fixtures import make_tiny_vit_checkpoint, write_synthetic_npz

from exporter.errors import ExportVerificationError
from exporter.vit.checkpoint import load_checkpoint
from exporter.vit.medmnist import batches, load_medmnist
from exporter.vit.onnx_export import ExportOptions, export_vit, verify_against_torch
from exporter.vit.onnx_graph import block_size_for, build_vit_onnx
from runtime.package import load_package
from runtime.vision.ternary_exec import unpack_ternary


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_synthetic_npz(tmp_path_factory.mktemp("data") / "synthmnist.npz", channels=3)


@pytest.fixture(scope="module", params=["teacher", "ffn", "all"])
def checkpoint_dir(request, npz, tmp_path_factory):
    role, ternary = ("teacher", "ffn") if request.param == "teacher" else ("student", request.param)
    out = tmp_path_factory.mktemp("ckpt") / f"tiny-{request.param}"
    return make_tiny_vit_checkpoint(out, npz, role=role, ternary=ternary)


def test_export_writes_a_verified_package(checkpoint_dir, npz, tmp_path):
    result = export_vit(checkpoint_dir, tmp_path / "pkg", ExportOptions(data=str(npz)))
    package = load_package(result.package)
    m = package.manifest
    assert m["kind"] == "vision" and set(m["files"]) == {"model.onnx", "labels.json"}
    assert json.loads(package.file("labels.json").read_text()) == ["0", "1", "2"]
    assert m["preprocessing"]["size"] == 8 and m["preprocessing"]["channels"] == 3
    v = m["verification"]
    assert v["images"] == 32 and v["top1_agreement"] == 1.0
    assert v["max_abs_logit_diff"] <= v["tolerance"]
    assert sum(m["weights"]["bytes_by_part"].values()) == m["weights"]["total_bytes"]

    graph = onnx.load(str(package.onnx_path)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    ternary = m["quantization"]["ternary"] if m["source"]["role"] == "student" else "none"
    assert len(nbits) == {"none": 0, "ffn": 2, "all": 4}[ternary]  # per block: qkv, o, fc1, fc2
    for node in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 2
        packed = next(i for i in graph.initializer if i.name == node.input[1])
        # (N, n_blocks, block/4) uint8: 2 bits a weight
        assert packed.data_type == onnx.TensorProto.UINT8
        assert list(packed.dims) == [attrs["N"], -(-attrs["K"] // attrs["block_size"]),
                                     attrs["block_size"] // 4]


def test_package_metrics_match_the_checkpoint(checkpoint_dir, npz, tmp_path):
    result = export_vit(checkpoint_dir, tmp_path / "pkg", ExportOptions(data=str(npz)))
    ckpt = load_checkpoint(checkpoint_dir)
    package_acc = result.manifest["verification"]["package_metrics"]["accuracy"]
    assert package_acc == pytest.approx(ckpt.record["metrics"]["test"]["accuracy"])


@pytest.mark.parametrize("checkpoint_dir", ["ffn", "all"], indirect=True)
@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_unpacked_execution_computes_the_same_logits(checkpoint_dir, npz, mode):
    ckpt = load_checkpoint(checkpoint_dir)
    model, _ = build_vit_onnx(ckpt.model)
    packed = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    unpacked_model = unpack_ternary(model, mode)
    assert not any(n.op_type == "MatMulNBits" for n in unpacked_model.graph.node)
    unpacked = ort.InferenceSession(unpacked_model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    pixels, _ = next(batches(load_medmnist(npz).splits["test"], ckpt.preprocessing, 32))
    a = packed.run(None, {"pixel_values": pixels})[0]
    b = unpacked.run(None, {"pixel_values": pixels})[0]
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_verification_fails_on_a_wrong_graph(npz, tmp_path):
    """A ternary scale off by 2x (a plausible export bug) must not pass."""
    ckpt_dir = make_tiny_vit_checkpoint(tmp_path / "ckpt", npz, ternary="all", epochs=2)
    ckpt = load_checkpoint(ckpt_dir)
    model, _ = build_vit_onnx(ckpt.model)
    scales = next(i for i in model.graph.initializer if i.name.endswith("ffn.fc2.scales"))
    scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales) * 2, scales.name))
    with pytest.raises(ExportVerificationError, match="logit|top-1"):
        verify_against_torch(model.SerializeToString(), ckpt, npz)


def test_block_size_never_pads_beyond_the_next_power_of_two():
    assert block_size_for(64, 128) == 64
    assert block_size_for(512, 128) == 128
    assert block_size_for(48, 128) == 64
    assert block_size_for(3, 128) == 16


def test_export_refuses_without_data(checkpoint_dir, tmp_path):
    ckpt = load_checkpoint(checkpoint_dir)
    ckpt_copy = tmp_path / "ckpt"
    from exporter.vit.checkpoint import save_checkpoint

    ckpt.record = {}
    save_checkpoint(ckpt, ckpt_copy)
    with pytest.raises(ValueError, match="--data"):
        export_vit(ckpt_copy, tmp_path / "pkg", ExportOptions())
    assert not (tmp_path / "pkg").exists()


def test_torch_and_onnx_agree_on_random_weights():
    """Large random weights make every op matter; fp32 graphs agree to ~1e-6."""
    import dataclasses

    from exporter.vit.config import ViTConfig
    from exporter.vit.model import ViT

    torch.manual_seed(0)
    for kv in (1, 2, 4):
        cfg = ViTConfig(image_size=8, patch_size=2, width=32, depth=2, n_heads=4,
                        n_kv_heads=kv, ffn_width=48, n_classes=4, channels=3)
        model = ViT(dataclasses.replace(cfg)).eval()
        for p in model.parameters():
            p.data.normal_(0, 0.3)
        x = torch.randn(3, 3, 8, 8)
        with torch.no_grad():
            ref = model(x).numpy()
        onnx_model, _ = build_vit_onnx(model)
        sess = ort.InferenceSession(onnx_model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        out = sess.run(None, {"pixel_values": x.numpy()})[0]
        np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
        # Query heads sharing a K/V head are stacked as rows: one score GEMM per K/V head,
        # and with one K/V head only k is transposed (plus the patch embedding's tokens).
        transposes = sum(node.op_type == "Transpose" for node in onnx_model.graph.node)
        assert transposes == 1 + cfg.depth * (1 if kv == 1 else 4)
