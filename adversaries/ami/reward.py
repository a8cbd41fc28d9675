"""AMI's shaped adversary reward (Li et al., AMI §4.3, as the authors' code computes it).

  discrete (SMAC branch):       r'_t = r_adv,t − λ·s_t,                λ = 0.1
                                then standardised with a running mean and variance
  continuous (MaMuJoCo branch): r'_t = r_adv,t + c_l · l_t,            c_l = 1.0

s_t is the distance of the victims' predicted next actions to the oracle's targets and l_t the
targets' likelihood (``influence.py``): the discrete branch subtracts a distance and the
continuous one adds a likelihood; both reward moving the victims towards the targets. The
paper writes a single mutual-information objective; we follow the code.
"""

from __future__ import annotations

import torch


def shaped_reward_discrete(r_adv: torch.Tensor, influence: torch.Tensor, coeff: float) -> torch.Tensor:
    """r' = r_adv − λ·s_t (before standardisation)."""
    return r_adv - coeff * influence


def shaped_reward_continuous(
    r_adv: torch.Tensor, likelihood: torch.Tensor, coeff: float
) -> torch.Tensor:
    """r' = r_adv + c_l·l_t."""
    return r_adv + coeff * likelihood


class RunningMeanStd:
    """Running mean and variance of a scalar stream, merged batch by batch (Chan et al.'s
    parallel update), started at mean 0, variance 1 and a tiny count, as EPyMARL's
    ``RunningMeanStd`` is. ``standardize`` updates with the batch first, then standardises it,
    in the authors' order."""

    def __init__(self, epsilon: float = 1e-4):
        self.mean, self.var, self.count = 0.0, 1.0, epsilon

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        if x.numel() == 0:
            return
        b_mean, b_var, b_count = float(x.mean()), float(x.var(unbiased=False)), x.numel()
        delta = b_mean - self.mean
        total = self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.mean, self.var, self.count = self.mean + delta * b_count / total, m2 / total, total

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / max(self.var, 1e-8) ** 0.5

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        self.update(x)
        return self.normalize(x)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = (float(state[k]) for k in ("mean", "var", "count"))
