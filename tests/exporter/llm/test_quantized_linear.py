"""The check's quantised linears: the codes held, the dequantised weight computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.llm.quantized_linear import BlockQuantizedLinear
from exporter.llm.weight_quant import EffectiveWeights, weight_quant_config


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_it_computes_with_the_dequantised_weight_and_holds_a_byte_per_weight(weights):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(40, 72)).astype(np.float32)  # K = 72: padded to 96 in blocks of 32
    k = rng.normal(size=(24, 72)).astype(np.float32)
    effective = EffectiveWeights({"q": q, "k": k}, weight_quant_config(weights, 32))
    effective.add("q", quantized=True, scale=0.25)  # a folded attention scale
    effective.add("k", quantized=True)
    bias = torch.from_numpy(rng.normal(size=64).astype(np.float32))
    linear = BlockQuantizedLinear.from_effective(effective, ["q", "k"], bias)
    reference = torch.nn.Linear(72, 64)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.concatenate([effective["q"], effective["k"]])))
        reference.bias.copy_(bias)
    x = torch.from_numpy(rng.normal(size=(2, 5, 72)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(linear(x), reference(x), atol=1e-5, rtol=1e-5)
    assert linear.codes.dtype == torch.int8 and linear.codes.shape == (64, 96)
    assert not np.allclose(effective["q"], q, atol=1e-4)  # the rounding is really there
