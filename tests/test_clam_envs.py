"""CLAM's settings (Ma et al., 2024) as envs: MPE predator-prey with the prey as the one learning
agent against scripted predators (envs/predator_prey.py), and ad hoc simple_spread with scripted
teammates (envs/adhoc_spread.py). Each type's agents behave as named, the type is in the infos,
seeded and varied, the oracle one-hot and the model features match the world, the +3 for
colliding predators, and the PettingZoo API."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from envs import TeamEnv
from envs.adhoc_spread import AdhocSpread
from envs.predator_prey import PredatorPrey
from envs.scripted_mpe import MOVE_DIRECTIONS, N_MOVES

PREY, PREDATORS = 3, [0, 1, 2]  # mpe2 simple_tag order: adversary_0..2, agent_0
SEEDS = range(6)


def place(env, pos, vel=None):
    """Put every agent (mpe2 order) at ``pos`` with velocity ``vel`` (default: at rest)."""
    for i, body in enumerate(env.world.agents):
        body.state.p_pos = np.array(pos[i], np.float64)
        body.state.p_vel = np.zeros(2) if vel is None else np.array(vel[i], np.float64)


def positions(env) -> np.ndarray:
    return np.array([a.state.p_pos for a in env.world.agents])


def pairwise(points: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(d, np.nan)
    return d


def run_still(env, steps: int) -> None:
    """Step with the learner idle (no-op)."""
    for _ in range(steps):
        env.step({env.EGO: 0})


# ----------------------------------------------------------------------------- API
@pytest.mark.parametrize("oracle", [False, True])
@pytest.mark.parametrize("cls", [PredatorPrey, AdhocSpread])
def test_parallel_api_and_seeding(cls, oracle):
    parallel_api_test(cls(oracle=oracle), num_cycles=120)
    parallel_seed_test(lambda: cls(oracle=oracle))


def test_spaces_and_shapes():
    pp, sp = PredatorPrey(), AdhocSpread()
    assert pp.possible_agents == ["prey"] and sp.possible_agents == ["agent_0"]
    assert len(pp.TYPES) >= 5 and len(sp.TYPES) >= 5
    assert pp.observation_space("prey").shape == (14,)
    assert PredatorPrey(oracle=True).observation_space("prey").shape == (14 + len(pp.TYPES),)
    assert sp.observation_space("agent_0").shape == (18,)
    assert pp.action_space("prey").n == N_MOVES == sp.action_space("agent_0").n
    assert pp.model_features_dim("prey") == 21 and sp.model_features_dim("agent_0") == 14
    pp.reset(seed=0)
    sp.reset(seed=0)
    assert pp.model_features("prey").shape == (21,) and pp.model_features("prey").dtype == np.float32
    assert sp.model_features("agent_0").shape == (14,)
    assert pp.state().shape == (4 * 4 + 2 * 2,) and sp.state().shape == (3 * 4 + 3 * 2,)


def test_through_the_team_adapter():
    env = TeamEnv({"import": "envs.predator_prey", "kwargs": {"oracle": True}})
    obs, _ = env.reset(seed=0)
    (team,) = env.specs
    assert obs[team]["obs"].shape == (1, 14 + 7) and obs[team]["state"].shape == (20 + 7,)
    _, rew, *_ = env.step({team: np.array([0])})
    assert np.isfinite(rew[team])


def test_unknown_or_empty_types_are_rejected():
    with pytest.raises(ValueError, match="chase_nobody"):
        PredatorPrey(types=["chase_prey", "chase_nobody"])
    with pytest.raises(ValueError, match="at least one"):
        AdhocSpread(types=[])


def test_render_rgb_array():
    env = PredatorPrey(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.std() > 0


# --------------------------------------------------------------------------- types
@pytest.mark.parametrize("cls", [PredatorPrey, AdhocSpread])
def test_type_is_in_the_infos_varies_with_the_seed_and_is_reproducible(cls):
    env = cls()
    seen = []
    for seed in range(60):
        obs, infos = env.reset(seed=seed)
        info = infos[env.EGO]
        assert info["type_name"] == env.TYPES[info["type"]]
        _, _, _, _, step_infos = env.step({env.EGO: 0})
        assert step_infos[env.EGO]["type"] == info["type"]  # one type for the whole episode
        seen.append(info["type"])
    assert set(seen) == set(range(len(env.TYPES)))  # uniform over all: every type shows up
    again = cls()
    for seed in range(10):
        obs, infos = again.reset(seed=seed)
        assert infos[env.EGO]["type"] == seen[seed]
    # Resets without a seed continue the env's generator: the type still varies.
    env.reset(seed=0)
    assert len({env.reset()[1][env.EGO]["type"] for _ in range(40)}) > 1


def test_types_restricts_the_draw():
    env = PredatorPrey(types=["patrol", "chase_prey"])
    drawn = {env.reset(seed=s)[1]["prey"]["type_name"] for s in range(30)}
    assert drawn == {"patrol", "chase_prey"}
    only = AdhocSpread(types=["still"])
    assert {only.reset(seed=s)[1]["agent_0"]["type_name"] for s in range(10)} == {"still"}


@pytest.mark.parametrize("cls", [PredatorPrey, AdhocSpread])
def test_oracle_one_hot_matches_the_info_type(cls):
    env, plain = cls(oracle=True), cls()
    n = len(env.TYPES)
    for seed in range(8):
        obs, infos = env.reset(seed=seed)
        base, _ = plain.reset(seed=seed)
        for _ in range(2):
            one_hot = obs[env.EGO][-n:]
            assert one_hot.sum() == 1 and one_hot[infos[env.EGO]["type"]] == 1
            np.testing.assert_array_equal(obs[env.EGO][:-n], base[env.EGO])  # the rest unchanged
            np.testing.assert_array_equal(env.state()[-n:], one_hot)
            obs, _, _, _, infos = env.step({env.EGO: 1})
            base, *_ = plain.step({env.EGO: 1})


# ---------------------------------------------------------------- model features
@pytest.mark.parametrize("cls", [PredatorPrey, AdhocSpread])
def test_model_features_match_the_world_and_the_actions_taken(cls):
    """Relative positions as the world has them; last-action one-hots equal to the moves the
    scripted agents made, read back from their velocities (MPE: v' = 0.75·v + Δv·direction
    while no contact or speed cap acts; checked over the first steps from rest)."""
    env = cls(**({"num_obstacles": 0} if cls is PredatorPrey else {}))
    others = list(env._scripted)
    ego = env._ego
    checked = 0
    for seed in SEEDS:
        env.reset(seed=seed)
        feats = env.model_features()
        assert np.all(feats[2 * len(others):] == 0)  # no action yet
        for _ in range(3):
            pos = positions(env)
            if np.nanmin(pairwise(pos)) < 0.5:  # a contact force would blur the read-back
                break
            vel_before = np.array([env.world.agents[i].state.p_vel for i in others])
            env.step({env.EGO: 0})
            feats = env.model_features()
            pos = positions(env)
            rel = feats[: 2 * len(others)].reshape(-1, 2)
            np.testing.assert_allclose(rel, pos[others] - pos[ego], atol=1e-6)
            one_hot = feats[2 * len(others):].reshape(len(others), N_MOVES)
            assert np.all(one_hot.sum(axis=1) == 1)
            vel_after = np.array([env.world.agents[i].state.p_vel for i in others])
            change = vel_after - (1 - env.world.damping) * vel_before
            for k, i in enumerate(others):
                body = env.world.agents[i]
                dv = (body.accel or 5.0) * env.world.dt / body.mass
                taken = int(np.argmin(np.linalg.norm(MOVE_DIRECTIONS * dv - change[k], axis=1)))
                assert np.linalg.norm(MOVE_DIRECTIONS[taken] * dv - change[k]) < 1e-6
                assert one_hot[k, taken] == 1, (seed, k, one_hot[k], taken)
            checked += 1
    assert checked >= 6


def test_model_features_are_the_egos_only():
    env = PredatorPrey()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="prey"):
        env.model_features("adversary_0")


# -------------------------------------------------------------------------- reward
@pytest.mark.parametrize(
    "layout, expected",
    [
        ([(-0.6, 0.5), (0.6, 0.5), (0.0, -0.6), (0.0, 0.0)], 0.0),  # all apart
        ([(-0.6, 0.5), (-0.5, 0.5), (0.0, -0.6), (0.0, 0.0)], 3.0),  # one pair touches
        ([(-0.6, 0.5), (-0.5, 0.5), (-0.55, 0.59), (0.0, 0.0)], 9.0),  # three pairs touch
        ([(-0.6, 0.5), (0.6, 0.5), (0.1, 0.0), (0.0, 0.0)], -10.0),  # one predator on the prey
        ([(-0.6, 0.5), (-0.5, 0.5), (0.1, 0.0), (0.0, 0.0)], -7.0),  # both at once
        ([(-0.6, 0.5), (0.6, 0.5), (0.0, -0.6), (0.95, 0.0)], -0.5),  # boundary: (0.95 − 0.9)·10
    ],
)
def test_prey_reward_pays_three_per_colliding_predator_pair(layout, expected):
    # Positions move with the velocity held before the step (MPE integrates p += v·dt first),
    # so bodies placed at rest are where they were placed when the reward is computed.
    env = PredatorPrey(types=["patrol"], num_obstacles=0)
    env.reset(seed=0)
    place(env, layout)
    _, rew, *_ = env.step({"prey": 0})
    assert rew["prey"] == pytest.approx(expected)


def test_spread_reward_is_mpe2s_reward_of_agent_0():
    env = AdhocSpread(types=["still"])
    env.reset(seed=0)
    place(env, [(0.0, 0.0), (0.5, 0.5), (0.2, 0.0)])  # agent_0 touches agent_2
    lm = np.array([lm.state.p_pos for lm in env.world.landmarks])
    pos = positions(env)
    coverage = -sum(np.linalg.norm(pos - p, axis=1).min() for p in lm)
    _, rew, *_ = env.step({"agent_0": 0})
    assert rew["agent_0"] == pytest.approx(0.5 * coverage + 0.5 * -1.0)


# ----------------------------------------------------------- predator behaviours
def predator_env(kind: str) -> PredatorPrey:
    return PredatorPrey(types=[kind], num_obstacles=0)


def first_step_headings(kind: str, named_target) -> list[float]:
    """Cosine between each predator's velocity after one step from rest and the direction to
    the target its type names; starts with bodies in contact are left out."""
    env = predator_env(kind)
    cosines = []
    for seed in range(10):
        env.reset(seed=seed)
        pos = positions(env)
        if np.nanmin(pairwise(pos)) < 0.3:
            continue
        targets = named_target(pos)
        env.step({"prey": 0})
        for k in PREDATORS:
            v = env.world.agents[k].state.p_vel
            d = targets[k] - pos[k]
            cosines.append(float(v @ d / (np.linalg.norm(v) * np.linalg.norm(d))))
    assert len(cosines) >= 12
    return cosines


def _closest(pos, k):
    return pos[PREDATORS][np.nanargmin(pairwise(pos[PREDATORS])[k])]


def _farthest(pos, k):
    return pos[PREDATORS][np.nanargmax(pairwise(pos[PREDATORS])[k])]


NAMED_TARGETS = {
    "chase_prey": lambda pos: [pos[PREY]] * 3,
    "chase_closest": lambda pos: [_closest(pos, k) for k in PREDATORS],
    "chase_farthest": lambda pos: [_farthest(pos, k) for k in PREDATORS],
    "follow_leader": lambda pos: [pos[PREY], pos[0], pos[0]],
    "intercept": lambda pos: [pos[PREY]] * 3,  # the prey is at rest: no lead
}


@pytest.mark.parametrize("kind", list(NAMED_TARGETS))
def test_predators_first_move_toward_the_target_their_type_names(kind):
    # Each step is one axis move: the best one lies within 45° of the wanted direction.
    assert min(first_step_headings(kind, NAMED_TARGETS[kind])) > 0.7


def test_closest_and_farthest_differ_where_they_should():
    # Predator 1 sits between predator 0 (closer, at −x) and predator 2 (farther, at +x).
    layout = [(-0.3, 0.0), (0.0, 0.0), (0.7, 0.0), (0.0, -0.8)]
    moves = {}
    for kind in ("chase_closest", "chase_farthest"):
        env = predator_env(kind)
        env.reset(seed=0)
        place(env, layout)
        moves[kind] = env.scripted_actions()[1]
    assert moves == {"chase_closest": 1, "chase_farthest": 2}  # −x, +x


def mean_over_seeds(kind: str, measure, steps: int = 20) -> tuple[float, float]:
    """Mean of measure(positions) at reset and after `steps` steps with the prey idle."""
    env = predator_env(kind)
    before, after = [], []
    for seed in SEEDS:
        env.reset(seed=seed)
        before.append(measure(positions(env)))
        run_still(env, steps)
        after.append(measure(positions(env)))
    return float(np.mean(before)), float(np.mean(after))


def to_prey(pos):
    return np.linalg.norm(pos[PREDATORS] - pos[PREY], axis=1).mean()


@pytest.mark.parametrize("kind", ["chase_prey", "intercept"])
def test_chasers_close_in_on_an_idle_prey(kind):
    before, after = mean_over_seeds(kind, to_prey)
    assert after < 0.5 * before
    _, patrol_after = mean_over_seeds("patrol", to_prey)
    assert after < 0.6 * patrol_after  # and a type that ignores the prey does not


def test_chase_closest_pairs_the_predators_up():
    def nearest(pos):
        return np.nanmin(pairwise(pos[PREDATORS]), axis=1).mean()

    before, after = mean_over_seeds("chase_closest", nearest)
    assert after < 0.5 * before
    assert mean_over_seeds("chase_closest", to_prey)[1] > 0.7  # the prey is not their goal


def test_chase_farthest_draws_the_pack_together():
    def spread(pos):
        return np.nanmax(pairwise(pos[PREDATORS]))

    before, after = mean_over_seeds("chase_farthest", spread)
    assert after < 0.5 * before


def test_follow_leader_leader_chases_and_the_others_follow_it():
    def to_leader(pos):
        return np.linalg.norm(pos[[1, 2]] - pos[0], axis=1).mean()

    def leader_to_prey(pos):
        return np.linalg.norm(pos[0] - pos[PREY])

    before, after = mean_over_seeds("follow_leader", to_leader)
    assert after < 0.5 * before and after < 0.4
    before, after = mean_over_seeds("follow_leader", leader_to_prey)
    assert after < 0.5 * before


def test_intercept_leads_a_moving_prey():
    # Prey at the origin running +x; a predator straight below. Chasing aims up, at the prey;
    # intercepting aims ahead of it, so its first move is +x.
    layout = [(0.0, -0.8), (-0.8, 0.8), (0.8, 0.8), (0.0, 0.0)]
    vel = [(0, 0), (0, 0), (0, 0), (1.3, 0.0)]
    moves = {}
    for kind in ("chase_prey", "intercept"):
        env = predator_env(kind)
        env.reset(seed=0)
        place(env, layout, vel)
        moves[kind] = env.scripted_actions()[0]
    assert moves == {"chase_prey": 4, "intercept": 2}


def test_surround_posts_the_predators_around_the_prey():
    env = predator_env("surround")
    for seed in SEEDS:
        env.reset(seed=seed)
        run_still(env, 30)
        pos = positions(env)
        rel = pos[PREDATORS] - pos[PREY]
        assert np.all(np.linalg.norm(rel, axis=1) < 0.5)
        bearings = np.sort(np.arctan2(rel[:, 1], rel[:, 0]))
        gaps = np.diff(np.concatenate([bearings, bearings[:1] + 2 * np.pi]))
        assert gaps.min() > np.pi / 3, (seed, gaps)  # from three sides, not from one


def test_patrol_circles_the_centre_counter_clockwise():
    env = predator_env("patrol")
    for seed in SEEDS:
        env.reset(seed=seed)
        place(env, [*positions(env)[PREDATORS], (0.0, 0.0)])  # prey out of their way
        run_still(env, 30)
        a0 = np.arctan2(*positions(env)[PREDATORS][:, ::-1].T)
        run_still(env, 10)
        pos = positions(env)[PREDATORS]
        radius = np.linalg.norm(pos, axis=1)
        assert np.all(np.abs(radius - 0.6) < 0.15), (seed, radius)
        turned = (np.arctan2(pos[:, 1], pos[:, 0]) - a0 + np.pi) % (2 * np.pi) - np.pi
        assert np.all(turned > 0.3), (seed, turned)  # ~0.83 rad/s for 1 s
        assert np.nanmin(pairwise(pos)) > 0.8  # 120° apart: chords of ~1.04


# ---------------------------------------------------------- teammate behaviours
def spread_run(kind: str, seed: int, steps: int = 50):
    env = AdhocSpread(types=[kind])
    env.reset(seed=seed)
    start = positions(env)
    run_still(env, steps)
    landmarks = np.array([lm.state.p_pos for lm in env.world.landmarks])
    return start, positions(env), landmarks


def test_nearest_landmark_teammates_settle_on_their_nearest_landmark():
    for seed in SEEDS:
        _, pos, lm = spread_run("nearest_landmark", seed)
        d = np.linalg.norm(pos[[1, 2], None] - lm[None], axis=-1)  # [teammate, landmark]
        shared = np.argmin(d[0]) == np.argmin(d[1])  # both chose one: two bodies of 0.15 share it
        assert np.all(d.min(axis=1) < (0.35 if shared else 0.2)), (seed, d)


def test_fixed_landmark_teammate_k_goes_to_landmark_k():
    for seed in SEEDS:
        _, pos, lm = spread_run("fixed_landmark", seed)
        for k in (1, 2):
            assert np.linalg.norm(lm[k] - pos[k]) < 0.2, (seed, k)


def test_avoid_learner_teammates_take_the_landmarks_far_from_the_learner():
    for seed in SEEDS:
        start, pos, lm = spread_run("avoid_learner", seed)
        far_first = np.argsort(-np.linalg.norm(lm - pos[0], axis=1))
        assert np.linalg.norm(lm[far_first[0]] - pos[1]) < 0.2, seed
        assert np.linalg.norm(lm[far_first[1]] - pos[2]) < 0.2, seed


def test_crowd_learner_teammates_contest_the_learners_landmark():
    for seed in SEEDS:
        _, pos, lm = spread_run("crowd_learner", seed)
        nearest = lm[np.argmin(np.linalg.norm(lm - pos[0], axis=1))]
        assert np.all(np.linalg.norm(pos[[1, 2]] - nearest, axis=1) < 0.35), seed  # two bodies of 0.15


def test_follow_learner_teammates_shadow_the_learner_without_shoving_it():
    for seed in SEEDS:
        start, pos, _ = spread_run("follow_learner", seed)
        gap = np.linalg.norm(pos[[1, 2]] - pos[0], axis=1)
        assert np.all((gap > 0.25) & (gap < 0.55)), (seed, gap)
        assert np.linalg.norm(pos[0] - start[0]) < 0.3, seed  # the learner stayed about put


def test_still_teammates_do_not_move():
    checked = 0
    for seed in SEEDS:
        start, pos, _ = spread_run("still", seed)
        if np.nanmin(pairwise(start)) < 0.35:  # touching at the start: contact pushes them
            continue
        np.testing.assert_array_equal(pos[[1, 2]], start[[1, 2]])
        checked += 1
    assert checked >= 3
