"""Gymnasium multi-agent envs with Tuple spaces (Level-Based Foraging, RWARE) as PettingZoo
ParallelEnvs, so the team adapter can take them.

Such an env steps with a tuple of per-agent actions and returns a tuple of observations, a
list of rewards and one terminated/truncated flag for everyone. Agents are named
``agent_0..agent_{n-1}``. Where the env knows each agent's legal moves (LBF's
``_valid_actions``), they become ``info["action_mask"]``. LBF and RWARE flag their time limit
as ``terminated``; it is reported as a truncation (bootstrapped), an early LBF end (all food
eaten) as a termination.

    env:
      import: envs.gym_team
      kwargs: {id: Foraging-8x8-2p-2f-coop-v3}          # install extra: .[lbf]
"""

from __future__ import annotations

import importlib

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

# The package that registers each family of env ids with gymnasium.
REGISTERING_PACKAGES = {"Foraging": "lbforaging", "rware": "rware"}


class GymTeamEnv(ParallelEnv):
    metadata = {"name": "gym_team_v0"}

    def __init__(self, id: str, **kwargs):
        for prefix, package in REGISTERING_PACKAGES.items():
            if id.startswith(prefix):
                importlib.import_module(package)
        self.env = gym.make(id, disable_env_checker=True, **kwargs)
        obs_space, act_space = self.env.observation_space, self.env.action_space
        if not isinstance(act_space, gym.spaces.Tuple):
            raise ValueError(f"'{id}' has action space {act_space}; expected a Tuple of per-agent spaces")
        self.n = len(act_space.spaces)
        self.possible_agents = [f"agent_{i}" for i in range(self.n)]
        self._obs_spaces = dict(zip(self.possible_agents, obs_space.spaces, strict=True))
        self._act_spaces = dict(zip(self.possible_agents, act_space.spaces, strict=True))
        self.agents: list[str] = []

    def observation_space(self, agent):
        return self._obs_spaces[agent]

    def action_space(self, agent):
        return self._act_spaces[agent]

    def _infos(self) -> dict[str, dict]:
        valid = getattr(self.env.unwrapped, "_valid_actions", None)
        players = getattr(self.env.unwrapped, "players", None)
        infos: dict[str, dict] = {a: {} for a in self.agents}
        if valid and players:
            for agent, player in zip(self.possible_agents, players, strict=True):
                mask = np.zeros(self._act_spaces[agent].n, np.int8)
                mask[[int(getattr(v, "value", v)) for v in valid[player]]] = 1
                infos[agent]["action_mask"] = mask
        return infos

    def _time_limit(self) -> int | None:
        env = self.env.unwrapped
        limit = getattr(env, "_max_episode_steps", None) or getattr(env, "max_steps", None)
        return int(limit) if limit else None

    def _solved(self) -> bool:
        """LBF ends early when every food is eaten: that is a real termination."""
        field = getattr(self.env.unwrapped, "field", None)
        return field is not None and not np.asarray(field).any()

    def reset(self, seed=None, options=None):
        self.t = 0
        obs, _ = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return dict(zip(self.agents, obs, strict=True)), self._infos()

    def step(self, actions):
        joint = tuple(int(actions.get(a, 0)) for a in self.possible_agents)
        obs, rewards, terminated, truncated, _ = self.env.step(joint)
        self.t += 1
        if terminated and self._time_limit() is not None and self.t >= self._time_limit() and not self._solved():
            # LBF and RWARE report their time limit as `terminated`; it is a truncation.
            terminated, truncated = False, True
        agents = list(self.agents)
        out_obs = dict(zip(agents, obs, strict=True))
        out_rew = {a: float(r) for a, r in zip(agents, rewards, strict=True)}
        terms = dict.fromkeys(agents, bool(terminated))
        truncs = dict.fromkeys(agents, bool(truncated))
        infos = self._infos()
        if terminated or truncated:
            self.agents = []
        return out_obs, out_rew, terms, truncs, infos

    def close(self):
        self.env.close()


def parallel_env(**kwargs) -> GymTeamEnv:
    return GymTeamEnv(**kwargs)
