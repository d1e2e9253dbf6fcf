"""The NumPy references (the kernels' specification) against straightforward computations:
a bit-by-bit decode of the packed bytes, then an ordinary matmul; a dense FFN."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from plugins_trt import reference
from runtime.activation_grid import EPS, LEVELS, quantize_per_token
from runtime.ternary_layout import pack_ternary


def _naive_dequantize(
    packed: np.ndarray, scales: np.ndarray, k: int, block_size: int
) -> np.ndarray:
    """Decode one weight at a time from the layout's definition, independent of the module."""
    n = packed.shape[0]
    flat = packed.reshape(n, -1)
    scales = scales.reshape(n, -1)
    w = np.zeros((n, k))
    for row in range(n):
        for col in range(k):
            code = (int(flat[row, col // 4]) >> (2 * (col % 4))) & 3
            w[row, col] = (code - 2) * scales[row, col // block_size]
    return w


@pytest.mark.parametrize(("n", "k", "block_size"), [(7, 45, 16), (5, 64, 64), (3, 130, 32)])
def test_ternary_matmul_is_dequantise_then_matmul(n, k, block_size):
    rng = np.random.default_rng(n * k)
    ternary = rng.integers(-1, 2, size=(n, k))
    packed, scales = pack_ternary(ternary, (rng.random(n) + 0.1).astype(np.float32), block_size)
    scales = scales * (1 + rng.random(scales.shape).astype(np.float32))  # distinct per block
    x = rng.standard_normal((4, k)).astype(np.float32)
    want = x.astype(np.float64) @ _naive_dequantize(packed, scales, k, block_size).T
    _check_against(reference.ternary_matmul, x, packed, scales, k, want, atol=1e-6)


def _check_against(matmul, x, packed, scales, k, want, atol):
    """matmul's float32 result is `want`, also from the int32 word view the plugin gets."""
    got = matmul(x, packed, scales, k)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol)
    words = reference.packed_to_words(packed)
    np.testing.assert_array_equal(matmul(x, words, scales, k), got)


def test_words_are_the_same_bytes_with_16_codes_each():
    rng = np.random.default_rng(0)
    ternary = rng.integers(-1, 2, size=(3, 64))
    packed, _ = pack_ternary(ternary, np.float32(1), 32)
    words = reference.packed_to_words(packed)
    assert words.dtype == np.dtype("<i4") and words.shape == (3, 4)
    assert words.tobytes() == packed.tobytes()
    unsigned = words.view(np.uint32)
    for j in range(4):
        for i in range(16):
            code = (int(unsigned[1, j]) >> (2 * i)) & 3
            assert code - 2 == ternary[1, 16 * j + i]
    np.testing.assert_array_equal(reference.words_to_packed(words, 3, 32), packed)


def test_fp16_activations_keep_their_dtype():
    rng = np.random.default_rng(1)
    packed, scales = pack_ternary(rng.integers(-1, 2, size=(8, 32)), np.float32(0.5), 16)
    x = rng.standard_normal((2, 32)).astype(np.float16)
    y = reference.ternary_matmul(x, packed, scales, 32)
    assert y.dtype == np.float16
    want = x.astype(np.float64) @ _naive_dequantize(packed, scales, 32, 16).T
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=2e-3, atol=2e-3)


def test_per_token_int8_quantisation():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 70)).astype(np.float32) * np.array([[1], [10], [0.01], [3], [0]])
    q, scale = reference.quantize_int8_per_token(x)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(np.abs(q[:4]).max(axis=1), 127)  # absmax maps to +-127
    assert not q[4].any() and scale[4] == 0  # an all-zero token stays zero
    err = np.abs(q * scale[:, None] - x)
    assert (err <= scale[:, None] / 2 + 1e-7).all()  # rounding to nearest


def test_int8_group_permutation_feeds_dp4a_lanes():
    q = np.arange(-20, 12, dtype=np.int8).reshape(1, 32)
    permuted = reference.permute_int8_groups(q[:, :30], 32)  # 30 real values, 2 pad
    lanes = permuted.view("<i4").reshape(2, 4)  # two groups of four int32 lanes
    for group in range(2):
        for i in range(4):
            want = [
                q[0, 16 * group + 4 * b + i] if 16 * group + 4 * b + i < 30 else 0 for b in range(4)
            ]
            got = np.frombuffer(lanes[group, i].tobytes(), dtype=np.int8).tolist()
            assert got == want


def test_w2a8_stays_within_the_quantisation_bound():
    rng = np.random.default_rng(3)
    k, n = 256, 16
    packed, scales = pack_ternary(rng.integers(-1, 2, size=(n, k)), np.float32(0.05), 64)
    x = rng.standard_normal((3, k)).astype(np.float32)
    exact = reference.ternary_matmul(x, packed, scales, k).astype(np.float64)
    w2a8 = reference.ternary_matmul(x, packed, scales, k, activation_bits=8).astype(np.float64)
    _, token_scale = reference.quantize_int8_per_token(x)
    bound = k * 0.05 * token_scale[:, None] / 2  # |w| <= scale, per-element error <= step / 2
    assert (np.abs(w2a8 - exact) <= bound).all()
    assert np.abs(w2a8 - exact).max() > 0  # it is a different computation


# ---- sparse gated FFN -------------------------------------------------------------------------
def _ffn_weights(rng, f=40, d=24):
    return [rng.standard_normal((f, d)) / math.sqrt(d) for _ in range(3)]


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_full_width_sparse_ffn_is_the_dense_gated_ffn(activation):
    rng = np.random.default_rng(4)
    gate, up, down = _ffn_weights(rng)
    x = rng.standard_normal((3, 24))
    g, u = x @ gate.T, x @ up.T
    if activation == "silu":
        act = g * (1 / (1 + np.exp(-g)))
    else:
        act = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
    want = (act * u) @ down
    np.testing.assert_allclose(
        reference.sparse_ffn(x, gate, up, down, activation), want, rtol=1e-12
    )


def test_prefix_width_and_index_list_select_the_same_neurons():
    rng = np.random.default_rng(5)
    gate, up, down = _ffn_weights(rng)
    x = rng.standard_normal((2, 24))
    prefix = reference.sparse_ffn(x, gate, up, down, "silu", width=13)
    listed = reference.sparse_ffn(x, gate, up, down, "silu", indices=np.arange(13)[::-1])
    np.testing.assert_allclose(prefix, listed, rtol=1e-12)
    # the ids a kernel skips: out of range
    skipped = reference.sparse_ffn(x, gate, up, down, "silu", indices=np.array([0, 40, -1, 12]))
    np.testing.assert_allclose(
        skipped, reference.sparse_ffn(x, gate, up, down, "silu", indices=np.array([0, 12]))
    )
    assert not reference.sparse_ffn(x, gate, up, down, "silu", width=0).any()


def test_neuron_order_does_not_change_the_full_ffn():
    rng = np.random.default_rng(6)
    gate, up, down = _ffn_weights(rng)
    x = rng.standard_normal((2, 24))
    perm = rng.permutation(40)
    np.testing.assert_allclose(
        reference.sparse_ffn(x, gate[perm], up[perm], down[perm], "gelu_tanh"),
        reference.sparse_ffn(x, gate, up, down, "gelu_tanh"),
        rtol=1e-10,
    )


# ---- the package's int8 activation grid and the W2A8 tensor-core reference -------------------
def _activations(rng, m=6, k=70) -> np.ndarray:
    x = rng.standard_normal((m, k)).astype(np.float32)
    x *= np.array([[1], [10], [0.01], [3], [0], [1e-7]], dtype=np.float32)[:m]
    return x  # an all-zero token and one below the step's floor among them


def test_package_grid_is_bitlinears_forward():
    torch = pytest.importorskip("torch")
    from exporter.vit.ternary import quantize_activations

    x = _activations(np.random.default_rng(7))
    q, step = quantize_per_token(x)
    want = quantize_activations(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(q.astype(np.float32) * step[:, None], want)


def test_package_grid_is_the_exported_quantize_linear():
    """The exporter's own QDQ subgraph, run by onnxruntime, lands on the same grid."""
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from exporter.vit.onnx_graph import _quantize_activations, _VitGraph

    b = _VitGraph()
    dq = _quantize_activations(b, "x", "layer")
    model = b.model(
        "grid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 70])],
        [helper.make_tensor_value_info(dq, TensorProto.FLOAT, ["m", 70])],
        contrib=False,
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _activations(np.random.default_rng(8))
    q, step = quantize_per_token(x)
    (got,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(got, q.astype(np.float32) * step[:, None])


def test_package_grid_rounds_half_to_even_and_floors_the_step():
    x = np.array([[127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5]], dtype=np.float32)  # step 1 exactly
    q, step = quantize_per_token(x)
    assert step.tolist() == [1.0]
    assert q.tolist() == [[127, 2, 4, -2, 0, 0, 2]]
    q, step = quantize_per_token(np.full((1, 4), 1e-7, np.float32))  # below the floor:
    assert step[0] == np.float32(np.float32(1e-5) / np.float32(127))  # not blown up to 127
    assert q.tolist() == [[1, 1, 1, 1]]


def test_kernel_source_uses_the_same_grid_constants():
    text = (Path(__file__).parents[2] / "plugins_trt/kernels/ternary_mma.cu").read_text()
    defines = dict(re.findall(r"^#define (ACT_\w+) ([\d.e+-]+)f$", text, re.M))
    assert float(defines["ACT_EPS"]) == EPS and float(defines["ACT_LEVELS"]) == LEVELS


@pytest.mark.parametrize(("m", "n", "k", "block_size"), [(5, 7, 45, 16), (3, 4, 200, 64)])
def test_block_integer_sums_are_exact(m, n, k, block_size):
    rng = np.random.default_rng(k)
    ternary = rng.integers(-1, 2, size=(n, k))
    packed, _ = pack_ternary(ternary, np.float32(1), block_size)
    q = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    sums = reference.block_integer_sums(q, packed, k)
    n_blocks = packed.shape[1]
    assert sums.dtype == np.int64 and sums.shape == (m, n, n_blocks)
    for b in range(n_blocks):
        cols = slice(b * block_size, min(k, (b + 1) * block_size))
        want = q[:, cols].astype(np.int64) @ ternary[:, cols].astype(np.int64).T
        np.testing.assert_array_equal(sums[:, :, b], want)


@pytest.mark.parametrize("per_block", [False, True])
def test_int8_reference_is_the_exact_matmul_of_the_quantised_activations(per_block):
    rng = np.random.default_rng(9)
    n, k, block_size = 12, 300, 64
    packed, scales = pack_ternary(rng.integers(-1, 2, size=(n, k)), rng.random(n) + 0.1, block_size)
    if per_block:
        scales = scales * (1 + rng.random(scales.shape)).astype(np.float32)
    x = _activations(rng, k=k)
    q, step = quantize_per_token(x)
    on_grid = q.astype(np.float64) * step.astype(np.float64)[:, None]
    want = on_grid @ _naive_dequantize(packed, scales, k, block_size).T
    _check_against(reference.ternary_matmul_int8, x, packed, scales, k, want, atol=1e-12)


def test_the_two_int8_grids_agree_but_at_rounding_boundaries():
    """The GEMV's W2A8 grid (x * 127 / absmax) and the package's (x / step) differ only where
    x / step lies within float32 noise of a .5 boundary, and there by one code."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 1024)).astype(np.float32) * rng.random((64, 1)).astype(np.float32)
    old_q, old_scale = reference.quantize_int8_per_token(x)
    q, step = quantize_per_token(x)
    np.testing.assert_array_equal(old_scale, step)  # absmax >= the floor on every row
    differ = old_q != q
    assert differ.mean() < 1e-3 and np.abs(old_q.astype(int) - q).max(initial=0) <= 1
    packed, scales = pack_ternary(rng.integers(-1, 2, size=(32, 1024)), np.float32(0.03), 128)
    old = reference.ternary_matmul(x, packed, scales, 1024, activation_bits=8).astype(np.float64)
    new = reference.ternary_matmul_int8(x, packed, scales, 1024).astype(np.float64)
    flips = differ.sum(axis=1, keepdims=True)  # each moves a sum by one step times |scale|
    assert (np.abs(old - new) <= flips * step[:, None] * 0.03 * 1.001 + 1e-6).all()
