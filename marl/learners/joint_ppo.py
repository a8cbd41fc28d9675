"""PPO loss per agent on a team's joint policy (MAPPO, IPPO and BN-MAPPO share it).

For each agent i, the clipped surrogate (Schulman et al. 2017, eq. 7) is taken on the ratio of
its *conditional* policy, π_i(a_i | o_i, a_Pa(i)) new / old (Chen & Zhang 2023, eq. 6), with
the team's GAE advantage (shared by all agents under a centralised critic, per agent under
IPPO). Dead agents are masked out. The value loss is MAPPO's Huber loss on normalised
targets (Yu et al. 2022), and the entropy bonus is the mean per-agent entropy. A learned DAG
adds its density term α·|ρ − τ| (Chen & Zhang 2023, eq. 9), with τ and α annealed over training
(``marl.graphs.annealing``).
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
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from marl.graphs.annealing import DensitySchedule
from marl.learners.gae import TeamGAE
from marl.modules.joint_policy import DAG_DENSITY

HUBER_DELTA = 10.0


class JointPPOLearner(PPOTorchLearner):
    def build(self) -> None:
        super().build()
        extra = self.config.learner_config_dict or {}
        self.density_schedule = DensitySchedule(**extra["density"]) if "density" in extra else None
        self.total_env_steps = extra.get("total_env_steps")
        self.progress_iteration = 0.0
        if self._learner_connector is not None:
            # Swap RLlib's single-column GAE for the team version (per-agent critics allowed).
            self._learner_connector.remove(GeneralAdvantageEstimation)
            self._learner_connector.append(
                TeamGAE(gamma=self.config.gamma, lambda_=self.config.lambda_)
            )

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        # Frozen and scripted teams are never updated: no optimizer (a scripted team has no
        # parameters at all).
        if not self.should_module_be_updated(module_id):
            return
        super().configure_optimizers_for_module(module_id=module_id, config=config)

    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        if self.density_schedule is not None and self.total_env_steps:
            steps = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
            self.progress_iteration = steps / self.total_env_steps * self.density_schedule.total_iterations

    def compute_loss_for_module(self, *, module_id, config, batch: dict[str, Any], fwd_out):
        module = self.module[module_id].unwrapped()
        density = None
        if DAG_DENSITY in fwd_out and self.density_schedule is not None:
            density = (
                self.density_schedule.tau(self.progress_iteration),
                self.density_schedule.alpha(self.progress_iteration),
            )
        total, stats = joint_ppo_loss(
            module, batch, fwd_out,
            clip_param=config.clip_param,
            vf_loss_coeff=config.vf_loss_coeff,
            entropy_coeff=self.entropy_coeff_schedulers_per_module[module_id].get_current_value(),
            density=density,
        )
        if density is not None:
            freq = module.graph.edge_freq
            for j in range(module.n):
                for i in range(module.n):
                    if j != i:
                        stats[f"edge_freq/{j}->{i}"] = freq[j, i]
        self.metrics.log_dict(stats, key=module_id, window=1)
        return total


def joint_ppo_loss(
    module,
    batch: dict[str, Any],
    fwd_out: dict[str, Any],
    *,
    clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
    density: tuple[float, float] | None = None,
    update_value_norm: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The team's PPO loss; ``density`` = (τ, α) adds the graph term. Returns (loss, stats)."""
    n, A = module.n, module.A
    obs = batch[Columns.OBS]
    actions = batch[Columns.ACTIONS]
    b = actions.shape[0]

    params = fwd_out[Columns.ACTION_DIST_INPUTS].reshape(b, n, A)
    old_params = batch[Columns.ACTION_DIST_INPUTS].reshape(b, n, A)
    logp = module.head.logp(params, actions)  # [B, n]: log π_i(a_i | o_i, a_Pa(i))
    old_logp = module.head.logp(old_params, actions)
    ratio = torch.exp(logp - old_logp)

    step_mask = batch.get(Columns.LOSS_MASK)
    step_mask = torch.ones(b, device=logp.device) if step_mask is None else step_mask.float()
    agent_mask = obs["alive"] * step_mask.unsqueeze(-1)  # [B, n]
    n_valid = agent_mask.sum().clamp(min=1.0)

    # Clipped surrogate per agent (Schulman et al. 2017, eq. 7) with the team advantage.
    adv = batch[Postprocessing.ADVANTAGES].reshape(b, -1).expand(b, n)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_param, 1 + clip_param) * adv)
    policy_loss = -(surrogate * agent_mask).sum() / n_valid
    entropy = module.head.entropy(params)
    mean_entropy = (entropy * agent_mask).sum() / n_valid

    # Value loss on normalised targets (Yu et al. 2022: value normalisation + Huber loss).
    targets = batch[Postprocessing.VALUE_TARGETS].reshape(b, -1)
    preds = fwd_out[Columns.VF_PREDS].reshape(b, -1)
    v_mask = step_mask.unsqueeze(-1) if module.centralized else agent_mask
    if module.use_value_norm:
        if update_value_norm:  # real steps only; under IPPO, alive agents' columns only
            module.value_norm.update(targets, v_mask.expand_as(targets))
        targets = module.value_norm.normalize(targets)
    vf_err = F.huber_loss(preds, targets, reduction="none", delta=HUBER_DELTA)
    vf_loss = (vf_err * v_mask).sum() / v_mask.sum().clamp(min=1.0)

    total = policy_loss + vf_loss_coeff * vf_loss - entropy_coeff * mean_entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - (logp - old_logp)) * agent_mask
        clip_frac = ((ratio - 1).abs() > clip_param).float() * agent_mask
    stats: dict[str, Any] = {
        POLICY_LOSS_KEY: policy_loss,
        VF_LOSS_KEY: vf_loss,
        ENTROPY_KEY: mean_entropy,
        "approx_kl": approx_kl.sum() / n_valid,
        "clip_fraction": clip_frac.sum() / n_valid,
    }
    if density is not None and DAG_DENSITY in fwd_out:
        # α·|ρ − τ|, ρ averaged over the batch's real steps (Chen & Zhang 2023, eq. 9).
        tau, alpha = density
        rho = (fwd_out[DAG_DENSITY] * step_mask).sum() / step_mask.sum().clamp(min=1.0)
        total = total + alpha * (rho - tau).abs()
        stats.update(dag_density=rho, dag_tau=tau, dag_alpha=alpha)
    stats["total_loss"] = total
    return total, stats
