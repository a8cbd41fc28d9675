"""Multi-agent MuJoCo (gymnasium_robotics.mamujoco_v1) through the team adapter and RLlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")
from envs import TeamEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "scenario, conf, n, k, state_dim",
    [("HalfCheetah", "6x1", 6, 1, 17), ("Ant", "2x4", 2, 4, 105), ("Walker2d", "2x3", 2, 3, 17)],
)
def test_mamujoco_team_spaces(scenario, conf, n, k, state_dim):
    env = TeamEnv({"import": "gymnasium_robotics.mamujoco_v1", "kwargs": {"scenario": scenario, "agent_conf": conf}})
    space = env.action_spaces["team_0"]
    assert space.shape == (n, k) and float(space.low.min()) == -1.0 and float(space.high.max()) == 1.0
    obs, _ = env.reset(seed=0)
    o = obs["team_0"]
    assert o["obs"].shape[0] == n and o["state"].shape == (state_dim,)
    np.testing.assert_allclose(o["state"], env.env.state().astype(np.float32))
    _, rew, term, trunc, _ = env.step({"team_0": np.zeros((n, k), np.float32)})
    assert np.isfinite(rew["team_0"]) and not trunc["__all__"]


def test_halfcheetah_trains_with_a_learned_graph(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "train", "configs/env/halfcheetah_6x1.yaml", "model.graph.mode=learned",
         "algo.train_batch_size=1000", "algo.minibatch_size=500", "algo.num_epochs=1",
         "runners.num_envs_per_env_runner=1", "train.total_env_steps=2000", f"output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [1000, 2000]
    assert rows[-1]["episode_len_mean"] == 1000.0 and 0.0 <= rows[-1]["dag_density"] <= 1.0
