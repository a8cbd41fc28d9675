"""Running value normalisation (Yu et al. 2022, "The Surprising Effectiveness of PPO in
Cooperative Multi-Agent Games", §4 "Value normalization").

The critic predicts normalised values; targets are normalised with debiased running moments
of the value targets. Stats live in buffers, so they travel with the module's weights to the
EnvRunners and into checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueNorm(nn.Module):
    def __init__(self, size: int = 1, beta: float = 0.99999, eps: float = 1e-5):
        super().__init__()
        self.beta, self.eps = beta, eps
        self.register_buffer("running_mean", torch.zeros(size))
        self.register_buffer("running_mean_sq", torch.zeros(size))
        self.register_buffer("debias", torch.zeros(1))

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debias.clamp(min=self.eps)
        mean = self.running_mean / d
        var = (self.running_mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """x: [B, size] value targets; mask: [B, size], 1 where a target counts."""
        x = x.reshape(-1, self.running_mean.numel()).float()
        mask = torch.ones_like(x) if mask is None else mask.reshape_as(x).float()
        count = mask.sum(0)
        if not bool((count > 0).all()):  # e.g. a minibatch of padding rows only
            return
        mean, mean_sq = (x * mask).sum(0) / count, (x**2 * mask).sum(0) / count
        self.running_mean.mul_(self.beta).add_(mean * (1 - self.beta))
        self.running_mean_sq.mul_(self.beta).add_(mean_sq * (1 - self.beta))
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._moments()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._moments()
        return x * var.sqrt() + mean
