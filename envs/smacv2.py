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
``state_shape``, ``episode_limit``. Rewards, deaths and outcomes are translated by
``envs.battle``, as for SMAX. Dead agents are those whose only legal action is no-op
(action 0), as in SMAC.

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

from envs.battle import BattleParallelEnv
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


class SMACv2ParallelEnv(BattleParallelEnv):
    metadata = {"name": "smacv2_v0"}

    def __init__(self, api: Any = None, **kwargs):
        self.api = api if api is not None else make_smacv2_api(**kwargs)
        info = self.api.get_env_info()
        self.episode_limit = int(info["episode_limit"])
        agents = [f"agent_{i}" for i in range(int(info["n_agents"]))]
        self._init_spaces(agents, int(info["obs_shape"]), int(info["n_actions"]))

    def state(self) -> np.ndarray:
        return np.asarray(self.api.get_state(), np.float32)

    def _raw(self) -> tuple[list, list, list[bool]]:
        avail = [np.asarray(a, np.int8) for a in self.api.get_avail_actions()]
        alive = [not (a[0] == 1 and a[1:].sum() == 0) for a in avail]  # SMAC: dead = no-op only
        return self.api.get_obs(), avail, alive

    def reset(self, seed=None, options=None):
        self.api.reset()
        self.agents = list(self.possible_agents)
        return self._battle_obs(*self._raw())

    def step(self, actions):
        reward, terminated, info = self.api.step([int(actions.get(a, 0)) for a in self.possible_agents])
        timeout = bool(info.get("episode_limit", False))
        return self._battle_step(*self._raw(), reward, bool(terminated), timeout, info.get("battle_won", False))

    def close(self):
        self.api.close()


def parallel_env(**kwargs) -> SMACv2ParallelEnv:
    return SMACv2ParallelEnv(**kwargs)
