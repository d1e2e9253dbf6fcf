"""Chat messages -> the prompt text an instruction-tuned model was trained on.

A package exported from a checkpoint with a chat template carries it as
`chat_template.jinja`, and its manifest says (section `chat`):

    "chat": {"template": "chat_template.jinja",
             "special_tokens": {"bos_token": "<|begin_of_text|>", "eos_token": ...},
             "end_of_turn": ["<|eot_id|>"]}

The template renders the way transformers' `apply_chat_template(messages,
tokenize=False, add_generation_prompt=True)` renders it: a sandboxed, immutable
jinja2 environment with trim_blocks and lstrip_blocks, the helpers transformers
gives templates (raise_exception, strftime_now, tojson, namespace, dict, loop
controls, the `{% generation %}` block), the special tokens as variables, and
`tools`/`documents` set to none. Its output already holds BOS where the model wants
it, so it is tokenized without adding one.

`end_of_turn` names the special token that closes an assistant's turn (found by
`end_of_turn_tokens` at export; empty when turns end in plain text): generation
stops at it as at EOS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtime.errors import InvalidRequest, PackageError

TEMPLATE_FILE = "chat_template.jinja"
# The content of the assistant message that end_of_turn_tokens renders to find what
# follows it; plain text no template trims or rewrites.
_PROBE_REPLY = "e2edge-probe-reply"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # what the template expects: user, assistant, system (some also tool)
    content: str


@dataclass(frozen=True)
class Conversation:
    """A request's prompt given as chat messages, rendered by the package's template."""

    messages: tuple[ChatMessage, ...]


def require_template(template: ChatTemplate | None, package_name: str) -> ChatTemplate:
    """The package's template; PackageError (FAILED_PRECONDITION) naming it when it has none."""
    if template is None:
        raise PackageError(
            f"package {package_name!r} has no chat template (its checkpoint's "
            "tokenizer_config.json had none): send the prompt as text or token_ids")
    return template


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks an assistant's reply for training
    masks in transformers; here it renders its body, in its own scope as there."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _TemplateDict:
    """`dict(...)` for templates, without the attributes of the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's namespace(), refusing underscore names (no way to CPython's internals)."""

    def __init__(*args, **kwargs):  # jinja's own signature trick: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore attributes on a namespace ({name!r})")


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """jinja's own tojson escapes HTML characters; templates expect plain JSON."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class ChatTemplate:
    """One package's chat template, compiled once; render() is safe from many threads."""

    def __init__(self, source: str, special_tokens: Mapping[str, str | list[str]],
                 end_of_turn: Sequence[str] = (), name: str = "chat template"):
        self.source = source
        # bos_token, eos_token, ... (transformers 4 adds additional_special_tokens, a list)
        self.special_tokens = dict(special_tokens)
        self.end_of_turn = tuple(end_of_turn)
        self.name = name
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise PackageError(f"{name}: not a valid jinja template (line {e.lineno}: "
                               f"{e.message})") from e

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
        """The prompt text; InvalidRequest on `messages` when the template refuses them."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self._template.render(
                messages=chat, tools=None, documents=None,
                add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.TemplateError as e:
            raise InvalidRequest("messages", f"the model's chat template refuses them: {e}") \
                from None

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict[str, Any]) -> ChatTemplate | None:
        """The template of the package at `root`; None when its manifest has none."""
        chat = manifest.get("chat")
        if chat is None:
            return None
        try:
            file = str(chat["template"])
            special_tokens = {str(name): value if isinstance(value, list) else str(value)
                              for name, value in dict(chat["special_tokens"]).items()}
            end_of_turn = [str(token) for token in chat["end_of_turn"]]
        except (KeyError, TypeError, ValueError) as e:
            raise PackageError(f"manifest.json: chat section is incomplete ({e})") from e
        if file not in manifest.get("files", {}):
            raise PackageError(f"manifest.json: chat template {file!r} is not a listed file")
        path = root / file
        return cls(path.read_text(encoding="utf-8"), special_tokens, end_of_turn, str(path))


def end_of_turn_tokens(template: ChatTemplate,
                       leading_special: Callable[[str], str | None]) -> list[str]:
    """The special token the template writes right after an assistant's reply, as a list
    (empty when there is none).

    A user/assistant exchange is rendered, and `leading_special` (the tokenizer, which
    knows the special tokens) names the one the text after the reply starts with:
    `<|eot_id|>` for Llama 3, `<|im_end|>` for ChatML (Qwen, SmolLM), `<end_of_turn>`
    for Gemma, `<|end|>` for Phi, the EOS for Mistral. Only the first counts: a model
    ending its turn emits that one first (Phi-4-mini's `<|end|>` is followed by the EOS
    that closes the whole conversation). A template whose turns end in plain text gives
    none; generation then stops at EOS only.
    """
    exchange = (ChatMessage("user", "Hello"), ChatMessage("assistant", _PROBE_REPLY))
    rendered = template.render(exchange, add_generation_prompt=False)
    at = rendered.rfind(_PROBE_REPLY)
    if at < 0:
        raise PackageError(f"{template.name}: the rendered conversation lacks the assistant's "
                           "reply; cannot tell where a turn ends")
    token = leading_special(rendered[at + len(_PROBE_REPLY):].lstrip())
    return [token] if token is not None else []
