"""Density annealing of the learned DAG (Chen & Zhang, ICML 2023, §4.3).

The graph term of the loss is α·|ρ − τ|: ρ is the fraction of possible edges present, τ the
target density. With E training iterations and N_d steps (the paper's defaults):

- τ starts at 1. From ``tau_start`` · E onward, every max(⌊0.6E / (2 N_d)⌋, 1) iterations,
  τ ← max(τ − 1/N_d, 0); it reaches 0 near 0.7 E.
- α stays at α₀ until ``alpha_start`` · E, then rises linearly to α_target at E.

At the end the graph is empty and the team executes decentralised. With fewer than about
2·N_d/0.6 iterations the paper's schedule would not reach τ = 0 by 0.7 E; there τ takes as many
equal steps as fit between ``tau_start``·E and 0.7 E (``n_steps``), so the end is still empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DensitySchedule:
    total_iterations: int
    n_d: int = 40
    tau_start: float = 0.4
    alpha0: float = 0.05
    alpha_target: float = 0.5
    alpha_start: float = 0.7
    anneal: bool = True

    @property
    def tau_interval(self) -> int:
        return max(math.floor(0.6 * self.total_iterations / (2 * self.n_d)), 1)

    @property
    def n_steps(self) -> int:
        """Decrements of τ: N_d, or fewer when 0.3E iterations hold fewer intervals."""
        room = math.floor((0.7 - self.tau_start) * self.total_iterations / self.tau_interval + 1e-9)
        return max(min(self.n_d, room), 1)

    @property
    def tau_first_step(self) -> int:
        return math.ceil(self.tau_start * self.total_iterations)

    @property
    def tau_zero_iteration(self) -> int:
        """The first iteration at which τ = 0."""
        return self.tau_first_step + (self.n_steps - 1) * self.tau_interval

    def tau(self, iteration: float) -> float:
        if not self.anneal or iteration < self.tau_first_step:
            return 1.0
        steps = int((iteration - self.tau_first_step) // self.tau_interval) + 1
        return max(1.0 - steps / self.n_steps, 0.0)

    def alpha(self, iteration: float) -> float:
        start = self.alpha_start * self.total_iterations
        if not self.anneal or iteration < start:
            return self.alpha0
        span = max(self.total_iterations - start, 1)
        frac = min((iteration - start) / span, 1.0)
        return self.alpha0 + frac * (self.alpha_target - self.alpha0)
