"""Fault tolerance (issue 13), with real RLlib runs: an env that raises once is recreated and its
episode dropped; one that keeps raising stops the run at the limit; NaN from the env stops the
run at the adapter, or ends the episode with the config switch; any other failure leaves its
traceback in RUN_DIR/error.log and one line with the resume command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import toy_envs

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "algo.train_batch_size=200",
    "algo.minibatch_size=100",
    "algo.num_epochs=1",
    "runners.num_envs_per_env_runner=1",
    "model.graph.mode=empty",
    "train.progress=log",
    "train.checkpoint_every=1",
]
pytestmark = pytest.mark.slow


def run_cli(*args, code: str | None = None, timeout=300):
    head = [sys.executable, "-c", code] if code else [sys.executable, "run.py"]
    return subprocess.run([*head, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


class SampledEpisodes:
    """Every episode chunk the EnvRunner hands to the learner, by the serial the counting
    envs put in each observation: serial -> [steps, truncated, any non-finite observation]."""

    def __init__(self):
        self.episodes: dict[int, list] = {}

    def __deepcopy__(self, memo):  # RLlib copies its config; the local EnvRunner calls this one
        return self

    def __call__(self, *, samples, **kwargs):
        for episode in samples:
            for sa in episode.agent_episodes.values():
                obs = np.asarray(sa.get_observations()["obs"])  # [T + 1, n, 2]
                for serial in np.unique(obs[..., 1]).astype(int):
                    rec = self.episodes.setdefault(int(serial), [0, False, False])
                    rec[0] += len(sa)
                    rec[1] |= bool(sa.is_truncated)
                    rec[2] |= not np.isfinite(obs).all()


def train_in_process(tmp_path: Path, overrides: list[str]):
    """A real run through the project's Trainer in this process (so a test can see the
    sampled episodes and the counting envs' class state)."""
    from marl.algorithms import build_algorithm_config
    from marl.config import load_config
    from marl.train import Trainer

    toy_envs.CountingEnv.steps_taken = 0
    toy_envs.FlakyEnv.broken = []
    toy_envs.NanObsEnv.tampered = []
    cfg = load_config("configs/mappo_simple_spread.yaml", [*TINY, f"output_dir={tmp_path}", *overrides])
    seen = SampledEpisodes()
    trainer = Trainer(cfg, tmp_path, build_config=lambda c: build_algorithm_config(c).callbacks(on_sample_end=seen))
    try:
        trainer.build()
        trainer.run()
    finally:
        trainer.stop()
    return trainer, seen


def test_env_that_raises_once_is_recreated_its_episode_dropped_and_the_run_finishes(tmp_path, capfd):
    trainer, seen = train_in_process(tmp_path, [
        "env.import=tests.toy_envs:flaky_env", "env.kwargs={fail_at: 250}", "train.total_env_steps=600",
    ])
    rows = read_metrics(tmp_path)
    assert trainer.state.env_steps >= 600 and [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["env_faults"] for r in rows] == [0, 1, 0]
    [broken] = toy_envs.FlakyEnv.broken
    # No batch holds a step of the broken episode; the one before it and those after it train.
    assert broken not in seen.episodes
    assert broken - 1 in seen.episodes and max(seen.episodes) > broken
    warnings = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1
    assert "env 'tests.toy_envs:flaky_env'" in warnings[0] and "RuntimeError: simulator connection lost" in warnings[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.value for e in events.Scalars("env_faults")] == [0, 1, 0]


@pytest.mark.parametrize("remote_runners", [0, 1], ids=["local_runner", "remote_runner"])
def test_env_that_always_raises_stops_at_the_limit_with_one_error_line_and_a_kept_checkpoint(tmp_path, remote_runners):
    # With a remote runner, RLlib restarts the runner that raised; the limit must still stop
    # the run, with the env's own exception in the line.
    proc = run_cli(
        "train", "configs/mappo_simple_spread.yaml", *TINY, "env.import=tests.toy_envs:flaky_env",
        "env.kwargs={fail_at: 250, always: true}", "train.total_env_steps=1000",
        "runners.max_env_faults_per_iteration=3", f"runners.num_env_runners={remote_runners}",
        f"output_dir={tmp_path}",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert line == proc.stderr.strip().splitlines()[-1]
    assert "env 'tests.toy_envs:flaky_env'" in line and "max_env_faults_per_iteration: 3" in line
    assert "RuntimeError: simulator connection lost" in line  # the env's own exception, the last
    run_dir = next(tmp_path.iterdir())
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["iter_000001"]
    assert f"'{run_dir / 'checkpoints' / 'iter_000001'}'" in line
    assert [r["iteration"] for r in read_metrics(run_dir)] == [1]


def test_nan_observation_stops_the_run_with_a_line_naming_env_agent_key_and_step(tmp_path):
    # In this process: the CLI prints this RunStopped as its one `error:` line, as it does for
    # the env that keeps raising above.
    from marl.errors import EnvOutputNotFinite

    with pytest.raises(EnvOutputNotFinite) as stop:
        train_in_process(tmp_path, [
            "env.import=tests.toy_envs:nan_obs_env", "env.kwargs={nan_at: 250}", "train.total_env_steps=1000",
        ])
    line = str(stop.value)
    assert "\n" not in line
    assert line.startswith("env 'tests.toy_envs:nan_obs_env' returned nan in agent 'agent_1's observation at step ")
    assert "(iteration 2); training stopped" in line and "nonfinite_env_output=end_episode" in line
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iter_000001"]
    assert f"'{tmp_path / 'checkpoints' / 'iter_000001'}'" in line


def test_with_the_switch_a_nan_observation_ends_its_episode_and_is_counted(tmp_path):
    trainer, seen = train_in_process(tmp_path, [
        "env.import=tests.toy_envs:nan_obs_env", "env.kwargs={nan_at: 250}", "train.total_env_steps=600",
        "runners.nonfinite_env_output=end_episode",
    ])
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["env_nonfinite"] for r in rows] == [0, 1, 0]
    assert all(np.isfinite(r["policy_loss"]) and np.isfinite(r["vf_loss"]) for r in rows)
    [cut] = toy_envs.NanObsEnv.tampered
    steps, truncated, nonfinite = seen.episodes[cut]
    assert 0 < steps < 10 and truncated  # ended at the NaN step (episodes last 10)
    assert not any(rec[2] for rec in seen.episodes.values())  # the learner saw zeros, no NaN


CRASH_ON_SECOND_CHECKPOINT = """
import sys
from marl import train
save = train.Trainer.save_checkpoint
def failing_save(self):
    if self.state.iteration >= 2:
        raise OSError(28, "No space left on device")
    return save(self)
train.Trainer.save_checkpoint = failing_save
from marl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_uncaught_failure_writes_error_log_and_one_line_with_the_resume_command(tmp_path):
    # A disk that fills up while the second checkpoint is written.
    proc = run_cli(
        "train", "configs/mappo_simple_spread.yaml", *TINY, "env.import=tests.toy_envs:flaky_env",
        "env.kwargs={fail_at: 100000}", "train.total_env_steps=600", f"output_dir={tmp_path}",
        code=CRASH_ON_SECOND_CHECKPOINT,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    run_dir = next(tmp_path.iterdir())
    [line] = error_lines(proc.stderr)
    assert line == proc.stderr.strip().splitlines()[-1]
    assert "OSError: [Errno 28] No space left on device" in line
    assert f"the traceback is in {run_dir / 'error.log'}" in line
    assert line.endswith(f"continue from its last checkpoint (iter_000001) with: run.py resume {run_dir}")
    log = (run_dir / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and "failing_save" in log and "No space left" in log
    # The command it names continues the run from that checkpoint to the end of its budget.
    resumed = run_cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["iteration"] for r in read_metrics(run_dir)] == [1, 2, 3]


def _env_runner_processes(pid: int) -> list:
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "FaultTolerantEnvRunner" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_remote_env_runner_killed_with_sigkill_is_restarted_and_the_run_finishes(tmp_path):
    total = 1600
    proc = subprocess.Popen(
        [sys.executable, "run.py", "train", "configs/mappo_simple_spread.yaml", *TINY,
         "env.import=tests.toy_envs:flaky_env", "env.kwargs={fail_at: 10000000}", "runners.num_env_runners=1",
         f"train.total_env_steps={total}", "train.checkpoint_every=100", f"output_dir={tmp_path}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 240
        killed = None
        while killed is None and time.time() < deadline and proc.poll() is None:
            rows = list(tmp_path.glob("*/metrics.jsonl"))
            if rows and len(rows[0].read_text().splitlines()) >= 2:  # mid-training
                runners = _env_runner_processes(proc.pid)
                if runners:
                    killed = runners[0].pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, err[-3000:]
    assert proc.returncode == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    rows = read_metrics(run_dir)
    assert rows[-1]["env_steps"] >= total
    assert sum(r["env_runners_lost"] for r in rows) >= 1
    assert "EnvRunner process(es) lost" in err
