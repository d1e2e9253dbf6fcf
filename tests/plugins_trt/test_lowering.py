"""The ONNX lowering on real ONNX models: onnxruntime runs the originals, the lowered graphs
run on the CPU through onnx.reference with the plugins' NumPy references, and the two agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_reference_ops import run_lowered

from plugins_trt import plugin_spec as spec
from plugins_trt import reference
from plugins_trt.lowering import LoweringError, LoweringOptions, lower_model, save_lowered
from runtime.ternary_layout import pack_ternary

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


# ---- MatMulNBits bits=2 ----------------------------------------------------------------------
def _ternary_model(rng, accuracy_level: int = 0, bits2: int = 2) -> tuple[onnx.ModelProto, dict]:
    """x (batch, seq, 96) -> MatMulNBits(+bias, block 32) -> Relu -> MatMulNBits(K=40, block 16)."""
    t1 = rng.integers(-1, 2, size=(40, 96))
    p1, s1 = pack_ternary(t1, (rng.random(40) + 0.5).astype(np.float32) / 10, 32)  # (40, 3, 8)
    bias = rng.standard_normal(40).astype(np.float32)
    t2 = rng.integers(-1, 2, size=(24, 40))
    p2, s2 = pack_ternary(t2, np.float32(0.3), 16)  # K=40 pads to 48: (24, 3, 4)
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["x", "w1", "s1", "", "", "b1"],
            ["h"],
            name="fc1",
            domain="com.microsoft",
            K=96,
            N=40,
            bits=2,
            block_size=32,
        ),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node(
            "MatMulNBits",
            ["r", "w2", "s2"],
            ["y"],
            name="fc2",
            domain="com.microsoft",
            K=40,
            N=24,
            bits=bits2,
            block_size=16,
            accuracy_level=accuracy_level,
        ),
    ]
    inits = {
        "w1": p1,
        "s1": s1,
        "b1": bias,
        "w2": p2,
        "s2": s2.reshape(-1),
    }  # s2 1-D, as ORT documents
    graph = helper.make_graph(
        nodes,
        "ternary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence_length", 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence_length", 24])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=OPSETS), inits


def test_matmulnbits_lowers_to_plugin_nodes_over_the_same_bytes():
    rng = np.random.default_rng(0)
    model, inits = _ternary_model(rng)
    lowered, report = lower_model(model)

    assert report.ternary_nodes == ["fc1", "fc2"] and not report.unsupported
    ops = [(n.domain, n.op_type) for n in lowered.graph.node]
    assert ops == [
        ("e2edge", "PackedTernaryMatMul"),
        ("", "Add"),
        ("", "Relu"),
        ("e2edge", "PackedTernaryMatMul"),
    ]
    fc1, add, _, fc2 = lowered.graph.node
    for node, (k, n, block) in ((fc1, (96, 40, 32)), (fc2, (40, 24, 16))):
        assert _attrs(node) == {
            "K": k,
            "N": n,
            "block_size": block,
            "activation_bits": 16,
            "plugin_namespace": b"e2edge",
            "plugin_version": b"1",
        }
    # the packed weights: int32 initializers holding exactly the MatMulNBits bytes
    words1 = _init(lowered, fc1.input[1])
    assert words1.data_type == TensorProto.INT32 and list(words1.dims) == [40, 6]
    assert numpy_helper.to_array(words1).tobytes() == inits["w1"].tobytes()
    words2 = _init(lowered, fc2.input[1])
    assert list(words2.dims) == [24, 3]
    assert numpy_helper.to_array(words2).tobytes() == inits["w2"].tobytes()
    # fp32 scales are the original initializers, untouched
    assert fc1.input[2] == "s1" and fc2.input[2] == "s2"
    assert numpy_helper.to_array(_init(lowered, "s2")).tobytes() == inits["s2"].tobytes()
    # the bias moved into an Add that writes the original output name
    assert list(add.input) == [fc1.output[0], "b1"] and list(add.output) == ["h"]
    # the uint8 originals are gone; the graph is valid ONNX with the e2edge domain declared
    names = {t.name for t in lowered.graph.initializer}
    assert "w1" not in names and "w2" not in names
    assert any(o.domain == "e2edge" for o in lowered.opset_import)
    onnx.checker.check_model(lowered)


def test_lowered_graph_computes_what_onnxruntime_computes_on_the_original():
    rng = np.random.default_rng(1)
    model, _ = _ternary_model(rng)
    x = rng.standard_normal((2, 5, 96)).astype(np.float32)
    (want,) = _ort(model, {"x": x})
    lowered, _ = lower_model(model)
    (got,) = run_lowered(lowered, {"x": x})
    assert got.shape == (2, 5, 24)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_accuracy_level_4_selects_w2a8_unless_overridden():
    model, _ = _ternary_model(np.random.default_rng(2), accuracy_level=4)
    lowered, _ = lower_model(model)
    assert [
        _attrs(n)["activation_bits"] for n in lowered.graph.node if n.op_type == spec.TERNARY_OP
    ] == [16, 8]
    forced, _ = lower_model(model, LoweringOptions(activation_bits=16))
    assert {
        _attrs(n)["activation_bits"] for n in forced.graph.node if n.op_type == spec.TERNARY_OP
    } == {16}


def test_w2a8_lowered_graph_stays_close_to_onnxruntime():
    rng = np.random.default_rng(3)
    model, _ = _ternary_model(rng, accuracy_level=4)
    x = rng.standard_normal((1, 4, 96)).astype(np.float32)
    (want,) = _ort(model, {"x": x})  # ORT quantises A to int8 per block
    (got,) = run_lowered(lower_model(model)[0], {"x": x})  # the plugin: per token (BitNet)
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


def test_other_bit_widths_are_left_and_reported_as_unsupported():
    rng = np.random.default_rng(4)
    model, _ = _ternary_model(rng)
    fc2 = model.graph.node[2]
    for a in fc2.attribute:
        if a.name == "bits":
            a.i = 4
    lowered, report = lower_model(model)
    assert report.ternary_nodes == ["fc1"]
    assert report.unsupported == ["fc2: com.microsoft::MatMulNBits bits=4"]
    assert lowered.graph.node[-1].op_type == "MatMulNBits"


def test_microsoft_ops_with_a_standard_name_are_importable():
    """TensorRT's parser imports com.microsoft::Gelu (the ViT export uses it) as Gelu; an op
    it has no importer for, like FastGelu, is reported."""
    model, _ = _ternary_model(np.random.default_rng(11))
    relu = model.graph.node[1]
    relu.op_type, relu.domain = "Gelu", "com.microsoft"
    _, report = lower_model(model)
    assert report.unsupported == []
    relu.op_type = "FastGelu"
    _, report = lower_model(model)
    assert report.unsupported == ["relu: com.microsoft::FastGelu"]


def test_zero_points_are_refused_with_the_node_named():
    model, _ = _ternary_model(np.random.default_rng(5))
    model.graph.node[0].input[3] = "zp"
    model.graph.initializer.append(numpy_helper.from_array(np.full((40, 2), 0x22, np.uint8), "zp"))
    with pytest.raises(LoweringError, match="fc1: MatMulNBits with zero_points"):
        lower_model(model)


# ---- gated FFN -> SparseFFN -------------------------------------------------------------------
D, F = 32, 48


def _silu(g, x: str, out: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Sigmoid", [x], [f"{out}.sig"]),
        helper.make_node("Mul", [x, f"{out}.sig"], [out]),
    ]


def _gelu_tanh(g, x: str, out: str) -> list[onnx.NodeProto]:
    """0.5 x (1 + tanh(c (x + k x^3))), decomposed as exporter/llm/onnx_graph.py writes it."""
    for name, value in (
        ("gk", 0.044715),
        ("gc", math.sqrt(2 / math.pi)),
        ("half", 0.5),
        ("one", 1.0),
    ):
        g.setdefault(name, np.array(value, np.float32))
    return [
        helper.make_node("Mul", [x, x], [f"{out}.x2"]),
        helper.make_node("Mul", [f"{out}.x2", x], [f"{out}.x3"]),
        helper.make_node("Mul", [f"{out}.x3", "gk"], [f"{out}.kx3"]),
        helper.make_node("Add", [x, f"{out}.kx3"], [f"{out}.inner"]),
        helper.make_node("Mul", [f"{out}.inner", "gc"], [f"{out}.scaled"]),
        helper.make_node("Tanh", [f"{out}.scaled"], [f"{out}.t"]),
        helper.make_node("Add", [f"{out}.t", "one"], [f"{out}.t1"]),
        helper.make_node("Mul", [x, "half"], [f"{out}.xh"]),
        helper.make_node("Mul", [f"{out}.xh", f"{out}.t1"], [out]),
    ]


def _relu(g, x: str, out: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Relu", [x], [out])]


def _ffn_model(rng, blocks, extra_output: bool = False):
    """Residual FFN blocks like the LLM export: x + down(act(gate(h)) * up(h)), h = x * norm.
    blocks: [(activation builder, fused gate_up?)]. Returns the model and each block's
    (gate, up, down) as (F, D) neuron-major arrays."""
    inits: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []
    weights = []
    x = "x"
    for i, (act, fused) in enumerate(blocks):
        p = f"l{i}"
        gate, up, down = (
            rng.standard_normal((F, D)).astype(np.float32) / math.sqrt(D) for _ in range(3)
        )
        weights.append((gate, up, down))
        inits[f"{p}.norm"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        nodes.append(helper.make_node("Mul", [x, f"{p}.norm"], [f"{p}.h"]))
        if fused:
            inits[f"{p}.gate_up"] = np.ascontiguousarray(np.concatenate([gate, up]).T)  # (D, 2F)
            inits[f"{p}.split"] = np.array([F, F], np.int64)
            nodes += [
                helper.make_node("MatMul", [f"{p}.h", f"{p}.gate_up"], [f"{p}.gu"]),
                helper.make_node(
                    "Split", [f"{p}.gu", f"{p}.split"], [f"{p}.gate", f"{p}.up"], axis=-1
                ),
            ]
        else:
            inits[f"{p}.wg"], inits[f"{p}.wu"] = (
                np.ascontiguousarray(gate.T),
                np.ascontiguousarray(up.T),
            )
            nodes += [
                helper.make_node("MatMul", [f"{p}.h", f"{p}.wg"], [f"{p}.gate"]),
                helper.make_node("MatMul", [f"{p}.h", f"{p}.wu"], [f"{p}.up"]),
            ]
        nodes += act(inits, f"{p}.gate", f"{p}.act")
        inits[f"{p}.down"] = down  # (F, D): MatMul's B for the down projection
        nodes += [
            helper.make_node("Mul", [f"{p}.act", f"{p}.up"], [f"{p}.prod"]),
            helper.make_node(
                "MatMul", [f"{p}.prod", f"{p}.down"], [f"{p}.ffn"], name=f"{p}.down_proj"
            ),
            helper.make_node("Add", [x, f"{p}.ffn"], [f"{p}.out"]),
        ]
        x = f"{p}.out"
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", D])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("l0.prod", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
        outputs,
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=OPSETS[:1]), weights


def _stack(model, x, weights, activations, ids_per_layer):
    norms = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.name.endswith(".norm")
    }
    out = x
    for i, ((gate, up, down), act) in enumerate(zip(weights, activations)):
        h = (out * norms[f"l{i}.norm"]).reshape(-1, D)
        ids = ids_per_layer[i]
        y = reference.sparse_ffn(h, gate, up, down, act, indices=ids)
        out = out + y.reshape(out.shape)
    return out


def test_gated_ffn_blocks_lower_to_sparse_ffn_and_match_onnxruntime():
    rng = np.random.default_rng(7)
    model, weights = _ffn_model(rng, [(_silu, True), (_gelu_tanh, False)])
    lowered, report = lower_model(model, LoweringOptions(sparse_ffn=True))

    assert len(report.ffn_blocks) == 2 and not report.skipped_ffn
    ffn_nodes = [n for n in lowered.graph.node if n.op_type == spec.FFN_OP]
    assert [n.domain for n in ffn_nodes] == ["e2edge", "e2edge"]
    assert [_attrs(n) for n in ffn_nodes] == [
        {
            "hidden": D,
            "ffn": F,
            "activation": a,
            "active_mode": 0,
            "plugin_namespace": b"e2edge",
            "plugin_version": b"1",
        }
        for a in (0, 1)
    ]
    assert spec.FFN_KEEP_INPUT in [i.name for i in lowered.graph.input]
    # gate/up rows are the original weights transposed; down is the original initializer
    gate_rows = numpy_helper.to_array(_init(lowered, ffn_nodes[0].input[1]))
    np.testing.assert_array_equal(gate_rows, weights[0][0])
    assert ffn_nodes[1].input[3] == "l1.down"
    assert not {"MatMul", "Split", "Sigmoid", "Tanh"} & {n.op_type for n in lowered.graph.node}
    onnx.checker.check_model(lowered)

    x = rng.standard_normal((2, 3, D)).astype(np.float32)
    (want,) = _ort(model, {"x": x})
    (full,) = run_lowered(lowered, {"x": x, spec.FFN_KEEP_INPUT: np.array([1.0], np.float32)})
    np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-5)

    (half,) = run_lowered(lowered, {"x": x, spec.FFN_KEEP_INPUT: np.array([0.5], np.float32)})
    expected = _stack(model, x, weights, ["silu", "gelu_tanh"], [np.arange(F // 2)] * 2)
    np.testing.assert_allclose(half, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(half - want).max() > 1e-3  # a narrower FFN really is a different function


def test_neuron_order_makes_the_kept_prefix_the_salient_neurons():
    rng = np.random.default_rng(8)
    model, weights = _ffn_model(rng, [(_silu, True), (_silu, False)])
    orders = {i: rng.permutation(F).tolist() for i in range(2)}
    lowered, _ = lower_model(model, LoweringOptions(sparse_ffn=True, neuron_order=orders))
    x = rng.standard_normal((1, 4, D)).astype(np.float32)
    (want,) = _ort(model, {"x": x})
    (full,) = run_lowered(lowered, {"x": x, spec.FFN_KEEP_INPUT: np.array([1.0], np.float32)})
    np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-5)  # reordering is exact
    keep = 0.25
    (part,) = run_lowered(lowered, {"x": x, spec.FFN_KEEP_INPUT: np.array([keep], np.float32)})
    width = math.ceil(keep * F)
    expected = _stack(
        model, x, weights, ["silu", "silu"], [np.asarray(orders[i][:width]) for i in range(2)]
    )
    np.testing.assert_allclose(part, expected, rtol=1e-4, atol=1e-5)


def test_ffn_blocks_that_cannot_be_fused_are_skipped_with_a_reason():
    rng = np.random.default_rng(9)
    model, _ = _ffn_model(rng, [(_relu, True)])
    lowered, report = lower_model(model, LoweringOptions(sparse_ffn=True))
    assert not report.ffn_blocks
    assert report.skipped_ffn == ["l0.down_proj: the activation is neither silu nor tanh-GELU"]
    assert spec.FFN_KEEP_INPUT not in [i.name for i in lowered.graph.input]

    model, _ = _ffn_model(rng, [(_silu, True)], extra_output=True)
    _, report = lower_model(model, LoweringOptions(sparse_ffn=True))
    assert report.skipped_ffn == ["l0.down_proj: the gated product is used elsewhere"]


def test_ffn_lowering_is_off_unless_asked():
    model, _ = _ffn_model(np.random.default_rng(10), [(_silu, True)])
    lowered, report = lower_model(model)
    assert not report.ffn_blocks
    assert [n.op_type for n in lowered.graph.node] == [n.op_type for n in model.graph.node]


@pytest.fixture(scope="module")
def tiny_llama_package_standard_fp16(tmp_path_factory, tiny_llama_checkpoint) -> Path:
    from exporter.llm.export import LLMExportOptions, export_llm

    out = tmp_path_factory.mktemp("tiny-llama-std-fp16") / "pkg"
    options = LLMExportOptions(attention="standard", weights="fp16", verify=False)
    return export_llm(tiny_llama_checkpoint, out, options).package


@pytest.mark.parametrize("weights", ["fp32", "fp16"])
def test_exported_llama_package_lowers_every_ffn_and_still_matches(request, weights):
    """The real LLM exporter's graph: every layer's FFN is found and the lowered model's
    logits at full width equal onnxruntime's on the original. An fp16 package's FFN
    weights come through Casts: those go with the FFN, no fp16 FFN weight is left."""
    from runtime.package import load_package

    fixture = "tiny_llama_package_standard" + ("_fp16" if weights == "fp16" else "")
    package = load_package(request.getfixturevalue(fixture))
    model = onnx.load(str(package.onnx_path))
    lowered, report = lower_model(model, LoweringOptions(sparse_ffn=True))
    assert len(report.ffn_blocks) == package.manifest["llm"]["num_layers"]
    assert not report.unsupported and not report.skipped_ffn
    ffn_casts = [n for n in lowered.graph.node if n.op_type == "Cast" and "mlp" in n.input[0]]
    assert not ffn_casts
    llm = package.manifest["llm"]
    feeds = {
        "input_ids": np.array([[5, 17, 42, 7]], np.int64),
        "attention_mask": np.ones((1, 4), np.int64),
        "position_ids": np.arange(4, dtype=np.int64)[None],
    }
    for i in range(llm["num_layers"]):
        for part in ("key", "value"):
            feeds[f"past_key_values.{i}.{part}"] = np.zeros(
                (1, llm["num_kv_heads"], 0, llm["head_dim"]), np.float32
            )
    want = _ort(model, feeds)[0]
    got = run_lowered(lowered, {**feeds, spec.FFN_KEEP_INPUT: np.array([1.0], np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_saved_lowered_model_keeps_weights_in_one_external_file(tmp_path):
    model, weights = _ffn_model(np.random.default_rng(6), [(_silu, True)])
    lowered, _ = lower_model(model, LoweringOptions(sparse_ffn=True))
    path = save_lowered(lowered, tmp_path / "lowered.onnx")
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["lowered.onnx", "lowered.onnx.data"]
    reloaded = onnx.load(str(path))
    onnx.checker.check_model(reloaded)
    rows = next(t for t in reloaded.graph.initializer if t.name.endswith(".gate_rows"))
    np.testing.assert_array_equal(numpy_helper.to_array(rows), weights[0][0])


def test_bitmed_vit_export_lowers_every_ternary_linear_and_still_matches():
    """The real ViT exporter's graph (all linears ternary): every MatMulNBits becomes the
    plugin, nothing TensorRT cannot import is left, and the logits agree with onnxruntime."""
    torch = pytest.importorskip("torch")
    from exporter.vit.config import ViTConfig
    from exporter.vit.model import ViT
    from exporter.vit.onnx_graph import build_vit_onnx

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        channels=1,
        patch_size=2,
        width=32,
        depth=1,
        n_heads=4,
        ffn_width=64,
        n_classes=3,
        ternary="all",
    )
    model, facts = build_vit_onnx(ViT(config).eval())
    lowered, report = lower_model(model)
    assert len(report.ternary_nodes) == len(facts.ternary_layers) >= 3
    assert report.unsupported == []
    pixels = np.random.default_rng(12).standard_normal((2, 1, 8, 8)).astype(np.float32)
    (want,) = _ort(model, {model.graph.input[0].name: pixels})
    (got,) = run_lowered(lowered, {model.graph.input[0].name: pixels})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
