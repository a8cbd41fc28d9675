"""SMACv2-style battles that run anywhere: JaxMARL's SMAX as a PettingZoo ParallelEnv.

``HeuristicEnemySMAX`` with ``map_name_to_scenario(map_name)``: ``smacv2_5_units``,
``smacv2_10_units`` (random unit types and start positions, SMACv2's distributions), and
SMAC-like maps such as ``3m`` and ``2s3z``. Install extra: ``.[smax]``.

- JAX stays on the CPU unless ``platform`` says otherwise (set before JAX first loads).
- The env's functions are jitted once per process and shared by every copy, so the compile
  cost is paid once, not per step or per copy.
- Per agent: SMAX's observation, its avail-actions as ``info["action_mask"]``, and death as
  termination. ``state()`` is SMAX's world state. The team reward (the same for every ally)
  is paid once, so a team return is SMAX's return. When the battle ends, every agent's info
  carries ``battle_won`` (all enemies dead while an ally lives); a time-out is a truncation.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


@contextlib.contextmanager
def _silenced_stdout():
    """Silence file descriptor 1 (an import below also swaps sys.stdout; put it back)."""
    saved_obj = sys.stdout
    saved_obj.flush()
    saved_fd, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        os.close(devnull)
        sys.stdout = saved_obj


@functools.cache
def _compiled(map_name: str, platform: str, kwargs_items: tuple):
    os.environ.setdefault("JAX_PLATFORMS", platform)
    # One env per call is tiny work: XLA's own thread pool would only contend with the envs.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax
    import jax.numpy as jnp

    with _silenced_stdout():  # jaxmarl prints on import; stdout is the CLI's contract
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), **dict(kwargs_items))

    agents = env.agents

    def pack(obs, avail):
        return (
            jnp.stack([obs[a] for a in agents]),
            obs["world_state"],
            jnp.stack([avail[a] for a in agents]),
        )

    def step(key, state, actions):
        # One jitted call per step: key split, step, avail-actions, outcome; stacked arrays out.
        key, sub = jax.random.split(key)
        obs, state, rewards, dones, _ = env.step_env(sub, state, {a: actions[i] for i, a in enumerate(agents)})
        inner = state.state
        allies = inner.unit_alive[: env.num_allies]
        enemies = inner.unit_alive[env.num_allies :]
        won = ~enemies.any() & allies.any()
        timeout = (inner.step >= env.max_steps) & allies.any() & enemies.any()
        out = (
            jnp.stack([rewards[a] for a in agents]),
            jnp.stack([dones[a] for a in agents]),
            dones["__all__"], won, timeout,
        )
        return key, state, pack(obs, env.get_avail_actions(state)), out

    def reset(key):
        key, sub = jax.random.split(key)
        obs, state = env.reset(sub)
        return key, state, pack(obs, env.get_avail_actions(state))

    return env, jax.jit(reset), jax.jit(step)


class SmaxParallelEnv(ParallelEnv):
    metadata = {"name": "smax_v0"}

    def __init__(self, map_name: str = "smacv2_5_units", platform: str = "cpu", **smax_kwargs):
        self._env, self._reset, self._step = _compiled(map_name, platform, tuple(sorted(smax_kwargs.items())))
        import jax

        self._jax = jax
        self.possible_agents = list(self._env.agents)
        self._obs_space = spaces.Box(-np.inf, np.inf, self._env.observation_space(self.possible_agents[0]).shape, np.float32)
        self._act_space = spaces.Discrete(int(self._env.action_space(self.possible_agents[0]).n))
        self._key = jax.random.PRNGKey(0)
        self.agents: list[str] = []

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def state(self) -> np.ndarray:
        return self._world_state

    def _unpack(self, packed) -> tuple[dict, dict]:
        obs, world_state, avail = packed
        self._world_state = np.asarray(world_state, np.float32)
        out_obs = {a: np.asarray(obs[i], np.float32) for i, a in enumerate(self.possible_agents) if a in self.agents}
        infos = {
            a: {"action_mask": np.asarray(avail[i], np.int8)}
            for i, a in enumerate(self.possible_agents) if a in self.agents
        }
        return out_obs, infos

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._key = self._jax.random.PRNGKey(seed)
        self._key, self._state, packed = self._reset(self._key)
        self.agents = list(self.possible_agents)
        return self._unpack(self._jax.device_get(packed))

    def step(self, actions):
        joint = np.array([int(actions.get(a, 0)) for a in self.possible_agents], np.int32)
        self._key, self._state, packed, out = self._step(self._key, self._state, joint)
        packed, (rewards, dones, over, won, timeout) = self._jax.device_get((packed, out))
        agents = list(self.agents)
        out_obs, infos = self._unpack(packed)
        for i, a in enumerate(self.possible_agents):  # no observation for the dead
            if dones[i]:
                out_obs.pop(a, None)
        index = {a: i for i, a in enumerate(self.possible_agents)}
        # SMAX gives every ally the same team reward: pay it once (to the first agent alive
        # before the step), so the team's summed reward is SMAX's reward, as for SMACv2.
        out_rew = {a: (float(rewards[index[a]]) if a == agents[0] else 0.0) for a in agents}
        over, timeout = bool(over), bool(timeout)
        truncs = dict.fromkeys(agents, over and timeout)
        terms = {a: bool(dones[index[a]]) or (over and not timeout) for a in agents}
        if over:
            for a in agents:
                infos[a]["battle_won"] = bool(won)
            self.agents = []
        else:
            self.agents = [a for a in agents if not dones[index[a]]]
        return out_obs, out_rew, terms, truncs, infos


def parallel_env(**kwargs) -> SmaxParallelEnv:
    return SmaxParallelEnv(**kwargs)
