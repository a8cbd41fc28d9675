"""Level-Based Foraging and RWARE (gymnasium envs with Tuple spaces) through envs.gym_team."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs import TeamEnv

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("lbforaging")
pytest.importorskip("rware")


def test_lbf_legal_moves_become_action_masks():
    env = TeamEnv({"import": "envs.gym_team", "kwargs": {"id": "Foraging-8x8-2p-2f-coop-v3"}})
    spec = env.specs["team_0"]
    assert (spec.n_agents, spec.n_actions) == (2, 6)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        lbf = env.env.env.unwrapped
        for i, player in enumerate(lbf.players):
            legal = sorted(int(a.value) for a in lbf._valid_actions[player])
            np.testing.assert_array_equal(np.nonzero(obs["team_0"]["action_mask"][i])[0], legal)


def test_rware_spaces_and_episode_length():
    env = TeamEnv({"import": "envs.gym_team", "kwargs": {"id": "rware-tiny-2ag-v2"}})
    spec = env.specs["team_0"]
    assert (spec.n_agents, spec.obs_dim, spec.n_actions, spec.state_dim) == (2, 71, 5, 142)
    env.reset(seed=0)
    steps = 0
    while True:
        _, rew, term, trunc, _ = env.step({"team_0": np.zeros(2, int)})
        steps += 1
        if term["__all__"] or trunc["__all__"]:
            break
    assert steps == 500


def test_non_tuple_env_is_refused():
    from envs.gym_team import GymTeamEnv

    with pytest.raises(ValueError, match="expected a Tuple"):
        GymTeamEnv("CartPole-v1")


@pytest.mark.slow
def test_lbf_trains_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "train", "configs/env/lbf_8x8_2p_2f.yaml", "algo.train_batch_size=400",
         "algo.minibatch_size=200", "runners.num_envs_per_env_runner=4", "train.total_env_steps=800",
         f"output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (Path(proc.stdout.strip().splitlines()[-1]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [400, 800]


def test_time_limit_is_a_truncation_not_a_termination():
    from envs.gym_team import GymTeamEnv

    env = GymTeamEnv("rware-tiny-2ag-v2")
    env.reset(seed=0)
    for _ in range(500):
        _, _, term, trunc, _ = env.step({a: 0 for a in env.agents})
    assert trunc["agent_0"] and not term["agent_0"]


def test_bad_env_id_is_a_config_error(capsys, tmp_path):
    from marl.cli import main

    code = main(["train", "env.import=envs.gym_team", "env.kwargs={id: Foraging-9x9-nope-v3}", f"output_dir={tmp_path}/r"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "config key 'env.kwargs'" in err[0] and "Foraging-9x9-nope" in err[0]
