"""The attacker's learner under AMI: the project's joint PPO learner, with AMI's reward shaping
inserted into the learner connector just before the team GAE (the shaped reward must exist
before advantages are computed).

The MAA, the oracle, their optimizers and the running reward statistics belong to the learner
(``self.ami``, one ``AMIShaper`` per attacker module) and travel in its checkpoints under the
``ami`` component of ``get_state``/``set_state``, so ``run.py resume`` continues them.
The learner only ever sees the attacker's own batches: no victim module or parameter.
With several learners (``num_learners`` > 1) each would train its own MAA and oracle on its
shard of the batch; the project runs one local learner.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.connectors.connector_v2 import ConnectorV2

from adversaries.ami.params import AMIParams
from adversaries.ami.shaping import AMIShaper, is_ami_observation_space
from marl.learners.gae import TeamGAE
from marl.learners.joint_ppo import JointPPOLearner

COMPONENT_AMI = "ami"
LEARNER_CONFIG_KEY = "ami"  # learner_config_dict entry holding AMIParams


class AMIRewardShaping(ConnectorV2):
    """Learner-connector piece: for every module with an ``AMIShaper``, rewrite the batch's
    rewards with AMI's shaped reward and train the MAA and the oracle on the batch."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, shapers):
        super().__init__(input_observation_space, input_action_space)
        self.shapers: dict[str, AMIShaper] = shapers  # shared with the learner

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, metrics=None, **kwargs):
        for module_id, module_batch in batch.items():
            shaper = self.shapers.get(module_id)
            if shaper is None:
                continue
            stats = shaper.shape(rl_module[module_id].unwrapped(), module_batch)
            if metrics is not None:
                metrics.log_dict({f"ami/{k}": v for k, v in stats.items()}, key=module_id, window=1)
        return batch


class AMILearner(JointPPOLearner):
    def build(self) -> None:
        super().build()
        extra = self.config.learner_config_dict or {}
        params = AMIParams(**(extra.get(LEARNER_CONFIG_KEY) or {}))
        self.ami: dict[str, AMIShaper] = {}
        for module_id in self.module.keys():
            module = self.module[module_id].unwrapped()
            if self.should_module_be_updated(module_id) and is_ami_observation_space(
                module.observation_space
            ):
                self.ami[module_id] = AMIShaper(module.observation_space, params, self._device)
        if self._learner_connector is not None:
            self._learner_connector.insert_before(TeamGAE, AMIRewardShaping(shapers=self.ami))

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(COMPONENT_AMI, components, not_components):
            state[COMPONENT_AMI] = {mid: s.state_dict() for mid, s in self.ami.items()}
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        for module_id, saved in (state.get(COMPONENT_AMI) or {}).items():
            if module_id in self.ami:
                self.ami[module_id].load_state_dict(saved)
