"""Model packages: the only artifact that crosses from workstation to device.

A package is a directory:
    manifest.json      format, kind, name, source, files with sha256, IO, facts
    model.onnx         (+ model.onnx.data, external weights)
    tokenizer.json     (llm) or labels.json (vision)
    chat_template.jinja  (llm, optional) the checkpoint's chat template
    engines/           optional TensorRT plans built on the target

The reader checks the format version and every file's size and sha256, and names
the file that does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import PackageError

PACKAGE_FORMAT = "e2edge-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("llm", "vision")


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelPackage:
    """A verified package on disk; `manifest` is the parsed manifest.json."""

    root: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def onnx_path(self) -> Path:
        return self.root / "model.onnx"

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise PackageError(f"{self.root}: package has no file {name!r}")
        return self.root / name


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise PackageError(f"{root}: not a model package directory")
    if not path.is_file():
        raise PackageError(f"{path}: missing; {root} is not a model package")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path}: not an {PACKAGE_FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PackageError(
            f"{path}: format_version {version!r} is not supported (this runtime reads "
            f"{FORMAT_VERSION})"
        )
    for key in ("kind", "name", "files"):
        if key not in manifest:
            raise PackageError(f"{path}: manifest has no {key!r}")
    if manifest["kind"] not in KINDS:
        raise PackageError(f"{path}: kind {manifest['kind']!r} is not one of {KINDS}")
    if "model.onnx" not in manifest["files"]:
        raise PackageError(f"{path}: manifest lists no model.onnx")
    return manifest


def verify_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    """Raise PackageError naming the first file whose size or sha256 differs."""
    for name, facts in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise PackageError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != facts["bytes"]:
            raise PackageError(
                f"{path}: size {size} bytes does not match the manifest ({facts['bytes']})"
            )
        if sha256_file(path) != facts["sha256"]:
            raise PackageError(f"{path}: sha256 does not match the manifest (corrupt file)")


def load_package(path: str | Path, verify: bool = True) -> ModelPackage:
    """Open a package directory, checking manifest and (by default) checksums."""
    root = Path(path).expanduser().resolve()
    manifest = _read_manifest(root)
    if verify:
        verify_files(root, manifest["files"])
    return ModelPackage(root=root, manifest=manifest)
