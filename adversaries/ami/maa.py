"""AMI's victims' action model (MAA): predicts every agent's action at t+1 (Li et al., AMI §4).

Input [s_t, a_t]: the global state and the whole team's executed joint action (one-hot for
discrete actions, raw for continuous ones), attacker slots included. The network is
FC(hidden) → ReLU → GRUCell(hidden) → FC(n·|A|), a softmax per agent masked by the actions
available at t+1 (the authors' SMAC branch). The continuous variant (their MaMuJoCo branch) is
an MLP with an optional GRU and a diagonal Gaussian head over the n·c action dimensions, with
a learned state-independent log-std as in MAPPO's DiagGaussian.

The MAA learns only from what the attacker observes (black-box): states and executed joint
actions. It is trained by the negative log-likelihood of the victims' actions at t+1 (the
cross-entropy for discrete actions), the attacker's own slots masked out, ``maa_epochs`` full
passes over each batch with Adam.

The same network, with its own weights, is the targeted oracle (``oracle.py``).

Two details of the authors' SMAC code we do not copy: it feeds the MAA's softmax
probabilities to ``cross_entropy`` (which expects logits, so it applies a second softmax), and
it can add an entropy regulariser to the MAA loss (its coefficient's default is not in the
sources we read). We take the cross-entropy on the logits, without the regulariser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from adversaries.ami.sequences import JointSequences

MASKED_LOGIT = -1e9


class ActionModel(nn.Module):
    """[s_t, a_t] → a distribution over every agent's action at t+1, run along sequences.

    Discrete: ``n_actions`` = |A|; returns a ``Categorical`` with batch shape [C, L, n].
    Continuous: ``action_dim`` = c; returns ``Normal`` with batch shape [C, L, n, c].
    """

    def __init__(
        self,
        state_dim: int,
        n_agents: int,
        *,
        n_actions: int | None = None,
        action_dim: int | None = None,
        hidden: int = 64,
        recurrent: bool = True,
    ):
        super().__init__()
        if (n_actions is None) == (action_dim is None):
            raise ValueError("give exactly one of n_actions (discrete) and action_dim")
        self.discrete = n_actions is not None
        self.n = n_agents
        self.code_dim = n_actions if self.discrete else action_dim  # per agent, in and out
        self.fc_in = nn.Linear(state_dim + n_agents * self.code_dim, hidden)
        self.recurrent = recurrent
        # GRUCell (SMAC branch); without it, a second FC layer (the MaMuJoCo branch's MLP).
        self.core = nn.GRUCell(hidden, hidden) if recurrent else nn.Linear(hidden, hidden)
        self.fc_out = nn.Linear(hidden, n_agents * self.code_dim)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(n_agents, self.code_dim))

    def encode(self, joint_action: torch.Tensor) -> torch.Tensor:
        """Executed joint action → per-agent input code [..., n, code_dim]."""
        if self.discrete:
            return F.one_hot(joint_action.long(), self.code_dim).float()
        return joint_action.float()

    def forward(
        self,
        state: torch.Tensor,
        action_code: torch.Tensor,
        next_mask: torch.Tensor | None = None,
    ) -> Distribution:
        """state [C, L, S], action_code [C, L, n, code_dim], next_mask [C, L, n, A] (discrete).

        The GRU starts from zeros at step 0 of every sequence and runs along L.
        """
        c, length = state.shape[:2]
        x = torch.cat([state, action_code.reshape(c, length, -1)], dim=-1)
        x = F.relu(self.fc_in(x))
        if self.recurrent:
            h = x.new_zeros(c, x.shape[-1])
            outs = []
            for t in range(length):
                h = self.core(x[:, t], h)
                outs.append(h)
            x = torch.stack(outs, dim=1)
        else:
            x = F.relu(self.core(x))
        out = self.fc_out(x).reshape(c, length, self.n, self.code_dim)
        if self.discrete:
            if next_mask is not None:
                # An agent with no legal action recorded (e.g. padding) keeps all logits.
                legal = next_mask > 0.5
                legal = legal | ~legal.any(-1, keepdim=True)
                out = out.masked_fill(~legal, MASKED_LOGIT)
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp().expand_as(out))

    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        """Per-agent log-probability [C, L, n] (continuous: summed over action dimensions)."""
        if self.discrete:
            return dist.log_prob(actions.long())
        return Independent(dist, 1).log_prob(actions.float())

    def sequence_dist(self, seq: JointSequences, action_code: torch.Tensor | None = None):
        """The model's prediction along ``seq``; ``action_code`` overrides the executed a_t."""
        code = self.encode(seq.joint_action) if action_code is None else action_code
        return self(seq.state, code, seq.next_mask if self.discrete else None)


def maa_loss(maa: ActionModel, seq: JointSequences) -> torch.Tensor:
    """NLL of the victims' actions at t+1 (cross-entropy when discrete), adversary slots and
    steps without a recorded next action masked out."""
    nll = -maa.log_prob(maa.sequence_dist(seq), seq.next_action)  # [C, L, n]
    weight = seq.has_next.unsqueeze(-1) * (1.0 - seq.attacked)
    return (nll * weight).sum() / weight.sum().clamp(min=1.0)


def maa_accuracy(maa: ActionModel, seq: JointSequences) -> torch.Tensor:
    """Share of victims' next actions the MAA's most likely action matches (discrete)."""
    with torch.no_grad():
        pred = maa.sequence_dist(seq).logits.argmax(-1)
        hit = (pred == seq.next_action.long()).float()
        weight = seq.has_next.unsqueeze(-1) * (1.0 - seq.attacked)
        return (hit * weight).sum() / weight.sum().clamp(min=1.0)


def train_maa(
    maa: ActionModel,
    optimizer: torch.optim.Optimizer,
    seq: JointSequences,
    *,
    epochs: int,
    grad_clip: float,
) -> dict[str, float]:
    """``epochs`` full-batch Adam steps on ``maa_loss`` (the authors' 4 epochs per batch)."""
    first = last = 0.0
    for epoch in range(epochs):
        loss = maa_loss(maa, seq)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(maa.parameters(), grad_clip)
        optimizer.step()
        if epoch == 0:
            first = loss.item()
        last = loss.item()
    stats = {"maa_loss_first": first, "maa_loss": last}
    if maa.discrete:
        stats["maa_accuracy"] = float(maa_accuracy(maa, seq))
    return stats
