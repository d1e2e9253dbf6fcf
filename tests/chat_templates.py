"""Chat templates in each family's own syntax, and tiny tokenizers that carry them.

The templates are data/chat_templates/<family>.jinja. Each is written the way its
family's published tokenizer_config.json writes it (the same jinja idioms: Llama 3's
header blocks and strftime_now date, Mistral's [INST] with raise_exception on roles
out of order, Qwen's ChatML with a default system prompt, Qwen3's namespace and
<think> handling, SmolLM3's metadata header and {% generation %} blocks, Gemma's
<start_of_turn> with "model" as the assistant's role, Phi's <|role|> tags), shortened
where the original spells out tool calling.

`make_chat_tokenizer(out, family)` writes a small byte-level BPE tokenizer with the
family's special tokens into a checkpoint-like directory, with the template in
tokenizer_config.json or, as newer checkpoints ship it, in chat_template.jinja, so
`transformers.AutoTokenizer` loads it as it loads a published checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str  # its template: data/chat_templates/<name>.jinja
    special: tuple[str, ...]  # special added tokens, ids 0.. in this order
    roles: dict[str, str | None]  # bos_token, eos_token, ... as the family's config names them
    end_of_turn: tuple[str, ...]  # what closes an assistant's turn
    accepts_system: bool = True
    plain: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>)
    jinja_file: bool = False  # the template in chat_template.jinja (newer checkpoints)

    @property
    def template(self) -> str:
        return (TEMPLATES / f"{self.name}.jinja").read_text()


FAMILIES = {
    "llama3": Family(
        "llama3",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>"),
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        ("<|eot_id|>",)),
    "mistral": Family(
        "mistral", ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, ("</s>",)),
    "qwen2.5": Family(
        "qwen2.5", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ("<|im_end|>",)),
    "qwen3": Family(
        "qwen3", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ("<|im_end|>",), plain=("<think>", "</think>")),
    "smollm2": Family(
        "smollm2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
         "pad_token": "<|im_end|>"},
        ("<|im_end|>",)),
    "smollm3": Family(
        "smollm3", ("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"),
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
        ("<|im_end|>",), plain=("<think>", "</think>"), jinja_file=True),
    "gemma2": Family(
        "gemma2", ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
        ("<end_of_turn>",), accepts_system=False),
    "gemma3": Family(
        "gemma3", ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
        ("<end_of_turn>",), jinja_file=True),
    "phi3": Family(
        "phi3", ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>",
                 "<|system|>", "<|user|>"),
        {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
         "pad_token": "<|endoftext|>"},
        ("<|end|>",)),
    "phi4-mini": Family(
        "phi4-mini", ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>",
                      "<|tool|>", "<|/tool|>"),
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>"},
        ("<|end|>",)),
}

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris. And of Italy? Rome.",
    "You are a helpful assistant: be brief, be kind, think step by step.",
] * 10


# The tiny LLaMA of llm_fixtures speaking Gemma 3's chat format: its four special
# tokens keep their ids (<unk> 0, <s> 1 = BOS, </s> 2 = EOS, <pad> 3), the turn markers
# take 4 and 5, all within its 300-token vocabulary. The template is in
# chat_template.jinja, as newer checkpoints ship it; it refuses roles out of order.
TINY_CHAT = Family(
    "gemma3", ("<unk>", "<s>", "</s>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
    {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
    ("<end_of_turn>",), jinja_file=True)


def make_chat_tokenizer(out: Path, family: str | Family, vocab_size: int = 300) -> Path:
    """A checkpoint-like tokenizer directory of `family` at `out`; returns `out`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = FAMILIES[family] if isinstance(family, str) else family
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(spec.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TEXT, trainer)
    if spec.plain:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                              for t in spec.plain])
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
              **{role: token for role, token in spec.roles.items() if token is not None}}
    if spec.jinja_file:
        (out / "chat_template.jinja").write_text(spec.template)
    else:
        config["chat_template"] = spec.template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def make_chat_checkpoint(out: Path, messages: list[dict[str, str]]) -> Path:
    """The tiny random LLaMA checkpoint with TINY_CHAT's tokenizer and template, whose
    greedy reply to `messages` ends its turn with <end_of_turn> after a few tokens.

    Random weights never emit that token by themselves, so its lm_head row becomes
    1.05 x the row of a token greedy decoding writes a few steps in: at that step its
    logit beats the one that won (when positive; the next candidate is tried if not).
    """
    import torch
    from llm_fixtures import make_tiny_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = make_tiny_checkpoint(Path(out), "llama")
    make_chat_tokenizer(out, TINY_CHAT)
    end_of_turn = TINY_CHAT.special.index("<end_of_turn>")
    prompt = AutoTokenizer.from_pretrained(out).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    before = _greedy(model, prompt, 8)
    rows = model.lm_head.weight
    for step in range(2, len(before)):
        if before[step] in before[:step]:
            continue
        with torch.no_grad():
            rows[end_of_turn] = 1.05 * rows[before[step]]
        if end_of_turn in _greedy(model, prompt, 8):
            model.save_pretrained(out)
            return out
    raise AssertionError(f"no step of {before} lets <end_of_turn> win")


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


# (role, content) turns; as_dicts() gives them the way transformers takes them
CONVERSATIONS = {
    "one user turn": [("user", "Hello!")],
    "system and turns": [("system", "You are brief."),
                         ("user", "What is the capital of France?"),
                         ("assistant", "Paris."), ("user", "  And of Italy?  ")],
    "unicode and newlines": [("user", "Grüße, 世界!\nLine two."), ("assistant", "\nHallo ✓"),
                             ("user", "{{ not a template }} {% neither %}")],
    "reasoning reply": [("user", "2 + 2?"),
                        ("assistant", "<think>\nadd them\n</think>\n\n4"),
                        ("user", "times 3?")],
    "out of order": [("user", "one"), ("user", "two")],
}


def as_dicts(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]
