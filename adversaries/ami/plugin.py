"""The AMI adversary plugin: adversarial minority influence (Li et al., arXiv 2302.03322).

Threat model takeover, black-box: the attacker is an ordinary RLlib agent over the attacked
agents (the framework's default JointPolicyModule), trained by ``AMILearner`` — the project's
joint PPO learner with AMI's shaped reward inserted before the team GAE. The victims' action
model and the targeted oracle learn from the attacker's own batches (observed states and joint
actions); no victim module or parameter reaches the plugin.
"""

from __future__ import annotations

from typing import Any, ClassVar

from adversaries.ami.learner import LEARNER_CONFIG_KEY, AMILearner
from adversaries.ami.params import AMIParams
from adversaries.base import AdversaryPlugin
from adversaries.registry import register


@register
class AMIPlugin(AdversaryPlugin):
    name: ClassVar[str] = "ami"
    threat_model: ClassVar[str] = "takeover"
    white_box: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    Params: ClassVar[type[AMIParams]] = AMIParams
    controls_opponents: ClassVar[bool] = False  # its action model and influence are the victim team's

    def learner_class(self) -> type:
        return AMILearner

    def learner_config(self) -> dict[str, Any]:
        return {LEARNER_CONFIG_KEY: self.params.model_dump()}
