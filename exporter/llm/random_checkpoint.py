"""Random-weight checkpoints of named shapes: real models' for speed benchmarks, and a
tiny one for `e2edge selftest`.

Speed does not depend on what the weights learned, so a SmolLM2-135M-shaped model
with random weights measures what a trained one would, without a model hub.

    e2edge train random-llm --shape smollm2-135m --out DIR
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question.",
    "Energy per token matters on the edge: measure it, then make it smaller.",
    "First Citizen: Before we proceed any further, hear me speak.",
] * 20


@dataclass(frozen=True)
class Shape:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float
    tie_word_embeddings: bool
    # std of the random weights; HF's 0.02 gives a tiny model near-uniform logits, where
    # greedy decoding is a tie-break lottery between backends
    initializer_range: float = 0.02


SHAPES = {
    "smollm2-135m": Shape("llama", 49152, 576, 30, 9, 3, 1536, 2048, 100000.0, True),
    # built and exported in about a second: the LLM that `e2edge selftest` runs everywhere
    "tiny": Shape("llama", 300, 64, 2, 4, 2, 96, 256, 10000.0, False, initializer_range=0.2),
}


def make_bpe_tokenizer(out: Path, vocab_size: int = 300) -> None:
    """A small byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json).

    Any text round-trips through it (byte-level); its ids stay below vocab_size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TOKENIZER_TEXT, trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "model_max_length": 2048,
    }))


def make_random_checkpoint(shape_name: str, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = SHAPES[shape_name]
    out.mkdir(parents=True, exist_ok=True)
    make_bpe_tokenizer(out)
    fields = asdict(shape)
    config = AutoConfig.for_model(
        fields.pop("model_type"), bos_token_id=1, eos_token_id=2, pad_token_id=3,
        **fields,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    return out

