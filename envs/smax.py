"""SMACv2-style battles that run anywhere: JaxMARL's SMAX as a PettingZoo ParallelEnv.

``HeuristicEnemySMAX`` with ``map_name_to_scenario(map_name)``: ``smacv2_5_units``,
``smacv2_10_units`` (random unit types and start positions, SMACv2's distributions), and
SMAC-like maps such as ``3m`` and ``2s3z``. Install extra: ``.[smax]``.

- JAX stays on the CPU unless ``platform`` says otherwise (set before JAX first loads).
- The env's functions are jitted once per process and shared by every copy, so the compile
  cost is paid once, not per step or per copy.
- Per agent: SMAX's observation, its avail-actions as ``info["action_mask"]``, and death as
  termination. ``state()`` is SMAX's world state, raw or rescaled (``world_state``, below). Rewards,
  deaths and outcomes are
  translated by ``envs.battle``, as for SMACv2: the team reward (the same for every ally) is
  paid once, so a team return is SMAX's return. When the battle ends, every agent's info
  carries ``battle_won`` (all enemies dead while an ally lives); a time-out is a truncation.

World state. SMAX's own ``get_world_state`` holds raw map positions (0 to 32), the raw weapon
cooldown timer (which keeps falling while a unit holds fire: about -50 after a 100-step
episode) and unit-type indices, next to features in [0, 1]. Fed as is, they saturate a tanh
critic's first layer (72% of a fresh critic's units past |tanh| > 0.99 on 3m; BENCHMARKS.md,
issue 12). ``world_state="normalized"`` (a kwarg of both the per-copy and the batched env;
configs/env/smax_*.yaml set it) keeps SMAX's layout and size and rescales as SMAC's own state does (Samvelyan et
al. 2019, ``get_state``): per unit health / max health, position (x - W/2) / (W/2) and
(y - H/2) / (H/2), the cooldown as a fraction of the unit type's, clipped to [0, 1] (as SMAX's
observations do), the unit type one-hot, zeros for a dead unit; then every unit's team, and
its type index / (types - 1). ``world_state="raw"``, the default, is SMAX's state unchanged:
a run made before the rescaling existed (its config.yaml names no ``world_state``) resumes
with the critic input it was trained on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import gymnasium as gym
import numpy as np

from envs.adapter import TeamSpec
from envs.batched import BatchedStep, BatchedTeamEnv
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
def _functions(map_name: str, platform: str, kwargs_items: tuple):
    """The env and its pure reset/step functions over one copy (jitted by ``_compiled``,
    vmapped and jitted by ``_compiled_batched``: both paths run the very same functions)."""
    os.environ.setdefault("JAX_PLATFORMS", platform)
    # One env per call is tiny work: XLA's own thread pool would only contend with the envs.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax
    import jax.numpy as jnp

    with _silenced_stdout():  # jaxmarl prints on import; stdout is the CLI's contract
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    kwargs = dict(kwargs_items)
    world_state = kwargs.pop("world_state", "raw")
    if world_state not in WORLD_STATES:
        raise ValueError(f"world_state must be one of {WORLD_STATES} (got {world_state!r})")
    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), **kwargs)

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
        # One call per step: key split, step, avail-actions, outcome; stacked arrays out.
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
        # The reset state has weakly typed leaves where the step's output has strong ones: make
        # them strong, or the jitted step compiles a second time at its second call.
        state = jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)
        return key, state, pack(obs, env.get_avail_actions(state), state)

    return env, reset, step


@functools.cache
def _compiled(map_name: str, platform: str, kwargs_items: tuple):
    import jax

    env, reset, step = _functions(map_name, platform, kwargs_items)
    return env, jax.jit(reset), jax.jit(step)


@functools.cache
def _compiled_batched(map_name: str, platform: str, kwargs_items: tuple):
    """Step and reset of B copies, each one jitted, vmapped call, with the team adapter's
    translation (envs/adapter.py over envs/battle.py) done inside it, array-wise:

    - an agent dead after the step (SMAX's per-agent done) has a zero observation, only the
      no-op allowed and ``alive`` 0, as TeamEnv gives it;
    - the team reward is SMAX's ally reward (paid once, as envs/battle.py pays it);
    - the battle's end is a termination, or a truncation on a time-out; ``won`` as
      ``battle_won``.

    ``reset_where(keys, states, obs, over)`` resets the copies where ``over`` from their own
    keys, split as ``SmaxParallelEnv.reset()`` without a seed splits it (RLlib's auto-reset),
    so copy b seeded with s runs the same episodes as a ``SmaxParallelEnv`` reset with seed s.
    The first reset is the same call with every copy ``over``: the reset compiles once.
    """
    import jax
    import jax.numpy as jnp

    env, reset, step = _functions(map_name, platform, kwargs_items)
    v_reset, v_step = jax.vmap(reset), jax.vmap(step)

    def team_view(obs, world_state, avail, alive):
        a = alive[..., None]
        noop = jnp.zeros_like(avail).at[..., 0].set(1)
        return {
            "obs": jnp.where(a, obs, 0.0).astype(jnp.float32),
            "state": world_state.astype(jnp.float32),
            "action_mask": jnp.where(a, avail, noop).astype(jnp.float32),
            "alive": alive.astype(jnp.float32),
        }

    def b_step(keys, states, actions):
        keys, states, (obs, ws, avail), (rewards, dones, over, won, timeout) = v_step(keys, states, actions)
        final = team_view(obs, ws, avail, ~dones)
        out = (rewards[:, 0].astype(jnp.float32), over & ~timeout, over & timeout, over & won)
        return keys, states, final, out

    def reset_where(keys, states, obs, over):
        r_keys, r_states, (r_obs, r_ws, r_avail) = v_reset(keys)
        fresh = team_view(r_obs, r_ws, r_avail, jnp.ones(r_obs.shape[:2], bool))

        def pick(new, old):
            return jnp.where(over.reshape(over.shape + (1,) * (old.ndim - 1)), new, old)

        return (pick(r_keys, keys), jax.tree_util.tree_map(pick, r_states, states),
                {k: pick(fresh[k], v) for k, v in obs.items()})

    return env, jax.jit(reset_where), jax.jit(b_step)


class SmaxParallelEnv(BattleParallelEnv):
    metadata = {"name": "smax_v0"}

    def __init__(self, map_name: str = "smacv2_5_units", platform: str = "cpu", **smax_kwargs):
        self._env, self._reset, self._step = _compiled(map_name, platform, tuple(sorted(smax_kwargs.items())))
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


class SmaxBatchedEnv(BatchedTeamEnv):
    """B copies of ``SmaxParallelEnv`` seen through the team adapter, stepped as one jitted,
    vmapped call (envs/batched.py); copies whose battle ended are reset by a second call, only
    in steps where some did. Copy b reset with seed s gives the observations, rewards and ends
    that ``TeamEnv`` over ``SmaxParallelEnv`` gives when reset with seed s and fed the same
    actions (tests/test_batched.py checks it)."""

    def __init__(self, num_envs: int, map_name: str = "smacv2_5_units", platform: str = "cpu", **smax_kwargs):
        import jax

        self._jax = jax
        items = tuple(sorted(smax_kwargs.items()))
        env, self._reset_where, self._step = _compiled_batched(map_name, platform, items)
        self.num_envs = int(num_envs)
        agents = list(env.agents)
        n = len(agents)
        # Shapes from an abstract evaluation (nothing runs): the step's state and observation.
        _, reset, step = _functions(map_name, platform, items)
        key = jax.ShapeDtypeStruct((self.num_envs, 2), np.uint32)
        _, state, _ = jax.eval_shape(jax.vmap(reset), key)
        act = jax.ShapeDtypeStruct((self.num_envs, n), np.int32)
        _, _, obs, _ = jax.eval_shape(self._step, key, state, act)
        self._blank = (state, obs)
        obs_dim, state_dim = obs["obs"].shape[-1], obs["state"].shape[-1]
        n_actions = int(env.action_space(agents[0]).n)
        self.spec = TeamSpec(self.team, agents, obs_dim, n_actions, state_dim, [n_actions] * n)
        self.observation_space = self.team_obs_space(n, obs_dim, state_dim, n_actions)
        self.action_space = gym.spaces.MultiDiscrete([n_actions] * n)
        self._keys = self._states = None

    def reset(self, seeds=None):
        jax = self._jax
        if seeds is None:
            seeds = np.random.SeedSequence().generate_state(self.num_envs).tolist()
        keys = jax.numpy.stack([jax.random.PRNGKey(int(s)) for s in seeds])
        zeros = jax.tree_util.tree_map(lambda x: jax.numpy.zeros(x.shape, x.dtype), self._blank)
        every = jax.numpy.ones(self.num_envs, bool)
        self._keys, self._states, obs = self._reset_where(keys, zeros[0], zeros[1], every)
        return {k: np.asarray(v) for k, v in jax.device_get(obs).items()}

    def step(self, actions):
        jax = self._jax
        actions = np.asarray(actions, np.int32).reshape(self.num_envs, self.spec.n_agents)
        self._keys, self._states, final, out = self._step(self._keys, self._states, actions)
        reward, term, trunc, won = (np.asarray(x) for x in jax.device_get(out))
        over = term | trunc
        nxt = final
        if over.any():
            self._keys, self._states, nxt = self._reset_where(self._keys, self._states, final, over)
        final, nxt = jax.device_get((final, nxt))
        as_np = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
        return BatchedStep(as_np(nxt), as_np(final), reward, term, trunc, won)


def batched_env(num_envs: int, **kwargs) -> SmaxBatchedEnv:
    return SmaxBatchedEnv(num_envs, **kwargs)
