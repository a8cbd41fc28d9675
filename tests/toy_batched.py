"""A toy env with a batched form (envs/batched.py), for the batched runner's fault tests:
``CountingEnv`` per env (tests/toy_envs.py) and, batched, B copies of it in NumPy whose
``step`` raises once at the ``fail_at``-th batched step of this process (or at every step from
it on, ``always``). Observations carry each copy's episode serial, so a test can tell which
episode a step came from; ``FlakyBatchedEnv.broken`` holds the serials of the episodes in
progress when it raised."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.adapter import TeamSpec
from envs.batched import BatchedStep, BatchedTeamEnv
from tests.toy_envs import CountingEnv


def parallel_env(max_steps: int = 10, fail_at: int = 0, always: bool = False):
    return CountingEnv(max_steps)


class FlakyBatchedEnv(BatchedTeamEnv):
    steps_taken = 0
    serials = 0
    broken: list[int] = []

    def __init__(self, num_envs: int, max_steps: int = 10, fail_at: int = 0, always: bool = False):
        self.num_envs, self.max_steps, self.fail_at, self.always = num_envs, max_steps, fail_at, always
        self.spec = TeamSpec(self.team, ["agent_0", "agent_1"], 2, 2, 4, [2, 2])
        self.observation_space = self.team_obs_space(2, 2, 4, 2)
        self.action_space = gym.spaces.MultiDiscrete([2, 2])

    def _obs(self):
        obs = np.stack([np.stack([self.t / self.max_steps, self.serial], -1)] * 2, 1).astype(np.float32)
        return {"obs": obs, "state": obs.reshape(self.num_envs, 4).copy(),
                "action_mask": np.ones((self.num_envs, 2, 2), np.float32),
                "alive": np.ones((self.num_envs, 2), np.float32)}

    def _new_serials(self, k: int) -> np.ndarray:
        FlakyBatchedEnv.serials += k
        return np.arange(FlakyBatchedEnv.serials - k + 1, FlakyBatchedEnv.serials + 1, dtype=np.float64)

    def reset(self, seeds=None):
        self.t = np.zeros(self.num_envs)
        self.serial = self._new_serials(self.num_envs)
        return self._obs()

    def step(self, actions):
        FlakyBatchedEnv.steps_taken += 1
        n = FlakyBatchedEnv.steps_taken
        if n == self.fail_at or (self.always and self.fail_at and n >= self.fail_at):
            FlakyBatchedEnv.broken.extend(int(s) for s in self.serial)
            raise RuntimeError(f"simulator connection lost at batched step {n}")
        self.t += 1
        reward = np.asarray(actions, np.float32).sum(1)
        final = self._obs()
        done = self.t >= self.max_steps
        self.t[done] = 0
        self.serial[done] = self._new_serials(int(done.sum()))
        return BatchedStep(self._obs(), final, reward, np.zeros(self.num_envs, bool), done)


def batched_env(num_envs: int, **kwargs) -> FlakyBatchedEnv:
    return FlakyBatchedEnv(num_envs, **kwargs)
