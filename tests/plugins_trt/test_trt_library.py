"""The TensorRT library's edges that need no TensorRT: the supported versions, the
messages for a missing or broken install and for a Builder CUDA could not back, and how
the process's one logger hands errors to the operation that was running."""

from __future__ import annotations

import logging
import threading

import pytest
from tensorrt_probe import tensorrt_unusable

from plugins_trt import trt_library
from runtime.errors import BackendUnavailable


@pytest.mark.parametrize("version", ["10.0.0", "10.0.1.6", "10.3.0", "10.16.1.11", "10.99"])
def test_tensorrt_10_is_supported(version):
    assert trt_library.version_problem(version) is None


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("11.0.0", "not supported"),
        ("11.4.0.1", "strongly typed networks only"),
        ("12.1", "not supported"),
        ("8.6.1", "too old"),
        ("9.9.9", "IPluginV3"),
        ("dev", "cannot read TensorRT's version 'dev'"),
    ],
)
def test_other_versions_are_refused_in_one_line_naming_the_range(version, says):
    problem = trt_library.version_problem(version)
    assert says in problem and "tensorrt>=10.0,<11" in problem and "\n" not in problem
    if version[0].isdigit():
        assert f"TensorRT {version}" in problem


def test_the_range_is_the_one_setup_cfg_installs():
    from pathlib import Path

    setup_cfg = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert f"    {trt_library.REQUIREMENT}\n" in setup_cfg


def test_a_missing_tensorrt_says_so_and_how_to_install_it():
    error = ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt")
    message = trt_library.import_problem(error)
    assert message.startswith("tensorrt is not installed:")
    assert "pip install 'tensorrt>=10.0,<11'" in message and "JetPack 6" in message
    assert "onnxruntime backend runs the package without it" in message


@pytest.mark.parametrize(
    "error",
    [
        ImportError("libnvinfer.so.10: cannot open shared object file: No such file or "
                    "directory"),
        ModuleNotFoundError("No module named 'tensorrt_libs'", name="tensorrt_libs"),
        OSError("libnvonnxparser.so.10: cannot open shared object file"),
    ],
)
def test_a_broken_install_is_not_called_missing_and_keeps_its_own_text(error):
    message = trt_library.import_problem(error)
    assert message.startswith("tensorrt is installed but cannot be imported")
    assert str(error) in message and type(error).__name__ in message
    assert "\n" not in message


@pytest.mark.skipif(tensorrt_unusable() is None, reason="tensorrt imports here")
def test_require_tensorrt_raises_the_reason_here():
    with pytest.raises(BackendUnavailable) as raised:
        trt_library.require_tensorrt()
    assert str(raised.value) == tensorrt_unusable()
    assert isinstance(raised.value.__cause__, (ImportError, OSError))


def test_a_builder_cuda_cannot_back_is_one_line_with_tensorrt_s_own_words():
    logged = ["[defaultAllocator.cpp::allocate] CUDA initialization failure with error: 35"]
    message = trt_library.creation_failure(
        "Builder", logged, TypeError("pybind11::init(): factory function returned nullptr"))
    assert message.startswith("TensorRT could not create its Builder")
    assert "CUDA initialization failure with error: 35" in message
    assert "factory function" not in message  # TensorRT's log is the better reason
    bare = trt_library.creation_failure("Runtime", [], TypeError("returned\nnullptr"))
    assert "TypeError: returned nullptr" in bare and "\n" not in bare


# ---- the one logger's routing ----------------------------------------------------------
def test_errors_go_to_the_open_capture_and_everything_to_logging(caplog):
    router = trt_library.LogRouter()
    caplog.set_level(logging.DEBUG, logger="plugins_trt.trt_library")
    router.emit("ERROR", "before")  # nobody listening: only logged
    with router.capture() as errors:
        router.emit("WARNING", "a warning")
        router.emit("ERROR", "parse failed")
        router.emit("INTERNAL_ERROR", "assertion")
        router.emit("VERBOSE", "noise")
    router.emit("ERROR", "after")
    assert errors == ["parse failed", "assertion"]
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["TensorRT: a warning"] == logging.WARNING
    assert levels["TensorRT: assertion"] == logging.CRITICAL
    assert levels["TensorRT: noise"] == logging.DEBUG
    assert "TensorRT: before" in levels and "TensorRT: after" in levels


def test_nested_captures_and_threads_each_get_their_own_errors():
    router = trt_library.LogRouter()
    started, release = threading.Event(), threading.Event()
    other: list[str] = []

    def build_elsewhere():
        with router.capture() as errors:
            started.set()
            release.wait(5)
            router.emit("ERROR", "other build failed")
        other.extend(errors)

    thread = threading.Thread(target=build_elsewhere)
    thread.start()
    started.wait(5)
    with router.capture() as outer:
        router.emit("ERROR", "outer")
        with router.capture() as inner:
            router.emit("ERROR", "inner")
        release.set()
        thread.join(5)
        router.emit("ERROR", "outer again")
    assert (outer, inner, other) == (["outer", "outer again"], ["inner"], ["other build failed"])


def test_an_error_from_a_thread_without_a_capture_reaches_every_open_one():
    router = trt_library.LogRouter()
    with router.capture() as errors:
        worker = threading.Thread(target=router.emit, args=("ERROR", "from a worker"))
        worker.start()
        worker.join(5)
    assert errors == ["from a worker"]
