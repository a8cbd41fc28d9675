"""From a validated project config to an RLlib ``AlgorithmConfig`` (new API stack).

A registry maps ``algo.name`` to a builder. Each team of the env becomes one RLlib agent
mapped to a module of the same name (DESIGN.md, "Teams: one RLlib agent per team").
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.from_config import NotProvided

from envs.adapter import TeamEnv
from marl.batched_runner import BatchedEnvRunner
from marl.callbacks import WinRateCallback
from marl.checkpoints import MODULE_CLASSES, frozen_source, load_frozen_teams
from marl.config import Config, EnvConfig, TeamRole, build_env
from marl.defenses import defense_for
from marl.learners import JointPPOLearner
from marl.modules import JointPolicyModule
from marl.modules.scripted import ScriptedTeamModule
from marl.runners import MAX_FAULTS_KEY, REPORT_KEY, FaultTolerantEnvRunner

# runners.batched -> the EnvRunner class: RLlib's per-env vector env (faults counted), or one
# batched call over all copies (envs/batched.py).
ENV_RUNNERS: dict[bool, type] = {False: FaultTolerantEnvRunner, True: BatchedEnvRunner}


def _team_of(agent_id, episode=None, **kwargs):
    return agent_id


def team_names(cfg: Config) -> list[str]:
    """The env's teams, in order. Building an env can be slow (MuJoCo, JAX), so it is built
    once per env config, however many parts of the algorithm config ask."""
    return list(_team_names(json.dumps(cfg.to_dict()["env"], sort_keys=True)))


@functools.cache
def _team_names(env_json: str) -> tuple[str, ...]:
    env = build_env(EnvConfig.model_validate(json.loads(env_json)))
    names = tuple(env.teams)
    env.close()
    return names


def team_spec(cfg: Config, team: str) -> RLModuleSpec:
    """A trained team gets the config's model; a frozen one its checkpoint's module class and
    model_config, read from the safe description (its weights are set after the build by
    ``frozen_weights``); a scripted one a parameter-free rule."""
    role = cfg.teams.get(team, TeamRole())
    if role.role == "frozen":
        source, name = frozen_source(team, role)
        module = source.modules[name]
        cls = MODULE_CLASSES[type(module).__name__]
        return RLModuleSpec(module_class=cls, model_config=dict(module.model_config))
    if role.role == "scripted":
        return RLModuleSpec(module_class=ScriptedTeamModule, model_config={"policy": role.policy})
    return RLModuleSpec(module_class=JointPolicyModule, model_config=cfg.model.model_dump(mode="json"))


def module_spec(cfg: Config) -> MultiRLModuleSpec:
    return MultiRLModuleSpec(rl_module_specs={team: team_spec(cfg, team) for team in team_names(cfg)})


def frozen_weights(cfg: Config) -> Callable | None:
    """An ``on_algorithm_init`` callback that loads each frozen team's safe weights into the
    Learner and the EnvRunners (RLlib's ``load_state_path`` would unpickle them)."""
    sources = {}
    for team in team_names(cfg):
        role = cfg.teams.get(team, TeamRole())
        if role.role == "frozen":
            source, name = frozen_source(team, role)
            sources[team] = (str(source.ckpt.resolve()), name)
    return functools.partial(load_frozen_teams, sources) if sources else None


def trained_teams(cfg: Config) -> list[str]:
    return [t for t in team_names(cfg) if cfg.teams.get(t, TeamRole()).role == "train"]


def build_mappo(cfg: Config) -> AlgorithmConfig:
    """MAPPO (Yu et al. 2022) and, through the graph, BN-MAPPO (Chen & Zhang 2023). A
    configured defense (marl/defenses.py) builds from the same parts."""
    parts = dict(
        env=TeamEnv,
        env_config={**cfg.to_dict()["env"], "nonfinite": cfg.runners.nonfinite_env_output},
        rl_module_spec=module_spec(cfg),
        policies=set(team_names(cfg)),
        policies_to_train=trained_teams(cfg),
        learner_config=learner_extras(cfg),
        on_algorithm_init=frozen_weights(cfg),
    )
    defense = defense_for(cfg)
    if defense is not None:
        return defense.build(cfg, parts)
    return build_ppo(cfg, **parts)


def build_ppo(
    cfg: Any,
    *,
    env: type,
    env_config: dict[str, Any],
    rl_module_spec: MultiRLModuleSpec,
    policies: set[str],
    policies_to_train: list[str],
    learner_class: type = JointPPOLearner,
    learner_config: dict[str, Any] | None = None,
    on_algorithm_init: Callable | None = None,
) -> AlgorithmConfig:
    """PPOConfig from a config's ``algo``, ``runners`` and ``seed`` sections; each RLlib agent
    maps to the module of its own name. Shared by team training and attacker training."""
    a, r = cfg.algo, cfg.runners
    return (
        PPOConfig()
        .environment(env, env_config=env_config)
        .framework("torch")
        .env_runners(
            num_env_runners=r.num_env_runners,
            num_envs_per_env_runner=r.num_envs_per_env_runner,
            num_gpus_per_env_runner=r.num_gpus_per_env_runner,
            rollout_fragment_length="auto",
            env_runner_cls=ENV_RUNNERS[bool(getattr(r, "batched", False))],
        )
        # A sub-environment that raises is recreated and its episode dropped (marl/runners.py
        # bounds how often); a remote EnvRunner process that dies is restarted.
        # A remote runner whose task raised sleeps this long before it exits and is restarted
        # (RLlib's default, 60 s, would stall the whole iteration; its line is already posted).
        .fault_tolerance(restart_failed_sub_environments=True, restart_failed_env_runners=True,
                         delay_between_env_runner_restarts_s=2.0)
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .learners(
            # num_learners: 0 is RLlib's local Learner in the driver; it trains on a GPU of
            # this machine when num_gpus_per_learner > 0 (RLlib's get_device).
            num_learners=r.num_learners,
            num_gpus_per_learner=r.num_gpus_per_learner,
            learner_class=learner_class,
        )
        .multi_agent(
            policies=policies,
            policy_mapping_fn=_team_of,
            policies_to_train=policies_to_train,
        )
        .rl_module(rl_module_spec=rl_module_spec)
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
            learner_config_dict={
                **(learner_config or {}),
                MAX_FAULTS_KEY: r.max_env_faults_per_iteration,
                REPORT_KEY: f"marl-env-fault-limit-{uuid.uuid4().hex}",  # this run's own
            },
        )
        .callbacks(WinRateCallback, on_algorithm_init=on_algorithm_init or NotProvided)
        .debugging(seed=cfg.seed, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=20)
    )


def learner_extras(cfg: Any) -> dict[str, Any]:
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
