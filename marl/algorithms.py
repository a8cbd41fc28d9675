"""From a validated project config to an RLlib ``AlgorithmConfig`` (new API stack).

A registry maps ``algo.name`` to a builder. Each team of the env becomes one RLlib agent
mapped to a module of the same name (DESIGN.md, "Teams: one RLlib agent per team").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.adapter import TeamEnv
from marl.config import Config
from marl.learners import JointPPOLearner
from marl.modules import JointPolicyModule


def _team_of(agent_id, episode=None, **kwargs):
    return agent_id


def team_names(cfg: Config) -> list[str]:
    env = TeamEnv(cfg.to_dict()["env"])
    names = list(env.teams)
    env.close()
    return names


def module_spec(cfg: Config) -> MultiRLModuleSpec:
    model = cfg.model.model_dump(mode="json")
    return MultiRLModuleSpec(
        rl_module_specs={
            team: RLModuleSpec(module_class=JointPolicyModule, model_config=dict(model))
            for team in team_names(cfg)
        }
    )


def build_mappo(cfg: Config) -> AlgorithmConfig:
    """MAPPO (Yu et al. 2022) and, through the graph, BN-MAPPO (Chen & Zhang 2023)."""
    a, r = cfg.algo, cfg.runners
    env_config = cfg.to_dict()["env"]
    return (
        PPOConfig()
        .environment(TeamEnv, env_config=env_config)
        .framework("torch")
        .env_runners(
            num_env_runners=r.num_env_runners,
            num_envs_per_env_runner=r.num_envs_per_env_runner,
            rollout_fragment_length="auto",
        )
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .learners(
            num_learners=0,
            num_gpus_per_learner=r.num_gpus_per_learner,
            learner_class=JointPPOLearner,
        )
        .multi_agent(policies=set(team_names(cfg)), policy_mapping_fn=_team_of)
        .rl_module(rl_module_spec=module_spec(cfg))
        .training(
            lr=_schedule(a.lr),
            gamma=a.gamma,
            lambda_=a.lambda_,
            clip_param=a.clip_param,
            entropy_coeff=_schedule(a.entropy_coeff),
            vf_loss_coeff=a.vf_loss_coeff,
            grad_clip=a.grad_clip,
            grad_clip_by="global_norm",
            train_batch_size=a.train_batch_size,
            minibatch_size=a.minibatch_size,
            num_epochs=a.num_epochs,
            use_kl_loss=False,
            kl_coeff=0.0,
            learner_config_dict=learner_extras(cfg),
        )
        .debugging(seed=cfg.seed, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=20)
    )


def learner_extras(cfg: Config) -> dict[str, Any]:
    """What the learner needs beyond PPO's settings: the budget and the density schedule."""
    iterations = max(math.ceil(cfg.train.total_env_steps / cfg.algo.train_batch_size), 1)
    density = cfg.model.graph.density.model_dump()
    return {
        "total_env_steps": cfg.train.total_env_steps,
        "density": {"total_iterations": iterations, **density},
    }


def _schedule(value: Any) -> Any:
    return [list(p) for p in value] if isinstance(value, list) else value


ALGORITHMS: dict[str, Callable[[Config], AlgorithmConfig]] = {"mappo": build_mappo}


def build_algorithm_config(cfg: Config) -> AlgorithmConfig:
    return ALGORITHMS[cfg.algo.name](cfg)
