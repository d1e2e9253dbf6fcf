"""A checkpoint's safetensors weights, read one tensor at a time.

Published checkpoints are bf16 or fp16 and sharded (`model.safetensors.index.json` naming
`model-0000N-of-0000M.safetensors`). A 3B model is 6.4 GB in bf16 and 12.8 GB once widened
to float32, so nothing here holds more than the tensor asked for: each read opens its
shard, copies that tensor out (in blocks of rows) and closes the shard again, because an
open shard's memory map counts every page read so far as resident memory.

Phi-3 stores fused projections; they are offered under the names the rest of the exporter
uses, each a block of rows of the stored tensor:
    self_attn.qkv_proj  (q + 2 kv rows, hidden) -> q_proj, k_proj, v_proj
    mlp.gate_up_proj    (2 width, hidden)       -> gate_proj, up_proj
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter.errors import CheckpointError

if TYPE_CHECKING:
    import torch

FLOAT_DTYPES = ("BF16", "F16", "F32")  # safetensors dtype names the exporter widens to fp32
BLOCK_BYTES = 64 << 20  # rows copied per step: a tied 128k x 3072 embedding is 0.8 GB in bf16
FUSED = {  # fused projection -> the parts it stacks along its rows
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


@dataclass(frozen=True)
class Stored:
    """Where a named weight lives: a tensor of a file, or a block of its rows."""

    file: Path
    name: str  # the tensor's name in the file
    rows: tuple[int, int] | None = None  # [start, stop) of a fused tensor's rows


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (one file, or the index's shards)."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        with _open(single) as f:
            return {name: single for name in f.keys()}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
        missing = sorted({s for s in weight_map.values() if not (model_dir / s).is_file()})
        if missing:
            raise CheckpointError(f"{model_dir / missing[0]}: weight shard listed in the index "
                                  "is missing")
        return {name: model_dir / shard for name, shard in weight_map.items()}
    if (model_dir / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{model_dir}: only pytorch_model.bin found; e2edge loads safetensors only "
            "(no pickle): convert it with transformers' save_pretrained(safe_serialization=True)"
        )
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def _open(path: Path):
    """The file, opened by safetensors (its tensors as torch); CheckpointError if unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from e


class CheckpointWeights(Mapping[str, np.ndarray]):
    """The checkpoint's tensors by (unfused) name; `weights[name]` reads one as float32.

    `qkv_rows`: the (q, k, v) row counts of a fused qkv_proj, from the config's heads.
    """

    def __init__(self, model_dir: str | Path, qkv_rows: tuple[int, int, int] | None = None):
        self.model_dir = Path(model_dir)
        self.files = weight_files(self.model_dir)
        self._shapes: dict[str, tuple[int, ...]] = {}  # stored name -> its shape
        for path in sorted(set(self.files.values())):
            with _open(path) as f:
                for name in f.keys():
                    tensor = f.get_slice(name)
                    if tensor.get_dtype() not in FLOAT_DTYPES:
                        raise CheckpointError(
                            f"{path}: {name} is stored as {tensor.get_dtype()}; e2edge reads "
                            f"{', '.join(FLOAT_DTYPES)} weights, not pre-quantised ones")
                    self._shapes[name] = tuple(tensor.get_shape())
        missing = sorted(set(self.files) - set(self._shapes))
        if missing:
            raise CheckpointError(f"{self.files[missing[0]]}: has no tensor {missing[0]} "
                                  "(the index says it does)")
        self._stored = {name: Stored(path, name) for name, path in self.files.items()}
        for name in list(self._stored):
            for fused, parts in FUSED.items():
                if name.endswith(f".{fused}.weight"):
                    self._unfuse(name, fused, parts, qkv_rows)

    def _unfuse(self, name: str, fused: str, parts: tuple[str, ...],
                qkv_rows: tuple[int, int, int] | None) -> None:
        rows = self.stored_shape(name)[0]
        sizes = (rows // 2, rows // 2) if len(parts) == 2 else qkv_rows
        if sizes is None or sum(sizes) != rows:
            raise CheckpointError(f"{name}: {rows} rows do not split into {parts} "
                                  f"of {sizes} rows")
        stored, start = self._stored.pop(name), 0
        for part, size in zip(parts, sizes):
            self._stored[name.replace(fused, part)] = Stored(stored.file, name,
                                                             (start, start + size))
            start += size

    # ---- Mapping ----------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def __contains__(self, name: object) -> bool:
        return name in self._stored

    def __getitem__(self, name: str) -> np.ndarray:
        """The weight as a float32 array (bf16 / fp16 widened exactly)."""
        return self.rows(name, 0, self.shape(name)[0])

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the weight as a float32 array."""
        import torch

        stored = self.stored(name)
        offset = stored.rows[0] if stored.rows else 0
        out = torch.empty((stop - start, *self.shape(name)[1:]), dtype=torch.float32)
        self.copy_stored(stored.name, out, (offset + start, offset + stop))
        return out.numpy()

    # ---- shapes and sources -----------------------------------------------------
    def stored(self, name: str) -> Stored:
        if name not in self._stored:
            raise KeyError(name)
        return self._stored[name]

    def stored_shape(self, stored_name: str) -> tuple[int, ...]:
        """The shape of a tensor as the file stores it."""
        return self._shapes[stored_name]

    def shape(self, name: str) -> tuple[int, ...]:
        stored = self.stored(name)
        shape = self.stored_shape(stored.name)
        if stored.rows is None:
            return shape
        return (stored.rows[1] - stored.rows[0], *shape[1:])

    def parameters(self) -> int:
        """Stored parameters (a fused tensor once)."""
        return sum(int(np.prod(self.stored_shape(name))) for name in self.files)

    # ---- copying ----------------------------------------------------------------
    def copy_stored(self, stored_name: str, out: torch.Tensor,
                    rows: tuple[int, int] | None = None) -> None:
        """Copy a stored tensor (or its rows [start, stop)) into `out`, converting its dtype,
        block by block of rows."""
        shape = self.stored_shape(stored_name)
        start, stop = rows or (0, shape[0] if shape else 0)
        if tuple(out.shape) != ((stop - start, *shape[1:]) if shape else ()):
            raise CheckpointError(f"{stored_name}: stored as {list(shape)}, expected "
                                  f"{list(out.shape)}")
        with _open(self.files[stored_name]) as f:
            if not shape:
                out.copy_(f.get_tensor(stored_name))
                return
            tensor = f.get_slice(stored_name)
            step = max(1, BLOCK_BYTES // (int(np.prod(shape[1:])) * 4))
            for row in range(start, stop, step):
                end = min(row + step, stop)
                out[row - start:end - start].copy_(tensor[row:end])
