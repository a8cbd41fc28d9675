"""Environments and the adapter that turns a PettingZoo ParallelEnv into RLlib teams.

This package knows nothing about learners. An environment is named in a config by import
path plus keyword arguments::

    env:
      import: mpe2.simple_spread_v3        # a module with parallel_env(), or "module:callable"
      kwargs: {N: 3, max_cycles: 25}
"""

from envs.adapter import TeamEnv, TeamSpec, resolve_env_factory

__all__ = ["TeamEnv", "TeamSpec", "resolve_env_factory"]
