"""Adversarial evaluation of trained teams: attack plugins, the attack env, `run.py attack`."""

from adversaries.base import ATTACKER, THREAT_MODELS, AdversaryPlugin, AttackContext
from adversaries.registry import REGISTRY, get_plugin, register

__all__ = ["ATTACKER", "REGISTRY", "THREAT_MODELS", "AdversaryPlugin", "AttackContext", "get_plugin", "register"]
