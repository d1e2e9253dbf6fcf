"""Ternary weights: packing round trips, MatMulNBits vs numpy, BitLinear's STE."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.vit.ternary import (
    BitLinear,
    absmean_ternary,
    activation_step,
    quantize_activations,
    quantize_weight,
)
from runtime.ternary_layout import dequantize, pack_ternary, unpack_codes

ODD_SHAPES = [(1, 1), (3, 17), (7, 37), (13, 129), (5, 200)]


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("block_size", [16, 64, 128])
def test_pack_unpack_round_trips_exactly(shape, block_size):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    ternary = rng.integers(-1, 2, size=shape).astype(np.int8)
    scale = rng.uniform(0.01, 1.0, size=shape[0]).astype(np.float32)
    packed, scales = pack_ternary(ternary, scale, block_size)
    n_blocks = -(-shape[1] // block_size)
    assert packed.shape == (shape[0], n_blocks, block_size // 4) and packed.dtype == np.uint8
    assert np.array_equal(unpack_codes(packed, shape[1]).astype(np.int8) - 2, ternary)
    expected = ternary.astype(np.float32) * scale[:, None]
    assert np.array_equal(dequantize(packed, scales, shape[1]), expected)


def _matmulnbits(k: int, n: int, block_size: int, packed, scales) -> ort.InferenceSession:
    node = helper.make_node(
        "MatMulNBits", ["X", "W", "S"], ["Y"], domain="com.microsoft",
        K=k, N=n, bits=2, block_size=block_size, accuracy_level=0,
    )
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(packed, "W"), numpy_helper.from_array(scales.reshape(-1), "S")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("k,n,block_size", [(37, 5, 16), (64, 48, 64), (200, 33, 128)])
def test_matmulnbits_bits2_equals_numpy_reference(k, n, block_size):
    rng = np.random.default_rng(k)
    ternary = rng.integers(-1, 2, size=(n, k))
    scale = rng.uniform(0.05, 0.5, size=n).astype(np.float32)
    packed, scales = pack_ternary(ternary, scale, block_size)
    x = rng.standard_normal((9, k)).astype(np.float32)
    y = _matmulnbits(k, n, block_size, packed, scales).run(None, {"X": x})[0]
    reference = x @ (ternary * scale[:, None]).astype(np.float32).T
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)


def test_absmean_ternary_values_and_scale():
    weight = torch.randn(16, 24)
    ternary, scale = absmean_ternary(weight)
    assert set(ternary.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert scale.item() == pytest.approx(weight.abs().mean().item())
    assert torch.equal(quantize_weight(weight), ternary * scale)
    # weights within half a scale of zero become 0, large ones saturate at +-1
    assert torch.equal(ternary == 0, (weight / scale).abs() < 0.5)


def test_activations_sit_on_a_per_token_int8_grid():
    x = torch.randn(2, 5, 32) * torch.linspace(0.1, 10, 5)[None, :, None]
    q = quantize_activations(x)
    codes = q / activation_step(x)
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.abs().max() <= 127.0 + 1e-3
    assert torch.allclose(codes.abs().amax(-1), torch.full((2, 5), 127.0), atol=1e-3)
    assert (q - x).abs().max() <= (x.abs().amax(-1, keepdim=True) / 254).max() + 1e-6


def test_ste_passes_gradients_straight_through():
    torch.manual_seed(0)
    layer = BitLinear(12, 6, bias=False)
    x = torch.randn(4, 12, requires_grad=True)
    upstream = torch.randn(4, 6)
    layer(x).backward(upstream)
    w_q, x_q = quantize_weight(layer.weight).detach(), quantize_activations(x).detach()
    # the gradients of F.linear at the quantised point, as if quantisation were identity
    assert torch.allclose(layer.weight.grad, upstream.T @ x_q, atol=1e-5)
    assert torch.allclose(x.grad, upstream @ w_q, atol=1e-5)
    assert layer.weight.grad.abs().sum() > 0
