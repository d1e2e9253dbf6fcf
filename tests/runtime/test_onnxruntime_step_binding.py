"""The onnxruntime backend's reused step binding (ReusedOutputs.backend_state) on a graph
whose output shape follows an input's *value*, which a binding sized by input shapes
cannot foresee: every answer must still be this step's own."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.backends.base import ReusedOutputs
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> OnnxRuntimeBackend:
    """y = ones(n) * v: y's length is n's value."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["n"], ["c"], value=one),
         helper.make_node("Mul", ["c", "v"], ["y"])],
        "filled",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("filled") / "model.onnx"
    onnx.save(model, path)
    return OnnxRuntimeBackend(path, threads=1)


def _run(backend, state, n: int, v: float) -> np.ndarray:
    feeds = {"n": np.array([n], dtype=np.int64), "v": np.array([v], dtype=np.float32)}
    return backend.run(feeds, into=state)["y"]


def test_outputs_sized_by_input_values_still_come_back_right(filled):
    state = ReusedOutputs()  # no outputs of its own: only the binding is kept
    for n, v in [(3, 1.0), (3, 2.0), (3, 3.0), (5, 4.0), (5, 5.0), (2, 6.0), (3, 7.0)]:
        np.testing.assert_array_equal(_run(filled, state, n, v), np.full(n, v, np.float32))
    assert len(state.backend_state) == 1  # one binding served them all


def test_a_failed_step_leaves_no_stale_answer_behind(filled):
    state = ReusedOutputs()
    _run(filled, state, 3, 1.0)
    np.testing.assert_array_equal(_run(filled, state, 3, 2.0), np.full(3, 2.0))  # bound path
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own error types
        _run(filled, state, -1, 3.0)
    np.testing.assert_array_equal(_run(filled, state, 3, 4.0), np.full(3, 4.0))
    np.testing.assert_array_equal(_run(filled, state, 3, 5.0), np.full(3, 5.0))
