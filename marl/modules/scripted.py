"""A team that acts by a fixed rule: an RLlib module with no parameters, never trained.

``model_config["policy"]`` names the rule: ``random`` (uniform over allowed actions, or over
[-1, 1] for continuous actions), ``noop`` (action 0, or zeros), or ``"module:callable"``, a
function ``(team_obs: dict[str, Tensor], action_space) -> actions`` for a batch of team
observations.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule


def random_policy(obs: dict[str, torch.Tensor], space: gym.Space) -> torch.Tensor:
    if isinstance(space, gym.spaces.MultiDiscrete):
        mask = obs["action_mask"]
        b, n, a = mask.shape
        return torch.multinomial(mask.reshape(b * n, a), 1).reshape(b, n)
    b = obs["obs"].shape[0]
    return torch.rand(b, *space.shape) * 2 - 1


def noop_policy(obs: dict[str, torch.Tensor], space: gym.Space) -> torch.Tensor:
    b = obs["obs"].shape[0]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return torch.zeros(b, len(space.nvec), dtype=torch.long)
    return torch.zeros(b, *space.shape)


SCRIPTS: dict[str, Callable] = {"random": random_policy, "noop": noop_policy}


def resolve_script(name: str) -> Callable:
    if name in SCRIPTS:
        return SCRIPTS[name]
    module_name, _, attr = name.partition(":")
    fn = getattr(importlib.import_module(module_name), attr, None) if attr else None
    if not callable(fn):
        raise ValueError(f"'{name}' is neither one of {sorted(SCRIPTS)} nor a 'module:callable'")
    return fn


class ScriptedTeamModule(TorchRLModule):
    def setup(self):
        self.policy = resolve_script(self.model_config.get("policy", "random"))

    def _act(self, batch: dict[str, Any]) -> dict[str, Any]:
        actions = self.policy(batch[Columns.OBS], self.action_space)
        return {Columns.ACTIONS: actions, Columns.ACTION_LOGP: torch.zeros(actions.shape[0])}

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch)

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch)

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {}
