"""Every benchmark's JSON result: formatted once, written to --out when given."""

from __future__ import annotations

import json
from pathlib import Path


def save_result(result: dict, out: str | None) -> str:
    """The result as indented JSON text, also written to `out` (parents created)."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return text
