"""A KServe inference request to a vision package: image tensors in, probabilities out.

One input (KServe datatype -> what it holds):
    BYTES  [n] or [n, 1]      n encoded images (PNG, JPEG, DICOM: detected from the bytes)
    UINT8  [H, W] | [H, W, C] one image, 0..255;  [N, H, W, C]: N images
    FP32   the same shapes, pixels in [0, 1]
Output `probabilities` FP32 [n, classes], or with the requested output parameter
`classification: k` Triton's classification extension: BYTES [n, k] "score:index:label",
most likely first. Images are decoded where Classify decodes them (small ones on the
event loop, others on the daemon's decoding threads); the model runs through the
model's batcher on its worker threads, exactly as Classify does.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InvalidRequest
from runtime.proto.kserve import grpc_service_pb2 as kpb
from runtime.server.core.decode_pool import ImageDecoding, total_pixels
from runtime.server.core.registry import ModelEntry
from runtime.server.core.served_model import ImageClassifier
from runtime.server.kserve import convert as kc
from runtime.vision.decode import decode_cost_pixels, decode_image, tensor_image

OUTPUT = "probabilities"
TENSOR_DTYPES = {np.dtype("<u1"): "uint8", np.dtype("<f4"): "float32"}


def images(tensor: np.ndarray, limits, field: str) -> list[np.ndarray]:
    """The request tensor -> decoded images (uint8 or float32 [0, 1], channels last)."""
    if tensor.dtype == object:
        if tensor.ndim not in (1, 2) or (tensor.ndim == 2 and tensor.shape[1] != 1):
            raise InvalidRequest(field, f"BYTES images must be shaped [n] or [n, 1], got "
                                        f"{list(tensor.shape)}")
        encoded = list(tensor.reshape(-1))
        _check_count(len(encoded), limits, field)
        return [decode_image(data, limits, None, f"{field}[{i}]")
                for i, data in enumerate(encoded)]
    if tensor.dtype not in TENSOR_DTYPES:
        raise InvalidRequest(field, f"image pixels must be UINT8 or FP32 (or BYTES encoded), "
                                    f"got {tensor.dtype}")
    if tensor.ndim == 4:
        batch = tensor
    elif tensor.ndim in (2, 3):
        batch = tensor[None]
    else:
        raise InvalidRequest(field, f"must be [H, W], [H, W, C] or [N, H, W, C], got "
                                    f"{list(tensor.shape)}")
    _check_count(len(batch), limits, field)
    dtype = TENSOR_DTYPES[tensor.dtype]
    return [tensor_image(dtype, image.shape, np.ascontiguousarray(image).tobytes(), limits,
                         f"{field}[{i}]") for i, image in enumerate(batch)]


def _check_count(n: int, limits, field: str) -> None:
    if n < 1:
        raise InvalidRequest(field, "holds no image")
    if n > limits.max_images:
        raise InvalidRequest(field, f"{n} images exceeds the limit max_images "
                                    f"{limits.max_images}")


def prepare(tensor: np.ndarray, model: ImageClassifier, field: str) -> np.ndarray:
    """-> (n, C, S, S) float32, preprocessed as the package says."""
    rows = []
    for i, image in enumerate(images(tensor, model.limits, field)):
        try:
            rows.append(model.preprocess(image))  # (1, C, S, S)
        except InvalidRequest as e:
            raise InvalidRequest(f"{field}[{i}]", str(e).removeprefix(f"{e.field}: ")) from None
    return np.concatenate(rows)


def _classes_requested(request: kpb.ModelInferRequest, n_classes: int) -> int | None:
    """k of a requested output's `classification` parameter; None: plain probabilities."""
    k = None
    for output in request.outputs:
        if output.name != OUTPUT:
            raise InvalidRequest("outputs", f"a vision model has one output, {OUTPUT!r}; "
                                            f"got {output.name!r}")
        if "classification" in output.parameters:
            value = output.parameters["classification"]
            if value.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
                raise InvalidRequest("outputs.parameters.classification", "must be an integer")
            k = int(getattr(value, value.WhichOneof("parameter_choice")))
            if not 1 <= k <= n_classes:
                raise InvalidRequest("outputs.parameters.classification",
                                     f"must be between 1 and {n_classes}, got {k}")
    return k


def tensor_pixels(tensor: np.ndarray) -> int | None:
    """Pixels the request tensor holds or its encoded images declare; None: not known cheaply."""
    if tensor.dtype != object:
        if tensor.ndim not in (2, 3, 4):
            return None  # malformed: the decoding thread reports it
        images = tensor.shape[0] if tensor.ndim == 4 else 1
        height, width = tensor.shape[-3:-1] if tensor.ndim == 4 else tensor.shape[:2]
        return images * height * width
    return total_pixels(decode_cost_pixels(data) if isinstance(data, bytes) else None
                        for data in tensor.reshape(-1))


async def classify(entry: ModelEntry, request: kpb.ModelInferRequest,
                   tensors: dict[str, np.ndarray], response: kpb.ModelInferResponse, stats,
                   decoding: ImageDecoding) -> None:
    model = entry.image_classifier(f"{entry.name!r} cannot classify images", "model_name")
    if len(tensors) != 1:
        raise InvalidRequest("inputs", f"a vision model takes one input ('image'), got "
                                       f"{len(tensors)}")
    (name, tensor), = tensors.items()
    top_k = _classes_requested(request, len(model.labels))
    pixels = await decoding.run(tensor_pixels(tensor), prepare, tensor, model, f"inputs ({name})")
    result = await model.batcher_on(entry.executor).submit(pixels)
    stats.queue.add(result.queue_s)
    stats.compute_infer.add(result.run_s)
    probabilities = result.outputs.astype(np.float32)  # (n, classes)
    if top_k is None:
        kc.add_output(response, OUTPUT, probabilities, "FP32")
        return
    rows = [[f"{p:f}:{index}:{label}".encode() for label, index, p in best]
            for best in model.top(probabilities, top_k)]
    kc.add_output(response, OUTPUT, np.array(rows, dtype=object), "BYTES")
