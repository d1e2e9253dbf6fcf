"""Named presets for `e2edge train lm`: model shape, tokenizer and training schedule.

The same preset builds a LLaMA or a Gemma model (`exporter/llm/training.py`): Gemma ties the
output layer to the embedding, so its parameter count is smaller by vocab * hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("llama", "gemma")  # the model families a preset builds


@dataclass(frozen=True)
class LMPreset:
    name: str
    description: str
    # model
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads: grouped-query attention
    head_dim: int
    intermediate_size: int  # FFN width
    context_length: int  # max_position_embeddings, and the training sequence length
    rope_theta: float
    # tokenizer: "bpe" trains a byte-level BPE of `vocab_size` on the corpus; "spm" uses the
    # LLaMA-2 SentencePiece model (32000 pieces)
    tokenizer: str
    vocab_size: int
    # training
    steps: int
    batch_size: int  # sequences per step
    learning_rate: float  # peak; cosine decay to min_lr_ratio * peak
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"preset {self.name}: num_heads must be a multiple of num_kv_heads")
        if self.tokenizer not in ("bpe", "spm"):
            raise ValueError(f"preset {self.name}: tokenizer must be 'bpe' or 'spm'")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"preset {self.name}: warmup_steps must be below steps")


PRESETS: dict[str, LMPreset] = {
    preset.name: preset
    for preset in (
        LMPreset(
            name="demo",
            description="5-6 M parameters, about 5 minutes on 2 free CPU cores on tinyshakespeare",
            hidden_size=256,
            num_layers=6,
            num_heads=8,
            num_kv_heads=2,
            head_dim=32,
            intermediate_size=768,
            context_length=256,
            rope_theta=10000.0,
            tokenizer="bpe",
            vocab_size=2048,
            steps=300,
            batch_size=16,
            learning_rate=2e-3,
            min_lr_ratio=0.1,
            warmup_steps=30,
            weight_decay=0.1,
            grad_clip=1.0,
        ),
        LMPreset(
            name="tiny",
            description="a few seconds: for tests and smoke runs, not for quality",
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            intermediate_size=128,
            context_length=64,
            rope_theta=10000.0,
            tokenizer="bpe",
            vocab_size=512,
            steps=30,
            batch_size=8,
            learning_rate=3e-3,
            min_lr_ratio=0.1,
            warmup_steps=5,
            weight_decay=0.0,
            grad_clip=1.0,
        ),
    )
}


def get_preset(name: str) -> LMPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
