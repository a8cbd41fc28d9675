"""Errors an environment raises when it cannot be built here, or returns what a learner cannot
use."""


class MissingDependency(RuntimeError):
    """An optional package or external program (e.g. StarCraft II) is not available."""


class NonFiniteOutput(ValueError):
    """The wrapped env returned NaN or inf in an observation, reward or state. Not an env fault
    to recover from by recreating the env: the same state would return it again."""
