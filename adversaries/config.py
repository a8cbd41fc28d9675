"""Attack configs: composed with OmegaConf and validated with pydantic exactly as
``marl.config`` does (its helpers), then checked against the victim before anything is created.

Composition, lowest priority first: ``configs/attack/base.yaml`` (every default, commented),
the optional attack config file (with its ``defaults:``), ``key=value`` overrides, and the
command line's VICTIM and ``--adversary``. The attacker's model/algo/runners/train sections
reuse ``marl.config``'s schemas, so the Trainer drives an attack like any run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import ValidationError

from adversaries.base import AdversaryPlugin, AttackContext
from adversaries.registry import get_plugin
from adversaries.victims import load_victim_checkpoint, trained_team
from marl.checkpoints import TeamCheckpoint, check_team_fits
from marl.config import (
    CONFIG_DIR,
    AlgoConfig,
    EnvConfig,
    HistoryConfig,
    ModelConfig,
    NonNegInt,
    PosInt,
    RunnersConfig,
    Strict,
    TrainConfig,
    build_env,
    compose,
    format_error,
    merge_layers,
    parse_overrides,
    read_yaml,
)
from marl.errors import ConfigError

ATTACK_BASE = CONFIG_DIR / "attack" / "base.yaml"


class VictimConfig(Strict):
    checkpoint: str
    team: str | None
    deterministic: bool


class AdversaryConfig(Strict):
    name: str
    team: str | None  # α's team (the attacked agents'); None = the victim team
    agents: list[NonNegInt] | Literal["random"]
    budget: float | None
    params: dict[str, Any]


class EvalConfig(Strict):
    episodes: PosInt
    seed: NonNegInt
    gif: bool


class AttackConfig(Strict):
    kind: Literal["attack"]
    name: str
    seed: NonNegInt
    output_dir: str
    victim: VictimConfig
    env: EnvConfig | None
    adversary: AdversaryConfig
    eval: EvalConfig
    model: ModelConfig
    algo: AlgoConfig
    runners: RunnersConfig
    train: TrainConfig

    @pydantic.field_validator("model")
    @classmethod
    def _feed_forward_attacker(cls, model: ModelConfig) -> ModelConfig:
        # Victims may be recurrent (adversaries/victims.py); the attackers' learners and the
        # evaluation's attacker rollouts step a stateless module.
        if model.recurrent is not None:
            raise ValueError("recurrent must be null: an attacker's module is feed-forward "
                             "(recurrent victims are supported)")
        return model

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


@dataclass
class AttackSetup:
    """A validated attack: the resolved config, the plugin (class, params, context) and the
    victim checkpoint."""

    cfg: AttackConfig
    plugin_cls: type[AdversaryPlugin]
    params: pydantic.BaseModel
    ctx: AttackContext
    victim: TeamCheckpoint

    def plugin(self) -> AdversaryPlugin:
        return self.plugin_cls(self.params, self.ctx)

    def env_config(self) -> dict[str, Any]:
        """The AttackEnv's config (what RLlib's EnvRunners build it from)."""
        c = self.cfg
        return {
            "env": {**c.to_dict()["env"], "nonfinite": c.runners.nonfinite_env_output},
            "team": c.victim.team,
            "adversary_team": c.adversary.team,
            "checkpoint": c.victim.checkpoint,
            "attacked": self.ctx.attacked,
            "threat_model": self.plugin_cls.threat_model,
            "budget": c.adversary.budget,
            "deterministic": c.victim.deterministic,
            "seed": c.seed,
        }


def _validate(merged: dict[str, Any], where: str = "") -> AttackConfig:
    try:
        cfg = AttackConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(where + format_error(e.errors()[0], AttackConfig)) from None
    if cfg.runners.batched:  # marl/batched_runner.py steps an env's batched form; AttackEnv has none
        raise ConfigError(
            f"{where}config key 'runners.batched': the attacker trains in the attack env (victims folded "
            "in), which has no batched form; set runners.batched=false"
        )
    return cfg


def load_attack_config(
    path: str | Path | None, overrides: list[str], victim: str | None = None, adversary: str | None = None
) -> AttackSetup:
    layers = [read_yaml(ATTACK_BASE)]
    if path:
        layers += compose(Path(path))
    layers.append(parse_overrides(overrides))
    cli: dict[str, Any] = {}
    if victim is not None:
        cli["victim"] = {"checkpoint": victim}
    if adversary is not None:
        cli["adversary"] = {"name": adversary}
    layers.append(cli)
    merged = merge_layers(layers)
    if not (merged.get("victim") or {}).get("checkpoint"):
        raise ConfigError("config key 'victim.checkpoint' is missing: give VICTIM (a checkpoint or run directory)")
    return resolve(_validate(merged))


def attack_config_from_file(path: Path) -> AttackSetup:
    """A run's resolved config.yaml (for resume); keys added since take their defaults."""
    cfg = _validate(merge_layers([read_yaml(ATTACK_BASE), read_yaml(path)]), f"{path}: ")
    return resolve(cfg)


def is_attack_run(run_dir: Path) -> bool:
    """Whether a run directory's config.yaml says it is an attack (``kind: attack``)."""
    try:
        data = read_yaml(Path(run_dir) / "config.yaml")
    except ConfigError:
        return False
    return data.get("kind") == "attack"


# ---------------------------------------------------------------------- checks
def resolve(cfg: AttackConfig) -> AttackSetup:
    """Check the attack against its victim and fill in what the defaults leave open (the
    checkpoint's path, the team, the env, the budget, the plugin's params). Raises UserError."""
    plugin_cls = get_plugin(cfg.adversary.name)
    try:
        params = plugin_cls.Params.model_validate(cfg.adversary.params)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(["adversary", "params", *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            known = ", ".join(plugin_cls.Params.model_fields) or "none"
            raise ConfigError(f"unknown config key '{key}' for adversary '{plugin_cls.name}'; valid keys: {known}") from None
        raise ConfigError(f"config key '{key}': {err['msg']} (got {err.get('input')!r})") from None

    victim = load_victim_checkpoint(Path(cfg.victim.checkpoint))
    env_cfg = cfg.env or victim.cfg.env
    env = build_env(env_cfg)
    try:
        teams = list(env.teams)
        team = cfg.victim.team or trained_team(victim.cfg, teams)
        if team not in teams:
            raise ConfigError(f"config key 'victim.team': the env has no team '{team}' (teams: {', '.join(teams)})")
        adv_team = cfg.adversary.team or team
        if adv_team not in teams:
            raise ConfigError(f"config key 'adversary.team': the env has no team '{adv_team}' (teams: {', '.join(teams)})")
        if adv_team != team and not plugin_cls.controls_opponents:
            raise ConfigError(
                f"config key 'adversary.team': adversary '{cfg.adversary.name}' attacks through a member of "
                f"the victim team '{team}' only, not through '{adv_team}'"
            )
        for t in teams:  # every team of the env is played by the victim checkpoint's module
            check_team_fits(victim, t, env)
        spec = env.specs[adv_team]
    finally:
        env.close()

    n = spec.n_agents
    agents = cfg.adversary.agents
    if agents != "random":
        if not agents or len(set(agents)) != len(agents) or max(agents) >= n:
            raise ConfigError(
                f"config key 'adversary.agents': {agents} must be distinct agent ids in 0..{n - 1} "
                f"(team '{adv_team}' has {n} agents), or 'random'"
            )
    budget = _check_budget(plugin_cls, cfg.adversary.budget)

    env_cfg = _with_attacker_history(cfg, env_cfg)
    resolved = cfg.model_copy(deep=True)
    resolved.victim.checkpoint = str(victim.ckpt.resolve())
    resolved.victim.team = team
    resolved.adversary.team = adv_team
    resolved.env = env_cfg
    resolved.adversary.budget = budget
    resolved.adversary.params = params.model_dump(mode="json")
    ctx = AttackContext(
        n_agents=n,
        attacked=None if agents == "random" else list(agents),
        budget=budget,
        discrete=not spec.continuous,
        n_actions=spec.n_actions,
        action_dim=0 if not spec.continuous else int(victim.action_spaces[adv_team].shape[-1]),
        obs_dim=spec.obs_dim,
        state_dim=spec.state_dim,
        team=team,
        adversary_team=adv_team,
        env_import=env_cfg.import_,
        model_config=resolved.model.model_dump(mode="json"),
    )
    return AttackSetup(resolved, plugin_cls, params, ctx, victim)


def _with_attacker_history(cfg: AttackConfig, env_cfg: EnvConfig) -> EnvConfig:
    """An attacker with an agent model (``model.agent_modeling``) reads the episode prefix of
    the agents it controls: the env keeps the history. One env has one history, so against a
    victim that models agents too, both must read the same one."""
    am = cfg.model.agent_modeling
    if am is None:
        return env_cfg
    want = HistoryConfig(length=am.history, last_actions=am.last_actions)
    if env_cfg.history is None:
        return env_cfg.model_copy(update={"history": want})
    if env_cfg.history != want:
        have = env_cfg.history
        raise ConfigError(
            f"config key 'model.agent_modeling.history': the victim's env keeps {have.length} steps of history "
            f"(last_actions: {str(have.last_actions).lower()}); the attacker's agent model must read the same "
            f"(got {am.history}, last_actions: {str(am.last_actions).lower()})"
        )
    return env_cfg


# Budget ranges per threat model: (lo, hi, lo allowed, what the budget is); budget <= hi.
# Partial control admits ε = 0 (no attack at all: the victims' rollouts are the clean ones),
# the left end of the paper's budget sweeps.
BUDGETS = {
    "observation": (0.0, math.inf, False, "ε of the L∞ ball, a finite number > 0"),
    "partial_control": (0.0, 1.0, True, "the probability ε of replacing the agent's action, in [0, 1]"),
}


def _check_budget(plugin_cls: type[AdversaryPlugin], budget: float | None) -> float | None:
    tm = plugin_cls.threat_model
    if tm not in BUDGETS:
        if budget is not None:
            raise ConfigError(f"config key 'adversary.budget': the {tm} threat model takes no budget (got {budget}); set it to null")
        return None
    budget = plugin_cls.default_budget if budget is None else budget
    lo, hi, lo_ok, what = BUDGETS[tm]
    if budget is None:  # a plugin without a default: the budget is the attack's defining knob
        raise ConfigError(f"config key 'adversary.budget' is required for adversary '{plugin_cls.name}' ({tm}): {what}")
    b = float(budget)
    if not math.isfinite(b) or not (lo <= b if lo_ok else lo < b) or b > hi:
        raise ConfigError(f"config key 'adversary.budget': {budget} is out of range; expected {what}")
    return b

