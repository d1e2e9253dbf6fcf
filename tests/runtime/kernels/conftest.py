"""The kernel tests' library: built for this host, or a skip that says why there is none."""

from __future__ import annotations

import pytest

from runtime.kernels import library as kernel_library


@pytest.fixture(scope="module")
def library() -> kernel_library.KernelLibrary:
    built = kernel_library.load()
    if isinstance(built, str):
        pytest.skip(f"e2edge's kernel library is unavailable here: {built}")
    return built
