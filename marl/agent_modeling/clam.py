"""CLAM: contrastive learning-based agent modelling (Ma et al., 2024).

Pieces, and who uses which:

- ``encoder`` (online) + ``projection``: trained by SimCLR's NT-Xent on two augmented views of
  the same episode (Chen et al. 2020), and by nothing else: ``online_parameters()`` are what
  the encoder's own optimizer trains.
- ``ema_encoder``: a momentum copy, ema ← m·ema + (1 − m)·online (m = 0.99), that encodes the
  current episode's prefix at rollout time. Its output, L2-normalised and detached, is what
  the actor (and optionally the critic) receives, so no policy gradient reaches the encoder.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from marl.agent_modeling.augment import two_views
from marl.agent_modeling.encoder import CLAMEncoder, ProjectionHead
from marl.agent_modeling.loss import nt_xent


def prefix_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """valid[b, t] = t < lengths[b]: the prefix [0, lengths[b]) of each row."""
    return torch.arange(steps, device=lengths.device)[None] < lengths[:, None]


class CLAM(nn.Module):
    def __init__(self, feat_dim: int, repr_dim: int = 20, width: int = 128, heads: int = 4,
                 max_len: int = 50, temperature: float = 0.5, momentum: float = 0.99,
                 crop_min: int = 8, crop_max: int = 48, mask_fraction: float = 0.3):
        super().__init__()
        checks = {
            "feat_dim": (feat_dim, feat_dim >= 1, ">= 1"),
            "repr_dim": (repr_dim, repr_dim >= 1, ">= 1"),
            "temperature": (temperature, temperature > 0, "> 0"),
            "momentum": (momentum, 0.0 <= momentum <= 1.0, "in [0, 1]"),
            "crop_min": (crop_min, 1 <= crop_min <= crop_max, f"in [1, crop_max={crop_max}]"),
            "mask_fraction": (mask_fraction, 0.0 <= mask_fraction <= 1.0, "in [0, 1]"),
        }
        for key, (value, ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"agent_modeling.{key}: {value!r}, expected {expected}")
        self.temperature, self.momentum = temperature, momentum
        self.crop_min, self.crop_max, self.mask_fraction = crop_min, crop_max, mask_fraction
        self.encoder = CLAMEncoder(feat_dim, width=width, heads=heads, repr_dim=repr_dim,
                                   max_len=max_len)
        self.projection = ProjectionHead(repr_dim=repr_dim, hidden=128, out=64)
        self.ema_encoder = copy.deepcopy(self.encoder)
        self.ema_encoder.requires_grad_(False)

    @property
    def repr_dim(self) -> int:
        return self.encoder.repr_dim

    def online_parameters(self) -> list[nn.Parameter]:
        """What the encoder's optimizer trains: the online encoder and the projection head."""
        return [*self.encoder.parameters(), *self.projection.parameters()]

    @torch.no_grad()
    def represent(self, hist: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The EMA encoder on each row's prefix hist[b, :lengths[b]] (lengths ≥ 1), L2-normalised
        and detached: [B, repr_dim]. Steps past the longest prefix are cut off first; that is
        exact (padding cannot change the output) and spares encoding an empty tail."""
        lengths = lengths.to(device=hist.device, dtype=torch.long)
        steps = min(int(lengths.max()), hist.shape[1]) if lengths.numel() else hist.shape[1]
        hist = hist[:, :steps]
        h = self.ema_encoder(hist, prefix_mask(lengths, steps))
        return F.normalize(h, dim=-1)

    def contrastive_loss(self, hist: torch.Tensor, lengths: torch.Tensor,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NT-Xent (Chen et al. 2020, eq. 1) of the online encoder + projection on two views of
        each episode (crop, and crop + masked steps). → (loss, stats); the stats are detached
        0-d tensors on hist's device (RLlib's metrics reduce them there), and ``generator``
        lives on that device too."""
        x1, valid1, x2, valid2 = two_views(hist, lengths, generator, self.crop_min,
                                           self.crop_max, self.mask_fraction)
        b = x1.shape[0]
        # Both views in one call: one batch for the projection's BatchNorm, as in SimCLR.
        h = self.encoder(torch.cat([x1, x2]), torch.cat([valid1, valid2]))
        z = self.projection(h)
        loss = nt_xent(z[:b], z[b:], self.temperature)
        with torch.no_grad():
            zn = F.normalize(z, dim=1)
            sim = zn @ zn.T
            sim.fill_diagonal_(float("-inf"))
            partner = torch.arange(2 * b, device=z.device).add(b).remainder(2 * b)  # b..2b-1, 0..b-1
            stats = {
                "contrastive_loss": loss.detach(),
                # How often a view's nearest other view is its positive (chance ≈ 1/(2B−1)).
                "contrastive_top1": (sim.argmax(dim=1) == partner).float().mean(),
                "positive_cosine": sim[torch.arange(2 * b, device=z.device), partner].mean(),
                # Near 0 would mean a collapsed representation.
                "repr_std": F.normalize(h, dim=1).std(dim=0).mean(),
                "view_length": torch.cat([valid1, valid2]).sum(dim=1).float().mean(),
            }
        return loss, stats

    @torch.no_grad()
    def ema_update(self) -> None:
        """ema ← m·ema + (1 − m)·online, for parameters and (persistent, floating) buffers.
        Non-persistent buffers are constants (the positional table) and are copied."""
        m = self.momentum
        online = dict(self.encoder.named_parameters()) | dict(self.encoder.named_buffers())
        state_keys = self.encoder.state_dict().keys()
        for name, ema in [*self.ema_encoder.named_parameters(), *self.ema_encoder.named_buffers()]:
            new = online[name]
            if ema.is_floating_point() and name in state_keys:
                ema.mul_(m).add_((1.0 - m) * new)
            else:
                ema.copy_(new)
