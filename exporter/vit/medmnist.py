"""MedMNIST-style .npz data: splits, label names, normalisation, seeded batches.

An npz holds `{split}_images` (N, H, W) or (N, H, W, C) uint8 and `{split}_labels`
(N,) or (N, 1) integers for split in train, val, test. Images are preprocessed with
the runtime's own `preprocess` (so training and serving see the same pixels),
resized to the model's size on the fly, batch by batch; training batches are
augmented (flips, translation, optionally rotation and zoom) from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.vision.preprocess import Preprocessing, convert_channels, preprocess, to_float_batch

SPLITS = ("train", "val", "test")

# MedMNIST v2's label names for the files it ships; other files get "0", "1", ...
KNOWN_LABELS = {
    "breastmnist": ["malignant", "normal, benign"],
    "retinamnist": ["0", "1", "2", "3", "4"],  # diabetic retinopathy grade
    "pneumoniamnist": ["normal", "pneumonia"],
    "dermamnist": [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma",
        "melanocytic nevi", "vascular lesions",
    ],
    "bloodmnist": [
        "basophil", "eosinophil", "erythroblast", "immature granulocytes",
        "lymphocyte", "monocyte", "neutrophil", "platelet",
    ],
}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64 in [0, n_classes)


@dataclass(frozen=True)
class MedMNIST:
    name: str
    splits: dict[str, Split]
    label_names: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def channels(self) -> int:
        return self.splits["train"].images.shape[-1]

    def normalisation(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images in [0, 1] after conversion."""
        pixels = convert_channels(to_float_batch(self.splits["train"].images), channels)
        flat = pixels.reshape(-1, channels).astype(np.float64)
        std = np.maximum(flat.std(axis=0), 1e-3)
        return tuple(float(m) for m in flat.mean(axis=0)), tuple(float(s) for s in std)


def _images(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or min(array.shape[:3]) < 1:
        raise ValueError(
            f"{path}: {key} must be (N, H, W) or (N, H, W, C) with C 1 or 3, got {array.shape}"
        )
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: {key} must be uint8 images, got dtype {array.dtype}")
    return array


def _labels(array: np.ndarray, key: str, path: Path, n_images: int) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"{path}: {key} must be (N,) or (N, 1) class indices, got shape {array.shape} "
            "(multi-label datasets are not supported)"
        )
    if len(array) != n_images:
        raise ValueError(f"{path}: {key} has {len(array)} labels for {n_images} images")
    if not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise ValueError(f"{path}: {key} must hold non-negative integer class indices")
    return array.astype(np.int64)


def load_medmnist(path: str | Path) -> MedMNIST:
    """Read and check an npz; raise ValueError naming the key that is missing or wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from e
    with npz:
        missing = [
            f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")
            if f"{s}_{kind}" not in npz.files
        ]
        if missing:
            raise ValueError(
                f"{path}: missing keys {missing}; a MedMNIST-style npz needs "
                f"{{train,val,test}}_images and {{train,val,test}}_labels (has {npz.files})"
            )
        splits = {}
        for split in SPLITS:
            images = _images(npz[f"{split}_images"], f"{split}_images", path)
            labels = _labels(npz[f"{split}_labels"], f"{split}_labels", path, len(images))
            splits[split] = Split(images, labels)
    shapes = {s.images.shape[1:] for s in splits.values()}
    if len(shapes) != 1:
        raise ValueError(f"{path}: splits have different image shapes {sorted(shapes)}")
    n_classes = int(max(s.labels.max() for s in splits.values())) + 1
    name = path.stem.split("_")[0].lower()
    names = KNOWN_LABELS.get(name)
    if names is None or len(names) != n_classes:
        names = [str(i) for i in range(n_classes)]
    return MedMNIST(name=name, splits=splits, label_names=list(names))


@dataclass(frozen=True)
class Augmentation:
    hflip: bool = True
    vflip: bool = False
    max_shift: int = 2
    rotation: float = 0.0  # max degrees of random rotation (0: off)
    scale: float = 0.0  # max relative zoom: factor uniform in [1 - scale, 1 + scale] (0: off)


def rotate_and_zoom(
    batch: np.ndarray,  # (B, C, S, S)
    degrees: np.ndarray,  # (B,) rotation per image, clockwise as displayed (rows down)
    zoom: np.ndarray,  # (B,) > 0; above 1 enlarges the content
) -> np.ndarray:
    """Rotate and zoom each image about its centre; bilinear, edges extended (like the
    edge-padded translation), so no black corners appear that the test images never have."""
    n, _, size, _ = batch.shape
    centre = (size - 1) / 2.0
    ys, xs = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
    theta = np.deg2rad(degrees)[:, None, None]
    inv = 1.0 / zoom[:, None, None]
    # Inverse map: each output pixel samples the source at R(-theta) * p / zoom.
    cos, sin = np.cos(theta), np.sin(theta)
    src_y = np.clip((cos * ys - sin * xs) * inv + centre, 0, size - 1)  # (B, S, S)
    src_x = np.clip((sin * ys + cos * xs) * inv + centre, 0, size - 1)
    y0 = np.minimum(np.floor(src_y).astype(np.int64), size - 2 if size > 1 else 0)
    x0 = np.minimum(np.floor(src_x).astype(np.int64), size - 2 if size > 1 else 0)
    y1, x1 = np.minimum(y0 + 1, size - 1), np.minimum(x0 + 1, size - 1)
    wy, wx = (src_y - y0)[:, None], (src_x - x0)[:, None]  # (B, 1, S, S)
    b = np.arange(n)[:, None, None]

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return batch[b, :, yy, xx].transpose(0, 3, 1, 2)  # (B, S, S, C) -> (B, C, S, S)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).astype(batch.dtype)


def augment(batch: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """(B, C, S, S) normalised -> same shape: random flips, rotation and zoom, and
    edge-padded translation."""
    out = batch.copy()
    n = len(out)
    if aug.hflip:
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, :, :, ::-1]
    if aug.vflip:
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, :, ::-1, :]
    if aug.rotation > 0 or aug.scale > 0:
        # Drawn only when enabled, so recipes without them keep their random stream.
        degrees = rng.uniform(-aug.rotation, aug.rotation, n)
        zoom = rng.uniform(1 - aug.scale, 1 + aug.scale, n)
        out = rotate_and_zoom(out, degrees, zoom)
    if aug.max_shift > 0:
        m = aug.max_shift
        size = out.shape[-1]
        padded = np.pad(out, ((0, 0), (0, 0), (m, m), (m, m)), mode="edge")
        dy, dx = rng.integers(0, 2 * m + 1, size=(2, n))
        for i in range(n):
            out[i] = padded[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size]
    return out


def batches(
    split: Split,
    spec: Preprocessing,
    batch_size: int,
    rng: np.random.Generator | None = None,
    aug: Augmentation | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (pixels (B, C, S, S) float32, labels (B,) int64); shuffled when rng is given."""
    order = rng.permutation(len(split.labels)) if rng is not None else np.arange(len(split.labels))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        pixels = preprocess(split.images[index], spec)
        if aug is not None and rng is not None:
            pixels = augment(pixels, aug, rng)
        yield pixels, split.labels[index]


def resolve_npz(name_or_path: str) -> Path:
    """An explicit path, else the project's data resolver (E2EDGE_DATA_DIR, download)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    try:
        from e2edge.data import resolve_data_file
    except ModuleNotFoundError as e:
        if e.name != "e2edge.data":
            raise
        raise FileNotFoundError(f"{name_or_path}: no such data file") from None
    return Path(resolve_data_file(name_or_path))
