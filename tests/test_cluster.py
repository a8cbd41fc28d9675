"""A real Ray head on 127.0.0.1 with token authentication (issue 11, parts 1 and 3; issue 13,
part 5): jobs submitted, followed, stopped and fetched through `run.py submit` / `run.py jobs`;
a plain run beside the head on a private Ray instance, and `--address` joining it; a missing
or wrong token ends in one `error:` line with exit code 2.

The head runs in its own process group under its own RAY_TMPDIR (its `ray_current_cluster`
pointer and sessions), with free ports, and only that group is ended. The clients run with an
empty HOME (no ~/.ray/auth_token of the machine) and get the token only where a test gives it."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
TINY = [
    "configs/env/coordination3.yaml", "train.total_env_steps=400", "algo.train_batch_size=200",
    "algo.minibatch_size=100", "train.progress=log",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Head:
    def __init__(self, base: Path):
        self.base, self.token = base, secrets.token_hex(32)
        self.gcs_port, dash, client, agent = _free_ports(4)
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.home = base / "home"
        self.home.mkdir()
        self.storage = base / "storage"
        # The clients' environment: no token, no cluster address, this head's temp dir.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))}
        self.env.update(HOME=str(self.home), RAY_TMPDIR=str(base / "t"),
                        PATH=f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        head_env = {**self.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.log = open(base / "head.log", "w")
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", f"--port={self.gcs_port}", "--num-cpus=2",
             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             "--disable-usage-stats"],
            env=head_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base,
        )

    def wait_ready(self, timeout_s: float = 180) -> None:
        """The job API answers (its agent on the head is up)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            assert self.proc.poll() is None, (self.base / "head.log").read_text()[-3000:]
            req = urllib.request.Request(f"{self.dashboard}/api/jobs/",
                                         headers={"authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        json.loads(r.read())
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError((self.base / "head.log").read_text()[-3000:])

    def stop(self) -> None:
        """SIGTERM to the head's process group, SIGKILL after 10 s (`ray start --block` ignores
        SIGTERM while its children stop). Only this group: Ray's own stop command would end every
        Ray process of the user on the machine."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait
            while time.monotonic() < end and _group_alive(self.proc.pid):
                time.sleep(0.5)
            if not _group_alive(self.proc.pid):
                break
        self.proc.wait(timeout=10)
        self.log.close()

    def drivers(self) -> set[int]:
        """PIDs of the drivers that ever connected to the head (Ray's job table)."""
        req = urllib.request.Request(f"{self.dashboard}/api/jobs/", headers={"authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            jobs = json.loads(r.read())
        return {int(j["driver_info"]["pid"]) for j in jobs if j.get("driver_info") and j["type"] == "DRIVER"}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies of the group still count for killpg(0); a group of zombies is done.
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not s.startswith("Z") for s in out)


@pytest.fixture(scope="module")
def head():  # only the slow tests use it
    base = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's unix sockets live under it
    h = Head(base)
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()
        shutil.rmtree(base, ignore_errors=True)  # sessions and the ray_current_cluster pointer


def cli(head: Head, *args, token: str | None = None, timeout=600, **popen):
    env = dict(head.env)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def wait_status(head: Head, job: str, want: set[str], timeout_s=300) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        proc = cli(head, "jobs", "status", job, "--address", head.dashboard, token=head.token)
        assert proc.returncode == 0, proc.stderr
        status = proc.stdout.splitlines()[0].split(": ", 1)[1]
        if status in want:
            return proc.stdout
        time.sleep(2)
    raise TimeoutError(f"{job} never reached {want}")


def submit(head: Head, *args) -> str:
    proc = cli(head, "submit", *args, "--address", head.dashboard, "--no-pip",
               "--storage", str(head.storage), token=head.token)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_submit_train_follow_and_fetch_the_run_directory(head, tmp_path):
    job = submit(head, "train", *TINY, "seed=3")
    assert job.startswith("raysubmit_")
    # --follow prints the job's output as it comes and returns when the job ends.
    followed = cli(head, "jobs", "logs", job, "--follow", "--address", head.dashboard, token=head.token)
    assert followed.returncode == 0, followed.stderr[-3000:]
    out = cli(head, "jobs", "status", job, "--address", head.dashboard, token=head.token).stdout
    assert out.splitlines() == [f"{job}: SUCCEEDED"], out
    logs = cli(head, "jobs", "logs", job, "--address", head.dashboard, token=head.token)
    assert logs.returncode == 0 and logs.stdout.strip() == followed.stdout.strip()
    assert re.search(r"^iter +2 +env_steps +4\d\d/400", logs.stdout, re.M), logs.stdout[-3000:]  # the run's own lines (train.progress=log)
    [marker] = [ln for ln in logs.stdout.splitlines() if ln.startswith("marl-job-output:")]
    assert logs.stdout.strip().splitlines()[-1] == marker
    remote = Path(marker.split(": ", 1)[1])
    assert remote.parent == (head.storage / "runs").resolve()  # on the cluster's storage
    listed = cli(head, "jobs", "list", "--address", head.dashboard, token=head.token)
    assert any(ln.startswith(f"{job}  SUCCEEDED") for ln in listed.stdout.splitlines()), listed.stdout

    fetched = cli(head, "jobs", "fetch", job, str(tmp_path / "back"), "--address", head.dashboard, token=head.token)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    local = Path(fetched.stdout.strip().splitlines()[-1])
    assert local == tmp_path / "back" / remote.name
    rows = [json.loads(r) for r in (local / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["env_steps"] >= 400
    ckpts = sorted((local / "checkpoints").glob("iter_*"))
    assert ckpts and (ckpts[-1] / "teams" / "teams.json").is_file()
    assert (local / "config.yaml").read_text() == (remote / "config.yaml").read_text()
    # Fetching again into the same place overwrites nothing.
    again = cli(head, "jobs", "fetch", job, str(tmp_path / "back"), "--address", head.dashboard, token=head.token)
    assert again.returncode == 2 and error_lines(again.stderr) == [again.stderr.strip()]


@pytest.mark.slow
def test_failing_job_reports_its_own_error_line_and_its_run_directory_comes_back(head, tmp_path):
    # An env that raises at its 250th step, and no env fault allowed: the run stops after its
    # first checkpoint with its one line, as it does locally (README, "When things fail").
    job = submit(head, "train", *TINY, "env.import=tests.toy_envs:flaky_env", "env.kwargs={fail_at: 250}",
                 "runners.max_env_faults=0", "runners.num_envs_per_env_runner=1", "train.checkpoint_every=1")
    out = wait_status(head, job, {"SUCCEEDED", "FAILED", "STOPPED"})
    first, *rest = out.splitlines()
    assert first == f"{job}: FAILED"
    [line] = rest
    assert line.startswith("error: env 'tests.toy_envs:flaky_env' failed 1 times in this run"), line
    assert "simulator connection lost" in line and "the last good checkpoint is 'runs/" in line
    fetched = cli(head, "jobs", "fetch", job, str(tmp_path), "--address", head.dashboard, token=head.token)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    local = Path(fetched.stdout.strip().splitlines()[-1])
    assert [json.loads(r)["iteration"] for r in (local / "metrics.jsonl").read_text().splitlines()] == [1]
    assert [c.name for c in (local / "checkpoints").iterdir()] == ["iter_000001"]


@pytest.mark.slow
def test_stop_a_running_job(head):
    job = submit(head, "train", *TINY, "train.total_env_steps=10000000")
    wait_status(head, job, {"RUNNING"})
    proc = cli(head, "jobs", "stop", job, "--address", head.dashboard, token=head.token)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{job}: STOPPED"


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_missing_or_wrong_token_is_one_line_exit_2(head, token):
    cases = [["jobs", "list", "--address", head.dashboard],
             ["train", *TINY, "--address", f"127.0.0.1:{head.gcs_port}"]]  # joining: the GCS port
    if token is None:
        cases.append(["submit", "train", *TINY, "--no-pip", "--address", head.dashboard])
        cases.append(["train", *TINY, "--address", "auto"])  # the head's pointer in RAY_TMPDIR
    env = dict(head.env, **({"RAY_AUTH_TOKEN": token} if token else {}))
    running = [(args, subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for args in cases]
    for args, p in running:  # side by side: each is mostly Python imports
        out, err = p.communicate(timeout=300)
        proc = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr[-2000:]  # no C++ log lines
        line = proc.stderr.strip()
        assert ("none was found" if token is None else "refused the authentication token from RAY_AUTH_TOKEN") in line
        assert "RAY_AUTH_TOKEN" in line and "~/.ray/auth_token" in line and "disable" not in line
        if "auto" in args:
            assert f":{head.gcs_port} requires an authentication token" in line


def _train(env: dict, *args) -> subprocess.Popen:
    """A tiny `run.py train`, started; its PID is the driver's."""
    return subprocess.Popen([sys.executable, "run.py", "train", *TINY, "train.total_env_steps=200", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_plain_run_beside_a_head_is_private_and_address_joins(head, tmp_path):
    # Without --address: a private instance, although `ray start` left its pointer in RAY_TMPDIR.
    plain = _train(head.env, f"output_dir={tmp_path}")
    # --address: joins the head (its driver is in the head's job table), with the token from
    # RAY_AUTH_TOKEN and no RAY_AUTH_MODE on the client. Both at once.
    joined = _train({**head.env, "RAY_AUTH_TOKEN": head.token}, f"output_dir={tmp_path}",
                    "--address", f"127.0.0.1:{head.gcs_port}")
    (out, err), (_, err_joined) = plain.communicate(timeout=600), joined.communicate(timeout=600)
    assert plain.returncode == 0, err[-3000:]
    assert joined.returncode == 0, err_joined[-3000:]
    assert Path(out.strip().splitlines()[-1]).parent == tmp_path
    drivers = head.drivers()
    assert plain.pid not in drivers and joined.pid in drivers


# ------------------------------------------------------------- without a cluster (fast)
def _main(capsys, *args) -> tuple[int, str]:
    from marl.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["submit", "frobnicate"], "unknown command 'frobnicate'; expected one of: train, resume"),
    (["submit", "train", "configs/nope.yaml"], "configs/nope.yaml"),
    (["submit", "train", *TINY, "algo.lr=fast"], "algo.lr"),
    (["submit", "attack", "runs/v"], "--adversary"),
    (["submit", "train", *TINY, "--num-cpus", "many"], "--num-cpus expects a number"),
    (["submit", "train", *TINY, "--extras", "nosuch"], "unknown extra(s) ['nosuch']"),
    (["submit", "train", *TINY], "no cluster given: pass --address http://HEAD:8265"),
    (["jobs", "list"], "no cluster given"),
    (["submit", "train", *TINY, "--storage", "results"], "--storage 'results' must be absolute or start with ~"),
])
def test_submit_checks_the_command_before_any_cluster(capsys, monkeypatch, tmp_path, args, says):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.chdir(ROOT)
    code, err = _main(capsys, *args)
    assert code == 2 and error_lines(err) == [err.strip()] and says in err, err


def test_submit_options_may_follow_the_command():
    from marl.cli import _parser, _submit_options

    args = _parser().parse_args(["submit", "--no-pip", "attack", "runs/v", "--adversary", "gleave",
                                 "--address=http://h:8265", "seed=1", "--storage", "/s", "--num-cpus", "2"])
    assert _submit_options(args) == ["runs/v", "--adversary", "gleave", "seed=1"]
    assert (args.address, args.storage, args.no_pip, args.num_cpus) == ("http://h:8265", "/s", True, 2.0)


def test_pinned_requirements_are_the_installed_versions():
    from importlib.metadata import version

    from marl.cluster import pinned_requirements

    pins = pinned_requirements(["mujoco", "cluster"])
    assert f"torch=={version('torch').split('+')[0]}" in pins
    assert "ray[default,rllib]==2.60.0" in pins  # one line per package, its extras merged
    assert f"mujoco=={version('mujoco')}" in pins and len(pins) == len({p.split('[')[0].split('=')[0] for p in pins})


def test_job_storage_link_and_output(tmp_path, monkeypatch):
    from marl import cluster
    from marl.errors import UserError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cluster.STORAGE_ENV, str(tmp_path / "store"))
    runs = cluster.prepare_job_storage()
    assert runs == tmp_path / "store" / "runs" and Path("runs").resolve() == runs
    assert cluster.prepare_job_storage() == runs  # a second job in the same working_dir
    (runs / "r1").mkdir()
    assert cluster.job_output(["runs/r1"], None) == runs / "r1"
    assert cluster.job_output(["}", "nope"], "error: ...; the traceback is in runs/r1/error.log; ...") == runs / "r1"
    monkeypatch.setenv(cluster.STORAGE_ENV, str(tmp_path / "other"))
    with pytest.raises(UserError, match="not a link to"):
        cluster.prepare_job_storage()


def test_a_damaged_fetch_is_refused():
    import base64
    import hashlib

    from marl import cluster
    from marl.errors import UserError

    data = b"x" * 1000
    text = base64.b64encode(data).decode()
    logs = f"noise\n{cluster.FETCH_BEGIN} {hashlib.sha256(data).hexdigest()} 1000\n{text}\n{cluster.FETCH_END}\n"
    assert cluster.decode_fetch(logs, "/r") == data
    with pytest.raises(UserError, match="damaged"):
        cluster.decode_fetch(logs.replace(text, base64.b64encode(b"y" * 1000).decode()), "/r")
