"""Aloha, the multi-access channel game of Chen & Zhang (ICML 2023), as a ParallelEnv.

10 agents (configurable) share a radio channel. Interference graph: a chain 0-1-...-9 plus the
edges (i, i + 5). Each agent sees only its own backlog (one-hot, 0..5) and either waits or
transmits. A transmission succeeds when the agent has a packet and no neighbour transmits
(+0.1 to the team, the packet leaves the backlog); a transmission while a neighbour also
transmits collides (-10). After every step each backlog gains a packet with probability 0.6,
capped at 5. Backlogs start at 1; episodes last 20 steps. The team reward is paid to every
agent alike.
"""

from __future__ import annotations

import functools

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

WAIT, TRANSMIT = 0, 1


def interference_edges(n: int) -> list[tuple[int, int]]:
    chain = [(i, i + 1) for i in range(n - 1)]
    skip = [(i, i + n // 2) for i in range(n - n // 2)]
    return sorted(set(chain + skip))


class Aloha(ParallelEnv):
    metadata = {"name": "aloha_v0"}

    def __init__(self, n: int = 10, max_steps: int = 20, arrival_p: float = 0.6, max_backlog: int = 5,
                 success_reward: float = 0.1, collision_penalty: float = -10.0):
        self.n, self.max_steps, self.arrival_p, self.max_backlog = n, max_steps, arrival_p, max_backlog
        self.success_reward, self.collision_penalty = success_reward, collision_penalty
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.neighbours = np.zeros((n, n), bool)
        for i, j in interference_edges(n):
            self.neighbours[i, j] = self.neighbours[j, i] = True
        self.rng = np.random.default_rng()

    @functools.cache  # noqa: B019
    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (self.max_backlog + 1,), np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(2)

    def state(self) -> np.ndarray:
        return self.backlog.astype(np.float32) / self.max_backlog

    def _obs(self):
        eye = np.eye(self.max_backlog + 1, dtype=np.float32)
        return {a: eye[self.backlog[i]] for i, a in enumerate(self.possible_agents) if a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self.backlog = np.ones(self.n, np.int64)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        tx = np.array([int(actions[a]) == TRANSMIT for a in self.possible_agents])
        collided = tx & (self.neighbours & tx[None, :]).any(axis=1)
        success = tx & ~collided & (self.backlog > 0)
        reward = self.success_reward * success.sum() + self.collision_penalty * collided.sum()
        self.backlog = self.backlog - success
        arrivals = self.rng.random(self.n) < self.arrival_p
        self.backlog = np.minimum(self.backlog + arrivals, self.max_backlog)
        self.t += 1
        done = self.t >= self.max_steps
        obs = self._obs()
        rewards = {a: float(reward) for a in self.agents}
        terms = {a: False for a in self.agents}
        truncs = {a: done for a in self.agents}
        infos = {a: {"successes": int(success.sum()), "collisions": int(collided.sum())} for a in self.agents}
        if done:
            self.agents = []
        return obs, rewards, terms, truncs, infos


def parallel_env(**kwargs) -> Aloha:
    return Aloha(**kwargs)
