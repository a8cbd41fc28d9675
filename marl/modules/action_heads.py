"""Per-agent action distributions of a team's shared actor.

A head turns the actor's output for agent i into π_i's distribution inputs, samples from them,
scores actions, and encodes an agent's action for its children in the DAG: one-hot for
discrete actions, the raw vector for continuous ones (Chen & Zhang 2023, §4.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASKED_LOGIT = -1e9


class CategoricalHead(nn.Module):
    """Discrete actions; invalid actions (mask 0) get a logit of -1e9 and are never sampled."""

    discrete = True

    def __init__(self, n_actions: int):
        super().__init__()
        self.n_actions = n_actions
        self.out_dim = n_actions  # actor output per agent
        self.code_dim = n_actions  # parents' action encoding per agent
        self.param_dim = n_actions  # distribution inputs per agent

    def dist_inputs(self, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return out.masked_fill(mask < 0.5, MASKED_LOGIT)

    def encode(self, actions: torch.Tensor, dtype) -> torch.Tensor:
        return F.one_hot(actions.long(), self.n_actions).to(dtype)

    def sample(self, params: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            return params.argmax(-1)
        # Gumbel-max: argmax(logits + Gumbel noise) is an exact sample of the categorical
        # (Gumbel 1954; Maddison et al. 2014), without torch.distributions' set-up cost per call.
        return (params - torch.empty_like(params).exponential_().log()).argmax(-1)

    def empty_actions(self, shape, device) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.long, device=device)

    def dead_action(self, actions: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        return actions  # the mask already leaves a dead agent only the no-op

    def logp(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(params, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(params, -1)
        return -(logp.exp() * logp).sum(-1)


class GaussianHead(nn.Module):
    """Continuous actions: a diagonal Gaussian with a learned, state-independent log std.
    Actions live in [-1, 1] per dimension; RLlib maps them onto the env's bounds."""

    discrete = False

    def __init__(self, action_dim: int, init_log_std: float = -0.5):
        super().__init__()
        self.k = action_dim
        self.out_dim = action_dim
        self.code_dim = action_dim
        self.param_dim = 2 * action_dim  # [mean, log_std]
        self.log_std = nn.Parameter(torch.full((action_dim,), init_log_std))

    def dist_inputs(self, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)

    def encode(self, actions: torch.Tensor, dtype) -> torch.Tensor:
        return actions.to(dtype)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[..., : self.k], params[..., self.k :]

    def sample(self, params: torch.Tensor, deterministic: bool) -> torch.Tensor:
        mean, log_std = self._split(params)
        if deterministic:
            return mean
        return mean + log_std.exp() * torch.randn_like(mean)

    def empty_actions(self, shape, device) -> torch.Tensor:
        return torch.zeros(*shape, self.k, device=device)

    def dead_action(self, actions: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """A dead agent's action is zeros, not noise its children would read."""
        return actions * alive.unsqueeze(-1)

    def logp(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._split(params)
        z = (actions - mean) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        _, log_std = self._split(params)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
