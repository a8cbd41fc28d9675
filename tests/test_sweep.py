"""`run.py sweep`: the grid, bad input, the summary's statistics, and (slow) a real 2 seeds x
2 learning rates sweep on Ray Tune that is killed after its first finished trial and resumed."""

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
from scipy import stats

from marl import sweep
from marl.cli import main
from marl.train import RUN_STATE, load_run

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/env/coordination3.yaml"
# Two iterations of 200 steps; 4 envs of 25-step episodes end episodes in every iteration, so a
# trial resumed after its first iteration still has a return at its second.
TINY = ["train.total_env_steps=400", "algo.train_batch_size=200", "algo.minibatch_size=100",
        "runners.num_envs_per_env_runner=4"]


def run_main(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------------------------- the grid
def test_grid_items_split_on_top_level_commas_and_single_values_are_overrides():
    assert sweep.split_values("[[0,1]],[[1,0]]") == ["[[0,1]]", "[[1,0]]"]
    assert sweep.split_values("a,'b,c',{x: 1, y: 2}") == ["a", "'b,c'", "{x: 1, y: 2}"]
    axes, overrides = sweep.parse_grid(["seed=0,1,2", "algo.lr=3e-4,5e-4", "train.total_env_steps=400",
                                        "model.graph.edges=[[0,1],[1,2]]"])
    assert axes == {"seed": ["0", "1", "2"], "algo.lr": ["3e-4", "5e-4"]}
    assert overrides == ["train.total_env_steps=400", "model.graph.edges=[[0,1],[1,2]]"]
    trials = sweep.expand(axes)
    assert [t.params for t in trials[:3]] == [{"seed": "0", "algo.lr": "3e-4"}, {"seed": "0", "algo.lr": "5e-4"},
                                              {"seed": "1", "algo.lr": "3e-4"}]
    assert len({t.name for t in trials}) == 6 and trials[0].name == "000_seed=0_algo.lr=3e-4"


def test_samples_add_a_seed_axis_from_the_configs_seed(tmp_path):
    plan, configs, _ = sweep.plan_sweep(CONFIG, ["seed=5", *TINY], ["algo.lr=3e-4,5e-4"], samples=2)
    assert plan.grid == {"algo.lr": ["3e-4", "5e-4"], "seed": ["5", "6"]}
    assert [(c.algo.lr, c.seed) for c in configs] == [(3e-4, 5), (3e-4, 6), (5e-4, 5), (5e-4, 6)]
    assert [t.params["seed"] for t in plan.trials] == ["5", "6", "5", "6"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--grid", "algo.lrr=1e-3,2e-3"], ["--grid point algo.lrr=1e-3", "unknown config key 'algo.lrr'"]),
        (["--grid", "seed=0,1", "algo.lr=fast,1e-3"], ["algo.lr=fast", "config key 'algo.lr'", "'fast'"]),
        (["--grid", "seed="], ["--grid item 'seed='", "empty value"]),
        (["--grid", "seed=0,,1"], ["'seed=0,,1'", "empty value"]),
        (["--grid", "seed=0,0"], ["'seed=0,0'", "'0' is listed twice"]),
        (["--grid", "seed"], ["--grid item 'seed'", "key.sub=v1,v2"]),
        (["--grid", "seed=0,1", "seed=2,3"], ["'seed' is given twice"]),
        (["--grid", "output_dir=a,b"], ["'output_dir' cannot be a grid axis"]),
        (["--grid", "seed=0,1", "--samples", "2"], ["--samples", "seed axis"]),
        (["--samples", "0"], ["--samples must be a positive integer (got 0)"]),
        (["--grid", "algo.lr=1e-3"], ["no axis with two or more values"]),
        (["--grid", "algo.minibatch_size=500,4000"], ["--grid point algo.minibatch_size=4000", "must not exceed"]),
        (["algo.lr=1e-3", "--grid", "algo.lr=1e-3,2e-3"], ["'algo.lr' is both a --grid axis and an override"]),
    ],
)
def test_bad_grid_exits_2_with_one_line_and_creates_nothing(capsys, tmp_path, args, expected):
    out = tmp_path / "sweep"
    code, lines = run_main(capsys, ["sweep", CONFIG, f"output_dir={tmp_path / 'runs'}", *args, "--out", str(out)])
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_resume_of_what_is_not_a_sweep_exits_2(capsys, tmp_path):
    (tmp_path / "not_a_sweep").mkdir()
    (tmp_path / "not_a_sweep" / "metrics.jsonl").write_text("{}\n")
    code, lines = run_main(capsys, ["sweep", "--resume", str(tmp_path / "not_a_sweep")])
    assert code == 2 and len(lines) == 1 and "is not a sweep directory: it has no sweep.json" in lines[0]
    assert sorted(p.name for p in (tmp_path / "not_a_sweep").iterdir()) == ["metrics.jsonl"]  # nothing added
    code, lines = run_main(capsys, ["sweep", "--resume", str(tmp_path / "nowhere")])
    assert code == 2 and len(lines) == 1 and f"sweep directory '{tmp_path / 'nowhere'}' does not exist" in lines[0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sweep.json").write_text("{not json")
    code, lines = run_main(capsys, ["sweep", "--summary", str(tmp_path / "bad")])
    assert code == 2 and len(lines) == 1 and "sweep.json' is not a valid sweep file" in lines[0]
    code, lines = run_main(capsys, ["sweep", "--resume", str(tmp_path / "bad"), "--grid", "seed=0,1"])
    assert code == 2 and len(lines) == 1 and "--resume SWEEP_DIR takes no config, --grid" in lines[0]


def test_out_that_is_not_empty_is_refused(capsys, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, lines = run_main(capsys, ["sweep", CONFIG, *TINY, "--grid", "seed=0,1", "--out", str(out)])
    assert code == 2 and len(lines) == 1 and f"--out '{out}' exists and is not an empty directory" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_a_trial_the_cluster_cannot_hold_is_refused_before_anything_is_made(tmp_path):
    # Tune would leave such a trial pending forever; Ray starts (a subprocess: its own Ray).
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "run.py", "sweep", CONFIG, *TINY, "runners.num_env_runners=64",
                           "--grid", "seed=0,1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: runners.num_env_runners: 64 remote EnvRunners") and "the Ray cluster has" in lines[0]
    assert not out.exists()


def test_a_sweep_that_is_running_is_not_run_twice(capsys, tmp_path):
    plan, configs, _ = sweep.plan_sweep(CONFIG, TINY, ["seed=0,1"], samples=1)
    out = sweep.create_sweep(plan, configs, tmp_path / "sweep")
    held = sweep._lock(out)  # as a running `run.py sweep` holds it
    try:
        code, lines = run_main(capsys, ["sweep", "--resume", str(out)])
    finally:
        held.close()
    assert code == 2 and len(lines) == 1 and f"sweep '{out}' is being run by another process" in lines[0]
    assert not (out / "tune").exists() and not any((out / "trials").iterdir())


# ------------------------------------------------------------------------------- the summary
def _write_trial(run_dir: Path, curve: list[tuple[int, float | None]], wins: list[float] | None, done: bool):
    """What a trial's run directory holds for the summary: metrics.jsonl and a checkpoint's
    run state (the data files the trainer writes; the summary reads nothing else)."""
    run_dir.mkdir(parents=True)
    rows = []
    for i, (steps, ret) in enumerate(curve):
        row = {"iteration": i + 1, "env_steps": steps, "episode_return_mean": ret}
        if wins is not None:
            row["win_rate"] = wins[i]
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ckpt = run_dir / "checkpoints" / f"iter_{len(rows):06d}"
    ckpt.mkdir(parents=True)
    (ckpt / RUN_STATE).write_text(json.dumps({"iteration": len(rows), "env_steps": curve[-1][0] if done else 200}))


def test_summary_statistics_per_configuration(tmp_path):
    plan, configs, _ = sweep.plan_sweep(CONFIG, TINY, ["algo.lr=3e-4,5e-4", "seed=0,1,2,3"], samples=1)
    out = sweep.create_sweep(plan, configs, tmp_path / "sweep")
    finals = {"3e-4": [10.0, 20.0, 30.0, 100.0], "5e-4": [1.0, 2.0, 3.0, 4.0]}
    for t in plan.trials:
        lr, seed = t.params["algo.lr"], int(t.params["seed"])
        wins = [0.5, finals[lr][seed] / 100] if lr == "3e-4" else None  # 3e-4: an env that reports wins
        last = None if (lr, seed) == ("5e-4", 2) else finals[lr][seed]  # no episode ended in it
        _write_trial(out / "trials" / t.name, [(200, None), (400, last)], wins,
                     done=(lr, seed) != ("5e-4", 3))  # one trial has not finished
    summary = sweep.write_summary(out, plan)
    wins, returns = summary["configurations"]
    assert wins["configuration"] == "algo.lr=3e-4" and wins["metric"] == "win_rate"
    assert wins["finals"] == [0.1, 0.2, 0.3, 1.0] and wins["seeds"] == [0, 1, 2, 3]
    assert wins["mean"] == pytest.approx(0.4)
    assert wins["iqm"] == pytest.approx(0.25)  # the middle two of four: (0.2 + 0.3) / 2
    lo, hi = wins["ci95"]
    assert 0.1 <= lo < 0.4 < hi <= 1.0
    assert returns["metric"] == "episode_return_mean" and returns["params"] == {"algo.lr": 5e-4}
    assert returns["finals"] == [1.0, 2.0] and returns["n"] == 2 and returns["seeds"] == [0, 1]
    assert returns["left_out"] == {plan.trials[-2].name: "no episode ended", plan.trials[-1].name: "not finished"}
    assert returns["mean"] == pytest.approx(1.5) and returns["iqm"] == pytest.approx(1.5)
    md = (out / "summary.md").read_text()
    assert "| algo.lr=3e-4 | win_rate | 4 | 0.4 [" in md
    assert "| algo.lr=5e-4 | episode_return_mean | 2 | 1.5 [" in md and "| 1 no episode ended, 1 not finished |" in md
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary


# ------------------------------------------------------------------- a real sweep, killed once
def _start(args: list[str], log: Path) -> subprocess.Popen:
    """run.py in its own process group (session), so that the group alone can be killed."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for _ in range(300):  # Ray's processes started by the run are in its group: wait for them all
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("processes of the killed sweep are still alive")


def _statuses(sweep_dir: Path) -> dict[str, str]:
    trials = sweep_dir / "trials"
    names = sorted(p.name for p in trials.iterdir()) if trials.is_dir() else []
    return {n: sweep.trial_status(trials / n, 400) for n in names}


def _finished(sweep_dir: Path) -> list[str]:
    return [n for n, s in _statuses(sweep_dir).items() if s == "finished"]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A 2 seeds x 2 learning rates sweep of tiny runs, SIGKILLed (its whole process group:
    driver, Ray, Tune's trial workers) right after a first trial finished, then resumed."""
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "sweep"
    # A checkpoint every iteration: a trial killed after its first one continues from it.
    proc = _start(["sweep", CONFIG, "--grid", "seed=0,1", "algo.lr=3e-4,5e-4", *TINY, "train.checkpoint_every=1",
                   "--out", str(out)], tmp / "first.log")
    try:
        # Kill once a trial has finished and, where it can be caught, another one has a
        # checkpoint but has not finished (it then continues from it; caught unless it
        # finishes in the few milliseconds between the check and the kill).
        deadline = time.monotonic() + 900
        while True:
            status = _statuses(out)
            done = [n for n, s in status.items() if s == "finished"]
            if done and ("started" in status.values() or len(done) >= 3):
                break
            assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in 900 s"
            time.sleep(0.1)
    finally:
        _kill_group(proc)
    before, started = {}, {}
    for run in sorted((out / "trials").iterdir()):
        status = sweep.trial_status(run, 400)
        if status == "finished":
            before[run.name] = {
                "metrics": (run / "metrics.jsonl").read_text(),
                "mtime": (run / "metrics.jsonl").stat().st_mtime_ns,
                "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir()),
            }
        elif status == "started":  # the rows up to its last checkpoint, which resume keeps
            _, ckpt = load_run(run)
            upto = json.loads((ckpt / RUN_STATE).read_text())["iteration"]
            started[run.name] = (run / "metrics.jsonl").read_text().splitlines()[:upto]
    resumed = _start(["sweep", "--resume", str(out)], tmp / "resume.log")
    try:
        code = resumed.wait(timeout=900)
    finally:
        _kill_group(resumed)
    return out, before, started, code, (tmp / "resume.log").read_text()


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(killed_and_resumed):
    out, before, started, code, log = killed_and_resumed
    assert code == 0, log[-3000:]
    assert 1 <= len(before) < 4  # killed after a first trial finished, before the last one did
    assert f"{len(before)} finished already (not re-run), {len(started)} continue from their last checkpoint" in log
    for name, rows in started.items():  # continued as run.py resume does: rows up to its checkpoint kept
        assert (out / "trials" / name / "metrics.jsonl").read_text().splitlines()[:len(rows)] == rows
    for name, seen in before.items():
        run = out / "trials" / name
        assert (run / "metrics.jsonl").stat().st_mtime_ns == seen["mtime"]
        assert (run / "metrics.jsonl").read_text() == seen["metrics"]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == seen["checkpoints"]
        assert f"trial {name}: started" not in log
    # Tune's second experiment holds only the trials that were not finished.
    rerun = {json.loads(p.read_text())["trial"] for p in (out / "tune" / "attempt-2").glob("*/params.json")}
    assert rerun == {t.name for t in sweep.load_sweep(out).trials} - set(before)


@pytest.mark.slow
def test_sweep_trials_are_run_directories_and_the_summary_matches_them(killed_and_resumed):
    out, _, _, code, log = killed_and_resumed
    assert code == 0, log[-3000:]
    assert log.strip().splitlines()[-1] == str(out)  # the sweep directory is the last line
    plan = sweep.load_sweep(out)
    assert len(plan.trials) == 4 and _finished(out) == sorted(t.name for t in plan.trials)
    finals: dict[str, list[float]] = {}
    for t in plan.trials:
        run = out / "trials" / t.name
        assert {"config.yaml", "metrics.jsonl", "checkpoints", "tb", "plots"} <= {p.name for p in run.iterdir()}
        cfg, ckpt = load_run(run)  # what run.py resume reads: a resumable run directory
        assert (cfg.seed, cfg.algo.lr) == (int(t.params["seed"]), float(t.params["algo.lr"]))
        assert json.loads((ckpt / RUN_STATE).read_text())["env_steps"] >= 400
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))  # no row twice after the kill
        last = [r["episode_return_mean"] for r in rows if r["episode_return_mean"] is not None][-1]
        finals.setdefault(f"algo.lr={t.params['algo.lr']}", []).append(last)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["configuration"] for c in summary["configurations"]] == ["algo.lr=3e-4", "algo.lr=5e-4"]
    for c in summary["configurations"]:
        x = np.array(finals[c["configuration"]])
        assert c["metric"] == "episode_return_mean" and c["n"] == 2 and c["seeds"] == [0, 1]
        assert c["finals"] == pytest.approx(x.tolist())
        assert c["mean"] == pytest.approx(x.mean()) and c["iqm"] == pytest.approx(stats.trim_mean(x, 0.25))
        assert x.min() <= c["ci95"][0] <= c["mean"] <= c["ci95"][1] <= x.max()
        assert f"| {c['configuration']} | episode_return_mean | 2 | {c['mean']:.3g} [" in log  # the table on stdout
    md = (out / "summary.md").read_text()
    assert md.index("| configuration |") < md.index("![learning curves")
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep.write_summary(out, plan) == summary  # run.py sweep --summary rebuilds the same
