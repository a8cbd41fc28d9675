"""``gap``: generalized adversarial policies under partial control (Liu, Chakraborty, Sun,
Huang, "Rethinking Adversarial Policies: A Generalized Attack Formulation and Provable
Defense in RL", ICLR 2024).

The attacker controls agent α only partly: at every step, with probability ε (the attack
budget, ``adversary.budget``), its action is executed; otherwise α's own frozen policy acts.
The policy in effect for α is the mixture (Liu et al. 2024, §3)

    π_α = (1 − ε)·π̂_α + ε·π̃,

so ε bounds the policy discrepancy, TV(π_α, π̂_α) = ε·TV(π̃, π̂_α) ≤ ε, and with it the shift of
the state distribution: ε is the stealth knob. The attacker minimises the victim's value under
the mixture, zero-sum: r_adv = −r_victim (the attack env pays it). α may be a member of the
victim team (cooperative) or the victim's opponent in a competitive env (``adversary.team``),
as in the paper. The attack env flips the coin (adversaries/attack_env.py) and, on the steps
it lands on the attacker, executes its action through the do(a_α) intervention of a takeover,
so α's children in a Bayesian-network team condition on it. ε = 1 is a takeover (Gleave et
al. 2020); ε = 0 leaves every rollout as it is without attack.

How the attacker learns from the steps it controlled and from those it did not. The attacker
is trained with the project's PPO learner (JointPPOLearner) on the attack env's zero-sum
reward. The env says, for each step, whether the attacker's sampled action ran (the
``executed`` info, carried into the batch by marl/learners/executed.py):

- On a step it controlled, the executed action was drawn from π̃_old, so the importance ratio
  π̃_new(a|o) / π̃_old(a|o) of the clipped surrogate (Schulman et al. 2017, eq. 7) is exact, and
  the advantage credits that action. Only these (step, agent) slots enter the surrogate.
- On a step that π̂_α played, the attacker's sampled action never reached the env: the return
  does not depend on it, so its score term ∇log π̃(a)·Â is noise with zero mean. The learner
  leaves it out of the surrogate (its ratio is set to exactly 1, with no gradient). The
  alternative, a ratio of the mixtures π_α,new / π_α,old for the action α executed, would be
  the likelihood ratio of the policy in effect, but it needs π̂_α's probabilities, which a
  black-box attacker never sees.
- The critic V(s) learns from every step, controlled or not: it estimates the victim-value
  under the mixed policy, the quantity the attacker minimises, and its GAE advantages on the
  controlled steps include the future steps π̂_α will play (Liu et al. 2024: the attacker's
  value is that of the mixture).
- The entropy bonus keeps every step (a property of π̃ at each visited state).

Averaged over the controlled slots (the surrogate divides by their number), the gradient
estimates E_{s∼d^{π_α}} E_{a∼π̃}[∇log π̃(a|s)·A^{π_α}(s, a)]: the policy gradient of the
mixture's return with respect to π̃ divided by ε, since ∇π_α = ε·∇π̃ (Sutton et al. 2000,
policy-gradient theorem, applied to π_α).
"""

from __future__ import annotations

from adversaries.base import AdversaryPlugin
from adversaries.registry import register


@register
class GeneralizedAdversarialPolicy(AdversaryPlugin):
    name = "gap"
    threat_model = "partial_control"
    white_box = False
    trains = True
    # No default: ε is the attack's defining knob (success and stealth both follow it), so
    # `adversary.budget` must be given, in [0, 1]; a run without it stops with exit code 2.
    default_budget = None
