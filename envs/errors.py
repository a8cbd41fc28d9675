"""Errors an environment raises when it cannot be built here."""


class MissingDependency(RuntimeError):
    """An optional package or external program (e.g. StarCraft II) is not available."""
