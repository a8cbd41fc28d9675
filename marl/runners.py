"""The project's EnvRunner: RLlib's MultiAgentEnvRunner with env faults counted and bounded.

With ``fault_tolerance(restart_failed_sub_environments=True)`` RLlib recreates the vector env
of a runner whose ``step`` raised, and ``MultiAgentEnvRunner._sample`` then resets every
sub-environment and throws away the episodes in progress: none of their steps sampled since
the last ``sample()`` call reaches the batch, and the sample goes on until it has its full
count of steps from fresh episodes. (An episode that already spanned the previous iteration's
boundary had its earlier chunk trained on then, as RLlib cuts episodes at sample boundaries.)

This runner adds what a long run needs around that:

- each fault is counted (``env_faults`` per iteration; the Trainer sums them over the run)
  and its exception kept as one line for the driver's warning (``pop_faults``);
- past ``max_env_faults_per_iteration`` faults within one ``sample()`` call it raises
  ``EnvFaultsExceeded``: RLlib alone would recreate an env that always raises forever;
- a failing reset or re-creation (RLlib's env check steps the new env) counts as a fault too;
- a non-finite env output (``envs.errors.NonFiniteOutput``) is not a fault: a new env in the
  same state would return it again, so it ends the run (or the adapter ends the episode).

With remote EnvRunners (``num_env_runners >= 1``) the ``EnvFaultsExceeded`` of a runner fails
that runner's task, and RLlib's ``restart_failed_env_runners`` restarts it, so the driver never
sees the exception. Before raising, a remote runner therefore posts its one line to the
cluster's key-value store (GCS, so this works across nodes) under the run's own key
(``learner_config_dict["env_fault_report_key"]``); the driver reads it after each iteration
(``pop_remote_fault_limit``) and stops the run as it would for its own runner.

The limit comes from ``learner_config_dict["max_env_faults_per_iteration"]``, the free-form
dict of the AlgorithmConfig that every EnvRunner can read (marl/algorithms.py sets it).
"""

from __future__ import annotations

import gc
from typing import Any

from ray.rllib.env.env_runner import ENV_STEP_FAILURE, NUM_ENV_STEP_FAILURES_LIFETIME
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.utils.metrics import ENV_RESET_TIMER, ENV_STEP_TIMER

from envs.errors import NonFiniteOutput
from marl.errors import EnvFaultsExceeded, describe_exception

ENV_FAULTS = "env_faults"  # the same name as marl.train.ENV_FAULTS
MAX_FAULTS_KEY = "max_env_faults_per_iteration"
REPORT_KEY = "env_fault_report_key"  # where a remote runner posts the limit it hit


def pop_remote_fault_limit(key: str | None) -> str | None:
    """The line a remote EnvRunner posted when it went past the fault limit, once."""
    from ray.experimental import internal_kv

    if not key or not internal_kv._internal_kv_initialized():
        return None
    value = internal_kv._internal_kv_get(key)
    if value is None:
        return None
    internal_kv._internal_kv_del(key)
    return value.decode()


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    A full (generation-2) collection walks every tracked object: once Ray, JAX, torch and an
    RLlib algorithm are loaded that is ~0.8M objects, and on SMAX through the batched runner one
    full collection took ~0.35 s and came every few iterations, about 7% of the CPU time. The
    modules, envs and libraries frozen here live as long as the run (``gc.unfreeze`` hands them
    back when a process runs several)."""
    gc.collect()
    gc.freeze()


class FaultTolerantEnvRunner(MultiAgentEnvRunner):
    """See the module docstring."""

    def __init__(self, *args, **kwargs):
        self._fault_lines: list[str] = []  # since the driver last asked (pop_faults)
        self._faults_this_sample = 0
        super().__init__(*args, **kwargs)
        if self.worker_index:  # a remote runner's own process (the Trainer freezes the driver's)
            freeze_long_lived_objects()

    # ...................................................................... driver API
    def pop_faults(self) -> list[str]:
        """The faults since the last call, one line each (exception type and message)."""
        lines, self._fault_lines = self._fault_lines, []
        return lines

    # ...................................................................... RLlib hooks
    def sample(self, *args, **kwargs):
        self._faults_this_sample = 0
        return super().sample(*args, **kwargs)

    def _try_env_step(self, actions):
        try:
            with self.metrics.log_time(ENV_STEP_TIMER):
                results = self.env.step(actions)
        except NonFiniteOutput:
            raise
        except Exception as e:
            self._fault(e)
            self._recreate()
            return ENV_STEP_FAILURE  # _sample resets the envs and drops the ongoing episodes
        self._log_env_steps(metric=self._metrics_num_try_env_step, num_steps=1)
        return results

    def _try_env_reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, Any]:
        while True:
            try:
                with self.metrics.log_time(ENV_RESET_TIMER):
                    return self.env.reset(seed=seed, options=options)
            except NonFiniteOutput:
                raise
            except Exception as e:
                self._fault(e)
                self._recreate()

    # ......................................................................... helpers
    def _recreate(self) -> None:
        """RLlib's ``make_env`` (a new vector env, checked by RLlib's env check), retried
        while it fails, each failure a fault."""
        while True:
            try:
                self.make_env()
                return
            except NonFiniteOutput:
                raise
            except Exception as e:
                self._fault(e)

    def _fault(self, e: Exception) -> None:
        root = e  # the env's own exception, not RLlib's wrapper of it (its env check's)
        while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
            root = root.__cause__ or root.__context__
        line = describe_exception(root)
        self._fault_lines.append(line)
        del self._fault_lines[:-100]  # a bounded record
        self.metrics.log_value(ENV_FAULTS, 1, reduce="sum", clear_on_reduce=True)
        self.metrics.log_value(NUM_ENV_STEP_FAILURES_LIFETIME, 1, reduce="lifetime_sum")
        self._faults_this_sample += 1
        limit = (self.config.learner_config_dict or {}).get(MAX_FAULTS_KEY)
        if limit is not None and self._faults_this_sample > limit:
            error = EnvFaultsExceeded(
                f"{self._faults_this_sample} env faults in one iteration (runners.{MAX_FAULTS_KEY}: "
                f"{limit}); the last: {line}"
            )
            key = (self.config.learner_config_dict or {}).get(REPORT_KEY)
            if self.worker_index > 0 and key:  # a remote runner: RLlib would restart it silently
                from ray.experimental import internal_kv

                internal_kv._internal_kv_put(key, str(error).encode(), overwrite=True)
            raise error from e
