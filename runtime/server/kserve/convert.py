"""KServe v2 tensors <-> numpy, and an LLM request's inputs -> prompt and sampling.

Tensors arrive either as `raw_input_contents` (one entry per input, in order: the
flattened little-endian elements; a BYTES element is a 4-byte little-endian length
then its bytes) or in the `contents` field of their datatype. Every check names the
input, e.g. `inputs[0] (text_input)`, and fails with InvalidRequest (INVALID_ARGUMENT).

LLM requests follow Triton's LLM models (vLLM, TensorRT-LLM): BYTES `text_input`,
optional scalar inputs `max_tokens`, `temperature`, `top_k`, `top_p`,
`repetition_penalty`, `random_seed`, `ignore_eos`, `stream`, BYTES `stop_words`; the
same names also work as request parameters (a parameter wins over nothing, an input
over a parameter). The answer is BYTES `text_output`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.errors import InvalidRequest
from runtime.llm.sampling import SamplingParams
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.proto.kserve import grpc_service_pb2 as kpb
from runtime.server.edge import convert as edge_convert

# KServe datatype -> (numpy dtype, InferTensorContents field)
DATATYPES: dict[str, tuple[np.dtype | None, str]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "BYTES": (None, "bytes_contents"),
}
MAX_DIMS = 8
LLM_INPUT = "text_input"
LLM_OUTPUT = "text_output"
# name -> (kind, e2edge SamplingParams field); kind picks how the value is read.
LLM_OPTIONS = {
    "max_tokens": ("int", "max_new_tokens"),
    "temperature": ("float", "temperature"),
    "top_k": ("int", "top_k"),
    "top_p": ("float", "top_p"),
    "repetition_penalty": ("float", "repetition_penalty"),
    "random_seed": ("int", "seed"),
    "ignore_eos": ("bool", "ignore_eos"),
}
STREAM = "stream"
STOP_WORDS = "stop_words"


# ---- BYTES elements ----------------------------------------------------------------
def serialize_bytes(values: Sequence[bytes]) -> bytes:
    """[b"ab", b""] -> b"\\x02\\x00\\x00\\x00ab\\x00\\x00\\x00\\x00" (length-prefixed, LE)."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def deserialize_bytes(raw: bytes, count: int, field: str) -> list[bytes]:
    """The inverse of serialize_bytes, for exactly `count` elements."""
    values, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidRequest(field, f"raw BYTES data ends inside element {len(values)}: "
                                        f"each element is a 4-byte length then its bytes")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(field, f"raw BYTES element {len(values)} claims {length} "
                                        f"bytes; only {len(raw) - offset} remain")
        values.append(bytes(raw[offset:offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidRequest(field, f"{len(raw) - offset} bytes after the {count} BYTES "
                                    f"elements the shape asks for")
    return values


# ---- request tensors ---------------------------------------------------------------
def _shape(tensor, field: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidRequest(f"{field}.shape", f"must be up to {MAX_DIMS} sizes >= 0, got "
                                               f"{list(shape)}")
    return shape


def input_tensors(request: kpb.ModelInferRequest, max_bytes: int) -> dict[str, np.ndarray]:
    """name -> array (BYTES: an object array of bytes) for every input of the request."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest("raw_input_contents", f"has {len(raw)} entries for "
                                                   f"{len(request.inputs)} inputs")
    tensors: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}] ({tensor.name})" if tensor.name else f"inputs[{i}]"
        if not tensor.name:
            raise InvalidRequest(f"{field}.name", "every input needs a name")
        if tensor.name in tensors:
            raise InvalidRequest(f"{field}.name", f"input {tensor.name!r} is given twice")
        if tensor.datatype not in DATATYPES:
            raise InvalidRequest(f"{field}.datatype", f"must be one of "
                                                      f"{', '.join(DATATYPES)}, got "
                                                      f"{tensor.datatype!r}")
        shape = _shape(tensor, field)
        count = math.prod(shape)
        dtype, contents_field = DATATYPES[tensor.datatype]
        # An empty tensor's other sizes count too: numpy refuses shapes past its index range.
        extent = math.prod(d for d in shape if d)
        if max(count, extent) * (dtype.itemsize if dtype is not None else 4) > max_bytes:
            raise InvalidRequest(f"{field}.shape", f"{list(shape)} exceeds the "
                                                   f"{max_bytes}-byte limit")
        contents = getattr(tensor.contents, contents_field)
        if raw and tensor.HasField("contents"):
            raise InvalidRequest(f"{field}.contents", "give contents or raw_input_contents, "
                                                      "not both")
        if raw:
            data = raw[i]
            if dtype is None:
                array = np.empty(count, dtype=object)
                array[:] = deserialize_bytes(data, count, f"raw_input_contents[{i}]")
            else:
                if len(data) != count * dtype.itemsize:
                    raise InvalidRequest(f"raw_input_contents[{i}]",
                                         f"has {len(data)} bytes; shape {list(shape)} of "
                                         f"{tensor.datatype} needs {count * dtype.itemsize}")
                array = np.frombuffer(data, dtype=dtype)
        else:
            if len(contents) != count:
                raise InvalidRequest(f"{field}.contents", f"has {len(contents)} elements; "
                                                          f"shape {list(shape)} needs {count}")
            if dtype is None:
                array = np.empty(count, dtype=object)
                array[:] = [bytes(v) for v in contents]
            else:
                values = np.asarray(contents)
                array = values.astype(dtype)
                if dtype.kind in "iu" and not np.array_equal(array, values):
                    raise InvalidRequest(f"{field}.contents",
                                         f"values do not fit {tensor.datatype}")
        tensors[tensor.name] = array.reshape(shape)
    return tensors


# ---- response tensors --------------------------------------------------------------
def add_output(response: kpb.ModelInferResponse, name: str, array: np.ndarray,
               datatype: str) -> None:
    """Append one output as raw contents (the way Triton answers)."""
    tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
    del tensor  # filled; the data travels in raw_output_contents
    if datatype == "BYTES":
        response.raw_output_contents.append(serialize_bytes(list(array.reshape(-1))))
    else:
        dtype = DATATYPES[datatype][0]
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=dtype).tobytes())


def set_parameter(parameters, key: str, value: bool | int | float | str) -> None:
    """A response parameter of the matching InferParameter kind."""
    if isinstance(value, bool):
        parameters[key].bool_param = value
    elif isinstance(value, int):
        parameters[key].int64_param = value
    elif isinstance(value, float):
        parameters[key].double_param = value
    else:
        parameters[key].string_param = value


# ---- LLM requests ------------------------------------------------------------------
@dataclass(frozen=True)
class LLMRequest:
    prompt: str
    params: SamplingParams
    stream: bool


def _parameter_value(parameter: kpb.InferParameter):
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def _scalar(tensor: np.ndarray, field: str):
    if tensor.size != 1:
        raise InvalidRequest(field, f"must hold one value, got shape {list(tensor.shape)}")
    return tensor.reshape(-1)[0]


def _typed(value, kind: str, field: str):
    """A tensor element or parameter value read as `kind` (int | float | bool)."""
    if isinstance(value, (bytes, str)):
        raise InvalidRequest(field, f"must be a number, got {value!r:.40}")
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidRequest(field, f"must be BOOL, got {value!r}")
        return bool(value)
    if kind == "int":
        if isinstance(value, (bool, np.bool_)) or float(value) != int(value):
            raise InvalidRequest(field, f"must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        raise InvalidRequest(field, f"must be a number, got {value!r}")
    return float(value)


def llm_request(tensors: Mapping[str, np.ndarray], parameters: Mapping[str, kpb.InferParameter],
                streaming: bool) -> LLMRequest:
    """The prompt, sampling and streaming choice of a KServe request to an LLM."""
    allowed = {LLM_INPUT, STREAM, STOP_WORDS, *LLM_OPTIONS}
    unknown = sorted(set(tensors) - allowed)
    if unknown:
        raise InvalidRequest("inputs", f"unknown input(s) {', '.join(unknown)}; an LLM takes "
                                       f"{', '.join(sorted(allowed))}")
    if LLM_INPUT not in tensors:
        raise InvalidRequest("inputs", f"missing the BYTES input {LLM_INPUT!r}")
    text = _scalar(tensors[LLM_INPUT], LLM_INPUT)
    if not isinstance(text, bytes):
        raise InvalidRequest(LLM_INPUT, "must be BYTES (UTF-8 text)")
    try:
        prompt = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(LLM_INPUT, f"is not UTF-8 ({e.reason} at byte {e.start})") from None

    values: dict[str, object] = {}
    for name, (kind, target) in LLM_OPTIONS.items():
        if name in tensors:
            values[target] = _typed(_scalar(tensors[name], name), kind, name)
        elif name in parameters:
            value = _parameter_value(parameters[name])
            if value is not None:
                values[target] = _typed(value, kind, f"parameters.{name}")
    stream = streaming
    if STREAM in tensors:
        stream = streaming and _typed(_scalar(tensors[STREAM], STREAM), "bool", STREAM)
    elif STREAM in parameters:
        stream = streaming and _typed(_parameter_value(parameters[STREAM]), "bool",
                                      "parameters.stream")
    stop: list[str] = []
    if STOP_WORDS in tensors:
        for word in tensors[STOP_WORDS].reshape(-1):
            if not isinstance(word, bytes):
                raise InvalidRequest(STOP_WORDS, "must be BYTES")
            stop.append(word.decode("utf-8", errors="replace"))
    # e2edge's own checks and messages for every sampling value (ranges, seeds, stops).
    proto = pb.SamplingParams(stop=stop)
    for target, value in values.items():
        try:
            setattr(proto, target, value)
        except (ValueError, TypeError) as e:
            raise InvalidRequest(target, f"out of range: {value!r} ({e})") from None
    return LLMRequest(prompt=prompt, params=edge_convert.sampling_from_proto(proto),
                      stream=stream)
