"""What SMACv2 and SMAX have in common, as a ParallelEnv: allies with one observation and
action space each, a team reward, deaths, and a battle that ends in a win, a loss or a
time-out. Subclasses fetch the raw arrays; ``_battle_step`` turns them into PettingZoo's
per-agent dicts the same way for both.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class BattleParallelEnv(ParallelEnv):
    def _init_spaces(self, agents: list[str], obs_dim: int, n_actions: int) -> None:
        self.possible_agents = list(agents)
        self._obs_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self._act_space = spaces.Discrete(n_actions)
        self.agents: list[str] = []

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _battle_obs(self, obs, avail, alive) -> tuple[dict, dict]:
        """Observations of the allies alive now; an action mask for every ally that acted."""
        out_obs = {a: np.asarray(obs[i], np.float32) for i, a in enumerate(self.possible_agents) if alive[i]}
        infos = {
            a: {"action_mask": np.asarray(avail[i], np.int8)}
            for i, a in enumerate(self.possible_agents) if a in self.agents
        }
        return out_obs, infos

    def _battle_step(self, obs, avail, alive, reward: float, over: bool, timeout: bool, won: bool):
        """One step's (obs, rewards, terminations, truncations, infos).

        The team reward is paid once, to the first ally alive before the step, so the team's
        summed reward is the env's. A death is a termination; at the battle's end everyone
        terminates, or is truncated on a time-out; every info then carries ``battle_won``.
        """
        agents = list(self.agents)
        out_obs, infos = self._battle_obs(obs, avail, alive)
        index = {a: i for i, a in enumerate(self.possible_agents)}
        rewards = {a: (float(reward) if a == agents[0] else 0.0) for a in agents}
        terms = {a: (over and not timeout) or not alive[index[a]] for a in agents}
        truncs = dict.fromkeys(agents, over and timeout)
        if over:
            for a in agents:
                infos[a]["battle_won"] = bool(won)
            self.agents = []
        else:
            self.agents = [a for a in agents if alive[index[a]]]
        return out_obs, rewards, terms, truncs, infos
