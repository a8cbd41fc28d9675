"""PPO loss per agent on a team's joint policy (MAPPO, IPPO and BN-MAPPO share it).

For each agent i, the clipped surrogate (Schulman et al. 2017, eq. 7) is taken on the ratio of
its *conditional* policy, π_i(a_i | o_i, a_Pa(i)) new / old (Chen & Zhang 2023, eq. 6), with
the team's GAE advantage (shared by all agents under a centralised critic, per agent under
IPPO). Dead agents are masked out. The value loss is MAPPO's Huber loss on normalised
targets (Yu et al. 2022), and the entropy bonus is the mean per-agent entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner import GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing

from marl.learners.gae import TeamGAE

HUBER_DELTA = 10.0


class JointPPOLearner(PPOTorchLearner):
    def build(self) -> None:
        super().build()
        if self._learner_connector is not None:
            # Swap RLlib's single-column GAE for the team version (per-agent critics allowed).
            self._learner_connector.remove(GeneralAdvantageEstimation)
            self._learner_connector.append(
                TeamGAE(gamma=self.config.gamma, lambda_=self.config.lambda_)
            )

    def compute_loss_for_module(self, *, module_id, config, batch: dict[str, Any], fwd_out):
        module = self.module[module_id].unwrapped()
        n, A = module.n, module.A
        obs = batch[Columns.OBS]
        actions = batch[Columns.ACTIONS].long()
        b = actions.shape[0]

        logits = fwd_out[Columns.ACTION_DIST_INPUTS].reshape(b, n, A)
        old_logits = batch[Columns.ACTION_DIST_INPUTS].reshape(b, n, A)
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [B, n]
        old_logp = module.agent_logp(old_logits, actions)
        ratio = torch.exp(logp - old_logp)

        step_mask = batch.get(Columns.LOSS_MASK)
        step_mask = torch.ones(b, device=logp.device) if step_mask is None else step_mask.float()
        agent_mask = obs["alive"] * step_mask.unsqueeze(-1)  # [B, n]
        n_valid = agent_mask.sum().clamp(min=1.0)

        adv = batch[Postprocessing.ADVANTAGES].reshape(b, -1).expand(b, n)
        surrogate = torch.min(
            ratio * adv, torch.clamp(ratio, 1 - config.clip_param, 1 + config.clip_param) * adv
        )
        policy_loss = -(surrogate * agent_mask).sum() / n_valid
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        mean_entropy = (entropy * agent_mask).sum() / n_valid

        # Value loss on normalised targets.
        targets = batch[Postprocessing.VALUE_TARGETS].reshape(b, -1)
        preds = fwd_out[Columns.VF_PREDS].reshape(b, -1)
        v_mask = step_mask.unsqueeze(-1) if module.centralized else agent_mask
        if module.use_value_norm:
            valid_rows = step_mask > 0.5
            module.value_norm.update(targets[valid_rows])
            targets = module.value_norm.normalize(targets)
        vf_err = F.huber_loss(preds, targets, reduction="none", delta=HUBER_DELTA)
        vf_loss = (vf_err * v_mask).sum() / v_mask.sum().clamp(min=1.0)

        ent_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = policy_loss + config.vf_loss_coeff * vf_loss - ent_coeff * mean_entropy

        with torch.no_grad():
            approx_kl = ((ratio - 1) - (logp - old_logp)) * agent_mask
            clip_frac = ((ratio - 1).abs() > config.clip_param).float() * agent_mask
        self.metrics.log_dict(
            {
                POLICY_LOSS_KEY: policy_loss,
                VF_LOSS_KEY: vf_loss,
                ENTROPY_KEY: mean_entropy,
                "approx_kl": approx_kl.sum() / n_valid,
                "clip_fraction": clip_frac.sum() / n_valid,
                "total_loss": total,
            },
            key=module_id,
            window=1,
        )
        return total
