"""e2edge's int4 kernel (runtime/kernels/int4_matmul.c): its packing and its products
against the numpy reference, the reference against onnxruntime's own MatMulNBits, the
custom op inside real onnxruntime sessions, the load-time rewrite, and an int4 package
generating on it."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.kernels import int4_reference
from runtime.kernels import library as kernel_library
from runtime.llm import int4_kernel

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from kernel_engines import assert_close, cpu_session  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHAPES = [(1, 64, 20), (1, 576, 576), (3, 96, 33), (5, 1536, 48), (9, 64, 300)]  # M, K, N




def _weights(rng, n: int, k: int):
    codes = rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8)
    scales = (rng.random(n * (k // 32), dtype=np.float32) * 0.02).astype(np.float32)
    return codes, scales


def _matmul_nbits_model(codes, scales, n: int, k: int, m: int, accuracy_level: int = 4):
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=32, accuracy_level=accuracy_level)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(codes, "w"), numpy_helper.from_array(scales, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])






def test_the_reference_is_what_onnxruntime_matmul_nbits_computes():
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        codes, scales = _weights(rng, n, k)
        a = rng.standard_normal((m, k)).astype(np.float32)
        theirs = cpu_session(_matmul_nbits_model(codes, scales, n, k, m)).run(None, {"x": a})[0]
        assert_close(int4_reference.matmul_nbits(a, codes, scales, n), theirs, rtol=2e-6)
    # and it is not the float product: int8 activations move the result
    exact = a @ ((int4_reference.weight_codes(codes, n, k).astype(np.float32) - 8)
                 * np.repeat(scales.reshape(n, -1), 32, axis=1)).T
    assert np.abs(exact - theirs).max() > 1e-4 * np.abs(exact).max()


def test_packing_matches_the_reference_layout(library):
    rng = np.random.default_rng(1)
    for _, k, n in SHAPES:
        codes, scales = _weights(rng, n, k)
        packed, packed_scales = library.pack(codes, scales, n, k)
        expected, expected_scales = int4_reference.pack(codes, scales, n, k)
        assert packed.shape == (-(-n // 16), k // 32, 256)
        np.testing.assert_array_equal(packed, expected)
        np.testing.assert_array_equal(packed_scales, expected_scales)


@pytest.mark.parametrize("fast", [False, True], ids=["portable", "avx512-vnni"])
def test_products_match_the_reference(library, fast):
    if fast and not library.fast_path:
        pytest.skip("this CPU has no AVX-512 VNNI")
    rng = np.random.default_rng(2)
    for m, k, n in SHAPES:
        codes, scales = _weights(rng, n, k)
        a = rng.standard_normal((m, k)).astype(np.float32)
        a[0, :32] = 0.0  # an all-zero block: scale 0, no division by it
        packed, packed_scales = library.pack(codes, scales, n, k)
        assert_close(library.matmul(a, packed, packed_scales, n, fast=fast),
                     int4_reference.matmul_nbits(a, codes, scales, n), rtol=2e-6)


def test_bad_shapes_are_refused_with_a_reason(library):
    codes, scales = _weights(np.random.default_rng(3), 16, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        library.pack(codes, scales, 16, 48)
    with pytest.raises(ValueError, match="not what N=16, K=64"):
        library.pack(codes[:8], scales, 16, 64)


def _custom_op_model(packed, packed_scales, n: int, k: int, shape: list[int]):
    node = helper.make_node(kernel_library.OP_TYPE, ["x", "w", "s"], ["y"],
                            domain=kernel_library.DOMAIN, K=k, N=n)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], n])],
        [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(packed_scales, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(kernel_library.DOMAIN, 1)])


@pytest.mark.parametrize("threads", [1, 2])
def test_the_custom_op_runs_in_onnxruntime(library, threads):
    """Real sessions with the library registered: rows batched (prefill) and single
    (decode), a 3-D input, onnxruntime's own thread pool splitting the columns."""
    rng = np.random.default_rng(4)
    for m, k, n in [(1, 576, 1000), (7, 64, 300), (1, 1536, 48)]:
        codes, scales = _weights(rng, n, k)
        packed, packed_scales = library.pack(codes, scales, n, k)
        session = cpu_session(_custom_op_model(packed, packed_scales, n, k, [1, m, k]), threads,
                           library)
        a = rng.standard_normal((1, m, k)).astype(np.float32)
        y = session.run(None, {"x": a})[0]
        assert y.shape == (1, m, n)
        assert_close(y[0], int4_reference.matmul_nbits(a[0], codes, scales, n), rtol=2e-6)


def test_the_custom_op_refuses_weights_of_another_shape(library):
    """A graph whose packed weights do not fit K and N fails that run with the op's
    message; onnxruntime (and the process) carry on."""
    codes, scales = _weights(np.random.default_rng(5), 32, 64)
    packed, packed_scales = library.pack(codes, scales, 32, 64)
    session = cpu_session(_custom_op_model(packed[:1], packed_scales[:1], 32, 64, [1, 64]),
                       1, library)
    with pytest.raises(Exception, match="packed weights do not match K and N"):
        session.run(None, {"x": np.ones((1, 64), np.float32)})
    good = cpu_session(_custom_op_model(packed, packed_scales, 32, 64, [1, 64]), 1, library)
    assert good.run(None, {"x": np.ones((1, 64), np.float32)})[0].shape == (1, 32)


def _two_layer_model(rng):
    """x -> MatMulNBits (eligible) -> MatMulNBits (accuracy level 0: not eligible) -> y."""
    first, first_scales = _weights(rng, 64, 64)
    second, second_scales = _weights(rng, 48, 64)
    nodes = [
        helper.make_node("MatMulNBits", ["x", "w1", "s1"], ["h"], name="first",
                         domain="com.microsoft", K=64, N=64, bits=4, block_size=32,
                         accuracy_level=4),
        helper.make_node("MatMulNBits", ["h", "w2", "s2"], ["y"], name="second",
                         domain="com.microsoft", K=64, N=48, bits=4, block_size=32,
                         accuracy_level=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 48])],
        [numpy_helper.from_array(first, "w1"), numpy_helper.from_array(first_scales, "s1"),
         numpy_helper.from_array(second, "w2"), numpy_helper.from_array(second_scales, "s2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def test_the_rewrite_takes_eligible_nodes_only_and_keeps_the_result(library, tmp_path):
    """Weights in an external data file, as in a package; the node at accuracy level 0
    (float activations, which the kernel does not compute) stays MatMulNBits."""
    model = _two_layer_model(np.random.default_rng(6))
    x = np.random.default_rng(7).standard_normal((2, 64)).astype(np.float32)
    expected = cpu_session(model).run(None, {"x": x})[0]
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    on_disk = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    adapted = int4_kernel.rewrite(on_disk, tmp_path)
    rewritten = adapted.model
    assert [(n.name, n.op_type) for n in rewritten.graph.node] == [
        ("first", "MatMulInt4Packed"), ("second", "MatMulNBits")]
    names = {t.name for t in rewritten.graph.initializer}
    assert "w1" not in names and "s1" not in names and {"w2", "s2"} <= names
    # the packed weights are declared in the graph but live in memory, not in its bytes
    assert set(adapted.weights) == {"first/int4_packed", "first/int4_packed_scales"}
    assert len(rewritten.SerializeToString()) < 1000
    assert len(on_disk.graph.node) == 2 and on_disk.graph.node[0].op_type == "MatMulNBits"
    options = ort.SessionOptions()
    assert kernel_library.register_if_used(options, rewritten)
    kept = adapted.hand_over(options)
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(tmp_path))
    session = ort.InferenceSession(rewritten.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    assert len(kept) == 2
    assert_close(session.run(None, {"x": x})[0], expected, rtol=1e-5)
    assert int4_kernel.rewrite(_matmul_nbits_model(*_weights(np.random.default_rng(8), 8, 64),
                                                   8, 64, 1, accuracy_level=1), tmp_path) is None


def test_the_setting_and_the_reasons_it_gives():
    assert int4_kernel.setting("OFF") == "off"
    with pytest.raises(ValueError, match="not one of"):
        int4_kernel.setting("fast")
    assert "turned off" in int4_kernel.why_not(["CPUExecutionProvider"], "off")
    assert "CPU provider" in int4_kernel.why_not(["CUDAExecutionProvider"], "auto")


def test_a_host_without_a_working_compiler_keeps_matmul_nbits(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("E2EDGE_CACHE_DIR", str(tmp_path))
    kernel_library.load.cache_clear()
    try:
        reason = kernel_library.load()
        assert isinstance(reason, str) and "did not build" in reason
        assert int4_kernel.why_not(["CPUExecutionProvider"], "auto") == reason
    finally:
        kernel_library.load.cache_clear()


def test_an_int4_package_generates_on_the_kernel_as_on_matmul_nbits(library,
                                                                  tiny_llama_package_int4):
    from kernel_engines import engines_on_and_off, greedy_tokens, prompt_logits

    from runtime.llm.sampling import SamplingParams

    if not library.fast_path:
        pytest.skip("this CPU has no AVX-512 VNNI: the runtime keeps MatMulNBits here")
    kernel, plain = engines_on_and_off(tiny_llama_package_int4, "int4")
    ours, theirs = prompt_logits(kernel, plain)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    ours, theirs = greedy_tokens(kernel, plain)
    assert len(ours) == len(theirs) == 24
    # Equal here; another CPU's MatMulNBits may sum in another order, so a parting is
    # allowed only where MatMulNBits' own top two are a float-noise tie.
    first = next((i for i in range(24) if ours[i] != theirs[i]), None)
    if first is not None:
        params = SamplingParams(max_new_tokens=24, ignore_eos=True)
        prefix = np.asarray([plain.request_ids("To be", params) + theirs[:first]])
        logits, _ = plain.forward(prefix, 0, plain.empty_cache())
        last = logits[0, -1]
        assert last[theirs[first]] - last[ours[first]] <= 1e-4 * np.abs(last).max(), first
