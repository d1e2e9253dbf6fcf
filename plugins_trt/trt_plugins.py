"""TensorRT 10 IPluginV3 Python plugins over the e2edge kernels:

    e2edge::PackedTernaryMatMul   Y = X @ dequant(W).T on the packed 2-bit bytes
    e2edge::SparseFFN             gated FFN over the active (prefix or listed) neurons

Written to the TensorRT 10.3 Python API (JetPack 6.1/6.2), following the IPluginV3 +
IPluginCreatorV3One pattern of TensorRT's samples/python/python_plugin. What each plugin
does is written in plain classes (PackedTernaryMatMul, SparseFFN, PluginCreator) that
import no TensorRT, so they can be read and checked anywhere; `register()` puts
TensorRT's interfaces under them (IPluginV3 + IPluginV3OneCore/OneBuild/OneRuntime, and
IPluginCreatorV3One for the creator) and registers the creators. It must run before an
ONNX parse or an engine deserialisation; Python plugins are not serialised into the
engine, so the process that runs the engine registers them too.

Kernels run on TensorRT's stream through plugins_trt.kernels (NVRTC + CUDA driver); the
inputs and formats each plugin accepts are listed in plugins_trt/plugin_spec.py.
"""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np

from plugins_trt import kernels
from plugins_trt import plugin_spec as spec
from plugins_trt.trt_library import require_tensorrt

PLUGIN_INTERFACES = ("IPluginV3", "IPluginV3OneCore", "IPluginV3OneBuild", "IPluginV3OneRuntime")
CREATOR_INTERFACES = ("IPluginCreatorV3One",)


def _tokens(dims) -> int:
    """Rows of a (..., features) tensor: the product of all but the last dimension."""
    return math.prod(int(d) for d in list(dims)[:-1])


def _field_values(fc, names: tuple[str, ...], defaults: dict[str, int]) -> dict[str, int]:
    values = dict(defaults)
    for f in fc:
        if f.name in names:
            values[f.name] = int(np.asarray(f.data).reshape(-1)[0])
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"plugin fields missing: {missing}")
    return values


def _float_type(trt: Any, dtype: Any) -> str | None:
    """"float32" / "float16" for the activation dtypes the kernels take, else None."""
    return {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}.get(dtype)


class _E2edgePlugin:
    """What both plugins share: integer fields, one output of the first input's dtype.

    Every method TensorRT's bindings call on an IPluginV3 Python plugin is here or in the
    subclasses; `self.trt` is the tensorrt module, set on the classes register() makes.
    """

    op = ""
    fields: tuple[str, ...] = ()
    trt: Any = None

    def __init__(self, values: dict[str, int], phase=None):
        for interface in PLUGIN_INTERFACES:
            getattr(self.trt, interface).__init__(self)
        self.values = dict(values)
        self.phase = phase
        self.num_outputs = 1
        self.plugin_namespace = spec.PLUGIN_NAMESPACE
        self.plugin_name = self.op
        self.plugin_version = spec.PLUGIN_VERSION
        # identical instances (same fields) share one timing measurement in the build
        self.timing_cache_id = ",".join(f"{k}={v}" for k, v in sorted(self.values.items()))

    def get_capability_interface(self, type):
        return self

    def clone(self):
        return type(self)(self.values, self.phase)

    def get_fields_to_serialize(self):
        trt = self.trt
        return trt.PluginFieldCollection(
            [
                trt.PluginField(name, np.array([value], dtype=np.int32), trt.PluginFieldType.INT32)
                for name, value in self.values.items()
            ]
        )

    def get_output_data_types(self, input_types):
        return [input_types[0]]

    def configure_plugin(self, inp, out):
        self.check_inputs([d.desc for d in inp])

    def on_shape_change(self, inp, out):
        self.check_inputs(inp)

    def attach_to_context(self, context):
        return self.clone()

    def set_tactic(self, tactic):
        """No custom tactics (no get_valid_tactics), yet TensorRT calls this in every build
        with tactic 0, the default; the bindings fail the build when it is missing."""

    def check_inputs(self, descs) -> None:
        """Raise on input shapes that contradict the fields (called at build and run)."""


class PackedTernaryMatMul(_E2edgePlugin):
    op = spec.TERNARY_OP
    fields = spec.TERNARY_FIELDS

    def __init__(self, values: dict[str, int], phase=None):
        super().__init__(values, phase)
        self.geometry = kernels.TernaryGeometry(values["K"], values["N"], values["block_size"])
        self.activation_bits = values["activation_bits"]

    def get_output_shapes(self, inputs, shape_inputs, expr_builder):
        out = self.trt.DimsExprs(inputs[0])
        out[len(out) - 1] = expr_builder.constant(self.geometry.N)
        return [out]

    def supports_format_combination(self, pos, in_out, num_inputs):
        trt, desc = self.trt, in_out[pos].desc
        if desc.format != trt.TensorFormat.LINEAR:
            return False
        if pos == 0:
            return _float_type(trt, desc.type) is not None
        if pos == 1:
            return desc.type == trt.DataType.INT32  # the packed words
        if pos == 2:
            return desc.type == trt.DataType.FLOAT  # the scales
        return desc.type == in_out[0].desc.type  # output: the activations' dtype

    def check_inputs(self, descs) -> None:
        g = self.geometry
        words = math.prod(int(d) for d in descs[1].dims)
        scales = math.prod(int(d) for d in descs[2].dims)
        n_blocks = g.k_pad // g.block_size
        if words != g.N * g.words_per_row or scales != g.N * n_blocks:
            raise ValueError(
                f"{self.op}: packed weight has {words} words and {scales} scales, expected "
                f"{g.N * g.words_per_row} and {g.N * n_blocks} for K={g.K}, N={g.N}, "
                f"block_size={g.block_size}"
            )

    def get_workspace_size(self, inputs, outputs):
        """Only the W2A8 GEMV takes scratch; on sm_80+ it runs for fewer than 16 tokens
        (more take the tensor-core kernel, which quantises in its prologue)."""
        if self.activation_bits == 16:
            return 0
        return kernels.ternary_workspace_bytes(
            _tokens(inputs[0].max), self.geometry, 8, cc=kernels.LIBRARY.device().cc
        )

    def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
        dims = list(input_desc[0].dims)
        if int(dims[-1]) != self.geometry.K:
            raise ValueError(
                f"{self.op}: input has {dims[-1]} features, expected K={self.geometry.K}"
            )
        kernels.launch_ternary_matmul(
            x=inputs[0],
            words=inputs[1],
            scales=inputs[2],
            y=outputs[0],
            M=_tokens(dims),
            geometry=self.geometry,
            dtype=_float_type(self.trt, input_desc[0].type),
            stream=stream,
            activation_bits=self.activation_bits,
            workspace=workspace,
        )


class SparseFFN(_E2edgePlugin):
    op = spec.FFN_OP
    fields = spec.FFN_FIELDS

    def __init__(self, values: dict[str, int], phase=None):
        super().__init__(values, phase)
        self.hidden, self.ffn = values["hidden"], values["ffn"]
        self.activation = spec.FFN_ACTIVATIONS[values["activation"]]
        self.mode = values["active_mode"]
        if self.mode not in (spec.FFN_MODE_PREFIX, spec.FFN_MODE_INDICES):
            raise ValueError(f"{self.op}: active_mode must be 0 (prefix) or 1 (indices)")

    def get_output_shapes(self, inputs, shape_inputs, expr_builder):
        return [self.trt.DimsExprs(inputs[0])]

    def supports_format_combination(self, pos, in_out, num_inputs):
        trt, desc = self.trt, in_out[pos].desc
        if desc.format != trt.TensorFormat.LINEAR:
            return False
        if pos == 0:
            return _float_type(trt, desc.type) is not None
        if pos == 4:
            return desc.type == trt.DataType.INT32  # prefix width or neuron ids
        return desc.type == in_out[0].desc.type  # weights and output: the activations' dtype

    def check_inputs(self, descs) -> None:
        expected = (self.ffn, self.hidden)
        for i, name in ((1, "gate"), (2, "up"), (3, "down")):
            shape = tuple(int(d) for d in descs[i].dims)
            if shape != expected:
                raise ValueError(f"{self.op}: {name} rows are {shape}, expected {expected}")

    def get_workspace_size(self, inputs, outputs):
        dtype = _float_type(self.trt, inputs[0].desc.type)
        return kernels.sparse_ffn_workspace_bytes(
            _tokens(inputs[0].max), self.hidden, self.ffn, dtype
        )

    def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
        active = math.prod(int(d) for d in input_desc[4].dims)
        by_index = self.mode == spec.FFN_MODE_INDICES
        kernels.launch_sparse_ffn(
            x=inputs[0],
            w_gate=inputs[1],
            w_up=inputs[2],
            w_down=inputs[3],
            y=outputs[0],
            M=_tokens(input_desc[0].dims),
            D=self.hidden,
            F=self.ffn,
            activation=self.activation,
            dtype=_float_type(self.trt, input_desc[0].type),
            n_active=min(active, self.ffn) if by_index else self.ffn,
            indices=inputs[4] if by_index else 0,
            width=0 if by_index else inputs[4],
            workspace=workspace,
            stream=stream,
        )


class PluginCreator:
    """Makes one plugin class's instances from the fields TensorRT's ONNX parser found."""

    trt: Any = None

    def __init__(self, plugin_class: type, defaults: dict[str, int]):
        trt = self.trt
        for interface in CREATOR_INTERFACES:
            getattr(trt, interface).__init__(self)
        self.plugin_class = plugin_class
        self.defaults = defaults
        self.name = plugin_class.op
        self.plugin_namespace = spec.PLUGIN_NAMESPACE
        self.plugin_version = spec.PLUGIN_VERSION
        self.field_names = trt.PluginFieldCollection(
            [
                trt.PluginField(name, np.array([], dtype=np.int32), trt.PluginFieldType.INT32)
                for name in plugin_class.fields
            ]
        )

    def create_plugin(self, name, fc, phase):
        return self.plugin_class(_field_values(fc, self.plugin_class.fields, self.defaults), phase)


def with_interfaces(behaviour: type, trt: Any, interfaces: tuple[str, ...]) -> type:
    """`behaviour` with TensorRT's interface classes under it: the class TensorRT calls."""
    bases = (behaviour, *(getattr(trt, name) for name in interfaces))
    return types.new_class(behaviour.__name__, bases, exec_body=lambda ns: ns.update(trt=trt))


_CREATORS: list[Any] = []


def register() -> None:
    """Put both creators in TensorRT's plugin registry (once per process)."""
    if _CREATORS:
        return
    trt = require_tensorrt()
    creator_class = with_interfaces(PluginCreator, trt, CREATOR_INTERFACES)
    registry = trt.get_plugin_registry()
    for behaviour, defaults in ((PackedTernaryMatMul, {"activation_bits": 16}), (SparseFFN, {})):
        creator = creator_class(with_interfaces(behaviour, trt, PLUGIN_INTERFACES), defaults)
        if not registry.register_creator(creator, spec.PLUGIN_NAMESPACE):
            raise RuntimeError(
                f"TensorRT refused to register {spec.PLUGIN_NAMESPACE}::{creator.name}"
            )
        _CREATORS.append(creator)  # the registry does not own Python creators
