"""Writes model packages atomically.

Everything goes into a temporary sibling directory (exporter/atomic_dir.py); the
manifest (with each file's size and sha256) is written last, and the directory is
renamed into place. A killed or failed export therefore never leaves a half package
at the destination.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from e2edge import __version__
from exporter.atomic_dir import AtomicDirectory
from runtime.package import FORMAT_VERSION, MANIFEST_NAME, PACKAGE_FORMAT, sha256_file


class PackageWriter(AtomicDirectory):
    """Context manager: write files under `.dir`, then `commit(manifest)`.

    with PackageWriter(out) as w:
        onnx.save(model, w.dir / "model.onnx", ...)
        w.commit({"kind": "llm", "name": ..., ...})

    Leaving the block without commit (or by an exception) removes the temporary
    directory and leaves any existing package at `out` untouched.
    """

    def commit(self, manifest: dict[str, Any] | None = None) -> Path:
        """Seal (when given a manifest) and move the package into place."""
        if manifest is not None:
            self.seal(manifest)
        if not (self.dir / MANIFEST_NAME).is_file():
            raise RuntimeError("PackageWriter.commit before seal: no manifest written")
        return super().commit()

    def seal(self, manifest: dict[str, Any]) -> Path:
        """Checksum every file and write manifest.json in the temporary directory.

        After seal the temporary directory is a complete package that can be loaded
        and verified (`self.dir`) before `commit()` moves it into place.
        """
        files = {}
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            name = path.relative_to(self.dir).as_posix()
            if name == MANIFEST_NAME:
                continue
            files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        full = {
            "format": PACKAGE_FORMAT,
            "format_version": FORMAT_VERSION,
            "exporter_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **manifest,
            "files": files,
        }
        manifest_path = self.dir / MANIFEST_NAME
        manifest_path.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        with open(manifest_path, "rb") as f:
            os.fsync(f.fileno())
        return self.dir
