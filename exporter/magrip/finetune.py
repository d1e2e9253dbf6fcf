"""Light recovery fine-tune of a pruned model: FFN weights, or LoRA adapters merged back.

Only the (pruned) FFN projections learn; attention, norms and embeddings stay as
they are. With `lora`, each projection W gets a rank-r update B @ A (B starts at 0,
so training starts from the pruned model exactly) that is merged into W afterwards,
so the result is a plain dense checkpoint either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from exporter.magrip.ffn import find_ffns, projections
from exporter.magrip.options import FinetuneOptions
from exporter.schedule import warmup_cosine
from exporter.text import TokenStream

FINAL_LR_RATIO = 0.1  # the cosine decays to 10 % of the peak rate


class LoRALinear(nn.Module):
    """y = base(x) + (x A^T) B^T * (alpha / r); base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.scale = (alpha or 2.0 * rank) / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T) @ self.B.T * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.B @ self.A) * self.scale  # (out, in)
        return self.base


@dataclass
class FinetuneLog:
    steps: int
    params: str
    trainable_parameters: int
    first_loss: float
    last_loss: float  # mean of the last 10 % of steps


def finetune(model: nn.Module, stream: TokenStream, options: FinetuneOptions,
             seed: int = 0) -> FinetuneLog:
    """Train on random windows of the token stream for options.steps steps.

    Every window starts with BOS when the model's texts do (as calibration windows).
    """
    options.validate()
    ids, bos = stream.ids, stream.bos
    span = options.seq_len - (bos is not None)
    if len(ids) <= span:
        raise ValueError(f"the fine-tune text has {len(ids)} tokens, fewer than one window "
                         f"of {options.seq_len}")
    ffns = find_ffns(model)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = _prepare(ffns, options)
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
    warmup = max(1, int(options.warmup_fraction * options.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, options.steps, floor=FINAL_LR_RATIO))
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    try:
        for _ in range(options.steps):
            starts = rng.integers(0, len(ids) - span, size=options.batch_size)
            rows = np.stack([ids[s : s + span] for s in starts])  # (B, span)
            if bos is not None:
                rows = np.concatenate([np.full((len(rows), 1), bos, np.int64), rows], axis=1)
            batch = torch.from_numpy(rows)  # (B, seq_len)
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    finally:
        model.eval()
        if options.params == "lora":
            _merge(ffns)
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    tail = losses[-max(1, len(losses) // 10):]
    return FinetuneLog(
        steps=options.steps,
        params=options.params,
        trainable_parameters=sum(p.numel() for p in trainable),
        first_loss=losses[0] if losses else float("nan"),
        last_loss=float(np.mean(tail)) if losses else float("nan"),
    )


def _prepare(ffns, options: FinetuneOptions) -> list[nn.Parameter]:
    trainable = []
    for mlp in ffns:
        for name in projections(mlp):
            linear = getattr(mlp, name)
            if options.params == "ffn":
                linear.weight.requires_grad_(True)
                trainable.append(linear.weight)
            else:
                adapter = LoRALinear(linear, options.lora_rank)
                setattr(mlp, name, adapter)
                trainable += [adapter.A, adapter.B]
    return trainable


def _merge(ffns) -> None:
    for mlp in ffns:
        for name in projections(mlp):
            module = getattr(mlp, name)
            if isinstance(module, LoRALinear):
                setattr(mlp, name, module.merged())
