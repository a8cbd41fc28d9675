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
        self.register_buffer("debias", torch.zeros(size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before per-column updates hold one shared debias term.
        key = prefix + "debias"  # a tensor, or a NumPy array when RLlib syncs EnvRunners
        if key in state_dict and torch.as_tensor(state_dict[key]).numel() == 1 != self.debias.numel():
            state_dict[key] = torch.as_tensor(state_dict[key]).reshape(1).expand_as(self.debias).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debias.clamp(min=self.eps)
        mean = self.running_mean / d
        var = (self.running_mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """x: [B, size] value targets; mask: [B, size], 1 where a target counts.

        Column by column: a column with no counted row in this batch (an agent dead or padded
        throughout, under IPPO; every column in a minibatch of padding rows only) keeps its
        statistics exactly (its decay is 1 and its increment 0), and the other columns still
        update. No branch on the data, so the host never waits for the device here."""
        x = x.reshape(-1, self.running_mean.numel()).float()
        mask = torch.ones_like(x) if mask is None else mask.reshape_as(x).float()
        count = mask.sum(0)
        seen = count > 0
        safe = count.clamp(min=1.0)
        x = torch.where(mask > 0, x, torch.zeros_like(x))
        mean, mean_sq = x.sum(0) / safe, (x**2).sum(0) / safe
        keep = torch.where(seen, torch.full_like(count, self.beta), torch.ones_like(count))
        self.running_mean.mul_(keep).add_(mean * (1 - keep))
        self.running_mean_sq.mul_(keep).add_(mean_sq * (1 - keep))
        self.debias.mul_(keep).add_(1 - keep)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._moments()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._moments()
        return x * var.sqrt() + mean
