"""Recurrent teams (issue 12): the GRU actor and critic of ``model.recurrent``, stepped one env
step at a time while acting and replayed over sequences by the learner, under every graph
mode; and the memory env that tells recurrent teams from feed-forward ones."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from envs.memory_cue import MemoryCue
from marl.graphs import GraphSample
from marl.modules import JointPolicyModule
from marl.modules.joint_policy import AGENT_REPR, DAG_NOISE
from tests.test_joint_policy import A, D, N, S, make_obs

LEARNED = {"mode": "learned", "order": "learned", "context_hidden": 16}
GRAPHS = {"empty": {"mode": "empty"}, "full": {"mode": "full"}, "learned": LEARNED}
H = 8


def make_recurrent(graph=None, critic="centralized", recurrent_critic=True, seed=0):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Dict({
        "obs": gym.spaces.Box(-np.inf, np.inf, (N, D), np.float32),
        "state": gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
        "action_mask": gym.spaces.Box(0, 1, (N, A), np.float32),
        "alive": gym.spaces.Box(0, 1, (N,), np.float32),
    })
    m = JointPolicyModule(
        observation_space=obs_space, action_space=gym.spaces.MultiDiscrete([A] * N),
        model_config={"hidden": 16, "layers": 2, "critic": critic, "graph": graph or {"mode": "empty"},
                      "recurrent": {"cell": "gru", "hidden": H, "critic": recurrent_critic, "max_seq_len": 4}},
    )
    if m.learns_graph:  # a context network that puts some edges in, some out
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.graph.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 3)
    return m


def initial(m, b):
    return {k: v.expand(b, *v.shape).clone() for k, v in m.get_initial_state().items()}


def rollout(m, b=6, steps=7, death=(3, 2)):
    """Step the module as an EnvRunner does ([B, 1] batches, STATE_OUT fed back as STATE_IN);
    agent ``death[1]`` dies at step ``death[0]`` in every env. Returns the [B, T] batch and
    each step's outputs."""
    obs_seq, outs = [], []
    state = initial(m, b)
    for t in range(steps):
        o = make_obs(b=b, seed=100 + t)
        if t >= death[0]:
            o["alive"][:, death[1]] = 0.0
            o["action_mask"][:, death[1]] = 0.0
            o["action_mask"][:, death[1], 0] = 1.0
        out = m.forward_exploration({Columns.OBS: {k: v.unsqueeze(1) for k, v in o.items()}, Columns.STATE_IN: state})
        state = out[Columns.STATE_OUT]
        obs_seq.append(o)
        outs.append(out)
    batch = {
        Columns.OBS: {k: torch.stack([o[k] for o in obs_seq], 1) for k in obs_seq[0]},
        Columns.ACTIONS: torch.cat([o[Columns.ACTIONS] for o in outs], 1),
        **{c: torch.cat([o[c] for o in outs], 1) for c in DAG_NOISE.values() if c in outs[0]},
    }
    return batch, outs


def seq_logp(m, batch, state):
    fwd = m.forward_train({**batch, Columns.STATE_IN: state})
    b, t = batch[Columns.ACTIONS].shape[:2]
    logp = m.agent_logp(fwd[Columns.ACTION_DIST_INPUTS].reshape(b, t, N, A), batch[Columns.ACTIONS])
    return (logp * batch[Columns.OBS]["alive"]).sum(-1), fwd


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("critic", ["centralized", "decentralized"])
def test_sequences_give_the_log_probs_and_values_of_stepping(graph, critic):
    """The learner's replay over [B, T] sequences, from the stored first state and DAG noise,
    gives every step's log-prob as sampled (first-epoch ratio 1), also when the sequence is
    cut in two at a stored state, and the critic's values of stepping it."""
    m = make_recurrent(GRAPHS[graph], critic)
    batch, outs = rollout(m)
    sampled = torch.cat([o[Columns.ACTION_LOGP] for o in outs], 1)
    logp, fwd = seq_logp(m, batch, initial(m, 6))
    torch.testing.assert_close(logp, sampled, atol=1e-5, rtol=0)
    # Two chunks, the second from the state stored after step 2 (RLlib's max_seq_len split).
    first = {k: ({kk: vv[:, :3] for kk, vv in v.items()} if isinstance(v, dict) else v[:, :3]) for k, v in batch.items()}
    second = {k: ({kk: vv[:, 3:] for kk, vv in v.items()} if isinstance(v, dict) else v[:, 3:]) for k, v in batch.items()}
    split = torch.cat([seq_logp(m, first, initial(m, 6))[0], seq_logp(m, second, outs[2][Columns.STATE_OUT])[0]], 1)
    torch.testing.assert_close(split, sampled, atol=1e-5, rtol=0)
    # Values: the critic's state advanced step by step as while acting.
    state, stepped = initial(m, 6), []
    for t, out in enumerate(outs):
        step = {Columns.OBS: {k: v[:, t] for k, v in batch[Columns.OBS].items()}, Columns.STATE_IN: state}
        stepped.append(m.compute_values(step))
        state = out[Columns.STATE_OUT]
    torch.testing.assert_close(m.compute_values(batch), torch.stack(stepped, 1), atol=1e-5, rtol=0)
    assert fwd[Columns.VF_PREDS].shape == ((6, 7, 1) if critic == "centralized" else (6, 7, N))


def test_hidden_state_is_per_agent_and_stops_when_the_agent_dies():
    m = make_recurrent(critic="decentralized")
    _, outs = rollout(m, death=(3, 2))
    actor = torch.stack([o[Columns.STATE_OUT]["actor"] for o in outs], 1)  # [B, T, n, H]
    critic = torch.stack([o[Columns.STATE_OUT]["critic"] for o in outs], 1)
    assert actor.shape == (6, 7, N, H) and critic.shape == (6, 7, N, H)
    for h in (actor, critic):
        # Agent 2 dies at step 3: its state is the one after step 2 from then on.
        for t in range(3, 7):
            torch.testing.assert_close(h[:, t, 2], h[:, 2, 2], atol=0, rtol=0)
        assert (h[:, 3:, :2] - h[:, 2:-1, :2]).abs().amax() > 1e-3  # the living ones move on
    assert (actor[:, 0, 0] - actor[:, 0, 1]).abs().amax() > 1e-3  # each agent has its own


def test_recurrent_step_under_a_dag_conditions_on_parents_actions_of_that_step():
    """Under the full DAG (order 0, 1, 2) agent i's GRU step reads its parents' actions of the
    same step: intervening on a parent's action changes a child's logits and next hidden
    state; an agent's own and its non-descendants' do not move."""
    m = make_recurrent(GRAPHS["full"])
    obs = make_obs(b=16)
    graph = m.graph(obs["obs"])
    h0 = torch.randn(16, N, H)
    base_actions, base_params, base_h = m.sample_joint(obs, graph, deterministic=True, hidden=h0)
    for parent in range(N):
        fixed = (base_actions + 1) % A
        mask = torch.zeros(16, N, dtype=torch.bool)
        mask[:, parent] = True
        _, params, h = m.sample_joint(obs, graph, deterministic=True, intervene=(mask, fixed), hidden=h0)
        for i in range(N):
            moved = (h[:, i] - base_h[:, i]).abs().amax() > 1e-6
            assert bool(moved) == (i > parent), (parent, i)  # children (later in the order) only
            # A child's logits read the changed parent directly (the full DAG); the others'
            # (the parent's own included) are those of the unchanged inputs.
            assert torch.allclose(params[:, i], base_params[:, i]) == (i <= parent), (parent, i)
    # Teacher-forced step: the same conditional logits as sampling gave.
    torch.testing.assert_close(m.conditional_logits(obs, base_actions, graph, h0), base_params, atol=1e-6, rtol=0)
    # The empty graph reads no parent: the same step, whatever the others do.
    empty = GraphSample(torch.zeros(16, N, N), graph.order, True)
    a = m.conditional_logits(obs, base_actions, empty, h0)
    b = m.conditional_logits(obs, (base_actions + 1) % A, empty, h0)
    torch.testing.assert_close(a, b)


def test_agent_modeling_with_recurrence_replays_the_stored_representation():
    from tests.test_agent_modeling import CLAM_SMALL, _module

    torch.manual_seed(0)
    m, env, team = _module([*CLAM_SMALL, "model.recurrent.hidden=8"])
    obs, _ = env.reset(seed=0)
    state = {k: v[None] for k, v in m.get_initial_state().items()}
    outs, seq = [], []
    for _ in range(5):
        o = {k: torch.as_tensor(v)[None, None] for k, v in obs[team].items()}
        out = m.forward_exploration({Columns.OBS: o, Columns.STATE_IN: state})
        state = out[Columns.STATE_OUT]
        outs.append(out)
        seq.append(o)
        obs, *_ = env.step({team: out[Columns.ACTIONS][0, 0].numpy()})
    batch = {
        Columns.OBS: {k: torch.cat([o[k] for o in seq], 1) for k in seq[0]},
        Columns.ACTIONS: torch.cat([o[Columns.ACTIONS] for o in outs], 1),
        AGENT_REPR: torch.cat([o[AGENT_REPR] for o in outs], 1),
        Columns.STATE_IN: {k: v[None] for k, v in m.get_initial_state().items()},
    }
    with torch.no_grad():  # the EMA encoder moves between rollout and update
        for p in m.agent_model.online_parameters():
            p.add_(0.5 * torch.randn_like(p))
        m.agent_model.ema_update()
    fwd = m.forward_train(batch)
    logp = m.agent_logp(fwd[Columns.ACTION_DIST_INPUTS].reshape(1, 5, 3, 5), batch[Columns.ACTIONS]).sum(-1)
    torch.testing.assert_close(logp, torch.cat([o[Columns.ACTION_LOGP] for o in outs], 1), atol=1e-5, rtol=0)


def test_without_recurrent_the_module_is_stateless():
    from tests.test_joint_policy import make_module

    m = make_module()
    assert m.get_initial_state() == {} and not m.is_stateful() and m.recurrent is None
    assert "max_seq_len" not in m.model_config
    r = make_recurrent()
    assert r.is_stateful() and r.model_config["max_seq_len"] == 4
    assert {k: tuple(v.shape) for k, v in r.get_initial_state().items()} == {"actor": (N, H), "critic": (1, H)}
    assert set(make_recurrent(recurrent_critic=False).get_initial_state()) == {"actor"}


# ------------------------------------------------------------------------- the memory env
def test_memory_cue_shows_the_cue_once_and_pays_for_acting_on_it_together():
    env = MemoryCue(n_agents=2, n_cues=3, length=4)
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        cue = env.cue
        assert obs["agent_0"][:3].argmax() == cue and obs["agent_0"][:3].sum() == 1
        np.testing.assert_array_equal(obs["agent_0"], obs["agent_1"])
        for t in range(3):
            right = {a: cue for a in env.agents}
            obs, rew, term, trunc, info = env.step(right if t else {a: (cue + 1) % 3 for a in env.agents})
            assert not obs["agent_0"][:3].any() and obs["agent_0"][3 + t + 1] == 1  # no cue after step 0
            assert set(rew.values()) == {0.0} and not any(term.values()) and info["agent_0"] == {}
        wrong_one = {"agent_0": cue, "agent_1": (cue + seed % 2 + 1) % 3}
        obs, rew, term, _, info = env.step({a: cue for a in env.agents} if seed % 3 else wrong_one)
        solved = bool(seed % 3)
        assert rew == {"agent_0": float(solved), "agent_1": float(solved)} and all(term.values())
        assert info["agent_0"]["won"] is solved and env.agents == []


def test_victim_white_box_and_stealth_reads_use_the_states_the_step_starts_from():
    """A recurrent FrozenTeam: ``act`` advances its states; the white box (obs_pgd) reads the
    states the next step starts from without advancing them; ``own_params`` (the stealth
    measure) scores the last step from the states that step started from; ``reset`` forgets."""
    from adversaries.victims import FrozenTeam, WhiteBoxVictim

    m = make_recurrent(GRAPHS["full"])
    team = FrozenTeam(m, m.action_space, deterministic=True)
    first, second = ({k: v[0].numpy() for k, v in make_obs(b=1, seed=s).items()} for s in (1, 2))
    team.act(first)
    before = team.hidden.clone()
    wb = WhiteBoxVictim(team)
    obs = {k: torch.as_tensor(v)[None] for k, v in second.items()}
    actions, graph = wb.joint_sample(obs)
    params = wb.policy_params(obs, actions, graph)
    torch.testing.assert_close(team.hidden, before, atol=0, rtol=0)  # read, not advanced
    joint = team.act(second)
    np.testing.assert_array_equal(joint, actions[0].numpy())
    np.testing.assert_allclose(team.last_params(), params[0].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(team.own_params(second), team.last_params(), atol=1e-6)
    assert (team.hidden - before).abs().max() > 0
    team.reset()
    assert team.hidden.abs().max() == 0 and team.last_params() is None


def test_recurrent_attackers_and_recurrent_kuhn_exploitability_are_refused_in_one_line(capsys):
    from marl.cli import main
    from marl.errors import UserError
    from marl.exploitability import _joint_policy_probs

    assert main(["attack", "/no/such", "--adversary", "gleave", "model.recurrent.hidden=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config key 'model': recurrent must be null: an attacker's module is feed-forward "
                   "(recurrent victims are supported)"]
    with pytest.raises(UserError, match="recurrent"):
        _joint_policy_probs(make_recurrent(), {Columns.OBS: make_obs(b=2)}, A)


@pytest.mark.parametrize("how", ["terminated", "truncated"])
def test_team_gae_on_zero_padded_sequences_equals_gae_on_the_steps_back_to_back(how):
    """tests/test_loss.py's hand-computed episode (3 steps + RLlib's bootstrap row), as RLlib
    hands it to a recurrent module: sequences of 3, the bootstrap row alone in the second,
    padded. Padding (values 99 there) changes nothing; the results come back padded."""
    from ray.rllib.evaluation.postprocessing import Postprocessing

    from marl.learners.gae import TeamGAE
    from tests.test_loss import HAND

    m = make_recurrent()
    term = [[0, 0, 1], [0, 0, 0]] if how == "terminated" else [[0, 0, 0], [0, 0, 0]]
    trunc = [[0, 0, 0], [0, 0, 0]] if how == "terminated" else [[0, 0, 1], [0, 0, 0]]
    obs = {k: v.reshape(2, 3, *v.shape[1:]) for k, v in make_obs(b=6).items()}
    m.compute_values = lambda batch, embeddings=None: torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    batch = {"team_0": {
        Columns.OBS: obs,
        Columns.REWARDS: torch.tensor([[1.0, 1.0, 1.0], [0.0, 5.0, 5.0]]),
        Columns.TERMINATEDS: torch.tensor(term, dtype=torch.bool),
        Columns.TRUNCATEDS: torch.tensor(trunc, dtype=torch.bool),
        Columns.LOSS_MASK: torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool),
        Columns.SEQ_LENS: torch.tensor([3, 1]),
    }}
    out = TeamGAE(gamma=0.9, lambda_=0.5)(rl_module={"team_0": m}, episodes=[], batch=batch)["team_0"]
    targets = out[Postprocessing.VALUE_TARGETS]
    assert targets.shape == (2, 3, 1)
    assert targets[0, :, 0].tolist() == pytest.approx(HAND[how][0], abs=1e-4)
    assert targets[1, 1:].abs().max() == 0  # padding stays zero
    adv = np.array(HAND[how][0]) - [1.0, 2.0, 3.0]
    expected = (adv - adv.mean()) / adv.std()
    assert out[Postprocessing.ADVANTAGES][0, :, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
