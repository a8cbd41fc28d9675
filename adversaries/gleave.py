"""``gleave``: adversarial policies (Gleave et al., ICLR 2020) in the cooperative setting.

The attacker is plain PPO on the zero-sum reward r_adv = −r_team, with no shaping: the
attack env pays it that reward, and the plugin keeps every default (the project's
JointPolicyModule over the attacked agents, JointPPOLearner).
"""

from __future__ import annotations

from adversaries.base import AdversaryPlugin
from adversaries.registry import register


@register
class Gleave(AdversaryPlugin):
    name = "gleave"
    threat_model = "takeover"
    white_box = False
    trains = True
