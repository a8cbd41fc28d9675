"""What an adversary plugin is: a threat model, a black-/white-box flag, and either an attacker
that RLlib trains (module + learner) or a rule that acts without training.

DESIGN.md, "Adversaries: how attacks fit the architecture". Black-box is structural: the
victim team is folded into the attack env (adversaries/attack_env.py), as Gleave et al. (2020)
fold a frozen opponent into a single-agent env. A black-box plugin and the attacker's RLlib
module are never handed the victim; only a white-box plugin's ``perturb`` receives a
``WhiteBoxVictim`` (module, gradients), and every report labels such a plugin white-box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pydantic

if TYPE_CHECKING:
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from adversaries.victims import WhiteBoxVictim

# Threat models (DESIGN.md): takeover = agents [ids] of the team act for the attacker;
# observation = a victim's observation is perturbed inside an ε-ball (white-box);
# partial_control = with probability ε the attacker's action replaces the agent's own.
THREAT_MODELS = ("takeover", "observation", "partial_control")
ATTACKER = "attacker"  # the RLlib agent id (and module id) of the attacker in the attack env


class NoParams(pydantic.BaseModel):
    """A plugin without coefficients."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True)
class AttackContext:
    """What a plugin may know about the attack: shapes and settings, never the victim."""

    n_agents: int  # n: agents of α's team (the attacked agents' team)
    attacked: list[int] | None  # the attacked agents' ids; None = one drawn per episode
    budget: float | None  # observation: ε of the L∞ ball; partial_control: replace probability
    discrete: bool
    n_actions: int  # A (padded to the team's largest); 1 for continuous actions
    action_dim: int  # k of continuous actions; 0 for discrete ones
    obs_dim: int
    state_dim: int
    team: str  # the victim team's name (the attacker is paid −its reward)
    env_import: str
    model_config: dict[str, Any] = field(default_factory=dict)  # the attack config's `model`
    adversary_team: str | None = None  # α's team (the attacked agents'); None = ``team``

    @property
    def k(self) -> int:
        """Agents the attacker controls at once."""
        return 1 if self.attacked is None else len(self.attacked)


class AdversaryPlugin:
    """Subclass per attack and register it (``adversaries.registry.register``)."""

    name: ClassVar[str]
    threat_model: ClassVar[str]  # one of THREAT_MODELS
    white_box: ClassVar[bool] = False  # only white-box plugins ever see victim modules/grads
    trains: ClassVar[bool] = True  # False: evaluate only (random, obs_pgd)
    Params: ClassVar[type[pydantic.BaseModel]] = NoParams  # config `adversary.params`
    default_budget: ClassVar[float | None] = None  # `adversary.budget: null` means this
    # May α be another team than the victim (the victim's opponent in a competitive env)?
    # False for a plugin that models the victim team through α (AMI's influence term).
    controls_opponents: ClassVar[bool] = True

    def __init__(self, params: pydantic.BaseModel, ctx: AttackContext):
        self.params, self.ctx = params, ctx

    # .................................................. training plugins (RLlib builds these)
    def module_spec(self) -> RLModuleSpec:
        """The attacker's module: the project's JointPolicyModule over the attacker's
        observation (n = k attacked agents). RLlib fills in the spaces from the attack env."""
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        from marl.modules import JointPolicyModule

        return RLModuleSpec(module_class=JointPolicyModule, model_config=dict(self.ctx.model_config))

    def learner_class(self) -> type:
        from marl.learners import JointPPOLearner

        return JointPPOLearner

    def learner_config(self) -> dict[str, Any]:
        """Extra entries merged into RLlib's ``learner_config_dict`` (e.g. AMI's coefficients)."""
        return {}

    # .......................................................... non-training plugins
    def act(self, attacker_obs: dict[str, np.ndarray]) -> np.ndarray:
        """The attacker's action for one step, in the units of the attacker's RLlib module:
        [k] discrete, [k, c] continuous in [-1, 1] (mapped onto the bounds as RLlib's
        EnvRunners do). Only plugins with ``trains = False`` and threat model takeover."""
        raise NotImplementedError(f"adversary '{self.name}' trains; it does not act by rule")

    def action_distribution(self, attacker_obs: dict[str, np.ndarray]) -> list | None:
        """The distribution ``act`` samples from, one per attacked agent, in the module's units
        (``adversaries.stealth``: Categorical, DiagGaussian, UniformBox, PointMass), for the
        action-TV stealth measure. None: the rule does not say (no action TV is reported)."""
        return None

    # ............................................ observation threat model (white-box)
    def perturb(
        self, team_obs: dict[str, np.ndarray], victim: WhiteBoxVictim, attacked: list[int]
    ) -> dict[str, np.ndarray]:
        """The victims' observations after the attack (``team_obs['obs']`` [n, d] changed at
        the ``attacked`` agents' rows, this episode's), before the victims act."""
        raise NotImplementedError(f"adversary '{self.name}' does not perturb observations")

    @classmethod
    def check(cls) -> None:
        """Class-level sanity: a registered plugin declares a known threat model and is
        white-box if it perturbs observations."""
        if cls.threat_model not in THREAT_MODELS:
            raise TypeError(f"adversary '{cls.name}': threat_model must be one of {THREAT_MODELS}")
        if cls.threat_model == "observation" and not cls.white_box:
            raise TypeError(f"adversary '{cls.name}': the observation threat model is white-box")
