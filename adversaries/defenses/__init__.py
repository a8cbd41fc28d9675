"""Training-time defenses (marl/defenses.py is the hook): importing this package registers
the built-in ones."""

from adversaries.defenses import adversarial_training  # noqa: F401  (registers it)
