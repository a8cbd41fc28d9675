"""End to end through run.py and RLlib: train -> checkpoint -> evaluate -> resume, a run
killed with SIGKILL that resumes where it left off, and a run whose env turns NaN that stops
cleanly."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "algo.train_batch_size=400",
    "algo.minibatch_size=200",
    "algo.num_epochs=2",
    "runners.num_envs_per_env_runner=4",
    "train.progress=log",
]
pytestmark = pytest.mark.slow


def run_cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adam_steps(ckpt: Path) -> float:
    state = pickle.loads((ckpt / "learner_group" / "learner" / "state.pkl").read_bytes())
    opt = state["optimizer"]["team_0_default_optimizer"]["state"]["state"]
    return float(next(iter(opt.values()))["step"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("train", *TINY, "train.total_env_steps=1600", "train.checkpoint_every=2", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_default_job_is_bn_mappo_with_learned_graph_and_draws_it(trained_run):
    rows = read_metrics(trained_run)
    assert all(0.0 <= r["dag_density"] <= 1.0 for r in rows)
    assert all("dag_tau" in r and "dag_alpha" in r for r in rows)
    pngs = sorted(p.name for p in (trained_run / "plots").glob("dag_team_0_iter_*.png"))
    assert pngs == ["dag_team_0_iter_000002.png", "dag_team_0_iter_000004.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(trained_run / "tb")).Reload().Tags()["scalars"]
    assert {"dag_density", "dag_tau", "dag_alpha", "edge_freq/0->1", "edge_freq/2->0"} <= set(tags)


def test_evaluate_decentralized_forces_the_empty_graph(trained_run, monkeypatch):
    # Record the graph every acting step of `evaluate` samples with.
    from marl.evaluate import evaluate
    from marl.modules.joint_policy import JointPolicyModule

    graphs = []
    original = JointPolicyModule.sample_joint

    def sample_joint(self, obs, graph, deterministic=False):
        graphs.append(graph.adjacency.detach().clone())
        return original(self, obs, graph, deterministic)

    monkeypatch.setattr(JointPolicyModule, "sample_joint", sample_joint)
    evaluate(trained_run, episodes=1, seed=0)
    learned = torch.cat(graphs)
    assert len(graphs) == 25 and float(learned.sum()) > 0  # the trained team uses edges
    graphs.clear()
    result = evaluate(trained_run, episodes=2, seed=0, decentralized=True)
    assert result["decentralized"] is True and result["episodes"] == 2
    assert len(graphs) == 50 and float(torch.cat(graphs).abs().sum()) == 0.0


def test_train_writes_the_run_directory(trained_run):
    assert (trained_run / "config.yaml").is_file()
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    rows = read_metrics(trained_run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    for key in ("env_steps", "episode_return_mean", "episode_len_mean", "time_s", "env_steps_per_s"):
        assert all(key in r for r in rows), key
    assert [r["env_steps"] for r in rows] == [400, 800, 1200, 1600]
    assert rows[-1]["episode_len_mean"] == 25.0
    names = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert names == ["iter_000002", "iter_000004"]  # every 2 iterations and at the end; no temp dirs


def test_checkpoint_loads_with_rllib_from_checkpoint(trained_run):
    import ray
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.core.rl_module.rl_module import RLModule

    ckpt = trained_run / "checkpoints" / "iter_000004"
    module = RLModule.from_checkpoint(str(ckpt / "learner_group" / "learner" / "rl_module" / "team_0"))
    assert type(module).__name__ == "JointPolicyModule"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        algo = Algorithm.from_checkpoint(str(ckpt))
        assert algo.training_iteration == 4
        assert algo.get_module("team_0") is not None
        algo.stop()
    finally:
        ray.shutdown()


def test_evaluate_writes_json(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    proc = run_cli("evaluate", str(trained_run / "checkpoints" / "iter_000004"), "--episodes", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["episode_len_mean"] == 25.0
    assert np.isfinite(result["episode_return_mean"]) and result["episode_return_std"] >= 0
    assert "win_rate" not in result  # simple_spread reports no wins
    # Deterministic evaluation of the same checkpoint is reproducible.
    a = run_cli("evaluate", str(trained_run), "--episodes", "2", "--deterministic")
    b = run_cli("evaluate", str(trained_run), "--episodes", "2", "--deterministic")
    assert json.loads(a.stdout)["episode_return_mean"] == json.loads(b.stdout)["episode_return_mean"]


def test_resume_of_a_finished_run_adds_nothing(trained_run):
    before = (trained_run / "metrics.jsonl").read_text()
    proc = run_cli("resume", str(trained_run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(trained_run)
    assert (trained_run / "metrics.jsonl").read_text() == before


def test_sigkill_then_resume_continues_counters_optimizer_and_schedules(tmp_path):
    lr0, lr1, total = 1e-3, 1e-4, 8000
    args = [
        "train", "configs/mappo_simple_spread.yaml", *TINY, f"train.total_env_steps={total}", "train.checkpoint_every=2",
        f"algo.lr=[[0,{lr0}],[{total},{lr1}]]", f"algo.entropy_coeff=[[0,0.05],[{total},0.0]]",
        f"output_dir={tmp_path}",
    ]
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    run_dir = None
    while time.time() < deadline:
        dirs = list(tmp_path.glob("mappo-*"))
        if dirs and (dirs[0] / "checkpoints" / "iter_000004").is_dir():
            run_dir = dirs[0]
            break
        time.sleep(0.05)
    assert run_dir is not None, "no checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ckpts = sorted((run_dir / "checkpoints").glob("iter_*"))
    k = int(ckpts[-1].name.split("_")[1])
    assert k < 20
    steps_at_k = adam_steps(ckpts[-1])

    res = run_cli("resume", str(run_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == str(run_dir)
    assert f"from iter_{k:06d}" in res.stderr

    rows = read_metrics(run_dir)
    # Iterations and env steps continue from the checkpoint: no gap, no repeat, no restart.
    assert [r["iteration"] for r in rows] == list(range(1, 21))
    assert [r["env_steps"] for r in rows] == [400 * i for i in range(1, 21)]
    assert rows[k]["time_s"] > rows[k - 1]["time_s"]
    # The schedules follow the lifetime env-step count across the kill (MARLlib reset lr).
    for r in rows:
        assert r["lr"] == pytest.approx(np.interp(r["env_steps"], [0, total], [lr0, lr1]), rel=1e-3)
        assert r["entropy_coeff"] == pytest.approx(np.interp(r["env_steps"], [0, total], [0.05, 0.0]), abs=1e-6)
    # Adam's step count continued from the checkpoint instead of starting again at 0.
    final = run_dir / "checkpoints" / "iter_000020"
    per_iteration = steps_at_k / k
    assert adam_steps(final) == pytest.approx(20 * per_iteration, rel=0.05)
    assert json.loads((final / "run_state.json").read_text())["env_steps"] == 8000


def test_nan_reward_stops_at_the_adapter_and_keeps_last_good_checkpoint(tmp_path):
    # Caught where it enters (envs/adapter.py), before it can become a non-finite loss.
    proc = run_cli(
        "train", *TINY, "env.import=tests.toy_envs:nan_reward_env", "env.kwargs={nan_after: 1300}",
        "train.total_env_steps=4000", "train.checkpoint_every=1", f"output_dir={tmp_path}",
    )
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: env 'tests.toy_envs:nan_reward_env' returned nan in agent 'agent_0's reward at step ")
    assert "(iteration 4); training stopped; the last good checkpoint is" in err
    run_dir = next(tmp_path.iterdir())
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["iter_000001", "iter_000002", "iter_000003"]
    assert "iter_000003" in err
    assert [r["iteration"] for r in read_metrics(run_dir)] == [1, 2, 3]
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    module = RLModule.from_checkpoint(str(run_dir / "checkpoints" / "iter_000003" / "learner_group" / "learner" / "rl_module" / "team_0"))
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # Evaluation meets the same env output: one line too (the NaN comes after 1300 steps).
    ev = run_cli("evaluate", str(run_dir), "--episodes", "60")
    assert ev.returncode == 1 and "Traceback" not in ev.stderr
    assert ev.stderr.strip().splitlines()[-1].startswith(
        "error: evaluation stopped: env 'tests.toy_envs:nan_reward_env' returned nan in agent 'agent_0's reward")


def test_ippo_is_a_config_switch(tmp_path):
    proc = run_cli("train", "configs/ippo_simple_spread.yaml", *TINY, "train.total_env_steps=800", f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert read_metrics(run_dir)[-1]["iteration"] == 2
    assert "decentralized" in (run_dir / "config.yaml").read_text()


def test_continuous_actions_train_with_a_learned_graph(tmp_path):
    proc = run_cli(
        "train", *TINY, "env.kwargs.continuous_actions=true", "train.total_env_steps=800", f"output_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    rows = read_metrics(run_dir)
    assert len(rows) == 2 and all(np.isfinite(r["policy_loss"]) for r in rows)
    ev = run_cli("evaluate", str(run_dir), "--episodes", "2", "--decentralized")
    assert ev.returncode == 0, ev.stderr[-2000:]


def test_env_that_fails_rllibs_check_at_build_ends_with_one_error_line_and_no_run_dir(tmp_path):
    proc = run_cli(
        "train", "configs/mappo_simple_spread.yaml", "env.import=tests.toy_envs:broken_step_env", "env.kwargs={}",
        f"output_dir={tmp_path}",
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: env 'tests.toy_envs:broken_step_env' failed RLlib's environment check")
    assert "simulator connection lost" in lines[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
