"""Defense ``adversarial_training``: the victim trains against a learning attacker that partly
controls an agent α (Liu, Chakraborty, Sun, Huang, ICLR 2024, Algorithm 2).

The defense minimises the victim's one-side exploitability under a budget ε_d. Algorithm 2
does it by two-timescale adversarial training: the victim and an attacker π̃ with partial
control ε_d (π_α = (1 − ε_d)·π̂_α + ε_d·π̃) update alternately, the attacker on the faster
timescale. Here both run inside ONE RLlib Algorithm (``marl.algorithms.build_ppo``): the env
is ``PartialControlEnv`` (the team env plus one attacker agent per victim team), every module
has its own optimizer in the project's Learner, and the two timescales are

- a larger step size for the attackers: ``attacker_lr_scale`` × ``algo.lr`` (a schedule is
  scaled point by point), through RLlib's per-module config overrides;
- K attacker updates per victim update: ``attacker_updates`` = K updates the teams' modules on
  every K-th training iteration only (the K-th, 2K-th, ...), the attackers at every one
  (``JointPPOLearner``'s ``update_every``).

The paper gives no step sizes. The default takes the faster timescale from the step size
alone: attacker lr ×10, K = 1 (both configurable).

α: in a one-team (cooperative) env, ``defense.agents`` names the team's agents the attacker
partly controls. In a two-team (competitive) env, α is the victim's opponent: the other
team's agents (``defense.agents``: a subset of them by index; default all). Every trained
team is a victim unless ``defense.teams`` names some; with two victims (both seats of a
game), each episode draws one and only its attacker acts (``PartialControlEnv``).
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from adversaries.defenses.partial_control import REPLACED_FRACTION, PartialControlEnv
from marl.callbacks import last_infos
from marl.defenses import Defense, DefenseParams, register
from marl.errors import ConfigError

ATTACKER_PREFIX = "attacker_"  # the attacker of victim team T is RLlib agent/module attacker_T
REPLACED_METRIC = "defense/replaced_fraction"  # in metrics.jsonl; EnvRunners log REPLACED_FRACTION
ATTACKER_RETURN = "defense/attacker_return_mean"


class Params(DefenseParams):
    name: Literal["adversarial_training"]
    # α: one-team env: the team's agents (indices) the attacker partly controls (required);
    # two-team env: indices into the opponent team (null = all of its agents).
    agents: list[pydantic.NonNegativeInt] | None = None
    teams: list[str] | None = None  # the victim teams; null = every trained team
    attacker_lr_scale: float = pydantic.Field(default=10.0, gt=0.0)  # attacker lr = this × algo.lr
    attacker_updates: pydantic.PositiveInt = 1  # K: attacker updates per victim update

    @pydantic.field_validator("agents")
    @classmethod
    def _distinct(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("must list distinct agent indices (at least one)")
        return v


def _role(cfg: Any, team: str) -> str:
    role = cfg.teams.get(team)
    return role.role if role is not None else "train"


@register
class AdversarialTraining(Defense):
    name = "adversarial_training"
    Params = Params

    # ............................................................ who attacks whom
    def attacks(self, cfg: Any, sizes: dict[str, int]) -> list[dict[str, Any]]:
        """One attack per victim team: (attacker id, victim, α's team, α's indices). ``sizes``:
        the env's teams (in order) and their agent counts. ConfigError names the key at fault."""
        p = self.params
        teams = list(sizes)
        trained = [t for t in teams if _role(cfg, t) == "train"]
        if len(teams) > 2:
            raise ConfigError(
                f"config key 'defense': {self.name} takes an env with one team (α = some of its "
                f"agents) or two (α = the opponent); this env has {len(teams)}: {', '.join(teams)}"
            )
        victims = p.teams if p.teams is not None else trained
        if not victims:
            raise ConfigError("config key 'defense.teams': name at least one team to defend")
        for v in victims:
            if v not in sizes:
                raise ConfigError(f"config key 'defense.teams': the env has no team '{v}' (teams: {', '.join(teams)})")
            if _role(cfg, v) != "train":
                raise ConfigError(f"config key 'defense.teams': team '{v}' is {_role(cfg, v)}; a defended team must train")
        if len(set(victims)) != len(victims):
            raise ConfigError(f"config key 'defense.teams': {victims} names a team twice")
        out = []
        for v in victims:
            alpha = v if len(teams) == 1 else next(t for t in teams if t != v)
            n = sizes[alpha]
            if p.agents is None and len(teams) == 1:
                raise ConfigError(
                    f"config key 'defense.agents': a one-team env needs α, the indices of the agents of "
                    f"team '{v}' that the attacker partly controls (0..{n - 1}), e.g. defense.agents=[0]"
                )
            ids = list(range(n)) if p.agents is None else list(p.agents)
            bad = [i for i in ids if i >= n]
            if bad:
                raise ConfigError(
                    f"config key 'defense.agents': {bad} outside the agents 0..{n - 1} of team '{alpha}'"
                    + ("" if alpha == v else f" (α is the opponent of the defended team '{v}')")
                )
            attacker = ATTACKER_PREFIX + v
            if attacker in sizes:
                raise ConfigError(f"config key 'defense': the attacker's id '{attacker}' is taken by a team of the env")
            out.append({"attacker": attacker, "victim": v, "team": alpha, "agents": ids})
        return out

    def check(self, cfg: Any, env: Any) -> None:
        self.attacks(cfg, {t: s.n_agents for t, s in env.specs.items()})

    # ............................................................ the algorithm
    def build(self, cfg: Any, parts: dict[str, Any]) -> Any:
        from marl.algorithms import build_ppo
        from marl.config import build_env
        from marl.modules import JointPolicyModule

        p = self.params
        env = build_env(cfg.env)
        sizes = {t: s.n_agents for t, s in env.specs.items()}
        env.close()
        attacks = self.attacks(cfg, sizes)
        attackers = [a["attacker"] for a in attacks]
        # The attacker: the project's team module over α's rows, with no graph (MAPPO-style).
        model = cfg.model.model_dump(mode="json")
        model["graph"] = {**model["graph"], "mode": "empty", "edges": []}
        specs = dict(parts["rl_module_spec"].rl_module_specs)
        specs.update({a: RLModuleSpec(module_class=JointPolicyModule, model_config=model) for a in attackers})
        learner_config = dict(parts.get("learner_config") or {})
        if p.attacker_updates > 1:  # the teams' modules update on every K-th iteration only
            learner_config["update_every"] = {t: p.attacker_updates for t in parts["policies_to_train"]}
        algo = build_ppo(cfg, **{
            **parts,
            "env": PartialControlEnv,
            "env_config": {"env": parts["env_config"], "attacks": attacks, "budget": p.budget, "seed": cfg.seed},
            "rl_module_spec": MultiRLModuleSpec(rl_module_specs=specs),
            "policies": set(parts["policies"]) | set(attackers),
            "policies_to_train": [*parts["policies_to_train"], *attackers],
            "learner_config": learner_config,
        })
        lr = _scaled(cfg.algo.lr, p.attacker_lr_scale)
        algo.rl_module(algorithm_config_overrides_per_module={a: PPOConfig.overrides(lr=lr) for a in attackers})
        algo.callbacks(on_episode_end=log_replaced_fraction)
        return algo

    # ............................................................ metrics
    def record(self, result: dict[str, Any], row: dict[str, Any]) -> None:
        """``episode_return_mean`` is the teams' return alone (RLlib's sums the attackers'
        −r_victim in); the attackers' mean return and the share of α's steps replaced."""
        er = result.get("env_runners", {})
        per_module = er.get("module_episode_returns_mean") or {}
        teams = {m: r for m, r in per_module.items() if not str(m).startswith(ATTACKER_PREFIX)}
        attackers = [r for m, r in per_module.items() if str(m).startswith(ATTACKER_PREFIX)]
        if teams:
            row["episode_return_mean"] = _mean_or_none([sum(float(r) for r in teams.values())])
        row[ATTACKER_RETURN] = _mean_or_none(attackers)
        row[REPLACED_METRIC] = _mean_or_none([er.get(REPLACED_FRACTION)])


def _scaled(lr: Any, scale: float) -> Any:
    if isinstance(lr, list):  # RLlib's piecewise-linear schedule [[step, lr], ...]
        return [[int(s), float(v) * scale] for s, v in lr]
    return float(lr) * scale


def _mean_or_none(values: list[Any]) -> float | None:
    import math

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def log_replaced_fraction(*, episode, metrics_logger=None, **kwargs) -> None:
    """RLlib ``on_episode_end``: the share of α's steps whose action the attacker replaced in
    the episode (the env puts it in the attacker's last info), mean over recent episodes."""
    if metrics_logger is None:
        return
    for agent, info in last_infos(episode).items():
        if str(agent).startswith(ATTACKER_PREFIX) and isinstance(info, dict) and REPLACED_FRACTION in info:
            metrics_logger.log_value(REPLACED_FRACTION, float(info[REPLACED_FRACTION]), reduce="mean", window=20)
