"""BN-MAPPO (Chen & Zhang 2023): learned context-aware DAGs, stored noise, density term,
annealing schedule, and MAPPO as the empty-graph case."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from marl.graphs.annealing import DensitySchedule
from marl.graphs.learned import HardAssignment, LearnedDAG, sinkhorn
from marl.learners.joint_ppo import joint_ppo_loss
from marl.modules.joint_policy import DAG_DENSITY, DAG_NOISE
from tests.test_joint_policy import A, N, make_module, make_obs

LEARNED = {"mode": "learned", "order": "learned", "context_hidden": 16}


def scramble(module, scale=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("n", [2, 3, 5, 7])
@pytest.mark.parametrize("scale", [0.1, 10.0, 1000.0])
def test_every_sampled_graph_is_acyclic_and_order_is_topological(n, scale):
    dag = LearnedDAG(n, 4, LEARNED)
    scramble(dag, scale, seed=n)
    g = dag(torch.randn(256, n, 4) * scale)
    adj = g.adjacency.detach().numpy()
    assert set(np.unique(adj)) <= {0.0, 1.0}
    for b in range(adj.shape[0]):
        graph = nx.DiGraph([(j, i) for j, i in zip(*np.nonzero(adj[b]), strict=True)])
        graph.add_nodes_from(range(n))
        assert nx.is_directed_acyclic_graph(graph)
        pos = {agent: p for p, agent in enumerate(g.order[b].tolist())}
        assert sorted(pos) == list(range(n))
        assert all(pos[j] < pos[i] for j, i in graph.edges)


def test_hungarian_enumeration_matches_scipy():
    soft = sinkhorn(torch.randn(64, 5, 5))
    fast = HardAssignment(5)(soft)
    HardAssignment.__init__(slow := HardAssignment.__new__(HardAssignment), 5)
    slow.perm_onehot = None  # force the scipy path
    assert torch.equal(fast, slow(soft))


def test_graph_depends_on_context():
    dag = LearnedDAG(3, 4, LEARNED)
    scramble(dag, 3.0)
    noise = dag.sample_noise(1, "cpu")
    graphs = {tuple(dag(torch.randn(1, 3, 4) * 3, noise).adjacency.flatten().tolist()) for _ in range(30)}
    assert len(graphs) > 1  # same noise, different observations -> different DAGs


def test_joint_logp_is_sum_of_conditionals_and_parents_matter_under_learned_graph():
    m = make_module(LEARNED)
    scramble(m.graph, 3.0)
    obs = make_obs(b=32)
    out = m.forward_exploration({Columns.OBS: obs})
    logits = out[Columns.ACTION_DIST_INPUTS].reshape(-1, N, A)
    per_agent = torch.distributions.Categorical(logits=logits).log_prob(out[Columns.ACTIONS])
    assert torch.allclose(out[Columns.ACTION_LOGP], per_agent.sum(-1), atol=1e-5)
    # Changing a parent's action changes the child's distribution; a non-parent's does not.
    batch = {Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS], **{c: out[c] for c in DAG_NOISE.values()}}
    graph = m.train_graph(batch)
    base = m.conditional_logits(obs, out[Columns.ACTIONS], graph)
    adj = graph.adjacency.detach()
    checked = 0
    for b in range(32):
        for j in range(N):
            changed = out[Columns.ACTIONS].clone()
            changed[b, j] = (changed[b, j] + 1) % A
            new = m.conditional_logits(obs, changed, graph)
            for i in range(N):
                if i == j:
                    continue
                same = torch.allclose(new[b, i], base[b, i])
                assert same == (adj[b, j, i] == 0), (b, j, i)
                checked += 1
    assert checked == 32 * N * (N - 1)


def test_stored_noise_rebuilds_the_rollout_graph_so_first_epoch_ratio_is_one():
    m = make_module(LEARNED)
    scramble(m.graph, 3.0)
    obs = make_obs(b=128)
    out = m.forward_exploration({Columns.OBS: obs})
    batch = {Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS], **{c: out[c] for c in DAG_NOISE.values()}}
    train = m.forward_train(batch)
    new_logp = m.agent_logp(train[Columns.ACTION_DIST_INPUTS].reshape(-1, N, A), out[Columns.ACTIONS]).sum(-1)
    assert torch.allclose(new_logp - out[Columns.ACTION_LOGP], torch.zeros(128), atol=1e-5)
    # Without the stored noise, the graph is resampled and the ratio drifts from 1.
    fresh = m.forward_train({Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS]})
    fresh_logp = m.agent_logp(fresh[Columns.ACTION_DIST_INPUTS].reshape(-1, N, A), out[Columns.ACTIONS]).sum(-1)
    assert not torch.allclose(fresh_logp, out[Columns.ACTION_LOGP], atol=1e-3)


def test_density_term_sends_gradients_to_the_context_network():
    m = make_module(LEARNED)
    obs = make_obs(b=64)
    with torch.no_grad():  # as on an EnvRunner
        out = m.forward_exploration({Columns.OBS: obs})
    batch = {Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS], **{c: out[c] for c in DAG_NOISE.values()}}
    fwd = m.forward_train(batch)
    batch.update({
        Columns.ACTION_DIST_INPUTS: out[Columns.ACTION_DIST_INPUTS],
        Postprocessing.ADVANTAGES: torch.randn(64),
        Postprocessing.VALUE_TARGETS: torch.randn(64),
    })
    loss, stats = joint_ppo_loss(m, batch, fwd, clip_param=0.2, vf_loss_coeff=1.0, entropy_coeff=0.01, density=(0.0, 1.0))
    loss.backward()
    assert float(stats["dag_density"]) == pytest.approx(float(fwd[DAG_DENSITY].mean()))
    assert m.graph.context[-1].weight.grad.abs().sum() > 0
    assert m.graph.order_scores.grad is not None


def _shared_weights(src, dst):
    for name in ("actor", "critic"):
        getattr(dst, name).load_state_dict(getattr(src, name).state_dict())


def test_empty_graph_bn_equals_mappo_log_probs_and_loss():
    mappo = make_module({"mode": "empty"}, seed=1)
    bn = make_module(LEARNED, seed=2)
    _shared_weights(mappo, bn)
    with torch.no_grad():  # a learned graph whose context says "no edge" everywhere
        bn.graph.context[-1].bias.view(N, N, 2)[..., 0] = 1e4
    obs = make_obs(b=64)
    out = mappo.forward_exploration({Columns.OBS: obs})
    noise = bn.graph.sample_noise(64, "cpu")
    batch = {
        Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS],
        Columns.ACTION_DIST_INPUTS: out[Columns.ACTION_DIST_INPUTS],
        Postprocessing.ADVANTAGES: torch.randn(64), Postprocessing.VALUE_TARGETS: torch.randn(64),
        **{c: noise[k].reshape(64, -1) for k, c in DAG_NOISE.items()},
    }
    f_mappo, f_bn = mappo.forward_train(batch), bn.forward_train(batch)
    assert float(f_bn[DAG_DENSITY].detach().max()) == 0.0
    assert torch.allclose(f_mappo[Columns.ACTION_DIST_INPUTS], f_bn[Columns.ACTION_DIST_INPUTS])
    kw = {"clip_param": 0.2, "vf_loss_coeff": 1.0, "entropy_coeff": 0.01, "update_value_norm": False}
    l_mappo, _ = joint_ppo_loss(mappo, batch, f_mappo, **kw)
    l_bn, _ = joint_ppo_loss(bn, batch, f_bn, **kw)
    assert torch.allclose(l_mappo, l_bn)
    # And the decentralised BN module is MAPPO exactly.
    bn.decentralize()
    assert torch.allclose(bn.forward_train(batch)[Columns.ACTION_DIST_INPUTS], f_mappo[Columns.ACTION_DIST_INPUTS])


@pytest.mark.parametrize("iterations", [50, 800, 1000])
def test_annealing_reaches_tau_zero_at_the_configured_point(iterations):
    s = DensitySchedule(total_iterations=iterations, n_d=40, tau_start=0.4, alpha0=0.05, alpha_target=0.8)
    z = s.tau_zero_iteration
    assert s.tau(0) == 1.0 and s.tau(s.tau_first_step - 1) == 1.0
    assert s.tau(s.tau_first_step) == pytest.approx(1 - 1 / s.n_steps)
    assert s.n_steps == (40 if iterations >= 800 else 15)
    assert s.tau(z) == 0.0 and s.tau(z - 1) > 0.0
    assert s.tau(iterations) == 0.0
    assert z == s.tau_first_step + (s.n_steps - 1) * max(int(0.6 * iterations / 80), 1)
    assert z <= 0.7 * iterations
    if iterations == 800:  # 0.6E/80 is a whole number: τ hits 0 at ~70% of E, as in the paper
        assert abs(z / iterations - 0.7) < 0.02
    taus = [s.tau(i) for i in range(iterations + 1)]
    assert all(a >= b for a, b in zip(taus, taus[1:], strict=False))
    assert s.alpha(0) == 0.05 and s.alpha(int(0.7 * iterations) - 1) == 0.05
    assert s.alpha(iterations) == pytest.approx(0.8)


def test_annealing_can_be_switched_off():
    s = DensitySchedule(total_iterations=100, anneal=False, alpha0=0.1)
    assert {s.tau(i) for i in range(101)} == {1.0}
    assert {s.alpha(i) for i in range(101)} == {0.1}


def _most_likely_graph(m, obs):
    """By hand: the order is the permutation with the highest total score (P maximises
    <P, scores>), an edge is present where its 'edge' logit beats its 'no edge' logit, and
    only pairs that the order allows (Pᵀ M P) remain."""
    import itertools

    n = m.n
    scores = m.graph.order_scores.detach()
    best = max(itertools.permutations(range(n)), key=lambda p: float(sum(scores[pos, a] for pos, a in enumerate(p))))
    rank = {agent: pos for pos, agent in enumerate(best)}
    logits = m.graph.context(obs["obs"].reshape(obs["obs"].shape[0], -1)).reshape(-1, n, n, 2).detach()
    edge = (logits[..., 1] > logits[..., 0]).float()
    allowed = torch.tensor([[float(rank[j] < rank[i]) for i in range(n)] for j in range(n)])
    order = torch.tensor(best).expand(obs["obs"].shape[0], -1)
    return edge * allowed, order


def test_deterministic_acting_uses_the_most_likely_graph():
    from marl.graphs import GraphSample

    m = make_module(LEARNED)
    scramble(m.graph, 3.0)
    obs = make_obs(b=64)
    adjacency, order = _most_likely_graph(m, obs)
    assert 0 < float(adjacency.mean()) < 1  # a graph with some edges, not all
    with torch.no_grad():
        out = m.forward_inference({Columns.OBS: obs})
        expected = m.conditional_logits(obs, out[Columns.ACTIONS], GraphSample(adjacency, order, False))
        actions, _ = m.sample_joint(obs, GraphSample(adjacency, order, False), deterministic=True)
    dist = out[Columns.ACTION_DIST_INPUTS].reshape(64, N, A)
    assert torch.allclose(dist, expected, atol=1e-5)
    assert torch.equal(out[Columns.ACTIONS], actions)
    # A different graph (the edges flipped) would have given other distributions.
    with torch.no_grad():
        other = m.conditional_logits(obs, out[Columns.ACTIONS], GraphSample(1 - adjacency, order, False))
    assert not torch.allclose(dist, other, atol=1e-3)


def test_a_batch_of_empty_sampled_graphs_is_sampled_in_one_actor_pass():
    m = make_module(LEARNED)
    with torch.no_grad():  # annealed: the context network says "no edge" everywhere
        m.graph.context[-1].bias.view(N, N, 2)[..., 0] = 1e4
    calls = []
    m.actor.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        m.forward_exploration({Columns.OBS: make_obs(b=16)})
    assert len(calls) == 1
    scramble(m.graph, 3.0)  # edges again: one actor pass per position
    calls.clear()
    with torch.no_grad():
        m.forward_exploration({Columns.OBS: make_obs(b=16)})
    assert len(calls) == N


def test_acting_builds_no_autograd_graph_and_skips_sinkhorn(monkeypatch):
    import marl.graphs.learned as learned

    m = make_module(LEARNED)
    calls = []
    monkeypatch.setattr(learned, "sinkhorn", lambda *a, **k: calls.append(1) or sinkhorn(*a, **k))
    out = m.forward_exploration({Columns.OBS: make_obs(b=8)})
    assert not out[Columns.ACTION_DIST_INPUTS].requires_grad and calls == []
    m.forward_train({Columns.OBS: make_obs(b=8), Columns.ACTIONS: out[Columns.ACTIONS]})
    assert calls  # the learner's rebuild still takes the straight-through path
