"""Shared fixtures: the offline data folder, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
