"""A small ViT (Dosovitskiy et al., 2021) with hand-written multi-head attention, and an MLP.

The attention splits a fused ``qkv`` projection into heads with reshape/permute (the pattern that breaks
dependency analysis in pruning tools) and uses ``F.scaled_dot_product_attention``. A second variant uses
``nn.MultiheadAttention`` as a module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """``softmax(Q K^T / sqrt(d)) V`` over ``heads`` heads of width ``dim / heads``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, torch_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.torch_attention = torch_attention
        self.attn: nn.Module = (
            nn.MultiheadAttention(dim, heads, batch_first=True) if torch_attention else Attention(dim, heads)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        h = self.attn(h, h, h, need_weights=False)[0] if self.torch_attention else self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, image: int = 32, patch: int = 8, dim: int = 32, heads: int = 4,
                 depth: int = 2, torch_attention: bool = False):  # fmt: skip
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(dim, heads, torch_attention=torch_attention) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class MLP(nn.Module):
    """A plain multilayer perceptron with BatchNorm1d and dropout (foldable and removable at inference)."""

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden // 2),
            nn.BatchNorm1d(hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
