"""Wire <-> engine conversions and the error -> status table, without a server."""

from __future__ import annotations

import grpc
import pytest

from runtime.client import build_request
from runtime.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    PackageError,
)
from runtime.llm.chat_template import ChatMessage, Conversation
from runtime.llm.engine import GenerationEvent, GenerationStats
from runtime.llm.sampling import SamplingParams
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.edge import convert
from runtime.server.guard.errors import (
    FIELD_METADATA_KEY,
    DeadlineExceeded,
    Draining,
    ModelUnavailable,
    QueueFull,
    status_for,
)


def test_unset_sampling_fields_keep_the_engine_defaults():
    assert convert.sampling_from_proto(pb.SamplingParams()) == SamplingParams()


def test_set_sampling_fields_reach_the_engine_exactly():
    request = build_request("m", "hi", max_new_tokens=7, temperature=0.7, top_k=5, top_p=0.9,
                            repetition_penalty=1.1, seed=2**63 + 5, stop=["\n", "END"],
                            ignore_eos=True)
    params = convert.sampling_from_proto(request.sampling)
    assert params == SamplingParams(max_new_tokens=7, temperature=0.7, top_k=5, top_p=0.9,
                                    repetition_penalty=1.1, seed=2**63 + 5, stop=("\n", "END"),
                                    ignore_eos=True)


def test_zero_temperature_set_explicitly_is_greedy_not_unset():
    request = build_request("m", "hi", temperature=0.0, top_p=1.0)
    assert request.sampling.HasField("temperature")
    assert convert.sampling_from_proto(request.sampling).temperature == 0.0


@pytest.mark.parametrize(("sampling", "field"), [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
])
def test_bad_sampling_values_name_their_field(sampling, field):
    with pytest.raises(InvalidRequest) as caught:
        convert.sampling_from_proto(build_request("m", "hi", **sampling).sampling)
    assert caught.value.field == field


def test_prompt_is_text_or_token_ids_and_never_empty():
    assert convert.prompt_from_proto(build_request("m", "hello")) == "hello"
    assert convert.prompt_from_proto(build_request("m", [5, 6, 7])) == [5, 6, 7]
    for empty in ("", []):
        with pytest.raises(InvalidRequest) as caught:
            convert.prompt_from_proto(build_request("m", empty))
        assert caught.value.field == "prompt"
    with pytest.raises(InvalidRequest) as caught:
        convert.prompt_from_proto(pb.GenerateRequest(model="m"))
    assert caught.value.field == "prompt"
    with pytest.raises(InvalidRequest) as caught:
        convert.model_name_from_proto("")
    assert caught.value.field == "model"


def test_messages_become_a_conversation_as_pairs_or_role_content_mappings():
    request = build_request("m", messages=[("system", "Be brief."),
                                           {"role": "user", "content": "a=b"}])
    assert request.WhichOneof("prompt") == "messages"
    assert convert.prompt_from_proto(request) == Conversation(
        (ChatMessage("system", "Be brief."), ChatMessage("user", "a=b")))
    with pytest.raises(TypeError, match="either a prompt or messages"):
        build_request("m", "hi", messages=[("user", "hi")])
    with pytest.raises(TypeError, match="either a prompt or messages"):
        build_request("m")


def test_final_event_carries_reason_and_stats():
    stats = GenerationStats(prompt_tokens=4, completion_tokens=3, time_to_first_token_s=0.01,
                            prefill_s=0.009, decode_s=0.02, decode_tokens_per_s=100.0,
                            started_at=10.5, finished_at=10.6)
    middle = convert.event_to_proto(GenerationEvent((17,), "ab"), "r1", received_at=10.0)
    assert (middle.request_id, middle.text, list(middle.token_ids)) == ("r1", "ab", [17])
    assert middle.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    assert not middle.HasField("stats")
    last = convert.event_to_proto(GenerationEvent((), "c", "stop", stats), "r1", 10.0)
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.stats.completion_tokens == 3 and last.stats.prompt_tokens == 4
    assert last.stats.queue_s == pytest.approx(0.5)
    assert last.stats.total_s == pytest.approx(0.6)
    assert not last.stats.HasField("energy")  # no power source: no energy, not zeros


@pytest.mark.parametrize(("error", "code"), [
    (InvalidRequest("top_p", "must be in (0, 1]"), grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound("no model 'x'"), grpc.StatusCode.NOT_FOUND),
    (QueueFull("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Draining("shutting down"), grpc.StatusCode.UNAVAILABLE),
    (ModelUnavailable("still loading"), grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded("deadline exceeded after 3 tokens"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (PackageError("corrupt"), grpc.StatusCode.FAILED_PRECONDITION),
    (BackendUnavailable("no GPU"), grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (ZeroDivisionError("oops"), grpc.StatusCode.INTERNAL),
])
def test_errors_map_to_status_codes(error, code):
    got, details, metadata = status_for(error, "req-1")
    assert got == code
    if isinstance(error, InvalidRequest):
        assert details.startswith("top_p: ") and metadata == ((FIELD_METADATA_KEY, "top_p"),)
    elif code == grpc.StatusCode.INTERNAL:
        assert "req-1" in details and "oops" not in details  # no internals leak to clients
    else:
        assert details == str(error)
