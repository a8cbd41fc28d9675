"""Adversary plugins (AMI, generalized adversarial policies, baselines) arrive here.

They use ``marl``'s public pieces only: a frozen team is loaded from a checkpoint with RLlib's
``RLModule.from_checkpoint`` and folded into the environment.
"""
