"""Pure conversions between the wire (runtime.proto) and the engine's types.

Requests are checked here, before they take a slot, so a malformed request costs
no queue place; the engine re-validates what only it can judge (the prompt's token
count against the context length).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from runtime.errors import InvalidRequest
from runtime.llm.engine import GenerationEvent
from runtime.llm.sampling import SamplingParams
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.model_registry import ModelEntry, ModelState

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


def prompt_from_proto(request: pb.GenerateRequest) -> str | list[int]:
    which = request.WhichOneof("prompt")
    if which == "text" and request.text:
        return request.text
    if which == "token_ids" and request.token_ids.ids:
        return list(request.token_ids.ids)
    raise InvalidRequest("prompt", "must not be empty: set text or token_ids")


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
        active_requests=entry.admission.active,
        queued_requests=entry.admission.queued,
    )
    if entry.engine is not None:
        info.backend = entry.engine.backend_name
        info.execution_providers.extend(entry.engine.providers)
        info.context_length = entry.engine.context_length
        batcher = getattr(entry.engine, "batcher", None)  # vision: requests go through it
        if batcher is not None:
            info.active_requests, info.queued_requests = batcher.active, batcher.queued
    if manifest:
        info.kind = MODEL_KINDS.get(manifest.get("kind"), pb.MODEL_KIND_UNSPECIFIED)
        info.package_name = str(manifest.get("name", ""))
        info.parameters = int(manifest.get("parameters") or 0)
        info.bytes = sum(int(f.get("bytes", 0)) for f in manifest.get("files", {}).values())
        info.pruning = _pruning_summary(manifest.get("pruning"))
        info.quantization = _quantization_summary(manifest.get("quantization"))
        info.manifest_json = json.dumps(manifest, sort_keys=True)
    return info
