"""One AMI training call on an attacker's batch, in the order of the authors' learner:

1. sample the oracle's targets for t+1 (once per call);
2. the influence term with the current MAA and the current adversary policy, and the shaped
   reward (``reward.py``), written over the batch's rewards before GAE;
3. train the MAA (``maa_epochs`` full-batch epochs);
4. train the oracle and its critic on the shaped reward (discrete) or the unshaped one
   (continuous).

``AMIShaper`` owns the MAA, the oracle, their Adam optimizers and the running reward
statistics; its ``state_dict`` goes into the learner's checkpoints.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns

from adversaries.ami.influence import target_likelihood, unilateral_influence
from adversaries.ami.maa import ActionModel, train_maa
from adversaries.ami.oracle import TargetedOracle, train_oracle
from adversaries.ami.params import AMIParams
from adversaries.ami.reward import RunningMeanStd, shaped_reward_continuous, shaped_reward_discrete
from adversaries.ami.sequences import REQUIRED_OBS_KEYS, JointSequences


def is_ami_observation_space(space: gym.Space | None) -> bool:
    return isinstance(space, gym.spaces.Dict) and all(k in space.spaces for k in REQUIRED_OBS_KEYS)


class AMIShaper:
    def __init__(self, observation_space: gym.spaces.Dict, params: AMIParams, device="cpu"):
        p = self.params = params
        spaces = observation_space.spaces
        self.n = int(spaces["prev_joint_action"].shape[0])
        self.discrete = len(spaces["prev_joint_action"].shape) == 1
        state_dim = int(np.prod(spaces["state"].shape))
        if self.discrete:
            kind = {"n_actions": int(spaces["joint_action_mask"].shape[-1])}
            recurrent = True
        else:
            kind = {"action_dim": int(spaces["prev_joint_action"].shape[-1])}
            recurrent = p.maa_gru_continuous
        self.maa = ActionModel(state_dim, self.n, hidden=p.hidden, recurrent=recurrent, **kind)
        self.oracle = TargetedOracle(
            state_dim, self.n, hidden=p.hidden, critic_hidden=p.oracle_critic_hidden,
            recurrent=recurrent, **kind,
        )
        self.maa.to(device)
        self.oracle.to(device)
        self.maa_optimizer = torch.optim.Adam(self.maa.parameters(), lr=p.maa_lr)
        self.oracle_optimizer = torch.optim.Adam(self.oracle.policy.parameters(), lr=p.oracle_lr)
        self.critic_optimizer = torch.optim.Adam(
            self.oracle.critic.parameters(), lr=p.oracle_critic_lr
        )
        standardize = p.standardize_reward
        self.standardize = self.discrete if standardize is None else standardize
        self.reward_rms = RunningMeanStd()

    # ------------------------------------------------------------------ one training call
    def adversary_policy(self, module, batch: dict[str, Any], seq: JointSequences):
        """The current adversary policy's distribution inputs at every step, [C, L, k, P]
        (JointPolicyModule's layout: logits per attacked agent, or [mean, log_std])."""
        with torch.no_grad():
            inputs = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
        k = torch.as_tensor(batch[Columns.OBS]["action_mask"]).shape[1]
        inputs = inputs[seq.rows]  # [C, L, k·P]
        return inputs.reshape(*inputs.shape[:2], k, -1)

    @staticmethod
    def env_units(module, mean: torch.Tensor, std: torch.Tensor):
        """The attacker's Gaussian in the env's action units, where the executed joint actions
        live: RLlib (normalize_actions, its default) maps the module's [-1, 1] actions affinely
        onto the action space's bounds (the final clip to the bounds is not modelled)."""
        space = getattr(module, "action_space", None)
        if not isinstance(space, gym.spaces.Box) or not np.all(np.isfinite(space.low)):
            return mean, std
        low = torch.as_tensor(space.low, dtype=mean.dtype, device=mean.device)
        high = torch.as_tensor(space.high, dtype=mean.dtype, device=mean.device)
        half = (high - low).reshape(mean.shape[-2:]) / 2
        return low.reshape(mean.shape[-2:]) + (mean + 1) * half, std * half

    def influence_and_reward(
        self, module, batch: dict[str, Any], seq: JointSequences, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_t or l_t, shaped reward before standardisation), both [C, L]."""
        p = self.params
        policy = self.adversary_policy(module, batch, seq)
        if self.discrete:
            influence = unilateral_influence(
                self.maa, seq, policy, targets, samples=p.influence_samples
            )
            return influence, shaped_reward_discrete(seq.reward, influence, p.influence_coeff)
        c = policy.shape[-1] // 2
        mean, std = self.env_units(module, policy[..., :c], policy[..., c:].exp())
        likelihood = target_likelihood(
            self.maa, seq, mean, std, targets, samples=p.influence_samples
        )
        return likelihood, shaped_reward_continuous(seq.reward, likelihood, p.likelihood_coeff)

    def shape(self, module, batch: dict[str, Any]) -> dict[str, float]:
        """Rewrite ``batch[REWARDS]`` with the shaped reward and train the MAA and the oracle.
        Returns statistics to log."""
        p = self.params
        seq = JointSequences.from_batch(batch)
        valid = seq.valid.bool()
        targets, old_logp = self.oracle.sample_targets(seq)
        influence, shaped = self.influence_and_reward(module, batch, seq, targets)
        stats: dict[str, float] = {}
        stats["influence_mean"] = float(influence[valid].mean())
        stats["reward_unshaped_mean"] = float(seq.reward[valid].mean())
        if self.standardize:
            shaped = torch.where(valid, shaped, torch.zeros_like(shaped))
            shaped[valid] = self.reward_rms.standardize(shaped[valid])
        stats["reward_shaped_mean"] = float(shaped[valid].mean())

        rewards = torch.as_tensor(batch[Columns.REWARDS]).clone()
        rewards[seq.rows[valid]] = shaped[valid].to(rewards.dtype)
        batch[Columns.REWARDS] = rewards

        stats.update(
            train_maa(self.maa, self.maa_optimizer, seq, epochs=p.maa_epochs, grad_clip=p.grad_clip)
        )
        oracle_reward = shaped if self.discrete else seq.reward
        stats.update(
            train_oracle(
                self.oracle, self.oracle_optimizer, self.critic_optimizer, seq, targets,
                old_logp, oracle_reward.detach(), epochs=p.oracle_epochs, clip=p.oracle_clip,
                gamma=p.gamma, nstep=p.oracle_nstep, tau=p.oracle_target_tau,
                grad_clip=p.grad_clip,
            )
        )
        return stats

    # ------------------------------------------------------------------ checkpoints
    OPTIMIZERS = ("maa_optimizer", "oracle_optimizer", "critic_optimizer")

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and numpy arrays (checkpoints carry no torch objects)."""
        def to_np(d):
            return {k: v.detach().cpu().numpy() for k, v in d.items()}

        state: dict[str, Any] = {
            "maa": to_np(self.maa.state_dict()),
            "oracle": to_np(self.oracle.state_dict()),
            "reward_rms": self.reward_rms.state_dict(),
        }
        for name in self.OPTIMIZERS:
            opt = getattr(self, name).state_dict()
            state[name] = {
                "state": {
                    i: {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else v) for k, v in s.items()}
                    for i, s in opt["state"].items()
                },
                "param_groups": opt["param_groups"],
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(self.maa.parameters()).device

        def to_t(d):
            return {k: torch.as_tensor(np.asarray(v), device=device) for k, v in d.items()}

        self.maa.load_state_dict(to_t(state["maa"]))
        self.oracle.load_state_dict(to_t(state["oracle"]))
        self.reward_rms.load_state_dict(state["reward_rms"])
        for name in self.OPTIMIZERS:
            saved = state[name]
            getattr(self, name).load_state_dict({
                "state": {int(i): to_t(s) for i, s in saved["state"].items()},
                "param_groups": saved["param_groups"],
            })
