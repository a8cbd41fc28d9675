"""TeamEnv: PettingZoo ParallelEnv -> one RLlib agent per team."""

from __future__ import annotations

import numpy as np
import pytest

from envs import TeamEnv

TOY = {"import": "tests.toy_envs:masked_death_env", "kwargs": {}}
SPREAD = {"import": "mpe2.simple_spread_v3", "kwargs": {"N": 3, "max_cycles": 25}}


def test_agent_order_is_the_envs_possible_agents_order_every_time():
    orders = {tuple(TeamEnv(SPREAD).specs["team_0"].agents) for _ in range(5)}
    assert orders == {("agent_0", "agent_1", "agent_2")}


def test_heterogeneous_spaces_are_padded_and_masked():
    env = TeamEnv(TOY)
    spec = env.specs["team_0"]
    assert (spec.obs_dim, spec.n_actions, spec.agent_n_actions) == (4, 4, [2, 3, 4])
    obs, _ = env.reset(seed=0)
    o = obs["team_0"]
    assert env.observation_spaces["team_0"].contains(o)
    # Observations are zero-padded to the largest agent's size.
    np.testing.assert_array_equal(o["obs"][0], [1, 1, 0, 0])
    np.testing.assert_array_equal(o["obs"][1], [2, 2, 2, 0])
    # agent_0 has 2 actions (padding masked), agent_1's info mask, agent_2's Dict-obs mask.
    np.testing.assert_array_equal(o["action_mask"], [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0]])


def test_state_is_env_state_or_concatenated_observations():
    env = TeamEnv(SPREAD)
    obs, _ = env.reset(seed=3)
    np.testing.assert_allclose(obs["team_0"]["state"], env.env.state().astype(np.float32))
    toy = TeamEnv(TOY)  # no state(): concatenated padded observations
    o = toy.reset(seed=0)[0]["team_0"]
    np.testing.assert_array_equal(o["state"], o["obs"].reshape(-1))


def test_dead_agent_keeps_its_slot_with_noop_only_and_gets_no_action():
    env = TeamEnv(TOY)
    env.reset(seed=0)
    obs, rew, term, trunc, _ = env.step({"team_0": np.array([1, 2, 1])})
    assert rew["team_0"] == 4.0  # team reward: sum over agents
    obs, rew, term, trunc, _ = env.step({"team_0": np.array([1, 2, 1])})  # agent_2 dies now
    o = obs["team_0"]
    np.testing.assert_array_equal(o["alive"], [1, 1, 0])
    np.testing.assert_array_equal(o["obs"][2], 0)
    np.testing.assert_array_equal(o["action_mask"][2], [1, 0, 0, 0])
    _, rew, term, _, _ = env.step({"team_0": np.array([1, 2, 0])})
    assert "agent_2" not in env.env.last_actions  # dead agents' actions are not sent
    assert rew["team_0"] == 3.0 and not term["__all__"]  # only the living agents' 1 + 2


def test_episode_end_is_truncation_when_time_runs_out():
    env = TeamEnv(SPREAD)
    env.reset(seed=0)
    for t in range(25):
        _, _, term, trunc, _ = env.step({"team_0": np.zeros(3, int)})
        assert trunc["__all__"] == (t == 24)
        assert not term["__all__"]


def test_bad_team_grouping_is_reported():
    with pytest.raises(ValueError, match="matches no agent"):
        TeamEnv({**SPREAD, "teams": {"red": ["adversary_"]}})


def test_teams_split_agents_into_rllib_agents():
    env = TeamEnv({**SPREAD, "teams": {"a": ["agent_0"], "b": ["agent_1", "agent_2"]}})
    assert env.possible_agents == ["a", "b"]
    assert env.specs["b"].n_agents == 2
    obs, _ = env.reset(seed=0)
    assert obs["a"]["obs"].shape == (1, 18) and obs["b"]["obs"].shape == (2, 18)


def test_continuous_actions_become_one_box_per_team():
    env = TeamEnv({**SPREAD, "kwargs": {"N": 3, "max_cycles": 25, "continuous_actions": True}})
    space = env.action_spaces["team_0"]
    assert space.shape == (3, 5) and float(space.low.min()) == 0.0 and float(space.high.max()) == 1.0
    obs, _ = env.reset(seed=0)
    assert obs["team_0"]["action_mask"].shape == (3, 1)
    _, rew, *_ = env.step({"team_0": np.full((3, 5), 0.5, np.float32)})
    assert np.isfinite(rew["team_0"])


def test_teams_must_be_disjoint_and_cover_every_agent():
    from envs.adapter import TeamGroupingError

    with pytest.raises(TeamGroupingError, match="in several: \\['agent_0'\\]"):
        TeamEnv({**SPREAD, "teams": {"a": ["agent_"], "b": ["agent_0"]}})
    with pytest.raises(TeamGroupingError, match="in none: \\['agent_2'\\]"):
        TeamEnv({**SPREAD, "teams": {"a": ["agent_0"], "b": ["agent_1"]}})


def test_actions_outside_an_agents_own_space_never_reach_the_env():
    # speaker_listener: the speaker has 3 actions, the listener 5; PettingZoo asserts bounds.
    env = TeamEnv({"import": "mpe2.simple_speaker_listener_v4", "kwargs": {}})
    spec = env.specs["team_0"]
    assert spec.agent_n_actions == [3, 5] and env.action_spaces["team_0"].nvec.tolist() == [5, 5]
    np.testing.assert_array_equal(env.reset(seed=0)[0]["team_0"]["action_mask"], [[1, 1, 1, 0, 0], [1] * 5])
    for joint in ([4, 4], [3, 0], [2, 4]):  # 3 and 4 are outside the speaker's space
        env.step({"team_0": np.array(joint)})
    for _ in range(50):  # what RLlib's env pre-check does: unmasked samples of the team space
        obs, _, term, trunc, _ = env.step({"team_0": env.action_spaces["team_0"].sample()})
        if term["__all__"] or trunc["__all__"]:
            env.reset(seed=1)


def _nan_obs_env(mode: str) -> TeamEnv:
    from tests import toy_envs

    toy_envs.CountingEnv.steps_taken = 0
    return TeamEnv({"import": "tests.toy_envs:nan_obs_env", "kwargs": {"nan_at": 3}, "nonfinite": mode})


def test_a_nan_observation_raises_naming_env_agent_key_and_step():
    from envs.errors import NonFiniteOutput

    env = _nan_obs_env("error")
    env.reset(seed=0)
    act = {"team_0": np.zeros(2, np.int64)}
    env.step(act)
    env.step(act)
    with pytest.raises(NonFiniteOutput, match=r"^env 'tests.toy_envs:nan_obs_env' returned nan in agent 'agent_1's observation at step 3 of an episode$"):
        env.step(act)


def test_with_end_episode_a_nan_observation_truncates_the_episode_with_zeros_and_says_so():
    from envs.adapter import NONFINITE_INFO

    env = _nan_obs_env("end_episode")
    env.reset(seed=0)
    act = {"team_0": np.zeros(2, np.int64)}
    for _ in range(2):
        _, _, term, trunc, info = env.step(act)
        assert not trunc["__all__"] and NONFINITE_INFO not in info["team_0"]
    obs, rew, term, trunc, info = env.step(act)
    assert trunc["__all__"] and not term["__all__"]
    assert info["team_0"][NONFINITE_INFO] == "agent_1 observation"
    assert np.isfinite(obs["team_0"]["obs"]).all() and obs["team_0"]["obs"][1, 0] == 0.0
    assert np.isfinite(obs["team_0"]["state"]).all()
    assert obs["team_0"]["obs"][0, 0] == pytest.approx(0.3)  # agent_0's own values are kept
