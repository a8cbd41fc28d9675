"""The coordination game of Chen & Zhang (ICML 2023), as a PettingZoo ParallelEnv.

n agents share a state of n bits that every agent observes in full. Each agent picks a bit;
next-state bit i equals agent i's action with probability 0.9 (``p_follow``) and is flipped
otherwise. The reward is paid on the next state, to every agent alike: with z zeros, o ones
and l = {2: 1, 3: 1, 5: 2, 10: 3}[n],

- if |z - o| <= l: 1 when o > z, else 0;
- otherwise: 3 when zeros are the majority, 2 when ones are.

All-zeros pays most but a single slip costs it; all-ones is safe. Episodes last 25 steps.
``optimal_value`` computes the exact optimal expected return of one agent by dynamic
programming over the 2^n states and 2^n joint actions.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

MARGIN = {2: 1, 3: 1, 5: 2, 10: 3}


def coordination_reward(bits: np.ndarray, n: int) -> float:
    ones = int(np.sum(bits))
    zeros = n - ones
    if abs(zeros - ones) <= MARGIN[n]:
        return 1.0 if ones > zeros else 0.0
    return 3.0 if zeros > ones else 2.0


class CoordinationGame(ParallelEnv):
    metadata = {"name": "coordination_game_v0"}

    def __init__(self, n: int = 3, max_steps: int = 25, p_follow: float = 0.9, p_init_one: float = 0.5):
        if n not in MARGIN:
            raise ValueError(f"n must be one of {sorted(MARGIN)} (got {n})")
        self.n, self.max_steps, self.p_follow, self.p_init_one = n, max_steps, p_follow, p_init_one
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.rng = np.random.default_rng()

    @functools.cache  # noqa: B019 - spaces are fixed per instance
    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (self.n,), np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(2)

    def state(self) -> np.ndarray:
        return self.bits.astype(np.float32)

    def _obs(self):
        return {a: self.bits.astype(np.float32) for a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self.bits = (self.rng.random(self.n) < self.p_init_one).astype(np.int8)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        a = np.array([int(actions[agent]) for agent in self.possible_agents], np.int8)
        follow = self.rng.random(self.n) < self.p_follow
        self.bits = np.where(follow, a, 1 - a).astype(np.int8)
        self.t += 1
        r = coordination_reward(self.bits, self.n)
        done = self.t >= self.max_steps
        obs = self._obs()
        rewards = {agent: r for agent in self.agents}
        terms = {agent: False for agent in self.agents}
        truncs = {agent: done for agent in self.agents}
        infos = {agent: {} for agent in self.agents}
        if done:
            self.agents = []
        return obs, rewards, terms, truncs, infos


def transition_matrix(n: int, p_follow: float = 0.9) -> np.ndarray:
    """P[a, s'] for joint action a and next state s' (both as bit vectors in index order).
    The next state depends on the joint action only."""
    states = np.array(list(itertools.product([0, 1], repeat=n)), np.int8)  # [2^n, n]
    match = states[:, None, :] == states[None, :, :]  # [a, s', n]
    return np.prod(np.where(match, p_follow, 1 - p_follow), axis=-1)


def optimal_value(n: int, horizon: int = 25, p_follow: float = 0.9, p_init_one: float = 0.5) -> float:
    """Exact optimal expected episode return (per agent) by backward induction.

    V_H = 0; Q_t(s, a) = Σ_s' P(s' | s, a) [R(s') + V_{t+1}(s')]; V_t(s) = max_a Q_t(s, a);
    the answer is E_{s_0}[V_0(s_0)]. 2^n states × 2^n joint actions: practical for n ≤ 5 (n = 10 is
    also fine here since the dynamics ignore s, but the tables are 1024 × 1024).
    """
    states = np.array(list(itertools.product([0, 1], repeat=n)), np.int8)
    reward = np.array([coordination_reward(s, n) for s in states])
    trans = transition_matrix(n, p_follow)  # [a, s'] (same for every s)
    value = np.zeros(len(states))
    for _ in range(horizon):
        q = trans @ (reward + value)  # [a]; identical for every current state
        value = np.full(len(states), q.max())
    init = np.prod(np.where(states == 1, p_init_one, 1 - p_init_one), axis=-1)
    return float(init @ value)


def parallel_env(**kwargs) -> CoordinationGame:
    return CoordinationGame(**kwargs)
