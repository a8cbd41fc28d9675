"""The team PPO loss and what feeds it: masked slots never produce NaN, dead agents do not
count, the density term is per sample, value normalisation and team GAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing

from marl.learners.gae import TeamGAE
from marl.learners.joint_ppo import joint_ppo_loss
from marl.modules.joint_policy import DAG_DENSITY
from marl.modules.value_norm import ValueNorm
from tests.test_joint_policy import A, N, make_continuous_module, make_module, make_obs

KW = {"clip_param": 0.2, "vf_loss_coeff": 1.0, "entropy_coeff": 0.01, "update_value_norm": False}


def _batch(module, obs, out, b):
    g = torch.Generator().manual_seed(3)
    return {
        Columns.OBS: obs,
        Columns.ACTIONS: out[Columns.ACTIONS],
        Columns.ACTION_DIST_INPUTS: out[Columns.ACTION_DIST_INPUTS].clone(),
        Postprocessing.ADVANTAGES: torch.randn(b, generator=g),
        Postprocessing.VALUE_TARGETS: torch.randn(b, generator=g),
    }


def test_dead_continuous_agent_with_far_old_mean_gives_a_finite_loss_equal_to_the_loss_without_it():
    b, k = 16, 2
    m = make_continuous_module({"mode": "empty"}, k=k)
    obs = make_obs(b=b)
    obs["action_mask"] = torch.ones(b, N, 1)
    obs["alive"][:, 1] = 0.0  # agent 1 is dead: its action is the zero it never sampled
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    benign = _batch(m, obs, out, b)
    extreme = {**benign, Columns.ACTION_DIST_INPUTS: benign[Columns.ACTION_DIST_INPUTS].clone()}
    params = extreme[Columns.ACTION_DIST_INPUTS].view(b, N, 2 * k)
    params[:, 1, :k] = 100.0  # old mean far from the zero action
    params[:, 1, k:] = -5.0  # and a small old log_std: old log-prob ~ -1e8, ratio overflows
    fwd = m.forward_train(extreme)
    loss, stats = joint_ppo_loss(m, extreme, fwd, **KW)
    assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    ref, _ = joint_ppo_loss(m, benign, m.forward_train(benign), **KW)
    assert torch.allclose(loss, ref)


def test_dead_discrete_agent_does_not_count_in_policy_loss_or_entropy():
    b = 32
    m = make_module({"mode": "empty"})
    obs = make_obs(b=b)
    obs["alive"][:, 2] = 0.0
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    batch = _batch(m, obs, out, b)
    fwd = m.forward_train(batch)
    loss, stats = joint_ppo_loss(m, batch, fwd, **KW)
    # The dead agent's old and new logits can be anything: the loss does not move.
    other = {**batch, Columns.ACTION_DIST_INPUTS: batch[Columns.ACTION_DIST_INPUTS].clone()}
    other[Columns.ACTION_DIST_INPUTS].view(b, N, A)[:, 2] = torch.tensor([50.0, -50.0, 3.0, 0.0])
    fwd2 = {**fwd, Columns.ACTION_DIST_INPUTS: fwd[Columns.ACTION_DIST_INPUTS].clone()}
    fwd2[Columns.ACTION_DIST_INPUTS].view(b, N, A)[:, 2] = torch.tensor([-9.0, 9.0, 0.0, 1.0])
    loss2, stats2 = joint_ppo_loss(m, other, fwd2, **KW)
    assert torch.allclose(loss, loss2)
    # Entropy: the mean over the living agents only.
    logp = torch.log_softmax(fwd[Columns.ACTION_DIST_INPUTS].view(b, N, A), -1)
    ent = -(logp.exp() * logp).sum(-1)
    assert float(stats["entropy"]) == pytest.approx(float(ent[:, :2].mean()), rel=1e-5)
    assert float(stats2["entropy"]) == pytest.approx(float(ent[:, :2].mean()), rel=1e-5)
    # Policy loss at ratio 1: minus the mean advantage over living agents' rows.
    assert float(stats["policy_loss"]) == pytest.approx(-float(batch[Postprocessing.ADVANTAGES].mean()), rel=1e-5)


def test_density_term_is_the_mean_of_per_sample_distances_to_tau():
    # A batch that mixes empty (ρ = 0) and full (ρ = 1) graphs has mean density τ = 0.5, so
    # |mean ρ − τ| is 0; the per-sample term E|ρ − τ| is 0.5 (Chen & Zhang 2023, eq. 9).
    b = 8
    m = make_module({"mode": "empty"})
    obs = make_obs(b=b)
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    batch = _batch(m, obs, out, b)
    fwd = m.forward_train(batch)
    rho = torch.tensor([0.0, 1.0] * (b // 2))
    base, _ = joint_ppo_loss(m, batch, fwd, **KW)
    with_term, stats = joint_ppo_loss(m, batch, {**fwd, DAG_DENSITY: rho}, density=(0.5, 2.0), **KW)
    assert float(stats["dag_density"]) == pytest.approx(0.5)
    assert float(with_term - base) == pytest.approx(2.0 * 0.5)
    uniform, _ = joint_ppo_loss(m, batch, {**fwd, DAG_DENSITY: torch.full((b,), 0.5)}, density=(0.5, 2.0), **KW)
    assert float(uniform - base) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------ ValueNorm
def test_value_norm_tracks_debiased_running_moments():
    vn = ValueNorm(1, beta=0.9)
    xs = [torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0], [7.0]])]
    for x in xs:
        vn.update(x)
    # Debiased EMA of the batch means (2, 6) and of the batch mean squares (5, 37).
    w = np.array([0.9 * 0.1, 0.1]) / (1 - 0.9**2)
    mean, mean_sq = w @ [2.0, 6.0], w @ [5.0, 37.0]
    z = vn.normalize(torch.tensor([[4.0]]))
    assert float(z) == pytest.approx((4.0 - mean) / np.sqrt(mean_sq - mean**2), rel=1e-5)
    assert float(vn.denormalize(z)) == pytest.approx(4.0, rel=1e-5)


def test_value_norm_updates_each_column_that_has_rows_and_keeps_the_others():
    vn = ValueNorm(3, beta=0.5)
    vn.update(torch.tensor([[1.0, 2.0, 3.0]]))
    before = (vn.running_mean.clone(), vn.running_mean_sq.clone(), vn.debias.clone())
    x = torch.tensor([[10.0, 20.0, 30.0], [12.0, 22.0, 32.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # agent 2 dead in this minibatch
    vn.update(x, mask)
    assert vn.running_mean[2] == before[0][2] and vn.running_mean_sq[2] == before[1][2]
    assert vn.debias[2] == before[2][2]
    assert vn.running_mean[0] == pytest.approx(0.25 * 1.0 + 0.5 * 11.0)
    assert vn.running_mean[1] == pytest.approx(0.25 * 2.0 + 0.5 * 21.0)
    mean, _ = vn._moments()
    assert mean.tolist() == pytest.approx([(0.25 * 1 + 0.5 * 11) / 0.75, (0.25 * 2 + 0.5 * 21) / 0.75, 3.0])


# ---------------------------------------------------------------------------------- GAE
# One 3-step episode plus RLlib's artificial extra step (loss mask 0) that carries V(s_3).
# γ = 0.9, λ = 0.5, rewards 1 per step. Hand-computed targets (advantage + value):
#   values [1, 2, 3, (4)], terminated at t=2: δ = [1.8, 1.7, -2]; A = [2.16, 0.8, -2]
#     -> targets [3.16, 2.8, 1.0]
#   truncated (bootstrap V(s_3) = 4): δ = [1.8, 1.7, 1.6]; A = [2.889, 2.42, 1.6]
#     -> targets [3.889, 4.42, 4.6]
#   values [0, 0, 0, (10)]: terminated A = [1.6525, 1.45, 1]; truncated A = [3.475, 5.5, 10]
HAND = {
    "terminated": ([3.16, 2.8, 1.0], [1.6525, 1.45, 1.0]),
    "truncated": ([3.889, 4.42, 4.6], [3.475, 5.5, 10.0]),
}


def _gae_batch(module, values, how):
    # RLlib's layout (AddOneTsToEpisodesAndTruncate): the flag sits on the last real step.
    term = [0, 0, 1, 0] if how == "terminated" else [0, 0, 0, 0]
    trunc = [0, 0, 0, 0] if how == "terminated" else [0, 0, 1, 0]
    obs = make_obs(b=4)
    obs["alive"][:] = 1.0
    module.compute_values = lambda batch, embeddings=None: torch.tensor(values, dtype=torch.float32)
    return {
        "team_0": {
            Columns.OBS: obs,
            Columns.REWARDS: torch.tensor([1.0, 1.0, 1.0, 0.0]),
            Columns.TERMINATEDS: torch.tensor(term, dtype=torch.bool),
            Columns.TRUNCATEDS: torch.tensor(trunc, dtype=torch.bool),
            Columns.LOSS_MASK: torch.tensor([1, 1, 1, 0], dtype=torch.bool),
        }
    }


@pytest.mark.parametrize("how", ["terminated", "truncated"])
def test_team_gae_centralised_terminated_vs_truncated(how):
    m = make_module({"mode": "empty"})
    batch = _gae_batch(m, [1.0, 2.0, 3.0, 4.0], how)
    out = TeamGAE(gamma=0.9, lambda_=0.5)(rl_module={"team_0": m}, episodes=[], batch=batch)["team_0"]
    targets = out[Postprocessing.VALUE_TARGETS].reshape(-1)[:3]
    assert targets.tolist() == pytest.approx(HAND[how][0], abs=1e-4)
    adv = np.array(HAND[how][0]) - [1.0, 2.0, 3.0]
    expected = (adv - adv.mean()) / adv.std()  # standardised over the real steps only
    assert out[Postprocessing.ADVANTAGES].reshape(-1)[:3].tolist() == pytest.approx(expected.tolist(), abs=1e-4)


@pytest.mark.parametrize("how", ["terminated", "truncated"])
def test_team_gae_per_agent_critics_terminated_vs_truncated(how):
    m = make_module({"mode": "empty"}, critic="decentralized")
    values = [[1.0, 0.0, 1.0], [2.0, 0.0, 2.0], [3.0, 0.0, 3.0], [4.0, 10.0, 4.0]]
    batch = _gae_batch(m, values, how)
    batch["team_0"][Columns.OBS]["alive"][:, 2] = 0.0  # agent 2's column does not count
    out = TeamGAE(gamma=0.9, lambda_=0.5)(rl_module={"team_0": m}, episodes=[], batch=batch)["team_0"]
    targets = out[Postprocessing.VALUE_TARGETS][:3]
    assert targets[:, 0].tolist() == pytest.approx(HAND[how][0], abs=1e-4)
    assert targets[:, 1].tolist() == pytest.approx(HAND[how][1], abs=1e-4)
    adv = np.stack([np.array(HAND[how][0]) - [1, 2, 3], HAND[how][1]], 1)
    expected = (adv - adv.mean()) / adv.std()
    assert out[Postprocessing.ADVANTAGES][:3, :2].numpy() == pytest.approx(expected, abs=1e-4)


def test_unexecuted_actions_leave_the_surrogate_and_nothing_else():
    """A slot whose action the env did not execute (partial control) has no policy term: its
    old log-prob can be anything. Executed slots and the value and entropy terms are kept."""
    b = 32
    m = make_module({"mode": "empty"})
    obs = make_obs(b=b)
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    batch = _batch(m, obs, out, b)
    executed = torch.ones(b, N)
    executed[::2, 1] = 0.0  # agent 1's action ran on odd rows only
    batch["executed"] = executed
    moved = {**batch, Columns.ACTION_DIST_INPUTS: batch[Columns.ACTION_DIST_INPUTS].clone()}
    moved[Columns.ACTION_DIST_INPUTS].view(b, N, A)[::2, 1] += torch.randn(b // 2, A) * 3
    loss, stats = joint_ppo_loss(m, batch, m.forward_train(batch), **KW)
    loss_moved, stats_moved = joint_ppo_loss(m, moved, m.forward_train(moved), **KW)
    assert torch.allclose(loss, loss_moved) and torch.allclose(stats["approx_kl"], stats_moved["approx_kl"])
    # Without the flags the moved old log-probs do count.
    plain = {k: v for k, v in moved.items() if k != "executed"}
    assert not torch.allclose(joint_ppo_loss(m, plain, m.forward_train(plain), **KW)[0], loss)
    # The surrogate is the mean over executed slots only (ratio 1 before any update).
    adv = batch[Postprocessing.ADVANTAGES].reshape(b, 1).expand(b, N)
    expected = -(adv * executed).sum() / executed.sum()
    assert torch.allclose(stats[POLICY_LOSS_KEY], expected, atol=1e-6)
    # Entropy and value terms still count every alive agent.
    ref = {**batch, "executed": torch.ones(b, N)}
    _, ref_stats = joint_ppo_loss(m, ref, m.forward_train(ref), **KW)
    assert torch.allclose(stats[ENTROPY_KEY], ref_stats[ENTROPY_KEY])
    assert torch.allclose(stats[VF_LOSS_KEY], ref_stats[VF_LOSS_KEY])


def test_explained_variance_of_the_critic_is_reported():
    """``vf_explained_var`` = 1 - Var[target - v] / Var[target] on normalised targets: 1 for a
    perfect critic, 0 for a constant one."""
    b = 64
    m = make_module({"mode": "empty"})
    obs = make_obs(b=b)
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    batch = _batch(m, obs, out, b)
    fwd = m.forward_train(batch)
    targets = m.value_norm.normalize(batch[Postprocessing.VALUE_TARGETS].reshape(b, 1))
    _, perfect = joint_ppo_loss(m, batch, {**fwd, Columns.VF_PREDS: targets.clone()}, **KW)
    _, constant = joint_ppo_loss(m, batch, {**fwd, Columns.VF_PREDS: torch.full((b, 1), 0.3)}, **KW)
    _, noisy = joint_ppo_loss(m, batch, {**fwd, Columns.VF_PREDS: targets + targets.std() * torch.randn(b, 1)}, **KW)
    assert float(perfect["vf_explained_var"]) == pytest.approx(1.0, abs=1e-6)
    assert float(constant["vf_explained_var"]) == pytest.approx(0.0, abs=1e-6)
    assert float(noisy["vf_explained_var"]) < 0.5
