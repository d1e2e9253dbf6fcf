"""Whether TensorRT is usable here, found by really importing it (as the product does).

`importlib.util.find_spec("tensorrt")` finds the Python bindings even when their
libraries are missing, so a test skipped on it would then fail, or a broken install
would pass for a working one. Every test that needs TensorRT, or its absence, asks this.
"""

from __future__ import annotations

import functools


@functools.cache
def tensorrt_unusable() -> str | None:
    """None when tensorrt imports and its version is supported; else the product's own
    one-line reason, which carries the ImportError's text."""
    from plugins_trt.trt_library import require_tensorrt
    from runtime.errors import BackendUnavailable

    try:
        require_tensorrt()
    except BackendUnavailable as e:
        return str(e)
    return None
