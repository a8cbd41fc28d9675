"""CLAM's trajectory encoder (Ma et al., 2024, "Contrastive learning-based agent modeling for
deep reinforcement learning"; DESIGN.md, "Method: CLAM agent modelling").

A view of an episode, [B, T, f] per-step features of the other agents as the ego observes
them, becomes one representation [B, repr_dim]:

    linear f → width, + sinusoidal positional encoding of the step within the view
    → SAB → SAB                          (Set Transformer, Lee et al. 2019, eq. 6–8)
    → PMA with one learned seed          (Lee et al. 2019, eq. 11)
    → linear width → repr_dim

Padding steps (``valid`` False) are masked out of every attention's keys and zeroed at the
input, so they cannot change the output: appending padding leaves it unchanged. Every row
needs at least one valid step (a row without any has nothing to attend to).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(length: int, width: int, device=None) -> torch.Tensor:
    """[length, width] sinusoidal positional encoding (Vaswani et al. 2017, §3.5):
    PE[p, 2i] = sin(p / 10000^(2i/width)), PE[p, 2i+1] = cos(p / 10000^(2i/width))."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(
        torch.arange(0, width, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / width)
    )
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return table


class MultiheadAttentionBlock(nn.Module):
    """MAB(X, Y) = LN(H + rFF(H)), H = LN(X + Multihead(X, Y, Y)) (Lee et al. 2019, eq. 6–7)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_padding: torch.Tensor) -> torch.Tensor:
        # y_padding: [B, Ty] bool, True where y is padding (masked out of the keys).
        attended, _ = self.attention(x, y, y, key_padding_mask=y_padding, need_weights=False)
        h = self.norm1(x + attended)
        return self.norm2(h + self.feed_forward(h))


class SetAttentionBlock(nn.Module):
    """SAB(X) = MAB(X, X) (Lee et al. 2019, eq. 8): self-attention over the view's steps."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.block = MultiheadAttentionBlock(width, heads)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.block(x, x, padding)


class PoolingByMultiheadAttention(nn.Module):
    """PMA_k(Z) = MAB(S, rFF(Z)) with k learned seeds S (Lee et al. 2019, eq. 11); CLAM uses
    one seed, so the set of steps pools to one vector."""

    def __init__(self, width: int, heads: int, seeds: int = 1):
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(1, seeds, width))
        nn.init.xavier_uniform_(self.seeds)
        self.feed_forward = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.block = MultiheadAttentionBlock(width, heads)

    def forward(self, z: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        seeds = self.seeds.expand(z.shape[0], -1, -1)
        return self.block(seeds, self.feed_forward(z), padding)  # [B, k, width]


class CLAMEncoder(nn.Module):
    """[B, T, f] view + [B, T] valid mask → [B, repr_dim] (Ma et al. 2024, the encoder).

    Positions 0..T−1 index the step within the view. Up to ``max_len`` they come from a fixed
    table; longer views compute the same sinusoids on the fly (exact, not clamped)."""

    def __init__(self, feat_dim: int, width: int = 128, heads: int = 4, repr_dim: int = 20,
                 max_len: int = 50):
        super().__init__()
        if width % heads:
            raise ValueError(f"agent_modeling.width: {width} is not divisible by heads={heads}")
        self.feat_dim, self.width, self.repr_dim, self.max_len = feat_dim, width, repr_dim, max_len
        self.embed = nn.Linear(feat_dim, width)
        # A constant, not state: rebuilt from (max_len, width), so not saved in checkpoints.
        self.register_buffer("positional", sinusoidal_table(max_len, width), persistent=False)
        self.blocks = nn.ModuleList([SetAttentionBlock(width, heads) for _ in range(2)])
        self.pool = PoolingByMultiheadAttention(width, heads, seeds=1)
        self.out = nn.Linear(width, repr_dim)

    def positional_encoding(self, length: int) -> torch.Tensor:
        if length <= self.max_len:
            return self.positional[:length]
        return sinusoidal_table(length, self.width, device=self.positional.device)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        valid = valid.bool()
        padding = ~valid
        # Zero the padding so that NaN/inf there cannot leak through a 0 attention weight.
        x = x.masked_fill(padding[..., None], 0.0)
        h = self.embed(x) + self.positional_encoding(x.shape[1])
        for block in self.blocks:
            h = block(h, padding)
        pooled = self.pool(h, padding)[:, 0]
        return self.out(pooled)


class ProjectionHead(nn.Module):
    """g(·) of SimCLR (Chen et al. 2020, §2.1): repr → hidden → BatchNorm → ReLU → out. It
    serves the contrastive loss only; the actor sees the encoder's representation."""

    def __init__(self, repr_dim: int = 20, hidden: int = 128, out: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(repr_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
