"""A vision package whose model costs next to nothing: the daemon's serving ceiling.

`bench serve-vit` serves it beside the real package, batched, in the same daemon and
the same windows. Its images still cross gRPC, are decoded and preprocessed, batched,
and answered with top-k labels, exactly as the real model's are; only the graph is
empty of work:

    logits (B, K) = ReduceMean(pixel_values over C, H, W) (B, 1) * zeros (1, K)

So its images/s is what the daemon serves on this machine, with these images and
clients, when the model costs nothing: whether the model or the rest of a request
limits throughput.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.package import ModelPackage

# Manifest keys the vision runtime reads; the rest (architecture, quantisation,
# training source) describe the real model and would be false here.
KEPT_KEYS = ("kind", "io", "preprocessing", "labels", "n_classes")


def null_graph(channels: int, size: int, n_classes: int, input_name: str, output_name: str):
    """The ONNX model: (B, C, S, S) float32 -> (B, n_classes) float32 zeros."""
    from onnx import TensorProto, helper, numpy_helper

    zeros = numpy_helper.from_array(np.zeros((1, n_classes), dtype=np.float32), "zeros")
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis"], ["column"]),  # (B, 1)
        helper.make_node("Mul", ["column", "zeros"], [output_name]),  # (B, K)
    ]
    axis = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")
    graph = helper.make_graph(
        nodes, "null-vision",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       ["batch", channels, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_classes])],
        [zeros, axis],
    )
    # opset 17: ReduceMean still takes `axes` as an attribute there.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_null_package(source: ModelPackage, out: str | Path) -> Path:
    """A package at `out` that mirrors `source`'s inputs, labels and preprocessing."""
    import onnx

    from exporter.package_writer import PackageWriter

    manifest = {key: source.manifest[key] for key in KEPT_KEYS if key in source.manifest}
    if manifest.get("kind") != "vision":
        raise ValueError(f"{source.root}: not a vision package")
    spec = manifest["preprocessing"]
    (input_name,) = manifest["io"]["inputs"]
    (output_name,) = manifest["io"]["outputs"]
    labels = source.file(manifest.get("labels", "labels.json")).read_text()
    n_classes = int(manifest.get("n_classes", len(json.loads(labels))))
    with PackageWriter(out) as writer:
        model = null_graph(int(spec["channels"]), int(spec["size"]), n_classes,
                           input_name, output_name)
        onnx.save(model, writer.dir / "model.onnx")
        (writer.dir / manifest.get("labels", "labels.json")).write_text(labels)
        return writer.commit({
            **manifest,
            "name": f"{source.name}-null",
            "source": {"role": "serving ceiling (no-op graph)", "mirrors": source.name},
        })
