"""The reference pages of docs/reference/, generated from the code they describe.

    python -m e2edge.reference           # (make docs) rewrite the pages
    python -m e2edge.reference --check   # exit 1 naming the pages that are stale

cli.md comes from the argparse parser, config.md from the config dataclasses, grpc.md
from the .proto files; tests/docs/test_references.py fails when a committed page
differs from what its generator writes now.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO_ROOT / "docs" / "reference"


def generators() -> dict[str, Callable[[], str]]:
    """Page file name -> the function that renders it (imported here: each needs its
    own part of the project, e.g. grpcio-tools for grpc.md)."""
    from e2edge.reference import cli, config, grpc

    return {"cli.md": cli.render, "config.md": config.render, "grpc.md": grpc.render}


def stale_pages(directory: Path = REFERENCE_DIR) -> list[Path]:
    """The pages under `directory` whose text differs from a fresh rendering (or that
    are missing)."""
    stale = []
    for name, render in generators().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            stale.append(path)
    return stale


def write_pages(directory: Path = REFERENCE_DIR) -> list[Path]:
    """Render every page into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in generators().items():
        path = directory / name
        path.write_text(render(), encoding="utf-8")
        written.append(path)
    return written
