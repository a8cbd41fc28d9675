"""The paper's small environments: coordination game (with its exact optimum) and Aloha."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from envs import TeamEnv
from envs.aloha import Aloha, interference_edges
from envs.coordination_game import (
    CoordinationGame,
    coordination_reward,
    optimal_value,
    transition_matrix,
)


def brute_force_value(n: int, horizon: int = 25) -> float:
    """Best expected return over every deterministic policy state -> joint action, evaluated
    exactly by pushing the state distribution forward (no dynamic programming)."""
    states = list(itertools.product([0, 1], repeat=n))
    reward = np.array([coordination_reward(np.array(s), n) for s in states])
    trans = transition_matrix(n)
    best = -np.inf
    for policy in itertools.product(range(len(states)), repeat=len(states)):
        dist = np.full(len(states), 1 / len(states))
        total = 0.0
        for _ in range(horizon):
            nxt = np.zeros(len(states))
            for s, p in enumerate(dist):
                nxt += p * trans[policy[s]]
            total += nxt @ reward
            dist = nxt
        best = max(best, total)
    return best


def test_coordination_optimum_matches_brute_force_for_two_agents():
    assert optimal_value(2) == pytest.approx(brute_force_value(2), rel=1e-12)


def test_coordination_rewards_follow_the_rules():
    # n = 3, l = 1: all zeros 3, all ones 2, two ones 1, two zeros 0.
    assert [coordination_reward(np.array(b), 3) for b in ([0, 0, 0], [1, 1, 1], [1, 1, 0], [0, 0, 1])] == [3, 2, 1, 0]
    # n = 5, l = 2: 4 zeros -> |z-o| = 3 > 2 -> zeros majority -> 3.
    assert coordination_reward(np.array([0, 0, 0, 0, 1]), 5) == 3
    assert coordination_reward(np.array([1, 1, 1, 0, 0]), 5) == 1


def test_coordination_all_zeros_policy_reaches_the_optimum_for_three_agents():
    # All-zeros is optimal for n = 3; its Monte Carlo return matches the DP value.
    env = CoordinationGame(n=3)
    returns = []
    for ep in range(400):
        env.reset(seed=ep)
        total = 0.0
        while env.agents:
            _, r, *_ = env.step({a: 0 for a in env.agents})
            total += r["agent_0"]
        returns.append(total)
    assert np.mean(returns) == pytest.approx(optimal_value(3), abs=0.6)  # 55.4 ± MC noise


def test_coordination_game_through_the_adapter():
    env = TeamEnv({"import": "envs.coordination_game", "kwargs": {"n": 5}})
    obs, _ = env.reset(seed=0)
    o = obs["team_0"]
    assert o["obs"].shape == (5, 5) and o["state"].shape == (5,)
    np.testing.assert_array_equal(o["obs"][0], o["state"])  # full observability
    steps = 0
    while True:
        _, rew, term, trunc, _ = env.step({"team_0": np.zeros(5, int)})
        steps += 1
        if trunc["__all__"]:
            break
    assert steps == 25


def test_aloha_interference_graph_and_rewards():
    assert interference_edges(10) == sorted(
        {(i, i + 1) for i in range(9)} | {(i, i + 5) for i in range(5)}
    )
    env = Aloha()
    env.reset(seed=0)
    # Agents 0 and 2 transmit alone (not neighbours): two successes.
    _, r, *_ = env.step({a: int(a in ("agent_0", "agent_2")) for a in env.agents})
    assert r["agent_0"] == pytest.approx(0.2)
    env.reset(seed=0)
    # Neighbours 0 and 1 transmit together: two collisions.
    _, r, *_ = env.step({a: int(a in ("agent_0", "agent_1")) for a in env.agents})
    assert r["agent_0"] == pytest.approx(-20.0)


def test_aloha_backlog_is_capped_and_episode_lasts_20_steps():
    env = Aloha()
    env.reset(seed=1)
    for t in range(20):
        obs, _, _, trunc, _ = env.step({a: 0 for a in env.agents})
        assert env.backlog.max() <= 5
        assert trunc["agent_0"] == (t == 19)
    assert env.agents == []
    assert obs["agent_0"].shape == (6,) and obs["agent_0"].sum() == 1.0
