"""RLlib modules of this project."""

from marl.modules.joint_policy import JointPolicyModule

__all__ = ["JointPolicyModule"]
