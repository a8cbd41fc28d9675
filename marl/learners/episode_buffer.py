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
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2


class EpisodeBuffer:
    """On ``device`` (the learner's): episodes are copied in once, as they finish, and the
    contrastive batches are drawn and read there, so an encoder step moves no data between
    host and device."""

    def __init__(self, capacity: int, length: int, dim: int, seed: int = 0, device: Any = "cpu"):
        self.device = torch.device(device)
        self.hist = torch.zeros((capacity, length, dim), dtype=torch.float32, device=self.device)
        self.lengths = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.capacity, self.size, self._next = capacity, 0, 0
        self.rng = torch.Generator(device=self.device).manual_seed(seed)

    def add(self, hist, lengths) -> None:
        """``hist`` [k, T, f], ``lengths`` [k] (arrays or tensors): k episode prefixes, in one
        copy (oldest overwritten first)."""
        hist = torch.as_tensor(np.asarray(hist, np.float32))
        lengths = torch.as_tensor(np.asarray(lengths, np.int64)).clamp(min=1)
        k = len(hist)
        # Row i goes to slot (next + i) mod capacity; of more rows than slots, the last win.
        slots = ((self._next + torch.arange(k)) % self.capacity)[-self.capacity:].to(self.device)
        self.hist[slots] = hist[-self.capacity:].to(self.device, non_blocking=True)
        self.lengths[slots] = lengths[-self.capacity:].to(self.device, non_blocking=True)
        self._next = (self._next + k) % self.capacity
        self.size = min(self.size + k, self.capacity)

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """min(k, size) episodes drawn uniformly without replacement: ([k, T, f], [k])."""
        idx = torch.randperm(self.size, generator=self.rng, device=self.device)[:k]
        return self.hist[idx], self.lengths[idx]


class FinishedEpisodes(ConnectorV2):
    """Learner connector piece, first in the pipeline (before RLlib adds its bootstrap step):
    hands the last observation's history of every finished episode of a module that models
    the other agents to ``sink(module_id, history [k·n, T, f], lengths [k·n])``, once per module
    and batch (one copy to the learner's device). The batch is left unchanged."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, sink: Callable):
        super().__init__(input_observation_space, input_action_space)
        self.sink = sink

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, **kwargs):
        found: dict[str, tuple[list, list]] = {}
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            mid = sa_episode.module_id
            if mid not in rl_module or not getattr(rl_module[mid].unwrapped(), "models_agents", False):
                continue
            if not sa_episode.is_done:
                continue
            last = sa_episode.get_observations(-1)
            hist = np.asarray(last["history"], np.float32)  # [n, T, f]
            n_valid = int(np.asarray(last["history_len"]).reshape(-1)[0])
            hists, lengths = found.setdefault(mid, ([], []))
            hists.append(hist)
            lengths.append(np.full(hist.shape[0], n_valid, np.int64))
        for mid, (hists, lengths) in found.items():
            self.sink(mid, np.concatenate(hists), np.concatenate(lengths))
        return batch
