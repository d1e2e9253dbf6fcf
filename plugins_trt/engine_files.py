"""TensorRT engine files inside a model package: names, sidecars, and which one to load.

    engines/<gpu>-sm<cc>-trt<version>.plan   the serialized engine
    engines/<gpu>-sm<cc>-trt<version>.json   its sidecar: TensorRT version, GPU, compute
                                             capability, plugin versions, build flags and
                                             profiles, sha256 of the model.onnx it came from

An engine only runs on the GPU model and TensorRT version that built it, and is stale once
model.onnx changes, so selection checks all three and says which one failed. Pure file
logic: no TensorRT or GPU needed, which is why it is tested everywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINE_DIR = "engines"
SIDECAR_FORMAT = "e2edge-trt-engine"
SIDECAR_VERSION = 1


def engine_stem(gpu_slug: str, cc: int, trt_version: str) -> str:
    """'nvidia-h100-80gb-hbm3-sm90-trt10.3.0', 'orin-sm87-trt10.3.0'."""
    return f"{gpu_slug}-sm{cc}-trt{trt_version}"


def engine_paths(package_root: Path, stem: str) -> tuple[Path, Path]:
    folder = Path(package_root) / ENGINE_DIR
    return folder / f"{stem}.plan", folder / f"{stem}.json"


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_engine(package_root: Path, stem: str, plan: bytes, sidecar: dict[str, Any]) -> Path:
    """Write plan then sidecar, each atomically; an engine without a sidecar is never chosen,
    so a build killed between the two leaves nothing that loads."""
    plan_path, sidecar_path = engine_paths(package_root, stem)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(plan_path, plan)
    full = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "plan": plan_path.name,
        "plan_bytes": len(plan),
        **sidecar,
    }
    _write_atomically(sidecar_path, (json.dumps(full, indent=2) + "\n").encode())
    return plan_path


@dataclass(frozen=True)
class EngineChoice:
    plan: Path | None  # None when no engine fits; `reason` says why
    sidecar: dict[str, Any]
    reason: str


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def select_engine(
    package_root: Path, gpu_slug: str, cc: int, trt_version: str, onnx_sha256: str
) -> EngineChoice:
    """The engine for this GPU and TensorRT version built from this model.onnx, or why not."""
    root = Path(package_root)
    stem = engine_stem(gpu_slug, cc, trt_version)
    plan_path, sidecar_path = engine_paths(root, stem)
    hint = f"build one on this machine with `e2edge build-engine {root}`"
    folder = root / ENGINE_DIR
    present = sorted(p.stem for p in folder.glob("*.plan")) if folder.is_dir() else []
    if not present:
        return EngineChoice(None, {}, f"{root} has no TensorRT engine; {hint}")
    if not plan_path.is_file():
        return EngineChoice(
            None,
            {},
            f"{root} has engines for {', '.join(present)} but none for {stem} "
            f"(this GPU, sm{cc}, TensorRT {trt_version}); {hint}",
        )
    sidecar = _read_sidecar(sidecar_path)
    if sidecar is None:
        return EngineChoice(
            None, {}, f"{plan_path}: sidecar {sidecar_path.name} missing or unreadable; {hint}"
        )
    if sidecar.get("tensorrt_version") != trt_version or sidecar.get("compute_capability") != cc:
        return EngineChoice(
            None,
            sidecar,
            f"{plan_path}: built with TensorRT {sidecar.get('tensorrt_version')} for "
            f"sm{sidecar.get('compute_capability')}, this is TensorRT {trt_version} on "
            f"sm{cc}; {hint}",
        )
    if sidecar.get("model_onnx_sha256") != onnx_sha256:
        return EngineChoice(
            None,
            sidecar,
            f"{plan_path}: built from a different model.onnx (sha256 mismatch), so it is "
            f"stale; {hint}",
        )
    if plan_path.stat().st_size != sidecar.get("plan_bytes"):
        return EngineChoice(
            None, sidecar, f"{plan_path}: size differs from its sidecar (truncated?); {hint}"
        )
    return EngineChoice(plan_path, sidecar, "")
