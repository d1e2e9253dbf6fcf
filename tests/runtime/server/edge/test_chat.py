"""Chat through the daemon and the command line, against a package exported with a template.

The tiny LLaMA checkpoint speaks Gemma 3's chat format (tests/chat_templates.py:
template in chat_template.jinja, <end_of_turn> within its vocabulary) and ends its
greedy reply to FIRST with <end_of_turn>. A real daemon on port 0 serves it as "chat"
(and as "chat-batched", continuous batching over two slots) beside the template-less
tiny package as "plain"; `e2edge chat` and `e2edge generate --message` run as
processes against it. Every expected reply is the engine's own
generation from the same package.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from chat_templates import TINY_CHAT, make_chat_checkpoint

from runtime.client import EdgeClient, RemoteError
from runtime.config import DaemonConfig, ModelConfig
from runtime.llm.chat_template import TEMPLATE_FILE, ChatMessage, Conversation
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams
from runtime.package import sha256_file
from runtime.proto.e2edge.v1 import runtime_pb2 as pb

pytestmark = pytest.mark.timeout(120)

FIRST = [{"role": "user", "content": "Hello there"}]
E2EDGE = [sys.executable, "-m", "e2edge.cli"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_chat_checkpoint(tmp_path_factory.mktemp("chat-ckpt") / "ckpt", FIRST)


@pytest.fixture(scope="module")
def chat_package(checkpoint, tmp_path_factory):
    from exporter.llm.export import LLMExportOptions, export_llm

    out = tmp_path_factory.mktemp("chat-pkg") / "pkg"
    return export_llm(checkpoint, out, LLMExportOptions(name="tiny-chat")).package


@pytest.fixture(scope="module")
def engine(chat_package) -> LLMEngine:
    return LLMEngine.load(chat_package)


@pytest.fixture(scope="module")
def daemon(chat_package, tiny_llama_package):
    from runtime.server.in_process import DaemonThread

    config = DaemonConfig(listen="127.0.0.1:0", models=(
        ModelConfig("chat", chat_package), ModelConfig("plain", tiny_llama_package),
        ModelConfig("chat-batched", chat_package, max_concurrent=2)))
    with DaemonThread(config, 0) as d:
        yield d


@pytest.fixture
def client(daemon):
    with EdgeClient(daemon.target) as c:
        yield c


def _conversation(*pairs: tuple[str, str]) -> Conversation:
    return Conversation(tuple(ChatMessage(role, content) for role, content in pairs))


def _reply(engine: LLMEngine, *pairs: tuple[str, str], **params) -> list:
    return list(engine.generate(_conversation(*pairs), SamplingParams(**params)))


def _e2edge(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*E2EDGE, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_the_package_carries_the_template_its_tokens_and_end_of_turn(chat_package,
                                                                      checkpoint):
    manifest = json.loads((chat_package / "manifest.json").read_text())
    template = chat_package / TEMPLATE_FILE
    assert template.read_text() == (checkpoint / "chat_template.jinja").read_text()
    assert manifest["files"][TEMPLATE_FILE]["sha256"] == sha256_file(template)
    assert manifest["chat"] == {
        "template": TEMPLATE_FILE,
        "special_tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                           "pad_token": "<pad>"},
        "end_of_turn": ["<end_of_turn>"],
    }


def test_the_package_renders_and_tokenizes_as_transformers(engine, checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(checkpoint)
    messages = [*FIRST, {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "Grüße ✓"}]
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    pairs = [(m["role"], m["content"]) for m in messages]
    assert engine.chat_ids(_conversation(*pairs)) == list(expected["input_ids"])


@pytest.mark.parametrize("model", ["chat", "chat-batched"])
def test_generate_with_messages_stops_at_the_end_of_turn_token(client, engine, model):
    end_of_turn = TINY_CHAT.special.index("<end_of_turn>")
    assert end_of_turn not in engine.layout.eos_token_ids  # not EOS: the template's own

    messages = list(client.chat(model, FIRST, max_new_tokens=32))
    events = _reply(engine, ("user", "Hello there"), max_new_tokens=32)
    assert [list(m.token_ids) for m in messages] == [list(e.token_ids) for e in events]
    assert [m.text for m in messages] == [e.text for e in events]
    assert messages[-1].finish_reason == pb.FINISH_REASON_EOS
    assert list(messages[-1].token_ids) == [end_of_turn]
    assert messages[-1].stats.completion_tokens < 32
    assert messages[-1].stats.prompt_tokens == len(
        engine.chat_ids(_conversation(("user", "Hello there"))))

    ignoring = list(client.chat(model, FIRST, max_new_tokens=12, ignore_eos=True))
    assert ignoring[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert ignoring[-1].stats.completion_tokens == 12
    assert end_of_turn not in [t for m in ignoring for t in m.token_ids]


def test_a_package_without_template_refuses_messages_and_takes_prompts(client):
    with pytest.raises(RemoteError) as refused:
        list(client.chat("plain", FIRST))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'tiny-llama' has no chat template" in refused.value.details
    assert "\n" not in refused.value.details
    text = list(client.generate("plain", "To be, or not", max_new_tokens=4))
    assert text[-1].stats.completion_tokens >= 1


@pytest.mark.parametrize("messages, field", [
    ([], "messages"),
    ([("user", "")], "messages[0].content"),
    ([("user", "hi"), ("", "who?")], "messages[1].role"),
    ([("robot", "beep")], "messages"),  # Gemma's template: roles must alternate
    ([("user", "a"), ("user", "b")], "messages"),
])
def test_bad_messages_are_invalid_argument_naming_the_field(client, messages, field):
    with pytest.raises(RemoteError) as refused:
        list(client.chat("chat", messages))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == field


def test_an_assistant_reply_may_be_empty(client, engine):
    pairs = [("user", "Hello there"), ("assistant", ""), ("user", "Again?")]
    messages = list(client.chat("chat", pairs, max_new_tokens=6))
    assert [m.text for m in messages] == [e.text for e in _reply(engine, *pairs,
                                                                 max_new_tokens=6)]


def test_chat_command_streams_two_turns_and_keeps_the_conversation(daemon, engine):
    done = _e2edge("chat", "--target", daemon.target, "--model", "chat", "--max-new-tokens",
                   "8", "--stats", stdin="Hello there\nWhat next?\n")
    assert done.returncode == 0, done.stderr
    first = "".join(e.text for e in _reply(engine, ("user", "Hello there"), max_new_tokens=8))
    turns = [("user", "Hello there"), ("assistant", first), ("user", "What next?")]
    second = _reply(engine, *turns, max_new_tokens=8)
    assert done.stdout == f"{first}\n{''.join(e.text for e in second)}\n"
    stats = done.stderr.strip().splitlines()
    assert len(stats) == 2 and stats[0].startswith("[eos]")
    assert f"] {second[-1].stats.prompt_tokens} prompt +" in stats[1]
    assert second[-1].stats.prompt_tokens == len(engine.chat_ids(_conversation(*turns)))


def test_chat_command_ends_at_exit_and_reports_a_missing_template(daemon):
    done = _e2edge("chat", "--target", daemon.target, "--model", "chat", "--max-new-tokens",
                   "4", stdin="Hello there\n/exit\nnot sent\n")
    assert done.returncode == 0 and done.stdout.count("\n") == 1, done.stderr

    refused = _e2edge("chat", "--target", daemon.target, "--model", "plain", stdin="Hi\n")
    assert refused.returncode == 1
    assert refused.stderr.startswith("e2edge chat: error: FAILED_PRECONDITION: package "
                                     "'tiny-llama' has no chat template")
    assert refused.stderr.count("\n") == 1


def test_generate_command_takes_messages(daemon, engine):
    done = _e2edge("generate", "--target", daemon.target, "--model", "chat",
                   "--message", "user=hi", "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(e.text for e in _reply(engine, ("user", "hi"),
                                                         max_new_tokens=8))
    assert "prompt +" in done.stderr

    both = _e2edge("generate", "--target", daemon.target, "--model", "chat", "--message",
                   "user=hi", "a prompt too")
    assert both.returncode == 1 and "either a prompt or --message" in both.stderr
    malformed = _e2edge("generate", "--target", daemon.target, "--model", "chat",
                        "--message", "hi")
    assert malformed.returncode == 2 and "ROLE=CONTENT" in malformed.stderr
