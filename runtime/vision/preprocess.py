"""Image preprocessing, defined once for training (exporter) and serving (runtime).

    input   uint8 (H, W), (H, W, C) or a batch (B, H, W[, C]); or float in [0, 1]
    1. scale to float32 [0, 1] (uint8 / 255)
    2. channels: grey -> RGB repeats, RGB -> grey is ITU-R 601 luma, alpha is dropped
    3. resize to (size, size) with a separable triangle (bilinear) filter whose support
       widens when shrinking (antialiased, like Pillow's BILINEAR): out = Rh @ img @ Rw.T
    4. normalise per channel: (x - mean) / std
    output  float32 (B, C, size, size)

Pure numpy, so the device needs neither torch nor Pillow, and training and serving
compute the same pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"


@dataclass(frozen=True)
class Preprocessing:
    """What a vision model expects; stored in the package manifest."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "bilinear-antialias"
    input_scale: str = "uint8/255"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        if self.size < 1:
            raise ValueError("size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            size=int(data["size"]),
            channels=int(data["channels"]),
            mean=tuple(float(m) for m in data["mean"]),
            std=tuple(float(s) for s in data["std"]),
            resize=data.get("resize", "bilinear-antialias"),
            input_scale=data.get("input_scale", "uint8/255"),
        )


@lru_cache(maxsize=32)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of a 1-D triangle-filter resize; rows sum to 1.

    Pixel centres sit at i + 0.5; output pixel i samples input position
    (i + 0.5) * n_in / n_out with a triangle of radius max(1, n_in / n_out) input
    pixels, truncated at the borders and renormalised. n_in == n_out is the identity.
    """
    scale = n_in / n_out
    radius = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale  # (n_out,)
    positions = np.arange(n_in) + 0.5  # (n_in,)
    weights = np.maximum(0.0, 1.0 - np.abs(positions[None, :] - centres[:, None]) / radius)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def to_float_batch(images: np.ndarray) -> np.ndarray:
    """uint8 or float images -> float32 (B, H, W, C) in [0, 1]; single images get B=1."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    else:
        raise ValueError(f"images must be uint8 or float, got dtype {array.dtype}")
    if array.ndim == 2:  # (H, W) grey
        array = array[None, :, :, None]
    elif array.ndim == 3:  # (H, W, C) with C in 1, 3, 4; else a batch of grey (B, H, W)
        array = array[None] if array.shape[-1] in (1, 3, 4) else array[..., None]
    elif array.ndim != 4:
        raise ValueError(f"images must be (H, W), (H, W, C) or (B, H, W[, C]), got {array.shape}")
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels, got shape {array.shape}")
    if min(array.shape[1:3]) < 1 or array.shape[0] < 1:
        raise ValueError(f"empty image batch of shape {array.shape}")
    return array


def convert_channels(batch: np.ndarray, channels: int) -> np.ndarray:
    """(B, H, W, C_in) -> (B, H, W, channels)."""
    if batch.shape[-1] == 4:
        batch = batch[..., :3]  # alpha carries no image content here
    have = batch.shape[-1]
    if have == channels:
        return batch
    if channels == 3:  # have == 1
        return np.repeat(batch, 3, axis=-1)
    return np.einsum("bhwc,c->bhw", batch, LUMA)[..., None]


def resize(batch: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W, C) float32 -> (B, size, size, C)."""
    _, h, w, _ = batch.shape
    if (h, w) == (size, size):
        return batch
    rows, cols = resize_matrix(h, size), resize_matrix(w, size)  # (S, H), (S, W)
    # Two matrix products per plane: for the small images a daemon gets most, 3x faster
    # than an einsum, whose contraction-path search per call costs more than the resize.
    planes = np.moveaxis(batch, -1, 1)  # (B, C, H, W), a view
    return np.moveaxis(rows @ planes @ cols.T, 1, -1).astype(np.float32, copy=False)


def preprocess(images: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Images -> float32 (B, C, size, size), ready for the model's `pixel_values`."""
    batch = resize(convert_channels(to_float_batch(images), spec.channels), spec.size)
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    normalised = (batch - mean) * inv_std  # (B, S, S, C)
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))
