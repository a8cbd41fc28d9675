"""AMI's targeted oracle: which action each victim should take at t+1 (Li et al., AMI §4.2).

The oracle has the MAA's architecture and input ([s_t, a_t] → every agent's action at t+1,
``maa.ActionModel``) with its own weights. Its targets are sampled once per training call; the
shaped reward then measures how close the adversary pushes the victims' predicted actions to
them. The oracle is trained by PPO-clip (clip 0.2, no entropy term) with its own critic, an
MLP 64-64 on [s_t, adversary id], on the same shaped reward as the adversary (discrete
branch). Its target at t concerns step t+1, so its advantage is shifted one step earlier:
adv_oracle[t] = adv[t+1], and 0 at a sequence's last step.

As in the authors' EPyMARL code, the oracle critic regresses n-step returns computed with a
soft-updated target critic, the advantage is that TD error (taken before the critic's step),
and each epoch makes one critic step and one oracle step.

Continuous branch: the authors' MAPPO code samples the oracle during rollouts and trains it on
the unshaped adversary reward at t+1. Here the oracle never runs inside the env runners (the
attacker's module is all RLlib ships to them), so its targets are sampled in the learner, once
per training call, as in the discrete branch; it is trained on the unshaped reward.

Deviation: the authors' PPO loss also covers the oracle's output for the adversary's own slot,
which nothing ever reads; we mask that slot out.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from adversaries.ami.maa import ActionModel
from adversaries.ami.sequences import JointSequences


class OracleCritic(nn.Module):
    """V(s_t, adversary id): MLP hidden-hidden with ReLU."""

    def __init__(self, state_dim: int, n_agents: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim + n_agents, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, state: torch.Tensor, agent_id: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, agent_id], dim=-1)).squeeze(-1)


def nstep_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    final_value: torch.Tensor,
    valid: torch.Tensor,
    *,
    gamma: float,
    nstep: int,
) -> torch.Tensor:
    """G_t = Σ_{i<m} γ^i r_{t+i} + γ^m V(s_{t+m}), m = min(nstep, T − t), per sequence.

    rewards, values, valid [C, L]; final_value [C] = V(s_T) (0 after a termination)."""
    c, length = rewards.shape
    lengths = valid.sum(1).long()  # T_c
    pad = rewards.new_zeros(c, 1)
    r_ext = torch.cat([rewards * valid, pad], dim=1)  # index L is a zero
    v_ext = torch.cat([values * valid, pad], dim=1)
    v_ext = v_ext.scatter(1, lengths.unsqueeze(1), final_value.unsqueeze(1))  # V at index T_c
    t = torch.arange(length, device=rewards.device).expand(c, -1)
    end = lengths.unsqueeze(1)
    out = torch.zeros_like(rewards)
    for i in range(nstep):
        idx = t + i
        out = out + gamma**i * r_ext.gather(1, idx.clamp(max=length)) * (idx < end)
    m = torch.minimum(torch.full_like(t, nstep), (end - t).clamp(min=0))
    boot = v_ext.gather(1, (t + m).clamp(max=length))
    return (out + gamma ** m.float() * boot) * valid


def shift_one_step_earlier(adv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """adv_oracle[t] = adv[t+1] within each sequence; 0 at the last step (and at padding)."""
    out = torch.zeros_like(adv)
    out[:, :-1] = adv[:, 1:] * valid[:, 1:]
    return out * valid


def clipped_surrogate_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, weight: torch.Tensor, clip: float
) -> torch.Tensor:
    """−E[min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)], ρ = π/π_old (Schulman et al. 2017, eq. 7), a
    weighted mean; no entropy term (the authors' oracle)."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    return -(surrogate * weight).sum() / weight.sum().clamp(min=1.0)


class TargetedOracle(nn.Module):
    def __init__(
        self,
        state_dim: int,
        n_agents: int,
        *,
        n_actions: int | None = None,
        action_dim: int | None = None,
        hidden: int = 64,
        critic_hidden: int = 64,
        recurrent: bool = True,
    ):
        super().__init__()
        self.policy = ActionModel(
            state_dim, n_agents, n_actions=n_actions, action_dim=action_dim,
            hidden=hidden, recurrent=recurrent,
        )
        self.critic = OracleCritic(state_dim, n_agents, critic_hidden)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)

    @torch.no_grad()
    def sample_targets(self, seq: JointSequences) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets for every agent at t+1 and their log-probs under the current oracle."""
        dist = self.policy.sequence_dist(seq)
        targets = dist.sample()
        return targets, self.policy.log_prob(dist, targets)

    def values(self, critic: OracleCritic, seq: JointSequences) -> tuple[torch.Tensor, torch.Tensor]:
        """V(s_t, id) [C, L] and V(s_T, id) [C]; the id is the adversary's ("attacked")."""
        v = critic(seq.state, seq.attacked)
        v_final = critic(seq.final_state, seq.attacked[:, 0])
        return v, v_final

    @torch.no_grad()
    def soft_update(self, tau: float) -> None:
        for tp, p in zip(self.target_critic.parameters(), self.critic.parameters(), strict=True):
            tp.mul_(1.0 - tau).add_(tau * p)


def oracle_advantage(
    oracle: TargetedOracle, seq: JointSequences, rewards: torch.Tensor, *, gamma: float, nstep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TD error [C, L] of the oracle's own critic, differentiable in the critic; the oracle's
    advantage [C, L], that error shifted one step earlier, since the target at t is about
    step t+1). Returns are n-step, bootstrapped from the target critic."""
    with torch.no_grad():
        v_tgt, v_tgt_final = oracle.values(oracle.target_critic, seq)
        returns = nstep_returns(
            rewards, v_tgt, v_tgt_final * seq.bootstrap, seq.valid, gamma=gamma, nstep=nstep
        )
    v, _ = oracle.values(oracle.critic, seq)
    td = (returns - v) * seq.valid
    return td, shift_one_step_earlier(td.detach(), seq.valid)


def train_oracle(
    oracle: TargetedOracle,
    policy_optimizer: torch.optim.Optimizer,
    critic_optimizer: torch.optim.Optimizer,
    seq: JointSequences,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    rewards: torch.Tensor,
    *,
    epochs: int,
    clip: float,
    gamma: float,
    nstep: int,
    tau: float,
    grad_clip: float,
) -> dict[str, float]:
    valid = seq.valid
    n_valid = valid.sum().clamp(min=1.0)
    weight = valid.unsqueeze(-1) * (1.0 - seq.attacked)  # victims' targets at real steps
    stats: dict[str, float] = {}
    for _ in range(epochs):
        td, adv = oracle_advantage(oracle, seq, rewards, gamma=gamma, nstep=nstep)
        critic_loss = (td**2).sum() / n_valid
        critic_optimizer.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(oracle.critic.parameters(), grad_clip)
        critic_optimizer.step()
        oracle.soft_update(tau)

        # PPO-clip on the targets with the shifted advantage, no entropy term.
        logp = oracle.policy.log_prob(oracle.policy.sequence_dist(seq), targets)
        policy_loss = clipped_surrogate_loss(logp, old_logp, adv.unsqueeze(-1), weight, clip)
        policy_optimizer.zero_grad()
        policy_loss.backward()
        nn.utils.clip_grad_norm_(oracle.policy.parameters(), grad_clip)
        policy_optimizer.step()
        stats = {"oracle_policy_loss": policy_loss.item(), "oracle_critic_loss": critic_loss.item()}
    return stats
