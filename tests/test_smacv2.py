"""SMACv2 (real StarCraft II) adapter, tested against a fixture of the API's shapes and types;
and its clear failure where the package or the game is missing (always the case in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs import TeamEnv
from envs.errors import MissingDependency
from envs.smacv2 import SMACv2ParallelEnv
from marl.cli import main

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "smacv2_api.json").read_text())


class FixtureAPI:
    """Replays the fixture through StarCraftCapabilityEnvWrapper's method signatures."""

    def __init__(self, episode):
        self.info = FIXTURE["env_info"]
        self.episode, self.t = episode, 0
        self.actions: list[list[int]] = []
        self.avail = FIXTURE["reset_avail_actions"]

    def get_env_info(self):
        return dict(self.info)

    def reset(self):
        self.t, self.avail = 0, FIXTURE["reset_avail_actions"]

    def get_obs(self):
        return [np.full(self.info["obs_shape"], i + self.t, np.float32) for i in range(self.info["n_agents"])]

    def get_state(self):
        return np.full(self.info["state_shape"], self.t, np.float32)

    def get_avail_actions(self):
        return [list(a) for a in self.avail]

    def step(self, actions):
        self.actions.append(list(actions))
        rec = self.episode[self.t]
        self.t += 1
        self.avail = rec["avail_actions"]
        return rec["reward"], rec["terminated"], dict(rec["info"])

    def close(self):
        pass


def team_env(episode):
    api = FixtureAPI(episode)
    return TeamEnv({"import": "envs.smacv2", "kwargs": {"api": api}}), api


def test_spaces_follow_get_env_info():
    env, _ = team_env(FIXTURE["episode"])
    spec = env.specs["team_0"]
    info = FIXTURE["env_info"]
    assert (spec.n_agents, spec.obs_dim, spec.n_actions, spec.state_dim) == (
        info["n_agents"], info["obs_shape"], info["n_actions"], info["state_shape"])


def test_episode_translation_masks_deaths_rewards_and_win():
    env, api = team_env(FIXTURE["episode"])
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["team_0"]["action_mask"], FIXTURE["reset_avail_actions"])
    total = 0.0
    for t, rec in enumerate(FIXTURE["episode"]):
        joint = np.array([1, 1, 0, 1, 1])
        obs, rew, term, trunc, info = env.step({"team_0": joint})
        total += rew["team_0"]
        o = obs["team_0"]
        dead = [i for i, a in enumerate(rec["avail_actions"]) if a[0] == 1 and sum(a[1:]) == 0]
        assert [i for i in range(5) if o["alive"][i] == 0] == dead
        np.testing.assert_array_equal(o["state"], np.full(130, t + 1, np.float32))
        alive = [i for i in range(5) if i not in dead]
        np.testing.assert_array_equal(o["action_mask"][alive], np.array(rec["avail_actions"])[alive])
        assert term["__all__"] == rec["terminated"] and not trunc["__all__"]
    assert info["team_0"]["won"] is True
    assert total == pytest.approx(sum(r["reward"] for r in FIXTURE["episode"]))  # reward counted once
    # Dead agents' actions reach SMACv2 as no-op (0), as its API requires.
    assert api.actions[-1][2] == 0 and api.actions[-1][1] == 0


def test_time_limit_is_a_truncation():
    env, _ = team_env([FIXTURE["timeout_step"]])
    env.reset()
    _, _, term, trunc, info = env.step({"team_0": np.ones(5, int)})
    assert trunc["__all__"] and not term["__all__"] and info["team_0"]["won"] is False


def test_missing_package_or_game_is_named(monkeypatch, tmp_path):
    with pytest.raises(MissingDependency, match="'smacv2' package is not installed"):
        SMACv2ParallelEnv(map_name="10gen_protoss")


def test_cli_reports_missing_smacv2_with_exit_2(capsys, tmp_path):
    code = main(["train", "env.import=envs.smacv2", "env.kwargs={map_name: 10gen_protoss}", f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: config key 'env.import'")
    assert "'smacv2' package is not installed" in err[0]
    assert not (tmp_path / "runs").exists()


def test_team_reward_survives_the_first_agents_death():
    # agent_0 dies on step 1; later rewards must still reach the team.
    noop = [1] + [0] * 10
    moves = [0, 1, 1, 1, 1, 1] + [0] * 5
    episode = [
        {"avail_actions": [noop] + [moves] * 4, "reward": 2.0, "terminated": False, "info": {}},
        {"avail_actions": [noop] + [moves] * 4, "reward": 3.0, "terminated": False, "info": {}},
        {"avail_actions": [noop] + [moves] * 4, "reward": 5.0, "terminated": True, "info": {"battle_won": True}},
    ]
    env, _ = team_env(episode)
    env.reset()
    rewards = [env.step({"team_0": np.ones(5, int)})[1]["team_0"] for _ in episode]
    assert rewards == [2.0, 3.0, 5.0]
