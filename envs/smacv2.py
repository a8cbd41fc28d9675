"""SMACv2 (the real one, on StarCraft II) as a PettingZoo ParallelEnv.

Needs the ``smacv2`` package (from its source repository: extra ``.[smacv2]`` documents it) and
the StarCraft II game under ``SC2PATH``. Neither exists on the CI machine: this module imports
lazily and raises ``MissingDependency`` naming what is missing, which the CLI reports as one
``error:`` line with exit code 2. Its translation logic is tested against a fixture of the
API's shapes and types (``tests/fixtures/smacv2_api.json``).

SMACv2's API, as used here: ``reset()``; ``get_obs()`` -> list of n arrays;
``get_state()`` -> array; ``get_avail_actions()`` -> list of n lists of 0/1;
``step(actions) -> (reward, terminated, info)`` with ``battle_won`` (and ``episode_limit`` on a
time-out); ``get_env_info()`` -> dict with ``n_agents``, ``n_actions``, ``obs_shape``,
``state_shape``, ``episode_limit``. The team reward is paid once, to the first agent alive before
the step, so the team's summed reward equals SMACv2's reward. Dead agents are those whose only legal action is
no-op (action 0), as in SMAC.

    env:
      import: envs.smacv2
      kwargs:
        map_name: 10gen_protoss
        capability_config:           # SMACv2's distribution config
          n_units: 5
          n_enemies: 5
          team_gen: {dist_type: weighted_teams, unit_types: [stalker, zealot, colossus],
                     weights: [0.45, 0.45, 0.1], observe: true}
          start_positions: {dist_type: surrounded_and_reflect, p: 0.5, n_enemies: 5,
                            map_x: 32, map_y: 32}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.errors import MissingDependency


def default_sc2_path() -> Path:
    return Path(os.environ.get("SC2PATH", str(Path.home() / "StarCraftII")))


def make_smacv2_api(**kwargs) -> Any:
    """The real StarCraftCapabilityEnvWrapper, or MissingDependency naming what is missing."""
    try:
        from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper
    except ImportError:
        raise MissingDependency(
            "the 'smacv2' package is not installed (it is not on PyPI: install it from its "
            "source repository, see the README's SMACv2 section)"
        ) from None
    sc2 = default_sc2_path()
    if not sc2.is_dir():
        raise MissingDependency(f"StarCraft II was not found under SC2PATH='{sc2}' (set SC2PATH to the game's folder)")
    return StarCraftCapabilityEnvWrapper(**kwargs)


class SMACv2ParallelEnv(ParallelEnv):
    metadata = {"name": "smacv2_v0"}

    def __init__(self, api: Any = None, **kwargs):
        self.api = api if api is not None else make_smacv2_api(**kwargs)
        info = self.api.get_env_info()
        self.n = int(info["n_agents"])
        self.episode_limit = int(info["episode_limit"])
        self.possible_agents = [f"agent_{i}" for i in range(self.n)]
        self._obs_space = spaces.Box(-np.inf, np.inf, (int(info["obs_shape"]),), np.float32)
        self._act_space = spaces.Discrete(int(info["n_actions"]))
        self.agents: list[str] = []

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def state(self) -> np.ndarray:
        return np.asarray(self.api.get_state(), np.float32)

    def _observe(self) -> tuple[dict, dict, list[bool]]:
        """Observations of the agents alive now; infos for every agent that acted."""
        obs = self.api.get_obs()
        avail = [np.asarray(a, np.int8) for a in self.api.get_avail_actions()]
        alive = [not (a[0] == 1 and a[1:].sum() == 0) for a in avail]
        out_obs = {a: np.asarray(obs[i], np.float32) for i, a in enumerate(self.possible_agents) if alive[i]}
        infos = {a: {"action_mask": avail[i]} for i, a in enumerate(self.possible_agents) if a in self.agents}
        return out_obs, infos, alive

    def reset(self, seed=None, options=None):
        self.api.reset()
        self.agents = list(self.possible_agents)
        obs, infos, _ = self._observe()
        return obs, infos

    def step(self, actions):
        joint = [int(actions.get(a, 0)) for a in self.possible_agents]
        reward, terminated, info = self.api.step(joint)
        agents = list(self.agents)
        obs, infos, alive = self._observe()
        timeout = bool(info.get("episode_limit", False))
        done = bool(terminated)
        # The team reward once, to the first agent alive before the step (the team sums).
        rewards = {a: (float(reward) if a == agents[0] else 0.0) for a in agents}
        terms = {a: (done and not timeout) or not alive[self.possible_agents.index(a)] for a in agents}
        truncs = dict.fromkeys(agents, done and timeout)
        if done:
            for a in agents:
                infos[a]["battle_won"] = bool(info.get("battle_won", False))
            self.agents = []
        else:
            self.agents = [a for a in agents if alive[self.possible_agents.index(a)]]
        return obs, rewards, terms, truncs, infos

    def close(self):
        self.api.close()


def parallel_env(**kwargs) -> SMACv2ParallelEnv:
    return SMACv2ParallelEnv(**kwargs)
