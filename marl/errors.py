"""Errors that the CLI reports as one ``error: ...`` line."""


class UserError(Exception):
    """Bad input from the user (config, CLI, files): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A config that does not compose or validate."""


class TrainingDiverged(Exception):
    """A non-finite loss or weight: the run stops and keeps its last good checkpoint."""

    exit_code = 1


class BuildFailed(Exception):
    """RLlib could not build the algorithm (an env that raises or fails RLlib's checks):
    exit code 1, and the new run directory is removed."""

    exit_code = 1
