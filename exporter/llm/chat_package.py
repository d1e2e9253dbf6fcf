"""The checkpoint's chat template, copied into an llm package so the daemon can chat.

transformers finds the template in tokenizer_config.json (`chat_template`) or in a
chat_template.jinja beside it (newer checkpoints); a checkpoint with several named
templates has its "default" one taken. The package gets it as chat_template.jinja,
and the manifest's `chat` section names it with the special tokens the template sees
as variables and the tokens that end an assistant's turn (runtime/llm/chat_template.py
reads them).

Before it is written, the runtime's renderer is checked against transformers'
`apply_chat_template` on a short conversation: the package never carries a template
that the daemon would render differently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from exporter.errors import ExportVerificationError
from exporter.llm.checkpoint import CheckpointError
from runtime.llm.chat_template import TEMPLATE_FILE, ChatMessage, ChatTemplate, end_of_turn_tokens
from runtime.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SAMPLE_CONVERSATION = (
    ChatMessage("user", "What is the capital of France?"),
    ChatMessage("assistant", "Paris."),
    ChatMessage("user", "And of Italy?"),
)


def checkpoint_template(hf_tokenizer) -> str | None:
    """The template transformers would apply by default; None when there is none."""
    template = hf_tokenizer.chat_template
    if isinstance(template, dict):
        if "default" not in template:
            log.warning("the checkpoint's chat templates %s have no 'default': the package "
                        "gets none", sorted(template))
        template = template.get("default")
    return template or None


def write_chat_template(hf_tokenizer, model_dir: Path, out_dir: Path) -> dict[str, Any] | None:
    """Write chat_template.jinja into the package directory (which already holds
    tokenizer.json); return the manifest's `chat` section, None without a template."""
    import jinja2

    source = checkpoint_template(hf_tokenizer)
    if source is None:
        log.info("%s has no chat template: the package takes prompts, not chat messages",
                 model_dir)
        return None
    special_tokens = dict(hf_tokenizer.special_tokens_map)
    template = ChatTemplate(source, special_tokens, name=f"{model_dir} chat template")
    sample = [{"role": m.role, "content": m.content} for m in SAMPLE_CONVERSATION]
    try:
        expected = hf_tokenizer.apply_chat_template(sample, tokenize=False,
                                                    add_generation_prompt=True)
    except jinja2.TemplateError as e:
        raise CheckpointError(f"{model_dir}: the chat template cannot render a "
                              f"user/assistant/user conversation ({e})") from e
    rendered = template.render(SAMPLE_CONVERSATION)
    if rendered != expected:
        raise ExportVerificationError(
            f"{model_dir}: the runtime renders the chat template differently from "
            f"transformers ({rendered[:80]!r}... vs {expected[:80]!r}...)")
    tokenizer = Tokenizer(out_dir / "tokenizer.json", bos_token_id=None, add_bos=False)
    end_of_turn = end_of_turn_tokens(template, tokenizer.leading_special_token)
    (out_dir / TEMPLATE_FILE).write_text(source, encoding="utf-8")
    log.info("chat template copied; a turn ends at %s", end_of_turn or "EOS only")
    return {"template": TEMPLATE_FILE, "special_tokens": special_tokens,
            "end_of_turn": end_of_turn}
