"""Pre-norm residual models whose whole blocks can be removed (depth pruning).

Each keeps its removable blocks in an ``nn.ModuleList`` named ``blocks``; every block maps
``(..., D)`` to the same shape as ``x + f(LayerNorm(x))`` (pre-norm, Xiong et al. 2020), so
replacing a block by ``nn.Identity`` leaves a working network:

- ``ResMLP`` (``resmlp``): flatten -> Linear(features, D) -> blocks of
  ``x + W2 GELU(W1 LN(x))`` (hidden ``mlp_ratio * D``) -> LN -> Linear(D, classes).
- ``ViT`` (``vit``): Dosovitskiy et al. (2021) at small size: a ``patch_size`` convolution with
  stride ``patch_size`` (= a Linear on each flattened patch), a class token, learned position
  embeddings, blocks of attention then MLP, LN, a Linear head on the class token.
- ``Decoder`` (``decoder``): a byte-level GPT-2-style decoder (Radford et al. 2019): a 256-byte
  embedding plus learned positions, causal blocks, LN, a Linear LM head; tokens ``(B, T)``
  int64 -> logits ``(B, T, 256)`` for the next byte at every position.

Attention is written with plain Linear layers (``qkv``: D -> 3D, ``proj``: D -> D) so that
Torch-Pruning and the depth library see every weight; the product itself is
``scaled_dot_product_attention`` (softmax(QK^T / sqrt(d_head) + mask) V per head).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.config import BYTES, ModelConfig



class MLPBlock(nn.Module):
    """``x + fc2(GELU(fc1(LN(x))))``: (..., D) -> (..., D), hidden width ``hidden``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention: (B, T, D) -> (B, T, D), ``heads`` heads of D / heads each.

    ``q, k, v = split(qkv(x))``; head h attends with softmax(q_h k_h^T / sqrt(D / heads)),
    masked to keys s <= t when ``causal``; the heads are concatenated and projected by ``proj``.
    """

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # (B, T, 3D) -> 3 x (B, heads, T, D / heads); the head width is read from qkv, not from x, so
        # that width pruning may narrow the heads without touching the residual stream
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class TransformerBlock(nn.Module):
    """``x + attn(LN1(x))`` then ``+ mlp(LN2(.))``: (B, T, D) -> (B, T, D)."""

    def __init__(self, width: int, heads: int, hidden: int, causal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ResMLP(nn.Module):
    def __init__(self, features: int, width: int, depth: int, hidden: int, num_classes: int):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.blocks = nn.ModuleList(MLPBlock(width, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class ViT(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], patch_size: int, width: int, depth: int, heads: int,
                 hidden: int, num_classes: int):
        super().__init__()
        channels, height, width_px = input_shape
        patches = (height // patch_size) * (width_px // patch_size)
        self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, patches + 1, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, hidden, causal=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)                  # (B, patches, D)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class Decoder(nn.Module):
    def __init__(self, context: int, width: int, depth: int, heads: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(BYTES, width)
        self.pos = nn.Parameter(torch.randn(1, context, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, hidden, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, BYTES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: int64 (B, T) with T <= context -> logits (B, T, 256)."""
        x = self.embed(tokens) + self.pos[:, :tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build_residual_model(cfg: ModelConfig) -> nn.Module:
    """The ``resmlp``, ``vit`` or ``decoder`` that ``cfg`` describes, freshly initialised."""
    hidden = cfg.mlp_ratio * cfg.width
    if cfg.type == "resmlp":
        features = cfg.input_shape[0] * cfg.input_shape[1] * cfg.input_shape[2]
        return ResMLP(features, cfg.width, cfg.depth, hidden, cfg.output_size)
    if cfg.type == "vit":
        return ViT(cfg.input_shape, cfg.patch_size, cfg.width, cfg.depth, cfg.heads, hidden, cfg.output_size)
    return Decoder(cfg.context, cfg.width, cfg.depth, cfg.heads, hidden)
