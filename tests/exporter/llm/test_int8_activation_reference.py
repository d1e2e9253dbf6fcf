"""The PyTorch emulation of MatMulNBits' int8 activations against onnxruntime itself."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.llm.int8_activation_reference import fake_quantize_blocks, quantize_linear_inputs
from exporter.llm.weight_quant import WeightQuantConfig, dequantize_blockwise, quantize_blockwise


def _matmulnbits(packed, scales, k, n, bits, block, level):
    node = helper.make_node("MatMulNBits", ["a", "w", "s"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=level)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales.reshape(-1), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k, rows", [(256, 1), (96, 5), (80, 3)])  # 80: a padded last block
def test_emulation_reproduces_onnxruntime_accuracy_level_4(bits, k, rows):
    rng = np.random.default_rng(k + rows + bits)
    n, block = 64, 32
    weight = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    packed, scales = quantize_blockwise(weight, WeightQuantConfig(bits, block, 4))
    dequantised = dequantize_blockwise(packed, scales, k, bits)
    a = (rng.standard_normal((rows, k)) * 3).astype(np.float32)
    a[0, :7] = 0.0  # a block that is partly zero, and one row with an all-zero block below
    if rows > 1:
        a[1, :block] = 0.0
    ort_out = _matmulnbits(packed, scales, k, n, bits, block, 4).run(None, {"a": a})[0]
    emulated = fake_quantize_blocks(torch.from_numpy(a), block).numpy() @ dequantised.T
    plain = a @ dequantised.T
    scale = np.abs(ort_out).max()
    assert np.abs(ort_out - emulated).max() <= 1e-5 * scale
    assert np.abs(ort_out - plain).max() > 1e-3 * scale  # int8 inputs really differ


def test_only_the_named_linears_see_int8_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False),
                                torch.nn.Linear(64, 8, bias=False))
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = model(x)
        assert quantize_linear_inputs(model, ["1.weight", "embed.weight"], 32) == 1
        after = model(x)
        hidden = model[0](x)
        expected = fake_quantize_blocks(hidden, 32) @ model[1].weight.T
    torch.testing.assert_close(after, expected)
    assert not torch.equal(before, after)
