"""JointPolicyModule: shapes, action masks, log-probs, and sampling order under a DAG."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from marl.graphs import GraphSample
from marl.modules import JointPolicyModule

N, D, A, S = 3, 5, 4, 7


def make_module(graph=None, critic="centralized", seed=0):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Dict(
        {
            "obs": gym.spaces.Box(-np.inf, np.inf, (N, D), np.float32),
            "state": gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
            "action_mask": gym.spaces.Box(0, 1, (N, A), np.float32),
            "alive": gym.spaces.Box(0, 1, (N,), np.float32),
        }
    )
    return JointPolicyModule(
        observation_space=obs_space,
        action_space=gym.spaces.MultiDiscrete([A] * N),
        model_config={"hidden": 16, "layers": 2, "critic": critic, "graph": graph or {"mode": "empty"}},
    )


def make_obs(b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, N, A)
    mask[:, 0, 1:] = 0  # agent 0: only action 0
    mask[:, 1, 2] = 0  # agent 1: never action 2
    return {
        "obs": torch.randn(b, N, D, generator=g),
        "state": torch.randn(b, S, generator=g),
        "action_mask": mask,
        "alive": torch.ones(b, N),
    }


def test_exploration_output_shapes():
    m = make_module()
    out = m.forward_exploration({Columns.OBS: make_obs(b=6)})
    assert out[Columns.ACTIONS].shape == (6, N)
    assert out[Columns.ACTIONS].dtype == torch.long
    assert out[Columns.ACTION_LOGP].shape == (6,)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (6, N * A)
    assert m.compute_values({Columns.OBS: make_obs(b=6)}).shape == (6,)


def test_decentralized_critic_gives_one_value_per_agent():
    m = make_module(critic="decentralized")
    assert m.compute_values({Columns.OBS: make_obs(b=6)}).shape == (6, N)


@pytest.mark.parametrize("mode", ["empty", "full"])
def test_masked_actions_are_never_sampled(mode):
    m = make_module({"mode": mode})
    obs = make_obs(b=2000)
    actions = m.forward_exploration({Columns.OBS: obs})[Columns.ACTIONS]
    allowed = obs["action_mask"].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    assert bool((allowed == 1).all())
    assert bool((actions[:, 0] == 0).all())
    assert not bool((actions[:, 1] == 2).any())
    # Deterministic actions respect masks too.
    det = m.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    assert bool((obs["action_mask"].gather(-1, det.unsqueeze(-1)) == 1).all())


@pytest.mark.parametrize("mode", ["empty", "full"])
def test_joint_logp_is_sum_of_agent_conditionals(mode):
    m = make_module({"mode": mode})
    obs = make_obs()
    out = m.forward_exploration({Columns.OBS: obs})
    logits = out[Columns.ACTION_DIST_INPUTS].reshape(-1, N, A)
    per_agent = torch.distributions.Categorical(logits=logits).log_prob(out[Columns.ACTIONS])
    assert torch.allclose(out[Columns.ACTION_LOGP], per_agent.sum(-1), atol=1e-5)
    # forward_train, teacher-forced with the sampled actions, reproduces the rollout's logits.
    train = m.forward_train({Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS]})
    assert torch.allclose(train[Columns.ACTION_DIST_INPUTS], out[Columns.ACTION_DIST_INPUTS], atol=1e-5)
    # RLlib's distribution class over the module's outputs agrees.
    dist = m.get_train_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    assert torch.allclose(dist.logp(out[Columns.ACTIONS]), out[Columns.ACTION_LOGP], atol=1e-5)


def test_empty_graph_distribution_does_not_depend_on_sampling_order():
    m = make_module({"mode": "empty"})
    obs = make_obs(b=4)
    b = obs["obs"].shape[0]
    empty = torch.zeros(b, N, N)
    batched = GraphSample(empty, torch.arange(N).expand(b, N), empty=True)
    _, logits_batched = m.sample_joint(obs, batched)
    for order in ([2, 0, 1], [1, 2, 0], [0, 1, 2]):
        # The sequential path (used for non-empty graphs), forced with an empty adjacency.
        seq = GraphSample(empty, torch.tensor(order).expand(b, N), empty=False)
        _, logits_seq = m.sample_joint(obs, seq)
        assert torch.allclose(logits_seq, logits_batched, atol=1e-6)


def test_parent_action_changes_child_distribution_and_non_parent_does_not():
    # Fixed DAG 0 -> 2; agent 1 is not a parent of 2.
    m = make_module({"mode": "fixed", "edges": [[0, 2]]})
    obs = make_obs(b=1)
    obs["action_mask"] = torch.ones(1, N, A)
    graph = m.graph(obs["obs"])
    base = m.conditional_logits(obs, torch.tensor([[0, 0, 0]]), graph)
    parent_changed = m.conditional_logits(obs, torch.tensor([[3, 0, 0]]), graph)
    other_changed = m.conditional_logits(obs, torch.tensor([[0, 3, 0]]), graph)
    assert not torch.allclose(base[0, 2], parent_changed[0, 2])
    assert torch.allclose(base[0, 2], other_changed[0, 2])
    # An agent's own action is never its input.
    self_changed = m.conditional_logits(obs, torch.tensor([[0, 0, 3]]), graph)
    assert torch.allclose(base, self_changed)


def test_dag_order_samples_parents_first():
    # Full DAG under identity order: agent 2 conditions on what 0 and 1 sampled this step.
    m = make_module({"mode": "full"})
    obs = make_obs(b=64)
    actions, logits = m.sample_joint(obs, m.graph(obs["obs"]))
    recomputed = m.conditional_logits(obs, actions, m.graph(obs["obs"]))
    assert torch.allclose(recomputed, logits, atol=1e-5)


def make_continuous_module(graph, k=2, seed=0):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Dict(
        {
            "obs": gym.spaces.Box(-np.inf, np.inf, (N, D), np.float32),
            "state": gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
            "action_mask": gym.spaces.Box(0, 1, (N, 1), np.float32),
            "alive": gym.spaces.Box(0, 1, (N,), np.float32),
        }
    )
    return JointPolicyModule(
        observation_space=obs_space,
        action_space=gym.spaces.Box(-1.0, 1.0, (N, k), np.float32),
        model_config={"hidden": 16, "layers": 2, "graph": graph},
    )


@pytest.mark.parametrize("mode", ["empty", "full", "learned"])
def test_continuous_actions_gaussian_logp_and_shapes(mode):
    m = make_continuous_module({"mode": mode})
    obs = make_obs(b=8)
    obs["action_mask"] = torch.ones(8, N, 1)
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    assert out[Columns.ACTIONS].shape == (8, N, 2) and out[Columns.ACTIONS].dtype == torch.float32
    params = out[Columns.ACTION_DIST_INPUTS].reshape(8, N, 4)
    normal = torch.distributions.Normal(params[..., :2], params[..., 2:].exp())
    per_agent = normal.log_prob(out[Columns.ACTIONS]).sum(-1)
    assert torch.allclose(out[Columns.ACTION_LOGP], per_agent.sum(-1), atol=1e-4)
    batch = {Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS], **{k: v for k, v in out.items() if k.startswith("dag_")}}
    train = m.forward_train(batch)
    assert torch.allclose(train[Columns.ACTION_DIST_INPUTS], out[Columns.ACTION_DIST_INPUTS], atol=1e-5)


def test_continuous_parents_pass_raw_actions():
    m = make_continuous_module({"mode": "fixed", "edges": [[0, 1]]})
    obs = make_obs(b=1)
    graph = m.graph(obs["obs"])
    a = torch.zeros(1, N, 2)
    base = m.conditional_logits(obs, a, graph)
    a_scaled = a.clone()
    a_scaled[0, 0] = torch.tensor([0.3, -0.7])
    changed = m.conditional_logits(obs, a_scaled, graph)
    assert not torch.allclose(base[0, 1], changed[0, 1])  # child of 0 sees the raw vector
    assert torch.allclose(base[0, 2], changed[0, 2])  # agent 2 has no parent


def test_dead_agents_take_zero_continuous_actions_and_add_no_logp():
    m = make_continuous_module({"mode": "full"})
    obs = make_obs(b=8)
    obs["action_mask"] = torch.ones(8, N, 1)
    obs["alive"][:, 1] = 0.0
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
    assert torch.equal(out[Columns.ACTIONS][:, 1], torch.zeros(8, 2))
    params = out[Columns.ACTION_DIST_INPUTS].reshape(8, N, 4)
    logp = m.agent_logp(params, out[Columns.ACTIONS])
    assert torch.allclose(out[Columns.ACTION_LOGP], logp[:, [0, 2]].sum(-1), atol=1e-5)


def test_empty_graph_actor_skips_the_zero_parent_columns_with_the_same_outputs_and_gradients():
    # Under the empty graph the actor gets [o_i, id_i] only; its first layer applies to those
    # columns. It must equal the full-width actor on [o_i, id_i, zeros] in value and gradient.
    m = make_module()
    obs, actions = make_obs(b=5), torch.zeros(5, N, dtype=torch.long)
    x = m.actor_inputs(obs, actions, m.graph(obs["obs"]))
    assert x.shape[-1] == D + N < m.actor[0].in_features
    narrow = m.conditional_logits(obs, actions, m.graph(obs["obs"]))
    narrow.sum().backward()
    grad = m.actor[0].weight.grad.clone()
    m.zero_grad()
    padded = torch.cat([x, x.new_zeros(*x.shape[:-1], m.actor[0].in_features - x.shape[-1])], -1)
    full = m.head.dist_inputs(m.actor(padded), obs["action_mask"])
    full.sum().backward()
    torch.testing.assert_close(narrow, full)
    torch.testing.assert_close(grad, m.actor[0].weight.grad)
    assert torch.count_nonzero(grad[:, D + N:]) == 0
