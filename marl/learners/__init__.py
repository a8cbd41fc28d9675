"""PPO-family Learners that work per agent on a team's joint policy."""

from marl.learners.gae import TeamGAE
from marl.learners.joint_ppo import JointPPOLearner

__all__ = ["JointPPOLearner", "TeamGAE"]
