"""Stealth measures (adversaries/stealth.py) without RLlib: the action total variation (exact
for discrete actions, Monte-Carlo for continuous ones, ε·TV under partial control), and the
state-distribution shift (two-sample AUC, binned KL) on synthetic samples and on real MPE
rollouts; the partial-control budget check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from adversaries import stealth
from adversaries.config import _check_budget
from adversaries.registry import get_plugin
from envs.adapter import TeamEnv
from marl.errors import ConfigError


# ------------------------------------------------------------------------- action TV
def test_categorical_tv_is_half_the_l1_distance():
    p, q = stealth.Categorical(np.array([0.5, 0.5, 0.0])), stealth.Categorical(np.array([0.1, 0.6, 0.3]))
    assert stealth.total_variation(p, q) == pytest.approx(0.5 * (0.4 + 0.1 + 0.3))
    assert stealth.total_variation(p, p) == 0.0
    one_hot = stealth.from_params(np.array([0.0, 3.0, -1e9]), discrete=True, deterministic=True)
    assert one_hot.probs.tolist() == [0.0, 1.0, 0.0]
    # Masked logits (-1e9) get no probability.
    assert stealth.from_params(np.array([0.0, 0.0, -1e9]), discrete=True).probs[2] == 0.0


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0, 3.0])
def test_gaussian_tv_estimate_matches_the_closed_form(shift):
    # Equal variances in 1-D: TV = 2Φ(|Δμ|/(2σ)) − 1.
    sigma = 0.5
    p = stealth.from_params(np.array([0.2, np.log(sigma)]), discrete=False)
    q = stealth.from_params(np.array([0.2 + shift, np.log(sigma)]), discrete=False)
    exact = 2 * stats.norm.cdf(shift / (2 * sigma)) - 1
    assert stealth.total_variation(p, q) == pytest.approx(exact, abs=0.06)  # ≈ 2.5 standard errors


def test_uniform_box_against_a_narrow_gaussian_is_nearly_disjoint():
    box = stealth.UniformBox(-np.ones(2), np.ones(2))
    narrow = stealth.DiagGaussian(np.zeros(2), np.full(2, 0.01))
    assert stealth.total_variation(box, narrow) > 0.95
    assert stealth.total_variation(box, box) == 0.0
    point = stealth.from_params(np.array([0.1, 0.2, 0.0, 0.0]), discrete=False, deterministic=True)
    assert stealth.total_variation(point, narrow) == 1.0 and stealth.total_variation(point, point) == 0.0


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_partial_control_tv_is_eps_times_the_takeover_tv_and_at_most_eps(eps):
    rng = np.random.default_rng(0)
    for _ in range(20):
        own = stealth.Categorical(stealth.softmax(rng.normal(size=5) * 3))
        attacker = stealth.Categorical(stealth.softmax(rng.normal(size=5) * 3))
        step = {"attacker": attacker, "budget": eps}
        gap = stealth.POLICY_IN_EFFECT_TV["partial_control"](own, step, None)
        # The mixture's TV computed from its probabilities: the identity is exact.
        mixture = stealth.Categorical((1 - eps) * own.probs + eps * attacker.probs)
        assert gap == pytest.approx(stealth.total_variation(mixture, own), abs=1e-12)
        assert gap == pytest.approx(eps * stealth.POLICY_IN_EFFECT_TV["takeover"](own, step, None))
        assert gap <= eps + 1e-12


# ----------------------------------------------------------------------- state shift
def test_auc_and_kl_on_synthetic_samples():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(600, 6)), rng.normal(size=(600, 6))
    far = rng.normal(size=(600, 6)) + np.array([3.0, 0, 0, 0, 0, 0])
    assert 0.4 <= stealth.classifier_auc(a, b) <= 0.6
    assert stealth.classifier_auc(a, far) > 0.95
    same, shifted = stealth.binned_kl(a, b), stealth.binned_kl(a, far)
    assert same < 0.1 and shifted > 1.0
    assert stealth.classifier_auc(a[:5], b) is None and stealth.binned_kl(a, b[:5]) is None
    constant = np.ones((50, 3))  # no variance at all: nothing to tell apart
    assert stealth.binned_kl(constant, constant) == pytest.approx(0.0)


def rollout_states(seeds, policy, sampling=0) -> tuple[list[np.ndarray], list[int]]:
    """Global states of simple_spread episodes (25 steps each) under a scripted joint policy
    whose draws follow (``sampling``, episode seed), and the episode (index) of each."""
    env = TeamEnv({"import": "mpe2.simple_spread_v3", "kwargs": {"N": 3, "max_cycles": 25}})
    states, groups = [], []
    for j, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng([sampling, seed])
        while True:
            states.append(obs["team_0"]["state"].copy())
            groups.append(j)
            obs, _, term, trunc, _ = env.step({"team_0": policy(rng)})
            if term["__all__"] or trunc["__all__"]:
                break
    env.close()
    return states, groups


def test_auc_and_kl_on_clean_and_shifted_rollouts():
    random = lambda rng: rng.integers(0, 5, 3)  # noqa: E731 - the "clean" team: uniform actions
    # As the evaluation pairs them: the same episode seeds (landmarks, starts), and the team's
    # sampling independent. Two clean sets cannot be told apart; a team whose agents 0 and 1
    # always move the same way can.
    clean_a = rollout_states(range(24), random, sampling=1)
    clean_b = rollout_states(range(24), random, sampling=2)
    drifting = rollout_states(range(24), lambda rng: np.array([1, 1, rng.integers(0, 5)]), sampling=3)
    shift = stealth.state_shift(clean_a[0], clean_b[0], clean_a[1], clean_b[1])
    assert shift["states"] == {"clean": 600, "attacked": 600}
    # The KL's finite-sample floor: 600 correlated states a side (stealth.binned_kl).
    assert 0.4 <= shift["state_auc"] <= 0.6 and shift["state_kl"] < 0.35
    moved = stealth.state_shift(clean_a[0], drifting[0], clean_a[1], drifting[1])
    assert moved["state_auc"] > 0.9 and moved["state_kl"] > max(1.0, 4 * shift["state_kl"])
    # Independent episode seeds too (24 landmark layouts a side): the classifier, scored on
    # held-out episodes, still finds nothing.
    other = rollout_states(range(100, 124), random, sampling=1)
    assert 0.4 <= stealth.classifier_auc(clean_a[0], other[0], clean_a[1], other[1]) <= 0.6


# --------------------------------------------------------------------------- budget
def test_gap_budget_is_required_and_in_the_closed_unit_interval():
    gap = get_plugin("gap")
    assert gap.threat_model == "partial_control" and gap.trains and not gap.white_box
    assert _check_budget(gap, 0.0) == 0.0 and _check_budget(gap, 1.0) == 1.0 and _check_budget(gap, 0.25) == 0.25
    for bad in (-0.1, 1.01, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="'adversary.budget': .* is out of range; expected the probability ε"):
            _check_budget(gap, bad)
    with pytest.raises(ConfigError, match="'adversary.budget' is required for adversary 'gap'"):
        _check_budget(gap, None)
    with pytest.raises(ConfigError, match="out of range"):  # the observation ball stays open at 0
        _check_budget(get_plugin("obs_pgd"), 0.0)
