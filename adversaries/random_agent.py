"""``random``: the attacked agents act uniformly over their legal actions (no training).

The weakest takeover baseline: how much does the team lose when one member stops
cooperating without malice?
"""

from __future__ import annotations

import numpy as np

from adversaries.base import AdversaryPlugin
from adversaries.registry import register


@register
class RandomAgent(AdversaryPlugin):
    name = "random"
    threat_model = "takeover"
    white_box = False
    trains = False

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.rng = np.random.default_rng(0)  # the evaluation reseeds it per episode

    def act(self, attacker_obs: dict[str, np.ndarray]) -> np.ndarray:
        mask = attacker_obs["action_mask"]  # [k, A]
        if not self.ctx.discrete:  # uniform in the policy's [-1, 1], i.e. over the bounds
            return self.rng.uniform(-1.0, 1.0, (mask.shape[0], self.ctx.action_dim)).astype(np.float32)
        legal = mask > 0.5
        return np.array([self.rng.choice(np.flatnonzero(row)) for row in legal], np.int64)

    def action_distribution(self, attacker_obs: dict[str, np.ndarray]) -> list:
        from adversaries.stealth import Categorical, UniformBox

        mask = attacker_obs["action_mask"]
        if not self.ctx.discrete:
            box = UniformBox(-np.ones(self.ctx.action_dim), np.ones(self.ctx.action_dim))
            return [box] * mask.shape[0]
        legal = (mask > 0.5).astype(np.float64)
        return [Categorical(row / row.sum()) for row in legal]
