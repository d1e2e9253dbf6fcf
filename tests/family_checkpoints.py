"""Tiny random-weight checkpoints of every supported family, saved as the hub publishes them.

Each is what `save_pretrained` writes for the real model, only small: bf16 weights in
shards with model.safetensors.index.json, config.json in transformers' format,
generation_config.json with the family's several eos ids, and tokenizer.json +
tokenizer_config.json with the family's added special tokens and BOS rule. 2 layers,
hidden 64; the family's features are switched on with values a short prompt exercises
(a sliding window of 8 tokens, soft-caps that bite, rope scaling past 32 tokens).
Weights are random with std 0.2, so the logits are far from uniform and greedy
decoding is not a tie-break lottery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VOCAB = 300
SHARD = "40KB"  # several shards even for a model this small


@dataclass(frozen=True)
class TokenizerStyle:
    """A family's special tokens (ids 0..n-1) and which of them mean what."""

    specials: tuple[str, ...]
    bos: str | None  # the BOS the config names (None: the family has none)
    adds_bos: bool  # whether the tokenizer puts BOS before a text
    eos: tuple[str, ...]  # generation_config's eos ids, in order
    pad: str


LLAMA3 = TokenizerStyle(
    ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
     "<|eot_id|>", "<|finetune_right_pad_id|>"),
    "<|begin_of_text|>", True, ("<|end_of_text|>", "<|eot_id|>"), "<|finetune_right_pad_id|>")
MISTRAL = TokenizerStyle(("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), "<s>", True, ("</s>",),
                         "<unk>")
QWEN = TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, False,
                      ("<|im_end|>", "<|endoftext|>"), "<|endoftext|>")
SMOLLM2 = TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_start|>", False,
                         ("<|im_end|>",), "<|im_end|>")
GEMMA = TokenizerStyle(("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                       "<bos>", True, ("<eos>", "<end_of_turn>"), "<pad>")
PHI = TokenizerStyle(("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"),
                     "<|endoftext|>", False, ("<|endoftext|>", "<|end|>"), "<|endoftext|>")
SMOLLM3 = TokenizerStyle(("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"),
                         "<|begin_of_text|>", False, ("<|im_end|>", "<|end_of_text|>"),
                         "<|end_of_text|>")

COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
              rms_norm_eps=1e-6)
# family -> (transformers config class name, its arguments, tokenizer style)
FAMILIES = {
    "llama3": ("LlamaConfig", dict(  # Llama 3.2: tied embeddings, llama3 rope scaling
        tie_word_embeddings=True, head_dim=16, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}), LLAMA3),
    "mistral": ("MistralConfig", dict(head_dim=16, sliding_window=8), MISTRAL),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), QWEN),  # q/k/v biases
    "smollm2": ("LlamaConfig", dict(tie_word_embeddings=True), SMOLLM2),
    "qwen3": ("Qwen3Config", dict(head_dim=16), QWEN),  # per-head q/k norms
    "gemma2": ("Gemma2Config", dict(
        head_dim=16, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, layer_types=["sliding_attention", "full_attention"]), GEMMA),
    "gemma3": ("Gemma3TextConfig", dict(
        head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"], rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}),
        GEMMA),
    "phi3": ("Phi3Config", dict(  # Phi-4-mini: longrope, partial rotary, fused projections
        num_attention_heads=2, num_key_value_heads=1, original_max_position_embeddings=64,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5, "original_max_position_embeddings": 64,
                         "short_factor": [1.0, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 4.0],
                         "long_factor": [2.0] * 8}), PHI),
    "smollm3": ("SmolLM3Config", dict(no_rope_layers=[1, 0]), SMOLLM3),  # layer 1: no rotary
}


def make_tokenizer(out: Path, style: TokenizerStyle) -> dict[str, int]:
    """The family's tokenizer.json + tokenizer_config.json; returns special token -> id."""
    from exporter.llm.random_checkpoint import make_bpe_tokenizer

    config = {"bos_token": style.bos, "eos_token": style.eos[0], "pad_token": style.pad,
              "add_bos_token": style.adds_bos}
    return make_bpe_tokenizer(out, VOCAB, style.specials,
                              style.bos if style.adds_bos else None, config)


def make_family_checkpoint(out: Path, family: str, seed: int = 0, dtype: str = "bfloat16",
                           **config_changes) -> Path:
    """A tiny sharded checkpoint of `family` (a key of FAMILIES) at `out`, its weights in
    `dtype` (bfloat16, float16 or float32), its config changed by `config_changes`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    config_class, arguments, style = FAMILIES[family]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = make_tokenizer(out, style)
    eos = [ids[token] for token in style.eos]
    config = getattr(transformers, config_class)(
        **{**COMMON, **arguments, **config_changes},
        bos_token_id=ids[style.bos] if style.bos else None, eos_token_id=eos[0],
        pad_token_id=ids[style.pad])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=config.pad_token_id)
    model.to(getattr(torch, dtype)).save_pretrained(out, max_shard_size=SHARD)
    return out
