"""Pure conversions between the Classify messages (runtime.proto) and numpy.

The cheap checks (image count, top_k, byte sizes) run before anything is decoded,
so an oversized request costs no decoding; `prepare_images` then decodes and
preprocesses one request's images (on a thread: it is CPU work).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.errors import InvalidRequest
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.decode_pool import total_pixels
from runtime.vision.decode import check_bytes, decode_cost_pixels, decode_image, tensor_image
from runtime.vision.serving_config import ImageLimits

FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: None,  # detected from the bytes
    pb.IMAGE_FORMAT_PNG: "png",
    pb.IMAGE_FORMAT_JPEG: "jpeg",
    pb.IMAGE_FORMAT_DICOM: "dicom",
}
DTYPES = {pb.TENSOR_DTYPE_UINT8: "uint8", pb.TENSOR_DTYPE_FLOAT32: "float32"}
FORMAT_BY_NAME = {name: value for value, name in FORMATS.items() if name is not None}
DTYPE_BY_NAME = {name: value for value, name in DTYPES.items()}


def check_images(images: Sequence[pb.Image], limits: ImageLimits) -> None:
    """Count and byte sizes, before any decoding."""
    if not images:
        raise InvalidRequest("images", "must hold at least one image")
    if len(images) > limits.max_images:
        raise InvalidRequest("images", f"{len(images)} images exceeds the limit max_images "
                                       f"{limits.max_images}")
    for i, image in enumerate(images):
        which = image.WhichOneof("source")
        if which is None:
            raise InvalidRequest(f"images[{i}]", "set encoded or tensor")
        data = image.encoded.data if which == "encoded" else image.tensor.data
        check_bytes(len(data), limits, f"images[{i}]")


def request_pixels(images: Sequence[pb.Image]) -> int | None:
    """Pixels the request's images declare (headers, tensor shapes); None: not known cheaply."""
    return total_pixels(_declared(image) for image in images)


def _declared(image: pb.Image) -> int | None:
    if image.WhichOneof("source") == "encoded":
        return decode_cost_pixels(image.encoded.data)
    if len(image.tensor.shape) in (2, 3):
        return image.tensor.shape[0] * image.tensor.shape[1]
    return None  # malformed: the decoding thread reports it


def image_pixels(image: pb.Image, limits: ImageLimits, field: str) -> np.ndarray:
    """One Image message -> decoded pixels (uint8 or float32 [0, 1], channels last)."""
    if image.WhichOneof("source") == "encoded":
        if image.encoded.format not in FORMATS:
            raise InvalidRequest(f"{field}.format", f"unknown format {image.encoded.format}")
        return decode_image(image.encoded.data, limits, FORMATS[image.encoded.format], field)
    tensor = image.tensor
    if tensor.dtype not in DTYPES:
        raise InvalidRequest(f"{field}.dtype", "must be TENSOR_DTYPE_UINT8 or "
                                               "TENSOR_DTYPE_FLOAT32")
    return tensor_image(DTYPES[tensor.dtype], tuple(tensor.shape), tensor.data, limits, field)


def prepare_images(images: Sequence[pb.Image], limits: ImageLimits, preprocess) -> np.ndarray:
    """Decode and preprocess every image -> (n, C, S, S) float32; the first bad one raises."""
    rows = []
    for i, image in enumerate(images):
        field = f"images[{i}]"
        pixels = image_pixels(image, limits, field)
        try:
            rows.append(preprocess(pixels))  # (1, C, S, S)
        except InvalidRequest as e:
            raise InvalidRequest(field, str(e).removeprefix(f"{e.field}: ")) from None
    return np.concatenate(rows)


def classifications(top: list[list[tuple[str, int, float]]]) -> list[pb.Classification]:
    return [pb.Classification(top=[pb.LabelScore(label=label, index=index, probability=p)
                                   for label, index, p in image])
            for image in top]


# ---- client side ---------------------------------------------------------------------
def encoded_image(data: bytes, fmt: str | None = None) -> pb.Image:
    """An Image message of file bytes; `fmt` png | jpeg | dicom, None = detect."""
    if fmt is not None and fmt not in FORMAT_BY_NAME:
        raise ValueError(f"format must be one of {', '.join(FORMAT_BY_NAME)}, got {fmt!r}")
    return pb.Image(encoded=pb.EncodedImage(
        data=data, format=FORMAT_BY_NAME[fmt] if fmt else pb.IMAGE_FORMAT_UNSPECIFIED))


def tensor_message(pixels: np.ndarray) -> pb.Image:
    """An Image message of raw pixels: uint8 or float32, (H, W) or (H, W, C)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        name = "uint8"
    elif pixels.dtype == np.float32:
        name = "float32"
    else:
        raise ValueError(f"pixels must be uint8 or float32, got {pixels.dtype}")
    data = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    return pb.Image(tensor=pb.Tensor(dtype=DTYPE_BY_NAME[name], shape=list(pixels.shape),
                                     data=data))
