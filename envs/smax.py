"""SMACv2-style battles that run anywhere: JaxMARL's SMAX as a PettingZoo ParallelEnv.

``HeuristicEnemySMAX`` with ``map_name_to_scenario(map_name)``: ``smacv2_5_units``,
``smacv2_10_units`` (random unit types and start positions, SMACv2's distributions), and
SMAC-like maps such as ``3m`` and ``2s3z``. Install extra: ``.[smax]``.

- JAX stays on the CPU unless ``platform`` says otherwise (set before JAX first loads).
- The env's functions are jitted once per process and shared by every copy, so the compile
  cost is paid once, not per step or per copy.
- Per agent: SMAX's observation, its avail-actions as ``info["action_mask"]``, and death as
  termination. ``state()`` is SMAX's world state, rescaled (``world_state``, below). Rewards,
  deaths and outcomes are
  translated by ``envs.battle``, as for SMACv2: the team reward (the same for every ally) is
  paid once, so a team return is SMAX's return. When the battle ends, every agent's info
  carries ``battle_won`` (all enemies dead while an ally lives); a time-out is a truncation.

World state. SMAX's own ``get_world_state`` holds raw map positions (0 to 32), the raw weapon
cooldown timer (which keeps falling while a unit holds fire: about -50 after a 100-step
episode) and unit-type indices, next to features in [0, 1]. Fed as is, they saturate a tanh
critic's first layer (72% of a fresh critic's units past |tanh| > 0.99 on 3m; benchmarks
BENCHMARKS.md, issue 12). ``world_state="normalized"`` (the default) keeps SMAX's layout and
size and rescales as SMAC's own state does (Samvelyan et al. 2019, ``get_state``): per unit
health / max health, position (x - W/2) / (W/2) and (y - H/2) / (H/2), the cooldown as a
fraction of the unit type's, clipped to [0, 1] (as SMAX's observations do), the unit type
one-hot, zeros for a dead unit; then every unit's team, and its type index / (types - 1).
``world_state="raw"`` is SMAX's state unchanged. Only critics read the state, so a team trained
on the raw state acts the same under either; resuming its training needs ``world_state: raw``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np

from envs.battle import BattleParallelEnv


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


WORLD_STATES = ("normalized", "raw")


@functools.cache
def _compiled(map_name: str, platform: str, world_state: str, kwargs_items: tuple):
    os.environ.setdefault("JAX_PLATFORMS", platform)
    # One env per call is tiny work: XLA's own thread pool would only contend with the envs.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax
    import jax.numpy as jnp

    with _silenced_stdout():  # jaxmarl prints on import; stdout is the CLI's contract
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), **dict(kwargs_items))

    agents = env.agents
    n_types = env.unit_type_bits
    half = jnp.array([env.map_width, env.map_height], jnp.float32) / 2

    def normalized_state(inner):
        """SMAX's world-state layout, every feature in [-1, 1] (module docstring)."""
        types = inner.unit_types
        health = inner.unit_health / env.unit_type_health[types]
        pos = (inner.unit_positions - half) / half
        cooldown = jnp.clip(inner.unit_weapon_cooldowns / env.unit_type_weapon_cooldowns[types], 0.0, 1.0)
        units = jnp.concatenate(
            [health[:, None], pos, cooldown[:, None], jax.nn.one_hot(types, n_types)], axis=-1
        ) * inner.unit_alive[:, None]
        return jnp.concatenate(
            [units.reshape(-1), inner.unit_teams.astype(jnp.float32), types / max(n_types - 1, 1)]
        )

    def pack(obs, avail, state):
        ws = normalized_state(state.state) if world_state == "normalized" else obs["world_state"]
        return (
            jnp.stack([obs[a] for a in agents]),
            ws,
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
        return key, state, pack(obs, env.get_avail_actions(state), state), out

    def reset(key):
        key, sub = jax.random.split(key)
        obs, state = env.reset(sub)
        return key, state, pack(obs, env.get_avail_actions(state), state)

    return env, jax.jit(reset), jax.jit(step)


class SmaxParallelEnv(BattleParallelEnv):
    metadata = {"name": "smax_v0"}

    def __init__(
        self, map_name: str = "smacv2_5_units", platform: str = "cpu", world_state: str = "normalized",
        **smax_kwargs,
    ):
        if world_state not in WORLD_STATES:
            raise ValueError(f"world_state must be one of {WORLD_STATES} (got {world_state!r})")
        self._env, self._reset, self._step = _compiled(
            map_name, platform, world_state, tuple(sorted(smax_kwargs.items()))
        )
        import jax

        self._jax = jax
        agents = list(self._env.agents)
        obs_dim = int(np.prod(self._env.observation_space(agents[0]).shape))
        self._init_spaces(agents, obs_dim, int(self._env.action_space(agents[0]).n))
        self._key = jax.random.PRNGKey(0)

    def state(self) -> np.ndarray:
        return self._world_state

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._key = self._jax.random.PRNGKey(seed)
        self._key, self._state, packed = self._reset(self._key)
        self.agents = list(self.possible_agents)
        obs, world_state, avail = self._jax.device_get(packed)
        self._world_state = np.asarray(world_state, np.float32)
        return self._battle_obs(obs, avail, [True] * len(self.possible_agents))

    def step(self, actions):
        joint = np.array([int(actions.get(a, 0)) for a in self.possible_agents], np.int32)
        self._key, self._state, packed, out = self._step(self._key, self._state, joint)
        (obs, world_state, avail), (rewards, dones, over, won, timeout) = self._jax.device_get((packed, out))
        self._world_state = np.asarray(world_state, np.float32)
        # SMAX gives every ally the same team reward (rewards[0]); envs.battle pays it once.
        return self._battle_step(obs, avail, ~np.asarray(dones), float(rewards[0]), bool(over), bool(timeout), bool(won))


def parallel_env(**kwargs) -> SmaxParallelEnv:
    return SmaxParallelEnv(**kwargs)
