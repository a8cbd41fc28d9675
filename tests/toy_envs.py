"""Small PettingZoo ParallelEnvs that exercise the adapter's edge cases in tests.

- ``MaskedDeathEnv``: three agents with different observation sizes (2, 3, 4) and action
  counts (2, 3, 4); agent_1 publishes an action mask in its info, agent_2 uses PettingZoo's
  Dict(observation, action_mask) convention; agent_2 dies after step 2. No ``state()``.
- ``NanRewardEnv``: simple_spread whose rewards turn NaN after a number of steps in this
  process, to test that the run stops at the adapter and keeps its last good checkpoint.
- ``FlakyEnv`` (``flaky_env``): raises at a set step of the process (or at every step from
  it on); ``NanObsEnv`` (``nan_obs_env``): one NaN observation at a set step. Their
  observations carry the episode's serial, so a test can tell which episode a step came from.
"""

from __future__ import annotations

import functools

import numpy as np
from gymnasium import spaces
from mpe2 import simple_spread_v3
from pettingzoo import ParallelEnv


class MaskedDeathEnv(ParallelEnv):
    metadata = {"name": "masked_death_v0"}

    def __init__(self, max_steps: int = 5, death_step: int = 2):
        self.possible_agents = ["agent_0", "agent_1", "agent_2"]
        self.max_steps, self.death_step = max_steps, death_step
        self._obs_dims = {"agent_0": 2, "agent_1": 3, "agent_2": 4}
        self._n_actions = {"agent_0": 2, "agent_1": 3, "agent_2": 4}

    @functools.cache  # noqa: B019
    def observation_space(self, agent):
        box = spaces.Box(-10, 10, (self._obs_dims[agent],), np.float32)
        if agent == "agent_2":
            return spaces.Dict({"observation": box, "action_mask": spaces.MultiBinary(4)})
        return box

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(self._n_actions[agent])

    def _obs(self, agent):
        value = np.full(self._obs_dims[agent], self.t + 1 + int(agent[-1]), np.float32)
        if agent == "agent_2":
            return {"observation": value, "action_mask": np.array([0, 1, 1, 0], np.int8)}
        return value

    def _infos(self):
        return {a: ({"action_mask": np.array([1, 0, 1], np.int8)} if a == "agent_1" else {}) for a in self.agents}

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.t = 0
        return {a: self._obs(a) for a in self.agents}, self._infos()

    def step(self, actions):
        self.t += 1
        self.last_actions = dict(actions)
        rewards = {a: float(actions.get(a, 0)) for a in self.agents}
        terms = {a: (a == "agent_2" and self.t >= self.death_step) for a in self.agents}
        truncs = {a: self.t >= self.max_steps for a in self.agents}
        obs = {a: self._obs(a) for a in self.agents}
        infos = self._infos()
        self.agents = [a for a in self.agents if not (terms[a] or truncs[a])]
        return obs, rewards, terms, truncs, infos


def masked_death_env(**kwargs):
    return MaskedDeathEnv(**kwargs)


class NanRewardEnv:
    """Wraps simple_spread; rewards are NaN once this process has taken ``nan_after`` steps."""

    steps_taken = 0

    def __init__(self, nan_after: int):
        self.env = simple_spread_v3.parallel_env(N=3, max_cycles=25)
        self.nan_after = nan_after

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        obs, rew, term, trunc, info = self.env.step(actions)
        NanRewardEnv.steps_taken += 1
        if NanRewardEnv.steps_taken > self.nan_after:
            rew = {a: float("nan") for a in rew}
        return obs, rew, term, trunc, info


def nan_reward_env(nan_after: int = 1000):
    return NanRewardEnv(nan_after)


def needs_missing_package(**kwargs):
    """An env whose package is not installed, like SMAX without the `smax` extra."""
    import jaxmarl_not_installed  # noqa: F401


class BrokenStepEnv:
    """simple_spread whose ``step`` raises: config validation (which only resets) passes,
    RLlib's env check at build fails."""

    def __init__(self):
        self.env = simple_spread_v3.parallel_env(N=3, max_cycles=25)

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        raise RuntimeError("simulator connection lost")


def broken_step_env():
    return BrokenStepEnv()


class OverrideEnv(ParallelEnv):
    """Two agents; the observation is the step count t. The env executes agent i's action at
    step t only when (t + i) is even, and says so in ``infos[agent]['executed']``; otherwise
    it executes action 0. Rewards pay executed action 1. Episodes last ``max_steps``."""

    metadata = {"name": "override_v0"}

    def __init__(self, max_steps: int = 7):
        self.possible_agents = ["agent_0", "agent_1"]
        self.max_steps = max_steps

    @functools.cache  # noqa: B019
    def observation_space(self, agent):
        return spaces.Box(0, 1000, (1,), np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(2)

    @staticmethod
    def executed(t: int, i: int) -> bool:
        return (t + i) % 2 == 0

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.t = 0
        return {a: np.array([0.0], np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        run = {a: self.executed(self.t, i) for i, a in enumerate(self.possible_agents)}
        rewards = {a: float(actions[a] if run[a] else 0) for a in self.agents}
        infos = {a: {"executed": run[a]} for a in self.agents}
        self.t += 1
        obs = {a: np.array([self.t], np.float32) for a in self.agents}
        truncs = {a: self.t >= self.max_steps for a in self.agents}
        terms = {a: False for a in self.agents}
        if self.t >= self.max_steps:
            self.agents = []
        return obs, rewards, terms, truncs, infos


def override_env(**kwargs):
    return OverrideEnv(**kwargs)


class FeatureEnv(ParallelEnv):
    """One agent "a" whose env reports its own per-step features of the others
    (``model_features``), as the agent-modelling envs do: here the step count and the last
    action, so a test can tell them from the observation."""

    metadata = {"name": "feature_env"}
    FEATURES = 3

    def __init__(self, max_steps: int = 5):
        self.possible_agents = ["a"]
        self.max_steps = max_steps

    def observation_space(self, agent):
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def model_features(self, agent):
        return np.array([self.t, self.last, 7.0], np.float32) if self.t else np.zeros(3, np.float32)

    def reset(self, seed=None, options=None):
        self.agents = ["a"]
        self.t, self.last = 0, 0
        return {"a": np.zeros(2, np.float32)}, {"a": {}}

    def step(self, actions):
        self.t += 1
        self.last = int(actions["a"])
        done = self.t >= self.max_steps
        if done:
            self.agents = []
        return ({"a": np.full(2, 0.1, np.float32)}, {"a": 0.0}, {"a": done}, {"a": False}, {"a": {}})


class CountingEnv(ParallelEnv):
    """Two agents whose observation is [t / max_steps, episode serial]: the serial (a count of
    resets in this process) tells which episode a step in a batch came from. Rewards pay action
    1. The process-wide step count (``steps_taken``) drives the faults of the subclasses."""

    metadata = {"name": "counting_env"}
    steps_taken = 0
    episodes_started = 0

    def __init__(self, max_steps: int = 10):
        self.possible_agents = ["agent_0", "agent_1"]
        self.max_steps = max_steps
        self.serial = 0

    def observation_space(self, agent):
        return spaces.Box(-1e9, 1e9, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _obs(self):
        return {a: np.array([self.t / self.max_steps, self.serial], np.float32) for a in self.agents}

    def reset(self, seed=None, options=None):
        CountingEnv.episodes_started += 1
        self.serial = CountingEnv.episodes_started
        self.agents = list(self.possible_agents)
        self.t = 0
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        CountingEnv.steps_taken += 1
        self.fault()
        self.t += 1
        rewards = {a: float(actions.get(a, 0)) for a in self.agents}
        obs = self._obs()
        done = self.t >= self.max_steps
        truncs = {a: done for a in self.agents}
        terms = {a: False for a in self.agents}
        if done:
            self.agents = []
        return self.tamper(obs, rewards), rewards, terms, truncs, {a: {} for a in self.possible_agents}

    def fault(self) -> None:
        pass

    def tamper(self, obs, rewards):
        return obs


class FlakyEnv(CountingEnv):
    """Raises once, at the ``fail_at``-th step of this process, like a simulator that drops its
    connection; remembers the serial of the episode it broke (``broken``)."""

    broken: list[int] = []

    def __init__(self, fail_at: int, always: bool = False):
        super().__init__()
        self.fail_at, self.always = fail_at, always

    def fault(self) -> None:
        if CountingEnv.steps_taken == self.fail_at or (self.always and CountingEnv.steps_taken >= self.fail_at):
            FlakyEnv.broken.append(self.serial)
            raise RuntimeError(f"simulator connection lost at step {CountingEnv.steps_taken}")


def flaky_env(fail_at: int = 250, always: bool = False):
    return FlakyEnv(fail_at, always)


class NanObsEnv(CountingEnv):
    """agent_1's observation is NaN at the ``nan_at``-th step of this process (once); the
    serial of that episode is kept in ``tampered``."""

    tampered: list[int] = []

    def __init__(self, nan_at: int):
        super().__init__()
        self.nan_at = nan_at

    def tamper(self, obs, rewards):
        if CountingEnv.steps_taken == self.nan_at and "agent_1" in obs:
            obs["agent_1"] = np.array([np.nan, self.serial], np.float32)
            NanObsEnv.tampered.append(self.serial)
        return obs


def nan_obs_env(nan_at: int = 250):
    return NanObsEnv(nan_at)
