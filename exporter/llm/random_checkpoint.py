"""Random-weight checkpoints of named shapes: real models' for speed and memory
benchmarks, and a tiny one for `e2edge selftest`.

Speed does not depend on what the weights learned, so a SmolLM2-135M-shaped model
with random weights measures what a trained one would, without a model hub; a
Llama-3.2-3B-shaped one measures what exporting a published 3B checkpoint takes.

    e2edge train random-llm --shape smollm2-135m --out DIR

The checkpoint is written as the hub publishes it: bf16 (or --dtype) safetensors,
sharded with model.safetensors.index.json past --max-shard-size, config.json,
generation_config.json and a small byte-level BPE tokenizer. The weights are drawn one
tensor at a time straight in the stored dtype and each shard is written as soon as it
is full, so writing a 3B model holds one shard (2 GB by default), never the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question.",
    "Energy per token matters on the edge: measure it, then make it smaller.",
    "First Citizen: Before we proceed any further, hear me speak.",
] * 20
DTYPES = ("bfloat16", "float16", "float32")
INIT_STD = 0.02  # transformers' initializer_range: matrices ~ N(0, 0.02), norms 1, biases 0


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
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    rms_norm_eps: float = 1e-6
    # std of the random matrices; HF's 0.02 gives a tiny model near-uniform logits, where
    # greedy decoding is a tie-break lottery between backends
    initializer_range: float = INIT_STD


SHAPES = {
    "smollm2-135m": Shape("llama", 49152, 576, 30, 9, 3, 1536, 2048, 100000.0, True),
    # built and exported in about a second: the LLM that `e2edge selftest` runs everywhere
    "tiny": Shape("llama", 300, 64, 2, 4, 2, 96, 256, 10000.0, False, initializer_range=0.2),
    # meta-llama/Llama-3.2-3B: 3.21 B parameters, tied embeddings, llama3 rope scaling
    "llama-3.2-3b": Shape("llama", 128256, 3072, 28, 24, 8, 8192, 131072, 500000.0, True,
                          {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                          rms_norm_eps=1e-5),
}


def make_bpe_tokenizer(out: Path, vocab_size: int = 300,
                       special_tokens: Sequence[str] = ("<unk>", "<s>", "</s>", "<pad>"),
                       prepend: str | None = None,
                       config: dict[str, Any] | None = None) -> dict[str, int]:
    """A small byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json) at `out`;
    returns the special tokens' ids.

    Any text round-trips through it (byte-level); its ids stay below vocab_size. The
    special tokens take ids 0, 1, ...; `prepend` (one of them) is put before every text
    by tokenizer.json's post-processor, as Llama 3's and Gemma's tokenizers do with BOS;
    `config`: tokenizer_config.json's token fields (default: <s>, </s>, <unk>, <pad>).
    """
    from tokenizers import processors

    from exporter.llm.tokenizer import byte_level_bpe

    tokenizer = byte_level_bpe(list(TOKENIZER_TEXT), vocab_size, list(special_tokens))
    ids = {token: tokenizer.token_to_id(token) for token in special_tokens}
    if prepend is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{prepend} $A", pair=f"{prepend} $A {prepend} $B",
            special_tokens=[(prepend, ids[prepend])])
    tokenizer.save(str(out / "tokenizer.json"))
    added = {str(i): {"content": token, "special": True, "normalized": False, "lstrip": False,
                      "rstrip": False, "single_word": False} for token, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        **(config or {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                      "pad_token": "<pad>"}),
        "model_max_length": 2048,
        "added_tokens_decoder": added,
    }, indent=2))
    return ids


def parse_size(text: str) -> int:
    """Bytes of a size like '2GB', '500MB', '40KB' (decimal units, as transformers reads
    max_shard_size) or a plain number."""
    units = {"GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def make_random_checkpoint(shape_name: str, out: Path, seed: int = 0, dtype: str = "bfloat16",
                           max_shard_size: str = "2GB") -> Path:
    """Write a random-weight checkpoint of SHAPES[shape_name] at `out`; returns `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    shape = SHAPES[shape_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    make_bpe_tokenizer(out)
    fields = {k: v for k, v in asdict(shape).items() if v is not None}
    config = AutoConfig.for_model(fields.pop("model_type"), bos_token_id=1, eos_token_id=2,
                                  pad_token_id=3, **fields)
    config.dtype = dtype
    with torch.device("meta"):  # names and shapes only: no memory
        names = {name: tuple(p.shape) for name, p in
                 AutoModelForCausalLM.from_config(config).named_parameters()}
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3).save_pretrained(out)
    write_random_shards(out, names, getattr(torch, dtype), parse_size(max_shard_size), seed,
                        shape.initializer_range)
    return out


def write_random_shards(out: Path, shapes: dict[str, tuple[int, ...]], dtype, max_shard_bytes: int,
                        seed: int, std: float = INIT_STD) -> None:
    """Draw each tensor in turn (seeded, so the same seed writes the same bytes) and write
    the shards one at a time: model.safetensors when one shard holds everything, else
    model-0000N-of-0000M.safetensors and model.safetensors.index.json."""
    import torch
    from safetensors.torch import save_file

    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    generator = torch.Generator().manual_seed(seed)
    for file, names in zip(files, shards):
        tensors = {name: _random_tensor(name, shapes[name], dtype, generator, std)
                   for name in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    if len(files) > 1:
        total = sum(itemsize * int(torch.Size(s).numel()) for s in shapes.values())
        weight_map = {name: file for file, names in zip(files, shards) for name in names}
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _random_tensor(name: str, shape: tuple[int, ...], dtype, generator, std: float = INIT_STD):
    """A norm weight of ones, a bias of zeros, or a N(0, std) matrix, in `dtype`."""
    import torch

    if len(shape) == 1:
        return (torch.ones if "norm" in name else torch.zeros)(shape, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype).mul_(std)
