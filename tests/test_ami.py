"""AMI (adversaries/ami): influence, shaped reward, MAA, oracle, and the learner connector,
on constructed victims and hand-made RLlib-shaped batches."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from torch.distributions import Categorical, Normal

from adversaries.ami.influence import (
    replace_adversary_slots,
    target_likelihood,
    unilateral_influence,
)
from adversaries.ami.learner import AMIRewardShaping
from adversaries.ami.maa import ActionModel, maa_loss, train_maa
from adversaries.ami.oracle import (
    clipped_surrogate_loss,
    nstep_returns,
    oracle_advantage,
    shift_one_step_earlier,
    train_oracle,
)
from adversaries.ami.params import AMIParams
from adversaries.ami.reward import RunningMeanStd
from adversaries.ami.sequences import JointSequences
from adversaries.ami.shaping import AMIShaper
from marl.modules import JointPolicyModule

N, A, S, D, C = 3, 4, 5, 6, 2  # agents, actions, state size, obs size, continuous dims
ADV = 1  # the attacked agent


# ----------------------------------------------------------------------------- fixtures
def attacker_space(continuous: bool = False) -> gym.spaces.Dict:
    box = gym.spaces.Box
    pja = box(-1, 1, (N, C), np.float32) if continuous else gym.spaces.MultiDiscrete([A] * N)
    return gym.spaces.Dict({
        "obs": box(-np.inf, np.inf, (1, D), np.float32),
        "state": box(-np.inf, np.inf, (S,), np.float32),
        "action_mask": box(0, 1, (1, A), np.float32),
        "alive": box(0, 1, (1,), np.float32),
        "prev_joint_action": pja,
        "joint_action_mask": box(0, 1, (N, A), np.float32),
        "attacked": box(0, 1, (N,), np.float32),
        "victim_visible": box(0, 1, (N,), np.float32),
    })


def attacker_module(continuous: bool = False, favoured: int | None = None) -> JointPolicyModule:
    """The attacker's policy; ``favoured``: an (almost) deterministic policy on that action."""
    torch.manual_seed(0)
    act = gym.spaces.Box(-1, 1, (1, C), np.float32) if continuous else gym.spaces.MultiDiscrete([A])
    module = JointPolicyModule(
        observation_space=attacker_space(continuous), action_space=act,
        model_config={"hidden": 16, "layers": 1, "graph": {"mode": "empty"}},
    )
    if favoured is not None:
        head = module.actor[-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-50.0)
            head.bias[favoured] = 50.0
    return module


def handmade_batch(lengths=(4, 3), continuous=False, seed=0, visible=None) -> dict:
    """A flat learner batch as RLlib's PPO learner connector leaves it: each episode chunk's
    real rows, then one phantom row (LOSS_MASK False) holding the chunk's last observation.
    Rewards are arbitrary; the first chunk terminates, the second is cut."""
    g = np.random.default_rng(seed)
    rows = sum(lengths) + len(lengths)
    obs = {
        "obs": g.normal(size=(rows, 1, D)).astype(np.float32),
        "state": g.normal(size=(rows, S)).astype(np.float32),
        "action_mask": np.ones((rows, 1, A), np.float32),
        "alive": np.ones((rows, 1), np.float32),
        "joint_action_mask": np.ones((rows, N, A), np.float32),
        "attacked": np.zeros((rows, N), np.float32),
        "victim_visible": np.ones((rows, N), np.float32) if visible is None else visible,
    }
    obs["attacked"][:, ADV] = 1.0
    if continuous:
        pja = g.uniform(-1, 1, size=(rows, N, C)).astype(np.float32)
        actions = g.uniform(-1, 1, size=(rows, 1, C)).astype(np.float32)
    else:
        pja = g.integers(0, A, size=(rows, N))
        actions = g.integers(0, A, size=(rows, 1))
    loss_mask, term, trunc, rew = [], [], [], []
    start = 0
    for c, length in enumerate(lengths):
        pja[start] = 0  # zeros at an episode's first step
        loss_mask += [True] * length + [False]
        term += [False] * (length - 1) + [c == 0] + [False]
        trunc += [False] * (length - 1) + [c != 0] + [False]
        rew += list(g.normal(size=length)) + [0.0]
        start += length + 1
    obs["prev_joint_action"] = pja
    batch = {
        Columns.OBS: {k: torch.as_tensor(v) for k, v in obs.items()},
        Columns.ACTIONS: torch.as_tensor(actions),
        Columns.REWARDS: torch.tensor(rew, dtype=torch.float32),
        Columns.TERMINATEDS: torch.tensor(term),
        Columns.TRUNCATEDS: torch.tensor(trunc),
        Columns.LOSS_MASK: torch.tensor(loss_mask),
    }
    return batch


class ConstructedVictims(ActionModel):
    """Victims whose next action is known: ``copy`` — every agent takes the adversary's current
    action; otherwise every agent repeats its own action and ignores the adversary."""

    def __init__(self, copy: bool, continuous: bool = False):
        kind = {"action_dim": C} if continuous else {"n_actions": A}
        super().__init__(S, N, hidden=4, recurrent=False, **kind)
        self.copy = copy

    def forward(self, state, action_code, next_mask=None):
        src = action_code[..., [ADV], :].expand_as(action_code) if self.copy else action_code
        src = src + 0.0 * self.fc_out.bias.sum()  # trainable (as in AMIShaper.shape), no effect
        if self.discrete:
            return Categorical(logits=10.0 * src)
        return Normal(src, torch.full_like(src, 0.5))


# ----------------------------------------------------------------------------- sequences
def test_sequences_follow_the_batch_rows():
    batch = handmade_batch(lengths=(4, 3))
    seq = JointSequences.from_batch(batch)
    pja = batch[Columns.OBS]["prev_joint_action"]
    assert seq.state.shape == (2, 4, S) and seq.joint_action.shape == (2, 4, N)
    assert seq.valid.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert seq.has_next.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    # a_t is row t+1's prev_joint_action; a_{t+1} is row t+2's. Chunk 2 starts at row 5.
    assert torch.equal(seq.joint_action[0, :4], pja[1:5])
    assert torch.equal(seq.joint_action[1, :3], pja[6:9])
    assert torch.equal(seq.next_action[0, :3], pja[2:5])
    assert seq.rows[1, :3].tolist() == [5, 6, 7]
    assert torch.equal(seq.final_state[1], batch[Columns.OBS]["state"][8])
    assert seq.bootstrap.tolist() == [0.0, 1.0]  # chunk 1 terminated, chunk 2 was cut


# ----------------------------------------------------------------------------- influence
def test_replace_adversary_slots_puts_the_action_in_the_attacked_slot():
    code = torch.zeros(2, N, A)
    attacked = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    adv = torch.eye(A)[torch.tensor([[3], [2]])]  # [2, 1, A]: one adversary action each
    out = replace_adversary_slots(code, attacked, adv)
    assert out[0, 1].argmax() == 3 and out[0, [0, 2]].sum() == 0
    two = replace_adversary_slots(code, attacked, torch.eye(A)[torch.tensor([[1, 2], [1, 2]])])
    assert two[1, 0].argmax() == 1 and two[1, 2].argmax() == 2 and two[1, 1].sum() == 0


def influences(victims, seq, targets, samples=10):
    torch.manual_seed(0)
    out = {}
    for name, action in (("a0", 0), ("a2", 2), ("uniform", None)):
        logits = torch.zeros(*seq.state.shape[:2], 1, A)
        if action is not None:
            logits[..., action] = 50.0
        out[name] = unilateral_influence(victims, seq, logits, targets, samples=samples)
    return out


def test_influence_is_zero_when_victims_ignore_the_adversary():
    seq = JointSequences.from_batch(handmade_batch())
    targets = torch.full((2, 4, N), 2)
    s = influences(ConstructedVictims(copy=False), seq, targets)
    # The adversary's policy changes nothing: s_t is the same under every policy ...
    assert torch.equal(s["a0"], s["a2"]) and torch.equal(s["a0"], s["uniform"])
    # ... and equals the distance of the victims' own (unchanged) actions to the targets.
    victims = [j for j in range(N) if j != ADV]
    expected = 2.0 * (seq.joint_action[..., victims] != 2).sum(-1) * seq.valid
    assert torch.equal(s["a0"], expected)


def test_influence_is_positive_when_victims_copy_the_adversary():
    seq = JointSequences.from_batch(handmade_batch())
    targets = torch.full((2, 4, N), 2)
    s = influences(ConstructedVictims(copy=True), seq, targets)
    n_victims = N - 1
    # Pushing the victims onto the target zeroes the distance; away from it, 2 per victim.
    assert torch.equal(s["a2"], torch.zeros_like(s["a2"]))
    assert torch.equal(s["a0"], 2.0 * n_victims * seq.valid)
    # A uniform adversary: p̄_j spreads over the actions, in between.
    real = seq.valid.bool()
    assert (s["uniform"][real] > 0).all() and (s["uniform"][real] < 2.0 * n_victims).all()
    # The adversary's policy moves s_t: the influence the shaped reward rewards.
    assert (s["a0"] - s["a2"])[real].min() > 0


def test_influence_counts_only_victims_in_sight():
    visible = np.ones((9, N), np.float32)
    visible[:, 2] = 0.0  # agent 2 is out of the adversary's sight
    seq = JointSequences.from_batch(handmade_batch(visible=visible))
    s = influences(ConstructedVictims(copy=True), seq, torch.full((2, 4, N), 2))
    assert torch.equal(s["a0"], 2.0 * seq.valid)  # agent 0 only; the adversary never counts


def test_continuous_likelihood_is_higher_when_victims_are_pushed_to_the_target():
    seq = JointSequences.from_batch(handmade_batch(continuous=True))
    targets = torch.full((2, 4, N, C), 0.5)
    victims = ConstructedVictims(copy=True, continuous=True)
    std = torch.full((2, 4, 1, C), 1e-3)
    on = target_likelihood(victims, seq, torch.full((2, 4, 1, C), 0.5), std, targets)
    off = target_likelihood(victims, seq, torch.full((2, 4, 1, C), -0.5), std, targets)
    assert on.shape == (2, 4)
    density_at_mean = 1.0 / (0.5 * math.sqrt(2 * math.pi))
    real = seq.valid.bool()
    # Σ over the 2 victims and C dims of N(target | target, 0.5).
    assert torch.allclose(on[real], torch.full_like(on[real], density_at_mean * 2 * C), atol=1e-3)
    assert (off[real] < on[real]).all()
    ignore = ConstructedVictims(copy=False, continuous=True)
    a = target_likelihood(ignore, seq, torch.full((2, 4, 1, C), 0.5), std, targets)
    b = target_likelihood(ignore, seq, torch.full((2, 4, 1, C), -0.5), std, targets)
    assert torch.allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- shaped reward
def deterministic_shaper(continuous=False, **params) -> AMIShaper:
    return AMIShaper(attacker_space(continuous), AMIParams(**params))


def test_shaped_reward_equals_the_formula_on_a_handmade_batch():
    visible = np.ones((9, N), np.float32)
    visible[[1, 2], 2] = 0.0  # rows 1-2: victim 2 out of sight
    batch = handmade_batch(visible=visible)
    shaper = deterministic_shaper()
    shaper.maa = ConstructedVictims(copy=True)
    seq = JointSequences.from_batch(batch)
    module = attacker_module(favoured=0)  # the adversary always plays 0
    targets = torch.full((2, 4, N), 2)
    influence, shaped = shaper.influence_and_reward(module, batch, seq, targets)
    # s_t = 2 per visible victim (prediction 0, target 2); r' = r_adv − 0.1·s_t.
    n_visible = torch.tensor([[2, 1, 1, 2], [2, 2, 2, 0]], dtype=torch.float32) * seq.valid
    assert torch.equal(influence, 2.0 * n_visible)
    r = batch[Columns.REWARDS]
    expected = torch.stack([r[0:4], torch.cat([r[5:8], r.new_zeros(1)])]) - 0.1 * 2.0 * n_visible
    assert torch.allclose(shaped, expected)

    shaper.params = AMIParams(influence_coeff=0.5)
    _, shaped = shaper.influence_and_reward(module, batch, seq, targets)
    assert torch.allclose(shaped, expected + (0.1 - 0.5) * 2.0 * n_visible)


def test_running_standardisation_matches_the_pooled_statistics():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(50, generator=g) * 3 + 2, torch.randn(70, generator=g) - 1
    rms = RunningMeanStd()
    rms.update(x1)
    out = rms.standardize(x2)
    pooled = torch.cat([x1, x2]).double()
    assert rms.mean == pytest.approx(float(pooled.mean()), abs=1e-4)
    assert rms.var == pytest.approx(float(pooled.var(unbiased=False)), rel=1e-4)
    expected = (x2 - pooled.mean()) / pooled.var(unbiased=False).sqrt()
    assert torch.allclose(out, expected.float(), atol=1e-4)


def test_shape_rewrites_rewards_with_the_standardised_shaped_reward():
    batch = handmade_batch()
    before = batch[Columns.REWARDS].clone()
    shaper = deterministic_shaper()
    shaper.maa = ConstructedVictims(copy=True)
    module = attacker_module(favoured=0)
    # Make the oracle's target deterministic too: action 2 for everyone.
    with torch.no_grad():
        shaper.oracle.policy.fc_out.weight.zero_()
        shaper.oracle.policy.fc_out.bias.copy_(torch.tensor([0, 0, 50.0, 0] * N))
    stats = shaper.shape(module, batch)
    seq = JointSequences.from_batch(handmade_batch())
    raw = seq.reward - 0.1 * 2.0 * (N - 1) * seq.valid
    raw = raw[seq.valid.bool()].double()
    expected = ((raw - raw.mean()) / raw.std(unbiased=False)).float()
    real = batch[Columns.LOSS_MASK]
    assert torch.allclose(batch[Columns.REWARDS][real], expected, atol=1e-3)
    assert torch.equal(batch[Columns.REWARDS][~real], before[~real])  # phantom rows untouched
    assert stats["influence_mean"] == pytest.approx(2.0 * (N - 1))


# ----------------------------------------------------------------------------- MAA
def toy_sequences(chunks=8, length=12, seed=0) -> JointSequences:
    """Victims follow a deterministic rule: a_{t+1,j} = (a_t,j + j + 1) mod A."""
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(chunks, length + 1, N, dtype=torch.long)
    a[:, 0] = torch.randint(0, A, (chunks, N), generator=g)
    for t in range(length):
        a[:, t + 1] = (a[:, t] + torch.arange(1, N + 1)) % A
    a[:, :, ADV] = torch.randint(0, A, (chunks, length + 1), generator=g)  # the adversary: noise
    ones = torch.ones(chunks, length)
    attacked = torch.zeros(chunks, length, N)
    attacked[..., ADV] = 1.0
    has_next = ones.clone()
    has_next[:, -1] = 0
    return JointSequences(
        state=torch.randn(chunks, length, S, generator=g), joint_action=a[:, :-1],
        next_action=a[:, 1:], next_mask=torch.ones(chunks, length, N, A), attacked=attacked,
        visible=torch.ones(chunks, length, N), reward=torch.zeros(chunks, length), valid=ones,
        has_next=has_next, rows=torch.zeros(chunks, length, dtype=torch.long),
        final_state=torch.zeros(chunks, S), bootstrap=torch.ones(chunks),
    )


def test_maa_learns_a_deterministic_next_action_mapping():
    torch.manual_seed(0)
    seq = toy_sequences(chunks=4, length=8)
    maa = ActionModel(S, N, n_actions=A, hidden=32)
    optimizer = torch.optim.Adam(maa.parameters(), lr=2e-2)
    start = float(maa_loss(maa, seq).detach())
    stats = train_maa(maa, optimizer, seq, epochs=80, grad_clip=10.0)
    assert start > 1.0  # about log(4)
    assert stats["maa_loss"] < 0.1 * start
    assert stats["maa_accuracy"] > 0.95


def test_maa_loss_ignores_the_adversary_slot():
    seq = toy_sequences()
    maa = ActionModel(S, N, n_actions=A)
    base = float(maa_loss(maa, seq))
    seq.next_action = seq.next_action.clone()
    seq.next_action[..., ADV] = (seq.next_action[..., ADV] + 1) % A
    assert float(maa_loss(maa, seq)) == pytest.approx(base)


def test_continuous_maa_shapes_and_training():
    torch.manual_seed(0)
    seq = JointSequences.from_batch(handmade_batch(continuous=True))
    for recurrent in (False, True):
        maa = ActionModel(S, N, action_dim=C, recurrent=recurrent)
        dist = maa.sequence_dist(seq)
        assert dist.mean.shape == (2, 4, N, C)
        assert maa.log_prob(dist, seq.next_action).shape == (2, 4, N)
        opt = torch.optim.Adam(maa.parameters(), lr=1e-2)
        stats = train_maa(maa, opt, seq, epochs=15, grad_clip=10.0)
        assert stats["maa_loss"] < stats["maa_loss_first"]


# ----------------------------------------------------------------------------- oracle
def test_oracle_advantage_is_shifted_one_step_earlier():
    adv = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 0.0]])
    valid = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    out = shift_one_step_earlier(adv, valid)
    assert out.tolist() == [[2.0, 3.0, 4.0, 0.0], [6.0, 7.0, 0.0, 0.0]]


def test_oracle_nstep_returns():
    r = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0]])
    v = torch.tensor([[10.0, 20.0, 30.0], [5.0, 6.0, 0.0]])
    valid = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    final = torch.tensor([0.0, 100.0])  # chunk 0 terminated; chunk 1 cut: V(s_T) = 100
    g = 0.9
    out = nstep_returns(r, v, final, valid, gamma=g, nstep=2)
    expected = [
        [1 + g * 2 + g**2 * 30, 2 + g * 3 + 0.0, 3.0],
        [1 + g * 1 + g**2 * 100, 1 + g * 100, 0.0],
    ]
    assert torch.allclose(out, torch.tensor(expected))


def test_oracle_advantage_uses_the_reward_one_step_later():
    shaper = deterministic_shaper()
    oracle = shaper.oracle
    with torch.no_grad():  # V ≡ 0: the TD error is the (1-step, γ = 0) return, r_t
        for critic in (oracle.critic, oracle.target_critic):
            critic.net[-1].weight.zero_()
            critic.net[-1].bias.zero_()
    seq = toy_sequences(chunks=2, length=4)
    reward = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    td, adv = oracle_advantage(oracle, seq, reward, gamma=0.0, nstep=1)
    assert torch.equal(td, reward)
    assert adv.tolist() == [[2.0, 3.0, 4.0, 0.0], [6.0, 7.0, 8.0, 0.0]]


def test_oracle_clipped_surrogate():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5]))  # ratios against old log-prob 0
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last one is masked out
    loss = clipped_surrogate_loss(logp, torch.zeros(4), adv, weight, clip=0.2)
    # min(1.5, 1.2)·1 = 1.2; min(−0.5, −0.8) = −0.8; min(1.1, 1.1) = 1.1
    assert float(loss) == pytest.approx(-(1.2 - 0.8 + 1.1) / 3)


def test_oracle_training_raises_targets_followed_by_a_high_reward():
    """The oracle's target at t is paid by the reward at t+1 (the shifted advantage)."""
    torch.manual_seed(0)
    shaper = deterministic_shaper(oracle_lr=1e-2)
    seq = toy_sequences(chunks=4, length=6)
    targets, old_logp = shaper.oracle.sample_targets(seq)
    good = (targets[..., 0] == 1).float()  # victim 0's target at t was action 1 ...
    reward = torch.zeros_like(good)
    reward[:, 1:] = good[:, :-1] * 5.0  # ... paid at t+1
    train_oracle(
        shaper.oracle, shaper.oracle_optimizer, shaper.critic_optimizer, seq, targets, old_logp,
        reward, epochs=5, clip=0.2, gamma=0.99, nstep=5, tau=0.01, grad_clip=10.0,
    )
    with torch.no_grad():
        p1 = shaper.oracle.policy.sequence_dist(seq).probs[..., 0, 1]  # victim 0, action 1
    mask = good.bool()
    assert p1[mask].mean() > old_logp[..., 0].exp()[mask].mean()


# ----------------------------------------------------------------------------- connector
@pytest.mark.parametrize("continuous", [False, True])
def test_connector_piece_rewrites_rewards_and_trains_the_models(continuous):
    torch.manual_seed(0)
    batch = handmade_batch(continuous=continuous, lengths=(6, 5, 4))
    before = batch[Columns.REWARDS].clone()
    shaper = deterministic_shaper(continuous=continuous)
    maa0 = [p.clone() for p in shaper.maa.parameters()]
    oracle0 = [p.clone() for p in shaper.oracle.parameters()]
    module = attacker_module(continuous=continuous)
    piece = AMIRewardShaping(shapers={"attacker": shaper})
    out = piece(rl_module={"attacker": module}, batch={"attacker": batch}, episodes=[])
    rewards = out["attacker"][Columns.REWARDS]
    real = batch[Columns.LOSS_MASK]
    assert not torch.allclose(rewards[real], before[real])
    assert torch.equal(rewards[~real], before[~real])
    if not continuous:  # standardised
        assert float(rewards[real].mean()) == pytest.approx(0.0, abs=1e-3)
    else:  # r_adv + 1.0·likelihood ≥ r_adv
        assert (rewards[real] >= before[real]).all()
    assert any(not torch.equal(a, b) for a, b in zip(maa0, shaper.maa.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(oracle0, shaper.oracle.parameters(), strict=True))


def test_shaper_state_round_trips():
    torch.manual_seed(0)
    shaper = deterministic_shaper()
    shaper.shape(attacker_module(), handmade_batch())
    fresh = deterministic_shaper()
    fresh.load_state_dict(shaper.state_dict())
    for a, b in zip(shaper.maa.parameters(), fresh.maa.parameters(), strict=True):
        assert torch.equal(a, b)
    pairs = zip(shaper.oracle.state_dict().values(), fresh.oracle.state_dict().values(), strict=True)
    for a, b in pairs:
        assert torch.equal(a, b)
    assert fresh.reward_rms.state_dict() == shaper.reward_rms.state_dict()
    sa, sb = shaper.maa_optimizer.state_dict(), fresh.maa_optimizer.state_dict()
    assert torch.equal(sa["state"][0]["exp_avg"], sb["state"][0]["exp_avg"])


# ----------------------------------------------------------------------------- in RLlib
class CopyingTeamEnv:
    """A constructed attack env (one RLlib agent, "attacker", with the attacker observation of
    ATTACK_API.md): the victims take, at t, the adversary's action of t−1; the attacker is
    paid 1 per victim taking action 0."""

    horizon = 8

    @staticmethod
    def make(config=None):
        from ray.rllib.env.multi_agent_env import MultiAgentEnv

        class _Env(MultiAgentEnv):
            def __init__(self, config=None):
                super().__init__()
                self.possible_agents = self.agents = ["attacker"]
                self.observation_spaces = {"attacker": attacker_space()}
                self.action_spaces = {"attacker": gym.spaces.MultiDiscrete([A])}
                self.rng = np.random.default_rng(0)

            def _obs(self):
                attacked = np.zeros(N, np.float32)
                attacked[ADV] = 1.0
                return {"attacker": {
                    "obs": self.rng.normal(size=(1, D)).astype(np.float32),
                    "state": self.rng.normal(size=S).astype(np.float32),
                    "action_mask": np.ones((1, A), np.float32),
                    "alive": np.ones(1, np.float32),
                    "prev_joint_action": self.prev.copy(),
                    "joint_action_mask": np.ones((N, A), np.float32),
                    "attacked": attacked,
                    "victim_visible": np.ones(N, np.float32),
                }}

            def reset(self, *, seed=None, options=None):
                self.t, self.prev, self.adv_prev = 0, np.zeros(N, np.int64), 0
                return self._obs(), {}

            def step(self, action_dict):
                a = int(np.asarray(action_dict["attacker"]).reshape(-1)[0])
                joint = np.full(N, self.adv_prev, np.int64)
                joint[ADV] = a
                self.prev, self.adv_prev, self.t = joint, a, self.t + 1
                r = float((joint[np.arange(N) != ADV] == 0).sum())
                done = self.t >= CopyingTeamEnv.horizon
                return (self._obs(), {"attacker": r}, {"attacker": done, "__all__": done},
                        {"attacker": False, "__all__": False}, {})

        return _Env(config)


@pytest.mark.slow
def test_ami_learner_in_rllib_shapes_rewards_before_gae():
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from adversaries.ami.learner import AMILearner

    register_env("ami_copying_team", CopyingTeamEnv.make)
    spec = RLModuleSpec(
        module_class=JointPolicyModule,
        model_config={"hidden": 16, "layers": 1, "graph": {"mode": "empty"}},
    )
    config = (
        PPOConfig()
        .environment("ami_copying_team")
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length="auto")
        .learners(num_learners=0, learner_class=AMILearner)
        .multi_agent(policies={"attacker"}, policy_mapping_fn=lambda aid, *a, **k: "attacker")
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={"attacker": spec}))
        .training(
            train_batch_size=64, minibatch_size=64, num_epochs=1, use_kl_loss=False,
            learner_config_dict={"ami": {"influence_samples": 3, "maa_lr": 1e-3}},
        )
        .debugging(seed=0, log_level="ERROR")
    )
    ray.shutdown()  # an earlier in-process test may have left this process's Ray running
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        algo = config.build_algo()
        learner = algo.learner_group._learner
        names = [type(c).__name__ for c in learner._learner_connector.connectors]
        assert names.index("AMIRewardShaping") == names.index("TeamGAE") - 1
        losses = []
        for _ in range(3):
            result = algo.train()
            stats = result["learners"]["attacker"]
            losses.append(stats["ami/maa_loss"])
            assert np.isfinite(stats["ami/influence_mean"])
        assert losses[-1] < losses[0]  # the MAA learns the victims' copying
        algo.stop()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_run_py_attack_with_ami_end_to_end_and_resume(tmp_path, capsys):
    """`run.py attack VICTIM --adversary ami` on a tiny MAPPO victim (simple_spread), then
    `run.py resume` from the first checkpoint, which restores the MAA and the oracle."""
    import json
    import shutil
    from pathlib import Path

    from marl.cli import main
    from marl.config import load_config
    from marl.train import train

    root = Path(__file__).resolve().parent.parent
    tiny = ["algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=1",
            "runners.num_envs_per_env_runner=4", "train.progress=log"]
    victim = train(load_config(root / "configs/mappo_simple_spread.yaml",
                               [*tiny, "train.total_env_steps=400", f"output_dir={tmp_path / 'v'}"]))
    code = main(["attack", str(victim), "--adversary", "ami", *tiny, "train.total_env_steps=800",
                 "train.checkpoint_every=1", "eval.episodes=2", "eval.gif=false",
                 "adversary.params.influence_samples=2", f"output_dir={tmp_path / 'a'}"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    run_dir = Path(out.strip().splitlines()[-1])
    result = json.loads((run_dir / "attack_eval.json").read_text())
    adversary = result["adversary"]
    assert adversary["name"] == "ami" and adversary["white_box"] is False
    assert adversary["params"]["influence_coeff"] == 0.1 and adversary["params"]["influence_samples"] == 2
    assert result["attack_env_steps"] == 800

    # The run's checkpoint carries AMI's state: the reward statistics saw the first 400 steps.
    from adversaries.config import load_attack_config
    from adversaries.run import attack_algorithm_config

    setup = load_attack_config(None, [*tiny, "adversary.params.influence_samples=2"],
                               victim=str(victim), adversary="ami")
    algo = attack_algorithm_config(setup).build_algo()
    try:
        learner = algo.learner_group._learner
        shaper = learner.ami["attacker"]
        assert shaper.reward_rms.count < 1
        # Black-box: neither the plugin nor AMI's models nor the attacker reach the victim.
        from adversaries.attack_env import _victim
        from tests.test_adversaries_attack import reachable, victim_hits

        victims = list(_victim(setup.cfg.victim.checkpoint).modules.values())
        roots = (setup.plugin(), learner.ami, learner.module["attacker"], learner._learner_connector)
        assert victim_hits(reachable(*roots), victims) == []
        algo.restore_from_path(str(run_dir / "checkpoints" / "iter_000001"))
        assert shaper.reward_rms.count == pytest.approx(400, abs=1)
        assert shaper.maa_optimizer.state_dict()["state"]
    finally:
        algo.stop()

    shutil.rmtree(run_dir / "checkpoints" / "iter_000002")
    (run_dir / "attack_eval.json").unlink()
    code = main(["resume", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["env_steps"] == 800
