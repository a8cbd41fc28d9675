"""Victim teams: a trained team loaded from a checkpoint, frozen, acting for the attack env.

Black-box is structural (DESIGN.md, "Adversaries"): the frozen modules live in this module's
private table ``_FROZEN``; a ``BlackBoxVictim`` holds only a handle into it and offers ``act``.
Walking the attributes of the attack env, a black-box plugin or the attacker's RLlib module
reaches no victim module, parameter or gradient. Only a ``WhiteBoxVictim`` (handed to
white-box plugins alone) carries the module itself.

Loading goes through ``load_victim_checkpoint`` alone, on the safe loader
(``marl.checkpoints.load_checkpoint``: YAML, JSON and safetensors; never a pickle).

A recurrent victim (``model.recurrent``) keeps its agents' hidden states inside its
``FrozenTeam``, in ``_FROZEN`` like the module: the attack env calls ``reset`` at each episode
start (the states return to the initial ones) and every ``act`` advances them one step. The
attacker sees neither the states nor when they change; a black-box victim stays ``act`` (and
``reset``) only.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.utils.spaces.space_utils import unsquash_action

from marl.checkpoints import TeamCheckpoint, load_checkpoint
from marl.errors import UserError


def load_victim_checkpoint(path: Path) -> TeamCheckpoint:
    """The ONE place a victim checkpoint is read: ``marl.checkpoints.load_checkpoint``, which
    reads YAML, JSON and safetensors only (never a pickle). The modules come back frozen:
    eval mode, no gradients."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"victim '{path}' does not exist (expected a checkpoint or run directory)")
    victim = load_checkpoint(path)
    for module in victim.modules.values():
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return victim


def trained_team(cfg: Any, teams: list[str]) -> str:
    """The victim team by default: the checkpoint's (only) trained team."""
    roles = {t: (cfg.teams[t].role if t in cfg.teams else "train") for t in teams}
    trained = [t for t in teams if roles[t] == "train"]
    return trained[0] if len(trained) == 1 else teams[0]


# ------------------------------------------------------------------------ acting
def squash(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """The inverse of RLlib's ``unsquash_action``: env bounds -> the policy's [-1, 1]."""
    if np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
        return (2.0 * (action - space.low) / (space.high - space.low) - 1.0).astype(np.float32)
    return action.astype(np.float32)


def _graph(module, obs: dict[str, torch.Tensor], deterministic: bool):
    """The DAG the module samples with (a learned one with fresh Gumbel noise, or none)."""
    if getattr(module, "learns_graph", False):
        noise = module.graph.sample_noise(obs["obs"].shape[0], obs["obs"].device)
        if deterministic:
            noise = {k: torch.zeros_like(v) for k, v in noise.items()}
        return module.graph(obs["obs"], noise)
    return module.graph(obs["obs"])


def _with_repr(module, obs: dict) -> dict:
    """The victim's observation plus its agent model's representation where it models the
    other agents (encoded from the episode prefix the observation carries)."""
    if not getattr(module, "models_agents", False):
        return obs
    from ray.rllib.core.columns import Columns

    return module.with_representation({Columns.OBS: obs})


class FrozenTeam:
    """A frozen module and its team's action space: joint actions in the env's units."""

    def __init__(self, module, action_space: gym.Space, deterministic: bool):
        self.module, self.space, self.deterministic = module, action_space, deterministic
        self.discrete = isinstance(action_space, gym.spaces.MultiDiscrete)
        self.scripted = not hasattr(module, "sample_joint")
        # The last step's sampled DAG, joint action (module units) and dist inputs: what the
        # trusted evaluation reads back to measure stealth (``own_policy``).
        self._last: tuple[Any, torch.Tensor, torch.Tensor] | None = None
        # A recurrent team's hidden states [1, n, H]: before the next step, and before the last.
        self.recurrent = getattr(module, "recurrent", None) is not None
        self.hidden: torch.Tensor | None = None
        self._hidden_last: torch.Tensor | None = None
        self.reset()
        if not self.discrete:
            self._box = [gym.spaces.Box(lo, hi) for lo, hi in zip(action_space.low, action_space.high, strict=True)]

    def reset(self) -> None:
        """A new episode: a recurrent team's memory returns to its initial state."""
        self._last = None
        if self.recurrent:
            self.hidden = self.module.get_initial_state()["actor"].unsqueeze(0)
            self._hidden_last = None

    def hidden_for(self, b: int) -> torch.Tensor | None:
        """The states before the next step, for a batch of ``b`` copies of it (None: stateless)."""
        # A clone: ``act`` runs in inference mode, and its tensors cannot enter autograd (the
        # white box differentiates through the step).
        return None if self.hidden is None else self.hidden.expand(b, *self.hidden.shape[1:]).clone()

    def _intervention(self, intervention: dict[int, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """do(a_K) as (mask [1, n], actions [1, n(, k)]) in the module's units."""
        mask = np.zeros((1, n), bool)
        fixed = np.zeros((1, n), np.int64) if self.discrete else np.zeros((1, n, self.space.shape[-1]), np.float32)
        for i, a in intervention.items():
            mask[0, i] = True
            # A continuous module conditions on actions in its own units ([-1, 1]).
            fixed[0, i] = a if self.discrete else squash(np.asarray(a, np.float32), self._box[i])
        return torch.from_numpy(mask), torch.from_numpy(fixed)

    @torch.inference_mode()
    def act(self, team_obs: dict[str, np.ndarray], intervention: dict[int, Any] | None = None) -> np.ndarray:
        obs = {k: torch.from_numpy(np.asarray(v)).unsqueeze(0) for k, v in team_obs.items()}
        if self.scripted:  # a scripted team: its own rule
            from ray.rllib.core.columns import Columns

            return np.asarray(self.module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS][0])
        do = self._intervention(intervention, obs["alive"].shape[1]) if intervention else None
        obs = _with_repr(self.module, obs)
        graph = _graph(self.module, obs, self.deterministic)
        if self.recurrent:
            actions, params, hidden = self.module.sample_joint(
                obs, graph, self.deterministic, intervene=do, hidden=self.hidden
            )
            self._hidden_last, self.hidden = self.hidden, hidden
        else:
            actions, params = self.module.sample_joint(obs, graph, self.deterministic, intervene=do)
        self._last = (graph, actions, params)
        joint = actions[0].numpy()
        if self.discrete:
            return joint.astype(np.int64)
        # As RLlib's EnvRunners do: the policy's [-1, 1] onto the env's bounds (clipped).
        out = unsquash_action(joint, self.space)
        for i, a in (intervention or {}).items():  # the fixed actions are executed as given
            out[i] = np.asarray(a, np.float32)
        return out


    @torch.inference_mode()
    def own_params(self, team_obs: dict[str, np.ndarray]) -> np.ndarray | None:
        """[n, A]: every agent's own π_i(· | o_i, a_Pa(i)) on ``team_obs``, with the DAG and the
        parents' actions of the last step (teacher-forced, no sampling: torch's stream is not
        touched). None for a scripted team or before the first step."""
        if self.scripted or self._last is None:
            return None
        graph, actions, _ = self._last
        obs = {k: torch.from_numpy(np.asarray(v)).unsqueeze(0) for k, v in team_obs.items()}
        # A recurrent team: from the states the last step started from.
        return self.module.conditional_logits(_with_repr(self.module, obs), actions, graph, self._hidden_last)[0].numpy()

    def last_params(self) -> np.ndarray | None:
        """[n, A]: the dist inputs the last step sampled from (on the observations it was given)."""
        return None if self.scripted or self._last is None else self._last[2][0].numpy()


_FROZEN: dict[int, FrozenTeam] = {}
_handles = itertools.count()


class BlackBoxVictim:
    """``act`` and nothing else: the victim's module stays in ``_FROZEN``."""

    __slots__ = ("_handle",)

    def __init__(self, team: FrozenTeam):
        self._handle = next(_handles)
        _FROZEN[self._handle] = team

    def act(self, team_obs: dict[str, np.ndarray], intervention: dict[int, Any] | None = None) -> np.ndarray:
        """The team's joint action (env units) for one step; ``intervention`` = do(a_K):
        {agent id: its fixed action}, conditioned on by its children in the victim's DAG."""
        return _FROZEN[self._handle].act(team_obs, intervention)

    def reset(self) -> None:
        """A new episode (the attack env calls it): a recurrent victim forgets the last one."""
        _FROZEN[self._handle].reset()

    __call__ = act

    def __del__(self):
        _FROZEN.pop(self._handle, None)


class WhiteBoxVictim:
    """The victim's module itself, for white-box plugins only (obs_pgd): differentiable
    distribution inputs of each agent's policy. A recurrent victim's read its current hidden
    states (those its next ``act`` starts from) without advancing them."""

    def __init__(self, team: FrozenTeam):
        self._team = team
        self.module = team.module
        self.discrete = team.discrete

    def act(self, team_obs: dict[str, np.ndarray], intervention: dict[int, Any] | None = None) -> np.ndarray:
        return self._team.act(team_obs, intervention)

    def joint_sample(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """A clean joint action [B, n(,k)] (module units) and the graph it was sampled on."""
        with torch.no_grad():
            obs = _with_repr(self.module, obs)
            graph = _graph(self.module, obs, self._team.deterministic)
            hidden = self._team.hidden_for(obs["obs"].shape[0])
            actions = self.module.sample_joint(obs, graph, self._team.deterministic, hidden=hidden)[0]
        return actions, graph

    def policy_params(self, obs: dict[str, torch.Tensor], actions: torch.Tensor, graph) -> torch.Tensor:
        """π_i(· | o_i, a_Pa(i)) dist inputs [B, n, A], differentiable w.r.t. ``obs['obs']``."""
        hidden = self._team.hidden_for(obs["obs"].shape[0])
        return self.module.conditional_logits(_with_repr(self.module, obs), actions, graph, hidden)


def own_policy(victim: BlackBoxVictim, team_obs: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray | None, bool]:
    """Trusted project code only (the evaluation's stealth measures), never handed to a plugin:
    the victim team's own distribution inputs [n, A] at its last step, on ``team_obs`` (the
    clean observations; None = those the step was given), and whether the team acts
    deterministically."""
    team = _FROZEN[victim._handle]
    params = team.last_params() if team_obs is None else team.own_params(team_obs)
    return params, team.deterministic


def white_box(victim: BlackBoxVictim) -> WhiteBoxVictim:
    """Trusted project code only (the evaluation's observation attacks): the white-box view of
    the env's own victim team, so that it reads the hidden states that team acts from."""
    return WhiteBoxVictim(_FROZEN[victim._handle])


def frozen_teams(victim: TeamCheckpoint, env, deterministic: bool) -> dict[str, FrozenTeam]:
    return {t: FrozenTeam(victim.modules[t], env.action_spaces[t], deterministic) for t in env.teams}
