"""An ONNX node's attributes as a plain dict: what every load-time graph reader asks."""

from __future__ import annotations

from typing import Any


def node_attributes(node) -> dict[str, Any]:
    """{name: value} of an onnx.NodeProto's attributes (ints, floats, strings, tensors)."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
