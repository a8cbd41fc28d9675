"""Errors that the CLI reports as one ``error: ...`` line."""


class UserError(Exception):
    """Bad input from the user (config, CLI, files): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A config that does not compose or validate."""


class RunStopped(Exception):
    """A run that stopped for a reason it can state in one line: exit code 1, no traceback
    on the terminal."""

    exit_code = 1


class TrainingDiverged(RunStopped):
    """A non-finite loss or weight: the run stops and keeps its last good checkpoint."""


class BuildFailed(RunStopped):
    """RLlib could not build the algorithm (an env that raises or fails RLlib's checks):
    exit code 1, and the new run directory is removed."""


class EnvFaultsExceeded(RunStopped):
    """More env faults (a sub-environment that raised and was recreated) than
    ``runners.max_env_faults_per_iteration`` in one iteration, or than
    ``runners.max_env_faults`` in the run: it stops and keeps its last good checkpoint."""


class EnvOutputNotFinite(RunStopped):
    """The env returned NaN or inf (``runners.nonfinite_env_output: error``)."""


class ClusterRequestFailed(RunStopped):
    """The Ray cluster failed a request that was well formed (e.g. no job agent on the head yet):
    exit code 1, one line."""


class RunCrashed(RunStopped):
    """An unexpected failure during a run: the traceback is in ``RUN_DIR/error.log``."""


def describe_exception(e: BaseException) -> str:
    """``Type: first line of the message``, for one-line reports."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
