"""Shared fixtures: the offline data folder, and a skip when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/llm_fixtures.py and friends


def _data_dir() -> Path | None:
    candidates = [os.environ.get("E2EDGE_DATA_DIR"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "README.md").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data folder (../shared/data); tests that need it skip without it."""
    found = _data_dir()
    if found is None:
        pytest.skip("offline data folder absent: set E2EDGE_DATA_DIR or provide ../shared/data")
    return found


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory) -> Path:
    from llm_fixtures import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama") / "ckpt", "llama")


@pytest.fixture(scope="session")
def tiny_llama_package(tmp_path_factory, tiny_llama_checkpoint) -> Path:
    from exporter.llm.export import LLMExportOptions, export_llm

    out = tmp_path_factory.mktemp("tiny-llama-pkg") / "pkg"
    return export_llm(tiny_llama_checkpoint, out, LLMExportOptions(name="tiny-llama")).package


@pytest.fixture(scope="session")
def tiny_llama_package_standard(tmp_path_factory, tiny_llama_checkpoint) -> Path:
    """The same model as plain ONNX (--attention standard): what TensorRT's parser reads."""
    from exporter.llm.export import LLMExportOptions, export_llm

    out = tmp_path_factory.mktemp("tiny-llama-std-pkg") / "pkg"
    options = LLMExportOptions(name="tiny-llama-standard", attention="standard")
    return export_llm(tiny_llama_checkpoint, out, options).package


@pytest.fixture(scope="session")
def tiny_llama_package_int4(tmp_path_factory, tiny_llama_checkpoint) -> Path:
    """The same model with int4 weights and int8 activations (the CPU defaults)."""
    from exporter.llm.export import LLMExportOptions, export_llm

    out = tmp_path_factory.mktemp("tiny-llama-int4-pkg") / "pkg"
    options = LLMExportOptions(name="tiny-llama-int4", weights="int4", accuracy_level=4)
    return export_llm(tiny_llama_checkpoint, out, options).package


@pytest.fixture(scope="session")
def tiny_gemma_checkpoint(tmp_path_factory) -> Path:
    from llm_fixtures import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-gemma") / "ckpt", "gemma")
