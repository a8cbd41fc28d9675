"""``obs_pgd``: white-box L∞ projected-gradient attack on the victims' observations.

As the adversarial MARL benchmark (AMB) configures it: ε = 0.2 (``adversary.budget``),
10 iterations of step ε/10, a random start in the ball; each step ascends the sign of the
gradient of the cross-entropy of the victim's clean action (discrete) or of the squared
distance of the policy mean to the clean mean (continuous), then projects back onto the
ball (Madry et al. 2018, eq. 2). The attacked agents' own policies π_i(· | õ_i, a_Pa(i)) are
attacked; parents' actions and a learned DAG are those of the clean step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from adversaries.base import AdversaryPlugin
from adversaries.registry import register


class PGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(10, ge=1)
    step_fraction: float = Field(0.1, gt=0.0)  # step size = step_fraction · ε
    random_start: bool = True


@register
class ObsPGD(AdversaryPlugin):
    name = "obs_pgd"
    threat_model = "observation"
    white_box = True
    trains = False
    Params = PGDParams
    default_budget = 0.2

    def perturb(self, team_obs, victim, attacked):
        eps = float(self.ctx.budget)
        alpha = self.params.step_fraction * eps
        obs = {k: torch.as_tensor(v).unsqueeze(0) for k, v in team_obs.items()}
        clean_obs = obs["obs"]
        rows = torch.zeros_like(clean_obs)
        rows[0, attacked] = 1.0  # only the attacked agents' observations move
        actions, graph = victim.joint_sample(obs)
        with torch.no_grad():
            clean = victim.policy_params(obs, actions, graph)[0, attacked]
        if victim.discrete:
            target = clean.argmax(-1)  # the victim's clean (most likely) action
        else:
            target = clean[..., : clean.shape[-1] // 2]  # the clean mean
        delta = torch.zeros_like(clean_obs)
        if self.params.random_start:
            delta = torch.empty_like(clean_obs).uniform_(-eps, eps) * rows
        for _ in range(self.params.iterations):
            delta.requires_grad_(True)
            params = victim.policy_params({**obs, "obs": clean_obs + delta}, actions, graph)[0, attacked]
            if victim.discrete:
                loss = F.cross_entropy(params, target)
            else:
                loss = ((params[..., : params.shape[-1] // 2] - target) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():  # ascent on the sign, projected onto the ε-ball
                delta = ((delta + alpha * grad.sign()).clamp(-eps, eps) * rows).detach()
        out = dict(team_obs)
        out["obs"] = (clean_obs + delta)[0].numpy().astype(np.float32)
        return out
