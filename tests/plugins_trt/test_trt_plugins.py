"""The plugin classes against what TensorRT's Python bindings call, without TensorRT.

The bindings (TensorRT's python/src/infer/pyPlugin.cpp, 10.x) look each method up by name
on the Python object when TensorRT calls the C++ interface, with these positional
arguments. A required one that is missing fails the build with "no implementation
provided for NAME()"; set_tactic is such a method: TensorRT calls it (tactic 0) in every
build, even for a plugin that offers no tactics."""

from __future__ import annotations

import inspect
import types

import pytest

from plugins_trt import trt_plugins

# method -> positional arguments TensorRT passes (besides self)
REQUIRED = {
    # IPluginV3
    "get_capability_interface": 1,  # type
    "clone": 0,
    # IPluginV3OneBuild
    "configure_plugin": 2,  # in, out
    "get_output_data_types": 1,  # input_types
    "get_output_shapes": 3,  # inputs, shape_inputs, expr_builder
    "supports_format_combination": 3,  # pos, in_out, num_inputs
    # IPluginV3OneRuntime
    "set_tactic": 1,  # tactic
    "on_shape_change": 2,  # in, out
    "enqueue": 6,  # input_desc, output_desc, inputs, outputs, workspace, stream
    "attach_to_context": 1,  # context
    "get_fields_to_serialize": 0,
}
OPTIONAL = {
    "get_workspace_size": 2,  # inputs, outputs; absent -> 0 bytes
    "get_valid_tactics": 0,  # absent -> no custom tactics
    "destroy": 0,
}
CREATOR_REQUIRED = {"create_plugin": 3}  # IPluginCreatorV3One: name, fc, phase

PLUGINS = [trt_plugins.PackedTernaryMatMul, trt_plugins.SparseFFN]


def _positional(function) -> int:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # not self
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters), parameters
    return len(parameters)


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda c: c.__name__)
def test_every_method_the_bindings_require_is_there_with_their_arguments(plugin):
    missing = sorted(name for name in REQUIRED if not callable(getattr(plugin, name, None)))
    assert missing == []
    for name, count in {**REQUIRED, **OPTIONAL}.items():
        if hasattr(plugin, name):
            assert _positional(getattr(plugin, name)) == count, name


def test_set_tactic_accepts_the_default_tactic_and_does_nothing():
    assert trt_plugins.PackedTernaryMatMul.set_tactic(object(), 0) is None


def test_the_creator_has_what_the_bindings_call():
    for name, count in CREATOR_REQUIRED.items():
        assert _positional(getattr(trt_plugins.PluginCreator, name)) == count


def test_the_classes_name_the_tensorrt_interfaces_they_are_registered_with():
    assert trt_plugins.PLUGIN_INTERFACES == (
        "IPluginV3", "IPluginV3OneCore", "IPluginV3OneBuild", "IPluginV3OneRuntime")
    assert trt_plugins.CREATOR_INTERFACES == ("IPluginCreatorV3One",)


def _stand_in_interfaces() -> types.SimpleNamespace:
    """Plain classes under TensorRT's interface names: enough to compose and construct."""
    names = trt_plugins.PLUGIN_INTERFACES + trt_plugins.CREATOR_INTERFACES
    return types.SimpleNamespace(**{name: type(name, (), {}) for name in names})


@pytest.mark.parametrize(
    ("plugin", "values"),
    [
        (trt_plugins.PackedTernaryMatMul, {"K": 64, "N": 8, "block_size": 32,
                                           "activation_bits": 16}),
        (trt_plugins.SparseFFN, {"hidden": 16, "ffn": 32, "activation": 0, "active_mode": 0}),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_composed_plugins_carry_the_attributes_the_bindings_read(plugin, values):
    trt = _stand_in_interfaces()
    composed = trt_plugins.with_interfaces(plugin, trt, trt_plugins.PLUGIN_INTERFACES)
    # the behaviour comes first, so its methods are the ones the bindings find
    assert composed.__mro__[1] is plugin and composed.trt is trt
    instance = composed(values)
    assert instance.num_outputs == 1
    assert (instance.plugin_namespace, instance.plugin_name, instance.plugin_version) == (
        "e2edge", plugin.op, "1")
    assert instance.timing_cache_id == ",".join(f"{k}={v}" for k, v in sorted(values.items()))
    assert type(instance.clone()) is composed and instance.clone().values == values
    assert instance.get_capability_interface(0) is instance
