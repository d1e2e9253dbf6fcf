"""The served-model Protocols hold for the classes the registry serves (checked by mypy)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
CONFORMANCE = HERE / "served_model_conformance.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed (pip install -e '.[dev]')")


def mypy(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--no-error-summary", "--cache-dir", str(tmp_path / "mypy-cache"), str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_llm_engine_batcher_and_vision_model_implement_their_protocols(tmp_path):
    result = mypy(CONFORMANCE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_model_without_close_is_caught(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from runtime.server.core.served_model import ServedModel\n"
        "from runtime.package import ModelPackage\n\n"
        "class NoClose:\n"
        "    kind = 'llm'\n"
        "    package: ModelPackage\n"
        "    backend_name = 'onnxruntime'\n"
        "    providers: list[str] = []\n\n"
        "model: ServedModel = NoClose()\n"
    )
    result = mypy(broken, tmp_path)
    assert result.returncode != 0 and "close" in result.stdout, result.stdout
