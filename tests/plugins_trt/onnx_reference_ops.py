"""The two e2edge plugin ops for onnx.reference.ReferenceEvaluator, built on the NumPy
references, so a lowered graph can be run on the CPU and compared with onnxruntime on the
original graph: that checks the lowering's wiring, attributes and bytes end to end."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_19

from plugins_trt import plugin_spec as spec
from plugins_trt import reference


class PackedTernaryMatMul(OpRun):
    op_domain = spec.ONNX_DOMAIN

    def _run(
        self,
        x,
        words,
        scales,
        K=None,
        N=None,
        block_size=None,
        activation_bits=None,
        plugin_namespace=None,
        plugin_version=None,
    ):
        lead = x.shape[:-1]
        y = reference.ternary_matmul(
            x.reshape(-1, K),
            words.reshape(N, -1),
            scales.reshape(N, -1),
            K,
            activation_bits=activation_bits,
        )
        return (y.reshape(*lead, N),)


class SparseFFN(OpRun):
    op_domain = spec.ONNX_DOMAIN

    def _run(
        self,
        x,
        w_gate,
        w_up,
        w_down,
        active,
        hidden=None,
        ffn=None,
        activation=None,
        active_mode=None,
        plugin_namespace=None,
        plugin_version=None,
    ):
        name = spec.FFN_ACTIVATIONS[activation]
        flat = x.reshape(-1, hidden)
        if active_mode == spec.FFN_MODE_PREFIX:
            y = reference.sparse_ffn(flat, w_gate, w_up, w_down, name, width=int(active[0]))
        else:
            y = reference.sparse_ffn(flat, w_gate, w_up, w_down, name, indices=active)
        return (y.reshape(x.shape).astype(x.dtype),)


class Gelu(OpRun):
    """com.microsoft::Gelu (exact, erf) as the ViT export writes it; TensorRT imports it as
    the standard Gelu, the reference evaluator needs it spelled out."""

    op_domain = "com.microsoft"

    def _run(self, x, approximate=None):
        from math import erf, sqrt

        cdf = np.vectorize(lambda v: 0.5 * (1.0 + erf(v / sqrt(2.0))))(x.astype(np.float64))
        return ((x * cdf).astype(x.dtype),)


PLUGIN_OPS = [PackedTernaryMatMul, SparseFFN, Gelu]


class DequantizeLinear(DequantizeLinear_19):
    """onnx's reference has no DequantizeLinear before opset 19; opset 13's (the ViT
    packages use opset 17) computes the same for uint8 per-axis inputs."""

    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis=1, **newer_attributes):
        return super()._run(x, x_scale, x_zero_point, axis=axis)


def run_lowered(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[*PLUGIN_OPS, DequantizeLinear]).run(None, feeds)
