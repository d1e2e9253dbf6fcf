"""The ViT: patch embedding, learned positions, pre-norm blocks, mean pool, norm, head.

Attention has `n_heads` query heads and `n_kv_heads` key/value heads; query head i
reads K/V head i // (n_heads // n_kv_heads). n_kv_heads = 1 is multi-query
attention (the BitMedViT student), n_kv_heads = n_heads ordinary multi-head
attention (the teacher).

Attention over image tokens is bidirectional: every patch attends to every other.
A causal mask (as in the authors' code) would make patch 0 blind to the rest of the
image and the mean-pooled features depend on raster order, which has no meaning
for an image; it is a leftover of language-model attention modules.

Which linears are ternary is decided in one place, `_linear`; the rest of this file
never mentions quantisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporter.vit.config import ViTConfig
from exporter.vit.ternary import BitLinear


def _linear(config: ViTConfig, part: str, n_in: int, n_out: int) -> nn.Linear:
    """A block linear; part is 'attn' or 'ffn'. Ternary mode 'ffn' quantises the FFN,
    'all' both. Block linears have no bias (as in BitNet b1.58 and LLaMA): in a
    ternary package every full-precision vector eats into the 2-bit savings."""
    ternary = config.ternary == "all" or (config.ternary == "ffn" and part == "ffn")
    return (BitLinear if ternary else nn.Linear)(n_in, n_out, bias=False)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p); patches in raster order, each flattened
    as (c, py, px), the layout of a Conv weight (D, C, p, p), so export can use Conv."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.n_heads, config.n_kv_heads, config.head_dim,
        )
        kv_width = config.n_kv_heads * config.head_dim
        self.q = _linear(config, "attn", config.width, config.width)
        self.k = _linear(config, "attn", config.width, kv_width)
        self.v = _linear(config, "attn", config.width, kv_width)
        self.o = _linear(config, "attn", config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, dh)
        k = self.k(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, N, dh)
        v = self.v(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)  # (B, H, N, dh): head i reads K/V head i // group
        v = v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # bidirectional
        return self.o(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = _linear(config, "ffn", config.width, config.ffn_width)
        self.fc2 = _linear(config, "ffn", config.ffn_width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.ffn = FeedForward(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ffn(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_dim, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.n_tokens, config.width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.head = nn.Linear(config.width, config.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised pixels -> (B, width) pooled, normed features."""
        x = self.patch_embed(patchify(images, self.config.patch_size))  # (B, N, D)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x.mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, n_classes) logits."""
        return self.head(self.features(images))

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        return self.head(features), features


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
