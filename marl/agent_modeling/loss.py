"""SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1), as CLAM trains its encoder with it
(Ma et al. 2024; temperature 0.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean over the 2B views of ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)
    (Chen et al. 2020, eq. 1), sim = cosine similarity of the L2-normalised projections.

    z1[b] and z2[b] are the two views of sample b (the positive pair); the other 2B − 2 views
    of the batch are the negatives."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be [B, k]")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    # The denominator runs over k ≠ i: a view is not its own negative.
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.arange(2 * b, device=z.device).add(b).remainder(2 * b)  # b..2b-1, 0..b-1
    return F.cross_entropy(logits, positive)
