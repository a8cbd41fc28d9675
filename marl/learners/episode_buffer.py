"""The episode buffer an agent model's encoder trains from (CLAM, Ma et al. 2024: 10,000
episodes, contrastive batches of 512).

Each finished episode enters once per agent of a team that models the others: the episode's
last observation carries its whole prefix (``history`` [n, T, f], ``history_len``; see
envs/adapter.py), so the buffer stores that row and never reassembles steps. The buffer is a
preallocated ring; sampling draws episodes uniformly without replacement.

The buffer is not part of a checkpoint (it would be hundreds of megabytes of observations): a
resumed run refills it from new episodes before the encoder trains again (``min_episodes``).
The encoder's weights, its EMA copy and its optimizer are checkpointed with the module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2


class EpisodeBuffer:
    def __init__(self, capacity: int, length: int, dim: int, seed: int = 0):
        self.hist = np.zeros((capacity, length, dim), np.float32)
        self.lengths = np.zeros(capacity, np.int64)
        self.capacity, self.size, self._next = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, hist: np.ndarray, lengths: np.ndarray) -> None:
        """``hist`` [k, T, f], ``lengths`` [k]: k episode prefixes (oldest overwritten first)."""
        for h, n in zip(hist, lengths, strict=True):
            self.hist[self._next] = h
            self.lengths[self._next] = max(int(n), 1)
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.choice(self.size, size=min(k, self.size), replace=False)
        return self.hist[idx], self.lengths[idx]


class FinishedEpisodes(ConnectorV2):
    """Learner connector piece, first in the pipeline (before RLlib adds its bootstrap step):
    hands the last observation's history of every finished episode of a module that models
    the other agents to ``sink(module_id, history [n, T, f], lengths [n])``. The batch is left
    unchanged."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, sink: Callable):
        super().__init__(input_observation_space, input_action_space)
        self.sink = sink

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, **kwargs):
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            mid = sa_episode.module_id
            if mid not in rl_module or not getattr(rl_module[mid].unwrapped(), "models_agents", False):
                continue
            if not sa_episode.is_done:
                continue
            last = sa_episode.get_observations(-1)
            hist = np.asarray(last["history"], np.float32)  # [n, T, f]
            n_valid = int(np.asarray(last["history_len"]).reshape(-1)[0])
            self.sink(mid, hist, np.full(hist.shape[0], n_valid, np.int64))
        return batch
