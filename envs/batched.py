"""Natively batched simulators: B copies of an env stepped as one call.

RLlib 2.60's multi-agent EnvRunner steps its vectorised copies one by one in Python
(``SyncVectorMultiAgentEnv``). Simulators written for batches (SMAX in JAX, VMAS in torch) step
thousands of copies in one vmapped or batched call instead. An env module offers that form with
a function beside its ``parallel_env``::

    batched_env(num_envs: int, **kwargs) -> BatchedTeamEnv

taking the same kwargs as ``parallel_env``. ``BatchedTeamEnv`` speaks the team adapter's
language (envs/adapter.py) directly, with a leading env dimension B: one team (``team_0``, every
agent of the env) whose observation is the dict ``obs`` [B, n, d], ``state`` [B, S],
``action_mask`` [B, n, A], ``alive`` [B, n]; a step takes the joint actions [B, n] (or
[B, n, k]) and returns the team reward [B] (the sum of its agents' rewards), ``terminated`` and
``truncated`` [B], and ``won`` [B] where the env reports wins. A copy whose episode ended is
reset within the same call (auto-reset): ``obs`` is then the new episode's first observation
and ``final_obs`` the ended episode's last one. Every array is NumPy, on the host.

It knows no learner: marl/batched_runner.py drives it inside RLlib's EnvRunner API.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from envs.adapter import DEFAULT_TEAM, TeamSpec

BATCHED_FACTORY = "batched_env"


@dataclass
class BatchedStep:
    """One batched step. ``obs`` is every copy's next observation (a reset one where the episode
    ended); ``final_obs`` every copy's observation right after the step, before any reset (the
    ended episodes' last observations are its rows where ``terminated | truncated``)."""

    obs: dict[str, np.ndarray]
    final_obs: dict[str, np.ndarray]
    reward: np.ndarray  # [B] float32, the team's summed reward
    terminated: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool
    won: np.ndarray | None = None  # [B] bool where the env reports wins (at episode ends)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class BatchedTeamEnv(abc.ABC):
    """B copies of one env, seen as the team adapter sees one copy (module docstring)."""

    team: str = DEFAULT_TEAM
    num_envs: int
    spec: TeamSpec
    observation_space: gym.spaces.Dict  # one copy's team observation, as TeamEnv's
    action_space: gym.Space  # one copy's joint action, as TeamEnv's

    @abc.abstractmethod
    def reset(self, seeds: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Reset every copy; copy b from ``seeds[b]`` where given. Returns the observations."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> BatchedStep:
        """Step every copy with its joint action (``actions[b]``), auto-resetting ended ones."""

    def close(self) -> None:  # noqa: B027 (most batched envs hold nothing to release)
        pass

    # Helpers for implementations --------------------------------------------------------
    @staticmethod
    def team_obs_space(n: int, d: int, state_dim: int, n_actions: int) -> gym.spaces.Dict:
        inf = np.float32(np.inf)
        return gym.spaces.Dict({
            "obs": gym.spaces.Box(-inf, inf, (n, d), np.float32),
            "state": gym.spaces.Box(-inf, inf, (state_dim,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n, n_actions), np.float32),
            "alive": gym.spaces.Box(0.0, 1.0, (n,), np.float32),
        })


def resolve_batched_factory(import_path: str) -> Callable[..., BatchedTeamEnv] | None:
    """The ``batched_env`` of the env module ``import_path`` names (``pkg.mod`` or
    ``pkg.mod:fn``), or None when the module offers no batched form."""
    module_name = import_path.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    factory = getattr(module, BATCHED_FACTORY, None)
    return factory if callable(factory) else None
