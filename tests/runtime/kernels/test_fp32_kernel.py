"""e2edge's fp32 kernel (runtime/kernels/fp32_matmul.c): its packing and its products
against the numpy reference, the custom op inside real onnxruntime sessions, the load-time
rewrite (which MatMul nodes it takes), and an fp32 package generating on it as on
onnxruntime's MatMul."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.kernels import fp32_reference
from runtime.kernels import library as kernel_library
from runtime.llm import fp32_kernel

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from kernel_engines import assert_close, cpu_session  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHAPES = [(1, 64, 20), (1, 576, 960), (3, 96, 33), (7, 1536, 48), (13, 64, 300), (6, 5, 16)]






def test_packing_matches_the_reference_layout(library):
    rng = np.random.default_rng(1)
    for _, k, n in SHAPES:
        weights = rng.standard_normal((k, n)).astype(np.float32)
        packed = library.pack_fp32(weights)
        assert packed.shape == (-(-n // 16), k, 16)
        assert np.array_equal(packed, fp32_reference.pack(weights))


def test_products_match_the_reference_and_both_paths_agree_bit_for_bit(library):
    """The AVX-512 kernel and the portable loop sum in the same order (one multiply-add
    per k, k ascending), so they give the same bits; both are the float64 product up to
    float32 rounding."""
    rng = np.random.default_rng(2)
    for m, k, n in SHAPES:
        weights = rng.standard_normal((k, n)).astype(np.float32)
        a = rng.standard_normal((m, k)).astype(np.float32)
        packed = library.pack_fp32(weights)
        portable = library.matmul_fp32(a, packed, n, fast=False)
        assert_close(portable, fp32_reference.matmul(a, weights), rtol=1e-5)
        if library.fp32_fast_path:
            assert np.array_equal(library.matmul_fp32(a, packed, n, fast=True), portable)


def test_bad_shapes_are_refused_with_a_reason(library):
    with pytest.raises(ValueError, match="2-D B"):
        library.pack_fp32(np.ones((4,), np.float32))
    packed = library.pack_fp32(np.ones((8, 20), np.float32))
    with pytest.raises(ValueError, match="do not fit K=9, N=20"):
        library.matmul_fp32(np.ones((1, 9), np.float32), packed, 20)


def _op_model(packed, n: int, k: int, shape: list[int]):
    node = helper.make_node(kernel_library.FP32_OP_TYPE, ["x", "w"], ["y"],
                            domain=kernel_library.DOMAIN, K=k, N=n)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], n])],
        [numpy_helper.from_array(packed, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(kernel_library.DOMAIN, 1)])




@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_custom_op_runs_in_onnxruntime(library, threads):
    """Real sessions: prompt rows and a single decode row, a 3-D input, an odd number of
    panels, onnxruntime's own thread pool splitting the panel pairs."""
    rng = np.random.default_rng(3)
    for m, k, n in [(1, 576, 1000), (9, 64, 300), (1, 1536, 48), (32, 100, 17)]:
        weights = rng.standard_normal((k, n)).astype(np.float32)
        session = cpu_session(_op_model(library.pack_fp32(weights), n, k, [1, m, k]), threads,
                           library)
        a = rng.standard_normal((1, m, k)).astype(np.float32)
        y = session.run(None, {"x": a})[0]
        assert y.shape == (1, m, n)
        assert_close(y[0], fp32_reference.matmul(a[0], weights), rtol=1e-5)


def test_the_custom_op_refuses_weights_of_another_shape(library):
    """A graph whose packed weights do not fit K and N fails that run with the op's
    message; onnxruntime (and the process) carry on."""
    packed = library.pack_fp32(np.ones((64, 32), np.float32))
    bad = cpu_session(_op_model(packed[:1], 32, 64, [1, 64]), 1, library)
    with pytest.raises(Exception, match="packed weights do not match K and N"):
        bad.run(None, {"x": np.ones((1, 64), np.float32)})
    wrong_k = cpu_session(_op_model(packed, 32, 64, [1, 63]), 1, library)
    with pytest.raises(Exception, match="last dimension is not K"):
        wrong_k.run(None, {"x": np.ones((1, 63), np.float32)})
    good = cpu_session(_op_model(packed, 32, 64, [1, 64]), 1, library)
    assert np.allclose(good.run(None, {"x": np.ones((1, 64), np.float32)})[0], 64.0)


def _three_matmul_model(rng):
    """x -> MatMul(w1) -> h; h -> MatMul(w2) -> y; y2 = MatMul(h, w2) again (w2 shared: kept
    on MatMul, so its weights are not held twice); z = MatMul(x, x^T-shaped input) (no
    constant B)."""
    w1 = rng.standard_normal((24, 40)).astype(np.float32)
    w2 = rng.standard_normal((40, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="shared_a"),
             helper.make_node("MatMul", ["h", "w2"], ["y2"], name="shared_b"),
             helper.make_node("MatMul", ["x", "xt"], ["z"], name="dynamic")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24]),
                     helper.make_tensor_value_info("xt", TensorProto.FLOAT, [24, 2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", "y2", "z")],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_rewrite_takes_eligible_nodes_only_and_keeps_the_result(library, tmp_path):
    rng = np.random.default_rng(4)
    model = _three_matmul_model(rng)
    feeds = {"x": rng.standard_normal((2, 24)).astype(np.float32),
             "xt": rng.standard_normal((24, 2)).astype(np.float32)}
    expected = cpu_session(model).run(None, feeds)
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    on_disk = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    adapted = fp32_kernel.rewrite(on_disk, tmp_path)
    assert [(n.name, n.op_type) for n in adapted.model.graph.node] == [
        ("first", "MatMulF32Packed"), ("shared_a", "MatMul"), ("shared_b", "MatMul"),
        ("dynamic", "MatMul")]
    assert {t.name for t in adapted.model.graph.initializer} == {"w2", "first/fp32_packed"}
    assert set(adapted.weights) == {"first/fp32_packed"}
    options = ort.SessionOptions()
    assert kernel_library.register_if_used(options, adapted.model)
    kept = adapted.hand_over(options)
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(tmp_path))
    session = ort.InferenceSession(adapted.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    assert len(kept) == 1
    for ours, theirs in zip(session.run(None, feeds), expected):
        assert_close(ours, theirs, rtol=1e-5)
    none_eligible = _three_matmul_model(rng)
    del none_eligible.graph.node[0]
    none_eligible.graph.node[0].input[0] = none_eligible.graph.node[1].input[0] = "x2"
    assert fp32_kernel.rewrite(none_eligible, tmp_path) is None


def test_the_setting_and_the_reasons_it_gives(monkeypatch):
    assert fp32_kernel.setting("OFF") == "off"
    monkeypatch.setenv("E2EDGE_FP32_KERNEL", "off")
    assert fp32_kernel.setting() == "off"
    assert "E2EDGE_FP32_KERNEL=off" in fp32_kernel.why_not(["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="not one of"):
        fp32_kernel.setting("fast")
    assert "CPU provider" in fp32_kernel.why_not(["CUDAExecutionProvider"], "auto")


def test_an_fp32_package_generates_on_the_kernel_as_on_matmul(library, tiny_llama_package):
    from kernel_engines import engines_on_and_off, greedy_tokens, prompt_logits

    if not library.fp32_fast_path:
        pytest.skip("this CPU has no AVX-512: the runtime keeps onnxruntime's MatMul here")
    kernel, plain = engines_on_and_off(tiny_llama_package, "fp32")
    ours, theirs = prompt_logits(kernel, plain)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    ours, theirs = greedy_tokens(kernel, plain)
    assert len(ours) == 24 and ours == theirs


def test_the_rewrites_chain_and_keep_each_others_weights(library, tmp_path):
    """An int4 rewrite, then the fp32 one over its result (as the engine runs them): the
    graph holds both ops, both rewrites' weights stay in memory, and the product is
    onnxruntime's own."""
    from runtime.llm import int4_kernel

    if not library.fast_path:
        pytest.skip("this CPU has no AVX-512 VNNI: the int4 rewrite takes nothing here")
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 256, (64, 2, 16), dtype=np.uint8)
    scales = (rng.random(64 * 2, dtype=np.float32) * 0.02).astype(np.float32)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    nodes = [helper.make_node("MatMulNBits", ["x", "q", "s"], ["h"], name="int4",
                              domain="com.microsoft", K=64, N=64, bits=4, block_size=32,
                              accuracy_level=4),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="fp32")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])],
        [numpy_helper.from_array(codes, "q"), numpy_helper.from_array(scales, "s"),
         numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    x = rng.standard_normal((3, 64)).astype(np.float32)
    expected = cpu_session(model).run(None, {"x": x})[0]
    first = int4_kernel.rewrite(model, tmp_path)
    both = fp32_kernel.rewrite(first, tmp_path)
    assert [n.op_type for n in both.model.graph.node] == ["MatMulInt4Packed", "MatMulF32Packed"]
    assert set(both.weights) == {"int4/int4_packed", "int4/int4_packed_scales", "fp32/fp32_packed"}
    options = ort.SessionOptions()
    assert kernel_library.register_if_used(options, both.model)
    both.hand_over(options)
    session = ort.InferenceSession(both.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    both.release()
    assert both.weights == {} and both.handed_over == []
    assert_close(session.run(None, {"x": x})[0], expected, rtol=1e-4)
