"""AMI's unilateral (targeted) influence of the adversary on the victims (Li et al., AMI §4.2).

The paper decomposes the mutual information between the adversary's action and the victims'
next actions into a majority and a minority term and keeps the minority ("unilateral") one.
The authors' code computes no mutual information: it measures how far the MAA's prediction of
each victim's next action, averaged over K counterfactual adversary actions drawn from the
adversary's CURRENT policy, lies from the oracle's target. We follow the code (DESIGN.md):

  discrete:    ã_k ~ hard Gumbel-softmax(π_adv(·|o_t)),  k = 1..K
               p̄_j = 1/K Σ_k onehot(argmax MAA_j(s_t, ã_k, a_−adv,t))
               s_t = Σ_{victims j in sight} ‖p̄_j − onehot(target_j,t+1)‖₁
  continuous:  ã_k ~ N(μ_adv, σ_adv)
               l_t = Σ_{victims j in sight} Σ_dims 1/K Σ_k N(target_j,t+1 | MAA_j(s_t, ã_k, a_−adv,t))

The adversary's slot is replaced at every step of the sequence, so the MAA's GRU runs along
the counterfactual history, as in the authors' code. s_t depends on the adversary's policy,
not on the action it took. Without sight information, the authors' code counts every agent
but agent 0 (it zeroes slot 0, not the adversary's); we count every victim and never the
adversary, as DESIGN.md states it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adversaries.ami.maa import ActionModel
from adversaries.ami.sequences import JointSequences


def replace_adversary_slots(
    code: torch.Tensor, attacked: torch.Tensor, adversary_code: torch.Tensor
) -> torch.Tensor:
    """Put the adversary's action codes into its slots of the joint action code.

    code [..., n, c]; attacked [..., n] (1.0 at adversary ids); adversary_code [..., k, c],
    the k attacked agents in ascending id order (the attacker's action layout).
    """
    k = adversary_code.shape[-2]
    # Stable sort on −attacked puts the attacked ids first, in ascending order.
    ids = torch.argsort(-attacked, dim=-1, stable=True)[..., :k]
    index = ids.unsqueeze(-1).expand(*ids.shape, code.shape[-1])
    return code.scatter(-2, index, adversary_code.to(code.dtype))


def victims_in_sight(seq: JointSequences) -> torch.Tensor:
    """[C, L, n] weights: victims (adversary excluded) in the adversary's sight at real steps."""
    return seq.visible * (1.0 - seq.attacked) * seq.valid.unsqueeze(-1)


@torch.no_grad()
def unilateral_influence(
    maa: ActionModel,
    seq: JointSequences,
    adversary_logits: torch.Tensor,
    targets: torch.Tensor,
    samples: int = 10,
) -> torch.Tensor:
    """s_t [C, L] (discrete branch). adversary_logits [C, L, k, A]: the current adversary
    policy's (masked) logits at each step; targets [C, L, n]: the oracle's target actions
    for t+1."""
    n_actions = maa.code_dim
    code = maa.encode(seq.joint_action)  # [C, L, n, A]
    reps = seq.repeat(samples)  # [K·C, ...], chunk-major per sample
    logits = adversary_logits.repeat(samples, 1, 1, 1)
    a_tilde = F.gumbel_softmax(logits, hard=True, dim=-1)  # K hard one-hot draws
    cf_code = replace_adversary_slots(code.repeat(samples, 1, 1, 1), reps.attacked, a_tilde)
    pred = maa.sequence_dist(reps, cf_code).logits.argmax(-1)  # [K·C, L, n]
    p_bar = F.one_hot(pred, n_actions).float()
    p_bar = p_bar.reshape(samples, *code.shape).mean(0)  # [C, L, n, A]
    dist = (p_bar - F.one_hot(targets.long(), n_actions).float()).abs().sum(-1)
    return (dist * victims_in_sight(seq)).sum(-1)


@torch.no_grad()
def target_likelihood(
    maa: ActionModel,
    seq: JointSequences,
    adversary_mean: torch.Tensor,
    adversary_std: torch.Tensor,
    targets: torch.Tensor,
    samples: int = 10,
) -> torch.Tensor:
    """l_t [C, L] (continuous branch): the density of the oracle's targets [C, L, n, c] under
    the MAA's counterfactual predictions, averaged over K adversary actions, summed over the
    victims in sight and the action dimensions. adversary_mean/std [C, L, k, c]."""
    code = maa.encode(seq.joint_action)
    reps = seq.repeat(samples)
    mean = adversary_mean.repeat(samples, 1, 1, 1)
    a_tilde = mean + adversary_std.repeat(samples, 1, 1, 1) * torch.randn_like(mean)
    cf_code = replace_adversary_slots(code.repeat(samples, 1, 1, 1), reps.attacked, a_tilde)
    dist = maa.sequence_dist(reps, cf_code)  # Normal, [K·C, L, n, c]
    density = dist.log_prob(targets.float().repeat(samples, 1, 1, 1)).exp()
    density = density.reshape(samples, *code.shape).mean(0).sum(-1)  # [C, L, n]
    return (density * victims_in_sight(seq)).sum(-1)
