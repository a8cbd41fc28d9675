"""Ray clusters: joining one with token authentication, and Ray Jobs (submit, follow, fetch).

Authentication stays on. Ray 2.60 clients send a cluster's token only when ``RAY_AUTH_MODE=token``
is set in their own process, except ``ray.init(address="auto")``. Here the token is read with
Ray's own loader from the same places Ray reads it (``RAY_AUTH_TOKEN``, else the file named by
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) and is sent whenever one exists. A cluster
without authentication ignores it. A missing or refused token becomes one ``UserError`` line
that says where to put it, before Ray's C++ client retries it for 20 s on the terminal.

Jobs (README, "Run on a cluster"): a submitted command runs as ``python run.py <command> ...``
in the project uploaded as the job's ``working_dir``. Its ``runs/`` is the cluster storage
directory (``STORAGE_ENV``; see ``prepare_job_storage``), so results outlive the job's temporary
working directory. At its end the job prints ``OUTPUT_MARKER <absolute path>`` (the run directory
or report it made). ``fetch`` reads that line from the job's logs and copies the directory back
through Ray itself: a small fetch job packs it on the node where the job ran
(``marl/cluster_fetch_job.py``) and prints it into its own logs, which the client downloads over
the same authenticated HTTP API. No shared filesystem is assumed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marl.errors import ClusterRequestFailed, UserError, describe_exception

ROOT = Path(__file__).resolve().parent.parent  # the project: the jobs' working_dir
STORAGE_ENV = "MARL_JOB_STORAGE"  # set in a submitted job's runtime_env: the cluster storage
DEFAULT_STORAGE = "~/marl-runs"  # on the node that runs the job (Ray Tune's ~/ray_results idea)
OUTPUT_MARKER = "marl-job-output:"
FETCH_BEGIN, FETCH_END = "marl-fetch-begin", "marl-fetch-end"
FETCH_LIMIT_BYTES = 256 * 2**20  # a run directory that large belongs on shared storage
# Never uploaded with a job: environments, VCS data, local results, caches (Ray: at most ~500 MiB).
EXCLUDES = [
    ".git", ".venv", "venv", "runs", "benchmarks/results", "build", "tmp", "**/__pycache__",
    "*.egg-info", ".pytest_cache", ".ruff_cache", "MUJOCO_LOG.TXT",
]
TOKEN_HELP = (
    "give the client the cluster's token (on the head: `ray get-auth-token`) in RAY_AUTH_TOKEN, "
    "in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token"
)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# ------------------------------------------------------------------------ the token
def _token_loader():
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since Ray first read it
    return loader


def token_source() -> str | None:
    """Where Ray's loader takes the token from, in its order, or None without one."""
    from ray.exceptions import AuthenticationError

    try:
        if not _token_loader().has_token(ignore_auth_mode=True):
            return None
    except AuthenticationError:  # RAY_AUTH_TOKEN_PATH names a file that cannot be read
        raise UserError(
            f"RAY_AUTH_TOKEN_PATH names '{os.environ.get('RAY_AUTH_TOKEN_PATH')}', which cannot be "
            f"read or is empty; {TOKEN_HELP}"
        ) from None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def auth_headers() -> dict[str, str]:
    """``{"authorization": "Bearer <token>"}`` where a token exists, whatever RAY_AUTH_MODE says."""
    if token_source() is None:
        return {}
    return dict(_token_loader().get_token_for_http_header(ignore_auth_mode=True))


def _enable_token_auth_if_available() -> None:
    """Send the token on Ray's gRPC connections too: ``RAY_AUTH_MODE=token`` where a token exists
    and the user did not choose a mode (what ``ray.init(address="auto")`` does by itself)."""
    if "RAY_AUTH_MODE" in os.environ or token_source() is None:
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"  # also inherited by the processes this one starts
    Config.initialize("")  # Ray's config caches the mode: re-read it (as ray.init does)


def _token_error(where: str, refused: bool) -> UserError:
    source = token_source()
    if refused and source is not None:
        return UserError(f"{where} refused the authentication token from {source}; {TOKEN_HELP}")
    return UserError(f"{where} requires an authentication token and none was found; {TOKEN_HELP}")


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Ray's C++ client logs each refused attempt on file descriptor 2: keep it off the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_ray_logs() -> None:
    """Importing Ray sets its loggers to INFO again: keep them to errors on the terminal."""
    for name in ("ray", "ray.dashboard", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)


def check_joinable(address: str) -> None:
    """Before ``ray.init(address=...)``: the cluster answers and accepts this client's token.
    Otherwise one ``UserError`` (exit 2) instead of Ray's 20 s of retries and a bare
    ``ConnectionError``."""
    if address.startswith("ray://"):  # Ray Client: its server checks the token itself
        return
    from ray._private import services
    from ray.exceptions import AuthenticationError

    _quiet_ray_logs()  # e.g. "Found multiple active Ray instances" for "auto"
    _enable_token_auth_if_available()
    what = f"--address/RAY_ADDRESS '{address}'"
    try:
        gcs = services.canonicalize_bootstrap_address(address)
    except ConnectionError as e:  # "auto" with no cluster on this machine
        raise UserError(f"{what}: {describe_exception(e)}; start one with `ray start --head`") from None
    if not gcs or ":" not in gcs:
        raise UserError(f"{what}: no running Ray cluster was found; start one with `ray start --head`")
    host, port = gcs.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise UserError(
            f"{what}: nothing answers at {gcs} ({describe_exception(e)}); start a head with "
            "`ray start --head`, or leave --address and RAY_ADDRESS unset to run on a private "
            "local Ray instance"
        ) from None
    from ray._raylet import GcsClient

    try:
        with _quiet_fd2():
            GcsClient(address=gcs)
    except AuthenticationError:
        raise _token_error(f"the Ray cluster at {gcs}", refused=True) from None
    except Exception as e:  # left to ray.init, which reports it in its own words
        del e


# --------------------------------------------------------------------- job client
def dashboard_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS (as `ray job` reads it): the head's dashboard."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise UserError(
            "no cluster given: pass --address http://HEAD:8265 (the head's dashboard address) or "
            "set RAY_API_SERVER_ADDRESS"
        )
    return address if "://" in address else f"http://{address}"


class Cluster:
    """Ray's ``JobSubmissionClient`` with the token sent and its failures as one line."""

    def __init__(self, address: str | None):
        self.address = dashboard_address(address)
        headers = auth_headers()
        from ray.job_submission import JobSubmissionClient

        _quiet_ray_logs()  # its upload chatter (INFO)
        with self.errors():
            self.client = JobSubmissionClient(self.address, headers=headers)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as e:
            raise _token_error(f"the Ray cluster at {self.address}", refused="Invalid" in str(e)) from None
        except ConnectionError as e:
            raise UserError(
                f"--address '{self.address}': no Ray dashboard answers there ({describe_exception(e)}); "
                "start a head with `ray start --head` and pass its dashboard address "
                "(http://HEAD:8265)"
            ) from None
        except RuntimeError as e:  # "Request failed with status code 500: ..."
            raise ClusterRequestFailed(f"the Ray cluster at {self.address}: {describe_exception(e)}") from None

    def info(self, job_id: str):
        with self.errors():
            try:
                return self.client.get_job_info(job_id)
            except RuntimeError as e:
                if "404" in str(e) or "does not exist" in str(e):
                    raise UserError(f"no job '{job_id}' on the cluster at {self.address}; see `run.py jobs list`") from None
                raise

    def logs(self, job_id: str) -> str:
        self.info(job_id)
        with self.errors():
            return self.client.get_job_logs(job_id)

    def follow(self, job_id: str) -> None:
        """Print the job's logs as they come, until it ends."""
        import asyncio

        self.info(job_id)

        async def tail():
            async for chunk in self.client.tail_job_logs(job_id):
                print(chunk, end="", flush=True)

        with self.errors():
            asyncio.run(tail())

    def jobs(self) -> list:
        with self.errors():
            return [j for j in self.client.list_jobs() if j.submission_id]

    def stop(self, job_id: str, timeout_s: float = 60) -> str:
        info = self.info(job_id)
        if str(info.status) in TERMINAL:
            return str(info.status)
        with self.errors():
            self.client.stop_job(job_id)
        return self.wait(job_id, timeout_s)

    def wait(self, job_id: str, timeout_s: float) -> str:
        end = time.monotonic() + timeout_s
        while True:
            status = str(self.info(job_id).status)
            if status in TERMINAL or time.monotonic() > end:
                return status
            time.sleep(1)

    def submit(self, entrypoint: str, runtime_env: dict, metadata: dict[str, str],
               num_cpus: float | None = None, num_gpus: float | None = None) -> str:
        with self.errors():
            return self.client.submit_job(
                entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus,
            )


# --------------------------------------------------------------------- submitting
def pinned_requirements(extras: list[str], root: Path = ROOT) -> list[str]:
    """The project's requirements (pyproject.toml: dependencies and the named extras), each
    pinned to the version installed here where it is installed, so the job runs what runs
    locally; a requirement not installed here keeps its range."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise UserError(f"--extras: unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    specs = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    pinned: dict[str, str] = {}
    for spec in specs:
        req = Requirement(spec)
        try:
            version = Version(metadata.version(req.name)).public  # no local tag such as +cpu
        except metadata.PackageNotFoundError:
            pinned.setdefault(req.name.lower(), str(req))
            continue
        names = sorted(req.extras | set(Requirement(pinned.get(req.name.lower(), req.name)).extras))
        extra = f"[{','.join(names)}]" if names else ""
        pinned[req.name.lower()] = f"{req.name}{extra}=={version}"
    return list(pinned.values())


def job_runtime_env(storage: str, pip: bool, extras: list[str]) -> dict[str, Any]:
    env: dict[str, Any] = {
        "working_dir": str(ROOT),
        "excludes": EXCLUDES,
        "env_vars": {STORAGE_ENV: storage, "PYTHONUNBUFFERED": "1"},
    }
    if pip:
        env["pip"] = pinned_requirements(extras)
    return env


# ------------------------------------------------------------------- inside a job
def prepare_job_storage() -> Path | None:
    """In a submitted job (``STORAGE_ENV`` set): the working directory's ``runs/`` becomes a link
    to ``<storage>/runs``, so every command's default and relative output paths land on the
    cluster storage, and the job's inputs (configs, victims under runs/) resolve as they do
    locally. Returns the storage's runs directory, or None outside a job."""
    storage = os.environ.get(STORAGE_ENV)
    if not storage:
        return None
    runs = Path(os.path.expanduser(storage)).resolve() / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"job storage '{storage}': cannot create {runs} ({describe_exception(e)})") from None
    link = Path("runs")
    try:
        link.symlink_to(runs, target_is_directory=True)
    except FileExistsError:
        # Ray shares one unpacked working_dir among jobs of the same content: the link is there.
        if not (link.is_symlink() and link.resolve() == runs):
            raise UserError(
                f"job storage: '{link.resolve()}' already exists in the job's working directory "
                f"and is not a link to {runs}; submit with the storage the other jobs use"
            ) from None
    return runs


def job_output(named: list[str], error: str | None) -> Path | None:
    """The directory a job made: the first of the paths it named that exists (its command's
    last stdout line: a run directory, or a file in one such as report.md; the run directory it
    announced), else the run directory its ``error:`` line names (error.log)."""
    candidates = list(named) + (re.findall(r"(\S+)/error\.log", error) if error else [])
    for text in candidates:
        path = Path(text.strip())
        if text.strip() and path.exists():
            return (path if path.is_dir() else path.parent).resolve()
    return None


# ------------------------------------------------------------------- reading logs
def error_line(logs: str) -> str | None:
    """The job's own one-line ``error: ...`` (the last one)."""
    lines = [ln for ln in logs.splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else None


def output_path(logs: str) -> str | None:
    lines = [ln for ln in logs.splitlines() if ln.startswith(OUTPUT_MARKER)]
    return lines[-1][len(OUTPUT_MARKER):].strip() if lines else None


# ------------------------------------------------------------------------ fetching
def fetch(cluster: Cluster, job_id: str, dest: Path, timeout_s: float = 600) -> Path:
    """Copy a finished job's output directory into ``dest/<its name>``; returns that path."""
    info = cluster.info(job_id)
    status = str(info.status)
    if status not in TERMINAL:
        raise UserError(
            f"job '{job_id}' is {status}; fetch it when it has finished (follow it with "
            f"`run.py jobs logs {job_id} --follow`)"
        )
    remote = output_path(cluster.logs(job_id))
    if remote is None:
        raise UserError(f"job '{job_id}' ({status}) named no run directory in its logs: it ended before making one")
    target = dest / Path(remote).name
    if target.exists():
        raise UserError(f"'{target}' already exists; choose another DEST (nothing was overwritten)")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"DEST '{dest}' is not a directory")
    data = _fetch_bytes(cluster, remote, getattr(info, "driver_node_id", None), timeout_s)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")  # refuses absolute paths, links out, devices
        os.replace(tmp / Path(remote).name, target)
    except (tarfile.TarError, OSError) as e:  # e.g. a link that points out of the run directory
        raise UserError(f"cannot fetch '{remote}': its archive cannot be unpacked safely ({e}); nothing was kept") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fetch_bytes(cluster: Cluster, remote: str, node_id: str | None, timeout_s: float) -> bytes:
    """Run marl/cluster_fetch_job.py on the cluster and read the packed directory from its logs."""
    script = Path(__file__).with_name("cluster_fetch_job.py")
    with tempfile.TemporaryDirectory() as wd:
        shutil.copy(script, wd)
        args = [remote] + ([node_id] if node_id else [])
        job = cluster.submit(
            f"python {script.name} " + " ".join(_quote(a) for a in args),
            runtime_env={"working_dir": wd}, metadata={"marl": "fetch"},
        )
    try:
        status = cluster.wait(job, timeout_s)
        logs = cluster.logs(job)
        if status != "SUCCEEDED":
            why = error_line(logs) or f"the fetch job {job} ended {status}"
            raise UserError(f"cannot fetch '{remote}': {why.removeprefix('error: ')}")
        return decode_fetch(logs, remote)
    finally:
        with contextlib.suppress(Exception):
            if str(cluster.client.get_job_status(job)) not in TERMINAL:  # timed out: do not leave it running
                cluster.client.stop_job(job)
                cluster.wait(job, 30)
            cluster.client.delete_job(job)


def decode_fetch(logs: str, remote: str) -> bytes:
    lines = logs.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(FETCH_BEGIN))
        end = next(i for i in range(start, len(lines)) if lines[i].startswith(FETCH_END))
    except StopIteration:
        raise UserError(f"cannot fetch '{remote}': the fetch job's logs hold no archive") from None
    try:
        _, digest, size = lines[start].split()
        data = base64.b64decode("".join(lines[start + 1:end]))
        size = int(size)
    except (ValueError, binascii.Error):
        raise UserError(f"cannot fetch '{remote}': the archive arrived damaged (unreadable)") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise UserError(f"cannot fetch '{remote}': the archive arrived damaged (size or SHA-256 differ)")
    return data


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def job_entrypoint(argv: list[str]) -> str:
    import shlex

    return "python run.py " + " ".join(shlex.quote(a) for a in argv)
