"""An EnvRunner that steps a natively batched simulator as one call (``runners.batched``).

RLlib 2.60's ``MultiAgentEnvRunner`` steps its vectorised copies one by one in Python and
builds every copy's episode step by step. With ``runners.batched: true`` this runner instead
drives the env's batched form (envs/batched.py: ``batched_env`` beside ``parallel_env``): each
step is one module call over all B copies (``num_envs_per_env_runner``) and one env call, the
arrays are written into preallocated [T, B, ...] buffers, and the episode chunks are built at
the end of ``sample()`` from array slices. What leaves ``sample()`` is what RLlib's runner
returns: ``MultiAgentEpisode`` chunks, one per copy and episode segment, with the same
observations, actions, rewards, ends, infos and module outputs (``action_logp``,
``action_dist_inputs``, the DAG noise, ``weights_seq_no``), so the learner connectors and
learners are unchanged.

What is the same as the per-env path (marl/runners.py): RLlib's Algorithm, learners, weight
sync, checkpoints; the env seeds (copy b of runner w is seeded with ``seed + w + b``, as
RLlib's vector env seeds its copies, so on SMAX the episodes are those of the per-env path
with the same actions: tests/test_batched.py; as there, copies of neighbouring runners share
seeds when there are several runners; VMAS steps every copy in one env seeded once, with the
first copy's seed, so its episodes differ from the per-env path's); an env that raises is a fault (counted, bounded by
``max_env_faults_per_iteration``, the env recreated and the sample's steps dropped); NaN or inf
from the env ends the run (``nonfinite_env_output: error``); episode metrics and
``on_episode_end`` / ``on_sample_end`` callbacks (``win_rate``).

What differs, and is refused at config time (marl/config.py): one team per env (no
``env.teams``), no agent-modelling history, no training-time defense, no
``nonfinite_env_output: end_episode``; ``on_episode_start``/``on_episode_step`` callbacks are
not called. A copy whose episode ends is reset within the same env call (RLlib's vector env
spends one extra module call per reset). ``sample()`` takes ``num_timesteps`` only (training
sampling), rounded up to whole steps of all B copies.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.metrics import (
    ENV_STEP_TIMER,
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
    RLMODULE_INFERENCE_TIMER,
    SAMPLE_TIMER,
    WEIGHTS_SEQ_NO,
)
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.spaces.space_utils import (
    clip_action,
    get_base_struct_from_space,
    unsquash_action,
)

from envs.batched import BatchedStep, BatchedTeamEnv, resolve_batched_factory
from envs.errors import NonFiniteOutput
from marl.runners import FaultTolerantEnvRunner

WON_INFO = "won"  # the team adapter's info key (envs/adapter.py), read by WinRateCallback


class _EnvFault(Exception):
    """The batched env raised during a step (already counted as a fault)."""


class BatchedEnvView:
    """What RLlib's runner machinery reads of a (vector) env, for a batched one: the single
    copy's Dict spaces keyed by agent (the team), ``unwrapped`` and ``close``."""

    def __init__(self, env: BatchedTeamEnv):
        self.batched = env
        self.num_envs = env.num_envs
        self.possible_agents = [env.team]
        self.agents = [env.team]
        self.single_observation_space = gym.spaces.Dict({env.team: env.observation_space})
        self.single_action_space = gym.spaces.Dict({env.team: env.action_space})
        self.observation_space = self.single_observation_space
        self.action_space = self.single_action_space

    @property
    def unwrapped(self) -> BatchedEnvView:
        return self

    def get_observation_space(self, agent_id):
        return self.single_observation_space[agent_id]

    def get_action_space(self, agent_id):
        return self.single_action_space[agent_id]

    def close(self) -> None:
        self.batched.close()


class BatchedEnvRunner(FaultTolerantEnvRunner):
    """See the module docstring."""

    def __init__(self, *args, **kwargs):
        self._obs: dict[str, np.ndarray] | None = None
        super().__init__(*args, **kwargs)

    # ...................................................................... env
    def make_env(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception:  # noqa: BLE001 (a broken env is being replaced anyway)
                pass
            self.env = None
        cfg = dict(self.config.env_config)
        factory = resolve_batched_factory(cfg["import"])
        if factory is None:  # marl/config.py refuses such a config before Ray starts
            raise ValueError(f"env '{cfg['import']}' has no batched form ('batched_env')")
        batched = factory(num_envs=self.config.num_envs_per_env_runner, **dict(cfg.get("kwargs") or {}))
        self.env = BatchedEnvView(batched)
        self.num_envs = batched.num_envs
        self._import = cfg["import"]
        self._needs_initial_reset = True
        space = batched.action_space
        self._action_struct = get_base_struct_from_space(space) if isinstance(space, gym.spaces.Box) else None

    def _reset_all(self) -> None:
        seeds = None
        if self._needs_initial_reset and self._seed is not None:
            seeds = [self._seed + b for b in range(self.num_envs)]  # as RLlib's vector env seeds
        while True:
            try:
                obs = self.env.batched.reset(seeds)
                break
            except NonFiniteOutput:
                raise
            except Exception as e:
                self._fault(e)
                self._recreate()
        self._check_finite(obs, "observation")
        self._obs = obs
        self._needs_initial_reset = False
        b = self.num_envs
        self._ep_ids = [uuid.uuid4().hex for _ in range(b)]
        self._ep_t = np.zeros(b, np.int64)  # env steps into each copy's episode
        self._ep_return = np.zeros(b, np.float64)
        self._ep_start = np.full(b, time.perf_counter())

    # ...................................................................... sampling
    def sample(self, *, num_timesteps=None, num_episodes=None, explore=None, random_actions=False,
               force_reset=False):
        if num_episodes is not None or random_actions:
            raise NotImplementedError(
                "runners.batched samples timesteps with the module's actions only "
                "(no num_episodes, no random_actions)"
            )
        self._faults_this_sample = 0
        explore = self.config.explore if explore is None else explore
        if num_timesteps is None:
            num_timesteps = self.config.get_rollout_fragment_length(self.worker_index) * self.num_envs
        steps = max(1, math.ceil(num_timesteps / self.num_envs))
        with self.metrics.log_time(SAMPLE_TIMER):
            if force_reset:
                self._needs_initial_reset = True
            while True:
                if self._obs is None or self._needs_initial_reset:
                    self._reset_all()
                try:
                    episodes = self._rollout(steps, explore)
                    break
                except _EnvFault:  # counted; a fresh env, fresh episodes, the sample redone
                    self._recreate()
                    self._obs = None
            make_callback(
                "on_sample_end",
                callbacks_objects=self._callbacks,
                callbacks_functions=self.config.callbacks_on_sample_end,
                kwargs=dict(env_runner=self, metrics_logger=self.metrics, samples=episodes),
            )
        self._time_after_sampling = time.perf_counter()
        return episodes

    def _act(self, obs: dict[str, np.ndarray], explore: bool, t: int) -> dict[str, np.ndarray]:
        """One module call over every copy: the team module's outputs, as NumPy arrays."""
        mid = self._module_id
        batch = {mid: {Columns.OBS: {k: torch.from_numpy(v).to(self._device) for k, v in obs.items()}}}
        with self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
            if explore:
                out = self.module.forward_exploration(batch, t=t)
            else:
                out = self.module.forward_inference(batch)
        # As RLlib's TensorToNumpy connector: float64 -> float32, int64 -> int32.
        return convert_to_numpy(out[mid])

    def _for_env(self, actions: np.ndarray) -> np.ndarray:
        """What RLlib's module-to-env pipeline sends to the env: continuous actions mapped
        from [-1, 1] onto the space's bounds (``normalize_actions``) or clipped."""
        if self._action_struct is None:
            return actions
        if self.config.normalize_actions:
            return unsquash_action(actions, self._action_struct)
        if self.config.clip_actions:
            return clip_action(actions, self._action_struct)
        return actions

    def _step_env(self, actions: np.ndarray) -> BatchedStep:
        try:
            with self.metrics.log_time(ENV_STEP_TIMER):
                step = self.env.batched.step(actions)
        except NonFiniteOutput:
            raise
        except Exception as e:
            self._fault(e)
            raise _EnvFault() from e
        self._check_finite(step.final_obs, "observation")
        self._check_finite(step.obs, "observation")
        self._check_finite({"reward": step.reward}, "reward")
        return step

    def _check_finite(self, arrays: dict[str, np.ndarray], what: str) -> None:
        for key, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                where = np.argwhere(~np.isfinite(value))[0]
                raise NonFiniteOutput(
                    f"env '{self._import}' returned {value[tuple(where)]} in the team's {what} "
                    f"('{key}') of batched copy {int(where[0])}"
                )

    @property
    def _module_id(self) -> str:
        team = self.env.batched.team
        return self.config.policy_mapping_fn(team, None)

    def _rollout(self, steps: int, explore: bool) -> list[MultiAgentEpisode]:
        b, team = self.num_envs, self.env.batched.team
        obs = {k: np.empty((steps + 1, *v.shape), v.dtype) for k, v in self._obs.items()}
        for k, v in self._obs.items():
            obs[k][0] = v
        outs: dict[str, np.ndarray] = {}
        rewards = np.zeros((steps, b), np.float32)
        term = np.zeros((steps, b), bool)
        trunc = np.zeros((steps, b), bool)
        ends: dict[int, list[tuple[int, dict[str, np.ndarray], bool | None]]] = {}  # copy -> (t, last obs, won)
        lifetime = self.num_env_steps_sampled_lifetime // (self.config.num_env_runners or 1)
        for t in range(steps):
            out = self._act({k: v[t] for k, v in obs.items()}, explore,
                            (lifetime + t * b) * (self.config.num_env_runners or 1))
            for k, v in out.items():
                if k not in outs:
                    outs[k] = np.empty((steps, *v.shape), v.dtype)
                outs[k][t] = v
            step = self._step_env(self._for_env(out[Columns.ACTIONS]))
            for k, v in step.obs.items():
                obs[k][t + 1] = v
            rewards[t], term[t], trunc[t] = step.reward, step.terminated, step.truncated
            for i in np.flatnonzero(step.done):
                won = None if step.won is None else bool(step.won[i])
                ends.setdefault(int(i), []).append((t, {k: v[i].copy() for k, v in step.final_obs.items()}, won))
        self._obs = {k: v[steps].copy() for k, v in obs.items()}
        self._log_env_steps(metric=self._metrics_num_try_env_step, num_steps=steps)
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=steps * b)
        return self._episodes(team, steps, obs, outs, rewards, term, trunc, ends)

    # ...................................................................... episodes
    def _episodes(self, team, steps, obs, outs, rewards, term, trunc, ends) -> list[MultiAgentEpisode]:
        """Cut each copy's [T] record into episode chunks (at its episode ends) and wrap each
        as RLlib's runner would have built it step by step."""
        episodes: list[MultiAgentEpisode] = []
        finished: list[tuple[int, float, float]] = []  # (length, return, seconds) per ended episode
        seq = self._weights_seq_no
        for i in range(self.num_envs):
            start = 0
            for t_end, last_obs, won in ends.get(i, []):
                chunk_obs = {k: np.concatenate([v[start: t_end + 1, i], last_obs[k][None]]) for k, v in obs.items()}
                ep = self._chunk(i, team, chunk_obs, outs, rewards, start, t_end + 1, seq,
                                 bool(term[t_end, i]), bool(trunc[t_end, i]), won)
                episodes.append(ep)
                finished.append(self._end_episode(i, ep))
                start = t_end + 1
            if start < steps:
                chunk_obs = {k: v[start: steps + 1, i] for k, v in obs.items()}
                episodes.append(self._chunk(i, team, chunk_obs, outs, rewards, start, steps, seq, False, False, None))
        self._count(team, steps * self.num_envs, len(finished))
        # RLlib's runner logs every ended episode into windows of the last `win` episodes
        # (mean, min, max); the last `win` of this sample leave the same windows, at a fraction
        # of the cost (a MetricsLogger call is about a millisecond).
        win = max(1, math.ceil(self.config.metrics_num_episodes_for_smoothing / (self.config.num_env_runners or 1)))
        mid = self._module_id
        for length, ret, seconds in finished[-win:]:
            self._log_episode_metrics(length, ret, seconds, {str(team): ret}, {mid: ret}, {str(team): length})
        return episodes

    def _chunk(self, i, team, chunk_obs, outs, rewards, start, stop, seq, terminated, truncated, won):
        """One MultiAgentEpisode chunk of copy i's steps [start, stop) (numpy, finalized)."""
        length = stop - start
        extra = {k: InfiniteLookbackBuffer(v[start:stop, i]) for k, v in outs.items() if k != Columns.ACTIONS}
        extra[WEIGHTS_SEQ_NO] = InfiniteLookbackBuffer(np.full(length, seq, np.int64))
        infos = [{} for _ in range(length + 1)]
        if won is not None:
            infos[-1][WON_INFO] = won
        t0 = int(self._ep_t[i])
        ma_id, mid = self._ep_ids[i], self._module_id
        sa = SingleAgentEpisode(
            id_=f"{ma_id}-{team}",
            observations=InfiniteLookbackBuffer(chunk_obs),
            observation_space=self.env.get_observation_space(team),
            infos=infos,
            actions=InfiniteLookbackBuffer(outs[Columns.ACTIONS][start:stop, i]),
            action_space=self.env.get_action_space(team),
            rewards=InfiniteLookbackBuffer(rewards[start:stop, i].astype(np.float32)),
            terminated=terminated, truncated=truncated,
            extra_model_outputs=extra,
            t_started=t0, len_lookback_buffer=0,
            agent_id=team, module_id=mid, multi_agent_episode_id=ma_id,
        )
        ma = MultiAgentEpisode(
            id_=ma_id,
            observation_space=self.env.single_observation_space,
            action_space=self.env.single_action_space,
            agent_module_ids={team: mid},
            agent_to_module_mapping_fn=self.config.policy_mapping_fn,
            env_t_started=t0,
        )
        ma.agent_episodes[team] = sa
        ma.agent_t_started[team] = t0
        # env step -> agent step: the team acts at every env step of the chunk.
        ma.env_t_to_agent_t[team] = InfiniteLookbackBuffer(list(range(t0, t0 + length + 1)))
        ma.env_t = t0 + length
        ma.is_terminated, ma.is_truncated = terminated, truncated
        self._ep_t[i] += length
        self._ep_return[i] += float(rewards[start:stop, i].sum())
        return ma

    def _end_episode(self, i: int, last_chunk: MultiAgentEpisode) -> tuple[int, float, float]:
        """The ``on_episode_end`` callbacks and a fresh episode for copy i; returns the ended
        episode's length, return and duration."""
        ret, length = float(self._ep_return[i]), int(self._ep_t[i])
        seconds = time.perf_counter() - float(self._ep_start[i])
        make_callback(
            "on_episode_end",
            callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_episode_end,
            kwargs=dict(episode=last_chunk, env_runner=self, metrics_logger=self.metrics, env=self.env,
                        rl_module=self.module, env_index=i, prev_episode_chunks=[]),
        )
        self._ep_ids[i] = uuid.uuid4().hex
        self._ep_t[i], self._ep_return[i], self._ep_start[i] = 0, 0.0, time.perf_counter()
        return length, ret, seconds

    def _count(self, team: Any, env_steps: int, episodes: int) -> None:
        """The sampling counters RLlib's runner logs step by step, in bulk."""
        mid = self._module_id
        m = self.metrics
        m.log_value(NUM_ENV_STEPS_SAMPLED, env_steps, reduce="sum")
        m.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, env_steps, reduce="lifetime_sum", with_throughput=True)
        m.log_value((NUM_AGENT_STEPS_SAMPLED, str(team)), env_steps, reduce="sum")
        m.log_value((NUM_AGENT_STEPS_SAMPLED_LIFETIME, str(team)), env_steps, reduce="lifetime_sum")
        m.log_value((NUM_MODULE_STEPS_SAMPLED, mid), env_steps, reduce="sum")
        m.log_value((NUM_MODULE_STEPS_SAMPLED_LIFETIME, mid), env_steps, reduce="lifetime_sum")
        if episodes:
            m.log_value(NUM_EPISODES, episodes, reduce="sum")
            m.log_value(NUM_EPISODES_LIFETIME, episodes, reduce="lifetime_sum")
