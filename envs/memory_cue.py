"""A memory task: a cue seen once, acted on together at the end (a PettingZoo ParallelEnv).

n agents, episodes of ``length`` steps. At the first step every agent observes the same cue,
one of ``n_cues`` values, as a one-hot; at every later step the cue slots are zero. Each
observation also holds the step as a one-hot over the episode's steps, so an agent always
knows how far it is. Actions are one of ``n_cues``; only the last step's count. At the last
step every agent is paid 1 if all agents pick the cue, else 0, and the team's info says
``won`` (the win rate RLlib logs is the share of episodes solved).

A policy without memory sees no cue at the last step: its best is to agree on one value,
which solves 1 / n_cues of the episodes (chance); a policy that carries the cue from the first
step solves them all. This is the classic T-maze / copy-task idea (Bakker 2002, "Reinforcement
Learning with Long Short-Term Memory") shrunk to a few steps, so that a recurrent team learns
it in a few thousand env steps. There is no ``state()``: the adapter's global state is the
concatenated observations, so a centralised critic must remember the cue too.
"""

from __future__ import annotations

import functools

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class MemoryCue(ParallelEnv):
    metadata = {"name": "memory_cue_v0"}

    def __init__(self, n_agents: int = 2, n_cues: int = 2, length: int = 4):
        if n_agents < 1 or n_cues < 2 or length < 2:
            raise ValueError(f"need n_agents >= 1, n_cues >= 2, length >= 2 (got {n_agents}, {n_cues}, {length})")
        self.n_agents, self.n_cues, self.length = n_agents, n_cues, length
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.rng = np.random.default_rng()
        self.cue, self.t = 0, 0

    @functools.cache  # noqa: B019 - spaces are fixed per instance
    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (self.n_cues + self.length,), np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(self.n_cues)

    def _obs(self) -> dict[str, np.ndarray]:
        o = np.zeros(self.n_cues + self.length, np.float32)
        if self.t == 0:
            o[self.cue] = 1.0
        o[self.n_cues + self.t] = 1.0
        return {a: o.copy() for a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self.cue = int(self.rng.integers(self.n_cues))
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        last = self.t == self.length - 1
        solved = last and all(int(actions[a]) == self.cue for a in self.agents)
        rewards = {a: float(solved) for a in self.agents}
        infos = {a: ({"won": solved} if last else {}) for a in self.agents}
        self.t = min(self.t + 1, self.length - 1)  # the final observation repeats the last step
        obs = self._obs()
        terms = {a: last for a in self.agents}
        truncs = {a: False for a in self.agents}
        if last:
            self.agents = []
        return obs, rewards, terms, truncs, infos


def parallel_env(**kwargs) -> MemoryCue:
    return MemoryCue(**kwargs)
