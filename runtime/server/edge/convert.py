"""Pure conversions between the EdgeRuntime messages (runtime.proto) and the engines' types.

Requests are checked here, before they take a slot, so a malformed request costs
no queue place; the engine re-validates what only it can judge (the prompt's token
count against the context length). For Classify the cheap checks (image count,
top_k, byte sizes) run before anything is decoded, so an oversized request costs no
decoding; `prepare_images` then decodes and preprocesses one request's images (on a
thread: it is CPU work).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from runtime.errors import InvalidRequest
from runtime.llm.chat_template import ChatMessage, Conversation
from runtime.llm.engine import GenerationEvent, Prompt
from runtime.llm.sampling import SamplingParams
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.core.decode_pool import total_pixels
from runtime.server.core.registry import ModelEntry, ModelState
from runtime.vision.decode import check_bytes, decode_cost_pixels, decode_image, tensor_image
from runtime.vision.serving_config import ImageLimits

FINISH_REASONS = {
    "length": pb.FINISH_REASON_LENGTH,
    "stop": pb.FINISH_REASON_STOP,
    "eos": pb.FINISH_REASON_EOS,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}
MODEL_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
MODEL_KINDS = {"llm": pb.MODEL_KIND_LLM, "vision": pb.MODEL_KIND_VISION}
# The optional scalar fields of SamplingParams that map one to one onto the engine's.
_SAMPLING_FIELDS = (
    "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "ignore_eos",
)


def sampling_from_proto(message: pb.SamplingParams) -> SamplingParams:
    """Unset fields keep the engine's defaults; raises InvalidRequest naming a bad field."""
    values = {name: getattr(message, name) for name in _SAMPLING_FIELDS if message.HasField(name)}
    params = SamplingParams(**values, stop=tuple(message.stop))
    params.validate()
    return params


def prompt_from_proto(request: pb.GenerateRequest) -> Prompt:
    which = request.WhichOneof("prompt")
    if which == "text" and request.text:
        return request.text
    if which == "token_ids" and request.token_ids.ids:
        return list(request.token_ids.ids)
    if which == "messages":
        return conversation_from_proto(request.messages.messages)
    raise InvalidRequest("prompt", "must not be empty: set text, token_ids or messages")


def conversation_from_proto(messages: Sequence[pb.ChatMessage]) -> Conversation:
    """Roles and contents must be there (an assistant's reply may be empty: a model can
    end its turn at once); which roles are known is the template's call."""
    if not messages:
        raise InvalidRequest("messages", "must hold at least one message")
    for i, message in enumerate(messages):
        if not message.role or not message.role.isprintable():
            raise InvalidRequest(f"messages[{i}].role",
                                 "must be a printable name such as user, assistant or system")
        if not message.content and message.role != "assistant":
            raise InvalidRequest(f"messages[{i}].content", "must not be empty")
    return Conversation(tuple(ChatMessage(m.role, m.content) for m in messages))


MAX_REQUEST_ID_CHARS = 128


def request_id_from_proto(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidRequest(
            "request_id", f"must be printable and at most {MAX_REQUEST_ID_CHARS} characters"
        )
    return request_id


def model_name_from_proto(name: str) -> str:
    if not name:
        raise InvalidRequest("model", "must name a model (see ListModels)")
    return name


def event_to_proto(
    event: GenerationEvent, request_id: str, received_at: float
) -> pb.GenerateResponse:
    """One engine event -> one streamed message; the last one carries the stats.

    `received_at` is the time.monotonic() at which the daemon got the request: the
    time until the engine started is the queue wait, and total_s includes it.
    """
    response = pb.GenerateResponse(
        request_id=request_id, text=event.text, token_ids=list(event.token_ids)
    )
    if event.finish_reason is not None:
        response.finish_reason = FINISH_REASONS[event.finish_reason]
    if event.stats is not None:
        s = event.stats
        response.stats.CopyFrom(pb.GenerationStats(
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            time_to_first_token_s=s.time_to_first_token_s,
            prefill_s=s.prefill_s,
            decode_s=s.decode_s,
            decode_tokens_per_s=s.decode_tokens_per_s,
            queue_s=s.started_at - received_at,
            total_s=s.finished_at - received_at,
        ))
    return response


def _pruning_summary(pruning: dict | None) -> str:
    """`{"method": "magrip", "ffn_widths": [40, 96]}` -> "magrip, ffn widths 40-96"."""
    if not pruning:
        return ""
    parts = [str(pruning.get("method", "pruned"))]
    widths: Sequence[int] = pruning.get("ffn_widths") or ()
    if widths:
        parts.append(f"ffn widths {min(widths)}-{max(widths)}")
    for key, value in sorted(pruning.items()):
        if key not in ("method", "ffn_widths") and isinstance(value, (str, int, float)):
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _quantization_summary(quantization: dict | None) -> str:
    """`{"weights": "ternary", "activations": "int8"}` -> "weights ternary, activations int8"."""
    if not quantization:
        return ""
    return ", ".join(f"{key} {value}" for key, value in quantization.items()
                     if isinstance(value, (str, int, float)))


def model_info(entry: ModelEntry, power_source: str = "") -> pb.ModelInfo:
    """What ListModels and GetModel say of a model, in any state."""
    manifest = entry.manifest
    info = pb.ModelInfo(
        name=entry.name,
        power_source=power_source,
        state=MODEL_STATES[entry.state],
        error=entry.error,
        package_path=str(entry.config.path),
        backend=entry.config.backend,
        max_concurrent=entry.admission.max_concurrent,
        max_queue=entry.admission.max_queue,
    )
    info.active_requests, info.queued_requests = entry.queue_counts()
    if entry.model is not None:
        info.backend = entry.model.backend_name
        info.execution_providers.extend(entry.model.providers)
        info.backend_reason = entry.model.backend_reason
        info.execution = entry.model.execution
        if entry.model.kind == "llm":
            info.context_length = entry.text_generator().context_length
    if manifest:
        info.kind = MODEL_KINDS.get(manifest.get("kind"), pb.MODEL_KIND_UNSPECIFIED)
        info.package_name = str(manifest.get("name", ""))
        info.parameters = int(manifest.get("parameters") or 0)
        info.bytes = sum(int(f.get("bytes", 0)) for f in manifest.get("files", {}).values())
        info.pruning = _pruning_summary(manifest.get("pruning"))
        info.quantization = _quantization_summary(manifest.get("quantization"))
        info.manifest_json = json.dumps(manifest, sort_keys=True)
    return info


# ---- Classify ------------------------------------------------------------------------
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
