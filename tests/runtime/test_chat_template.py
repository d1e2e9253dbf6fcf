"""Chat templates render as transformers' apply_chat_template renders them, family by family.

The tokenizers of tests/chat_templates.py (each family's special tokens and its
template in the family's own syntax) are loaded by transformers' AutoTokenizer, as a
published checkpoint is; the runtime renders the same conversations from what the
export writes into a package (the template, the special tokens) and must give the
same text, the same token ids, and the same refusals.
"""

from __future__ import annotations

import jinja2
import pytest
from chat_templates import CONVERSATIONS, FAMILIES, as_dicts, make_chat_tokenizer

from exporter.llm.chat_package import checkpoint_template, write_chat_template
from runtime.errors import InvalidRequest, PackageError
from runtime.llm.chat_template import (
    TEMPLATE_FILE,
    ChatMessage,
    ChatTemplate,
    end_of_turn_tokens,
)
from runtime.llm.tokenizer import Tokenizer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, transformers tokenizer, directory) of one family's tiny tokenizer."""
    from transformers import AutoTokenizer

    directory = make_chat_tokenizer(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, AutoTokenizer.from_pretrained(directory), directory


def _messages(turns: list[tuple[str, str]]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role, content) for role, content in turns)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_rendered_prompt_and_ids_equal_transformers(family, name):
    family_name, hf, directory = family
    turns = CONVERSATIONS[name]
    conversation = as_dicts(turns)
    template = ChatTemplate(checkpoint_template(hf), hf.special_tokens_map)
    try:
        expected = hf.apply_chat_template(conversation, tokenize=False,
                                          add_generation_prompt=True)
    except jinja2.TemplateError as refused:
        with pytest.raises(InvalidRequest) as ours:
            template.render(_messages(turns))
        assert ours.value.field == "messages" and str(refused) in str(ours.value)
        return
    assert template.render(_messages(turns)) == expected
    tokenizer = Tokenizer(directory / "tokenizer.json", bos_token_id=hf.bos_token_id,
                          add_bos=True)
    ids = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    assert tokenizer.encode(expected, add_bos=False) == list(ids["input_ids"])


def test_the_families_refuse_what_their_templates_refuse(family):
    family_name, hf, _ = family
    template = ChatTemplate(checkpoint_template(hf), hf.special_tokens_map)
    out_of_order = _messages(CONVERSATIONS["out of order"])
    if family_name in ("mistral", "gemma2", "gemma3"):
        with pytest.raises(InvalidRequest, match="alternate"):
            template.render(out_of_order)
    else:
        template.render(out_of_order)
    if not FAMILIES[family_name].accepts_system:
        with pytest.raises(InvalidRequest, match="System role not supported"):
            template.render(_messages(CONVERSATIONS["system and turns"]))


def test_export_writes_the_template_its_tokens_and_where_a_turn_ends(family, tmp_path):
    family_name, hf, directory = family
    (tmp_path / "tokenizer.json").write_bytes((directory / "tokenizer.json").read_bytes())
    chat = write_chat_template(hf, directory, tmp_path)
    assert chat == {
        "template": TEMPLATE_FILE,
        "special_tokens": hf.special_tokens_map,
        "end_of_turn": list(FAMILIES[family_name].end_of_turn),
    }
    assert (tmp_path / TEMPLATE_FILE).read_text() == FAMILIES[family_name].template
    manifest = {"chat": chat, "files": {TEMPLATE_FILE: {}}}
    loaded = ChatTemplate.from_manifest(tmp_path, manifest)
    turns = CONVERSATIONS["one user turn"]
    assert loaded.render(_messages(turns)) == hf.apply_chat_template(
        as_dicts(turns), tokenize=False, add_generation_prompt=True)
    assert loaded.end_of_turn == FAMILIES[family_name].end_of_turn


def test_a_checkpoint_without_template_gives_none(tmp_path):
    from transformers import AutoTokenizer

    directory = make_chat_tokenizer(tmp_path / "ckpt", "llama3")
    config = (directory / "tokenizer_config.json")
    config.write_text(config.read_text().replace('"chat_template"', '"unused"'))
    (tmp_path / "pkg").mkdir()
    assert write_chat_template(AutoTokenizer.from_pretrained(directory), directory,
                               tmp_path / "pkg") is None
    assert not (tmp_path / "pkg" / TEMPLATE_FILE).exists()
    assert ChatTemplate.from_manifest(tmp_path / "pkg", {"chat": None, "files": {}}) is None


def test_generation_blocks_loop_controls_and_tojson_render():
    source = ("{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
              "{% generation %}{{ m.content | tojson }}{% endgeneration %}{% endfor %}"
              "{{ eos_token }}")
    template = ChatTemplate(source, {"eos_token": "</s>"})
    rendered = template.render((ChatMessage("user", "é <b>"), ChatMessage("skip", "x")))
    assert rendered == '"é <b>"</s>'


def test_the_sandbox_refuses_to_reach_python_internals():
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidRequest, match="messages"):
        ChatTemplate(escape, {}).render((ChatMessage("user", "hi"),))
    mutate = "{% set _ = messages.append(1) %}{{ messages | length }}"
    with pytest.raises(InvalidRequest):
        ChatTemplate(mutate, {}).render((ChatMessage("user", "hi"),))
    namespace = "{% set ns = namespace(_hidden=1) %}{{ ns }}"
    with pytest.raises(InvalidRequest):
        ChatTemplate(namespace, {}).render((ChatMessage("user", "hi"),))


def test_a_broken_template_is_a_package_error():
    with pytest.raises(PackageError, match="not a valid jinja template"):
        ChatTemplate("{% for m in messages %}", {}, name="pkg/chat_template.jinja")


def test_end_of_turn_is_empty_when_turns_end_in_plain_text(tmp_path):
    directory = make_chat_tokenizer(tmp_path, "llama3")
    tokenizer = Tokenizer(directory / "tokenizer.json", bos_token_id=None, add_bos=False)
    plain = ChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
                         {})
    assert end_of_turn_tokens(plain, tokenizer.leading_special_token) == []
    closed = ChatTemplate("{% for m in messages %}{{ m.content }}\n<|eot_id|>{% endfor %}", {})
    assert end_of_turn_tokens(closed, tokenizer.leading_special_token) == ["<|eot_id|>"]


def test_the_manifest_section_is_checked_and_keeps_token_lists(tmp_path):
    (tmp_path / TEMPLATE_FILE).write_text("{{ bos_token }}{{ additional_special_tokens[0] }}")
    chat = {"template": TEMPLATE_FILE, "end_of_turn": [],
            "special_tokens": {"bos_token": "<s>", "additional_special_tokens": ["<x>"]}}
    loaded = ChatTemplate.from_manifest(tmp_path, {"chat": chat, "files": {TEMPLATE_FILE: {}}})
    assert loaded.render((ChatMessage("user", "hi"),)) == "<s><x>"
    with pytest.raises(PackageError, match="not a listed file"):
        ChatTemplate.from_manifest(tmp_path, {"chat": chat, "files": {}})
    with pytest.raises(PackageError, match="chat section is incomplete"):
        ChatTemplate.from_manifest(tmp_path, {"chat": {"template": TEMPLATE_FILE},
                                              "files": {TEMPLATE_FILE: {}}})
