"""VMAS scenarios (Bettini et al. 2022, the ``vmas`` package: torch, batched on CPU or GPU).

Two forms of one scenario, with the same kwargs: ``scenario`` (``balance``, ``navigation``, any
VMAS scenario name), ``max_steps`` (the time limit, a truncation), ``continuous_actions``
(VMAS's default True: a Box per agent, else Discrete), ``device`` (``cpu`` or ``cuda``) and the
scenario's own keys (e.g. ``n_agents``).

- ``parallel_env(...)``: a PettingZoo ParallelEnv over a VMAS env with ``num_envs=1``, for the
  per-env path (RLlib steps such copies one by one).
- ``batched_env(num_envs, ...)``: B copies in one VMAS env, stepped as one batched call
  (envs/batched.py), for ``runners.batched``.

VMAS keeps its own random stream (its ``local_seed``), seeded by ``seed``; a reset with a seed
re-seeds it. Every agent's reward is its own (in balance and navigation the shared team
reward), and a team's reward is their sum, as for every env of the project (README). VMAS's
``done()`` of the scenario is a termination; ``max_steps`` a truncation. Observations are the
agents' own; there is no global state, so the adapter's state is the concatenated observations.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from envs.adapter import TeamSpec
from envs.batched import BatchedStep, BatchedTeamEnv


def _make(num_envs: int, scenario: str, max_steps: int | None, continuous_actions: bool, device: str,
          seed: int | None, **scenario_kwargs):
    import vmas

    return vmas.make_env(
        scenario, num_envs=num_envs, device=device, continuous_actions=continuous_actions,
        max_steps=max_steps, seed=seed, terminated_truncated=True, **scenario_kwargs,
    )


def _gymnasium_space(space) -> gym.Space:
    """VMAS builds ``gym`` spaces; the project speaks ``gymnasium``."""
    if hasattr(space, "n"):
        return gym.spaces.Discrete(int(space.n))
    return gym.spaces.Box(np.asarray(space.low, np.float32), np.asarray(space.high, np.float32),
                          tuple(space.shape), np.float32)


class VmasParallelEnv(ParallelEnv):
    metadata = {"name": "vmas_v0"}

    def __init__(self, scenario: str = "balance", max_steps: int | None = 100, continuous_actions: bool = True,
                 device: str = "cpu", seed: int | None = 0, **scenario_kwargs):
        self._env = _make(1, scenario, max_steps, continuous_actions, device, seed, **scenario_kwargs)
        self.possible_agents = [a.name for a in self._env.agents]
        self.agents: list[str] = []
        self._act = dict(zip(self.possible_agents, map(_gymnasium_space, self._env.action_space), strict=True))
        self._obs = dict(zip(self.possible_agents, map(_gymnasium_space, self._env.observation_space), strict=True))
        self.continuous = bool(continuous_actions)

    def observation_space(self, agent):
        return self._obs[agent]

    def action_space(self, agent):
        return self._act[agent]

    def _dict(self, tensors) -> dict[str, np.ndarray]:
        return {a: t[0].detach().cpu().numpy().astype(np.float32) for a, t in zip(self.possible_agents, tensors, strict=True)}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._env.seed(seed)
        obs = self._env.reset()
        self.agents = list(self.possible_agents)
        return self._dict(obs), {a: {} for a in self.agents}

    def step(self, actions):
        import torch

        joint = []
        for a in self.possible_agents:
            act = np.asarray(actions[a], np.float32 if self.continuous else np.int64).reshape(1, -1)
            joint.append(torch.as_tensor(act, device=self._env.device))
        obs, rews, term, trunc, _ = self._env.step(joint)
        terminated, truncated = bool(term[0]), bool(trunc[0]) and not bool(term[0])
        agents = list(self.agents)
        rewards = {a: float(r[0]) for a, r in zip(self.possible_agents, rews, strict=True)}
        self.agents = [] if terminated or truncated else agents
        return (self._dict(obs), rewards, dict.fromkeys(agents, terminated), dict.fromkeys(agents, truncated),
                {a: {} for a in agents})

    def close(self):
        pass


class VmasBatchedEnv(BatchedTeamEnv):
    """B copies of a VMAS scenario in one VMAS env (one batched torch call per step), seen as
    the team adapter sees ``VmasParallelEnv``: ``obs`` the agents' observations zero-padded to
    the widest, ``state`` their concatenation, every action allowed and every agent alive (VMAS
    agents do not die); the team reward is the sum of the agents' rewards. Copies whose
    episode ended are reset in place (VMAS's ``reset_at``) within the step."""

    def __init__(self, num_envs: int, scenario: str = "balance", max_steps: int | None = 100,
                 continuous_actions: bool = True, device: str = "cpu", seed: int | None = 0, **scenario_kwargs):
        import torch

        self._torch = torch
        self.num_envs = int(num_envs)
        self._env = _make(self.num_envs, scenario, max_steps, continuous_actions, device, seed, **scenario_kwargs)
        agents = [a.name for a in self._env.agents]
        acts = [_gymnasium_space(s) for s in self._env.action_space]
        obs_dims = [int(np.prod(s.shape)) for s in self._env.observation_space]
        n, d = len(agents), max(obs_dims)
        self._obs_dims = obs_dims
        self.continuous = bool(continuous_actions)
        if self.continuous:
            self.spec = TeamSpec(self.team, agents, d, 1, n * d, [1] * n, continuous=True)
            low = np.stack([s.low.reshape(-1) for s in acts]).astype(np.float32)
            high = np.stack([s.high.reshape(-1) for s in acts]).astype(np.float32)
            self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        else:
            n_acts = [int(s.n) for s in acts]
            self.spec = TeamSpec(self.team, agents, d, max(n_acts), n * d, n_acts)
            self.action_space = gym.spaces.MultiDiscrete([max(n_acts)] * n)
        self.observation_space = self.team_obs_space(n, d, n * d, self.spec.n_actions)

    def _team_obs(self, tensors) -> dict[str, np.ndarray]:
        n, d, b = self.spec.n_agents, self.spec.obs_dim, self.num_envs
        obs = np.zeros((b, n, d), np.float32)
        for i, t in enumerate(tensors):
            obs[:, i, : self._obs_dims[i]] = t.detach().cpu().numpy()
        mask = np.zeros((b, n, self.spec.n_actions), np.float32)
        for i, k in enumerate(self.spec.agent_n_actions):
            mask[:, i, :k] = 1.0
        return {"obs": obs, "state": obs.reshape(b, n * d).copy(), "action_mask": mask,
                "alive": np.ones((b, n), np.float32)}

    def reset(self, seeds=None):
        if seeds is not None:  # one VMAS env holds every copy: its stream takes the first seed
            self._env.seed(int(seeds[0]))
        return self._team_obs(self._env.reset())

    def step(self, actions):
        torch = self._torch
        actions = np.asarray(actions)
        if self.continuous:
            joint = [torch.as_tensor(actions[:, i].astype(np.float32), device=self._env.device)
                     for i in range(self.spec.n_agents)]
        else:
            joint = [torch.as_tensor(actions[:, i].astype(np.int64).reshape(-1, 1), device=self._env.device)
                     for i in range(self.spec.n_agents)]
        obs, rews, term, trunc, _ = self._env.step(joint)
        final = self._team_obs(obs)
        reward = torch.stack(rews).sum(0).detach().cpu().numpy().astype(np.float32)
        terminated = term.detach().cpu().numpy().astype(bool)
        truncated = trunc.detach().cpu().numpy().astype(bool) & ~terminated
        done = np.flatnonzero(terminated | truncated)
        nxt = final
        if done.size:
            for i in done:
                obs = self._env.reset_at(int(i))  # every copy's observations, copy i reset
            nxt = self._team_obs(obs)
        return BatchedStep(nxt, final, reward, terminated, truncated)


def parallel_env(**kwargs) -> VmasParallelEnv:
    return VmasParallelEnv(**kwargs)


def batched_env(num_envs: int, **kwargs) -> VmasBatchedEnv:
    return VmasBatchedEnv(num_envs, **kwargs)
