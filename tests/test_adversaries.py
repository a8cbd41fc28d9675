"""Adversary framework without RLlib training: the plugin registry (built-ins and the
entry-point group), the do(a_K) intervention on Bayesian-network victims, and obs_pgd's
ε-ball."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from adversaries import registry
from adversaries.base import AdversaryPlugin, AttackContext
from adversaries.obs_pgd import ObsPGD, PGDParams
from adversaries.victims import FrozenTeam, WhiteBoxVictim
from marl.errors import UserError
from marl.modules import JointPolicyModule

N, D, A, S, K = 3, 5, 4, 7, 2


def make_module(edges=(), continuous=False, seed=0):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Dict({
        "obs": gym.spaces.Box(-np.inf, np.inf, (N, D), np.float32),
        "state": gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
        "action_mask": gym.spaces.Box(0, 1, (N, 1 if continuous else A), np.float32),
        "alive": gym.spaces.Box(0, 1, (N,), np.float32),
    })
    act_space = gym.spaces.Box(-1, 1, (N, K), np.float32) if continuous else gym.spaces.MultiDiscrete([A] * N)
    graph = {"mode": "fixed", "edges": [list(e) for e in edges]} if edges else {"mode": "empty"}
    module = JointPolicyModule(observation_space=obs_space, action_space=act_space,
                               model_config={"hidden": 32, "layers": 2, "graph": graph})
    with torch.no_grad():  # large weights: the policy depends clearly on its inputs
        for p in module.actor.parameters():
            p.mul_(20.0)
    return module


def make_obs(b=1, seed=1, continuous=False):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(b, N, D, generator=g),
        "state": torch.randn(b, S, generator=g),
        "action_mask": torch.ones(b, N, 1 if continuous else A),
        "alive": torch.ones(b, N),
    }


# ------------------------------------------------------------------------------ registry
def test_unknown_adversary_lists_the_registered_ones():
    with pytest.raises(UserError, match="unknown adversary 'nope'; registered: .*gleave, obs_pgd, random"):
        registry.get_plugin("nope")


def test_plugins_declare_threat_model_and_box():
    plugins = registry.load_plugins()
    assert plugins["gleave"].threat_model == "takeover" and not plugins["gleave"].white_box
    assert plugins["random"].trains is False and plugins["obs_pgd"].white_box is True
    with pytest.raises(TypeError, match="threat_model"):
        registry.register(type("Bad", (AdversaryPlugin,), {"name": "bad", "threat_model": "telepathy"}))
    with pytest.raises(TypeError, match="white-box"):
        registry.register(type("Sneaky", (AdversaryPlugin,), {"name": "sneaky", "threat_model": "observation"}))
    assert "bad" not in plugins and "sneaky" not in plugins


def test_third_party_plugin_found_through_the_entry_point_group(tmp_path, monkeypatch):
    # A real installed distribution on sys.path: a dist-info with entry_points.txt.
    (tmp_path / "thirdparty_attack.py").write_text(
        "from adversaries.base import AdversaryPlugin\n"
        "class Lazy(AdversaryPlugin):\n    name = 'lazy'\n    threat_model = 'partial_control'\n"
    )
    dist = tmp_path / "thirdparty_attack-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-attack\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nlazy = thirdparty_attack:Lazy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    cls = registry.get_plugin("lazy")
    assert cls.__name__ == "Lazy" and cls.threat_model == "partial_control"
    sys.modules.pop("thirdparty_attack", None)


# ----------------------------------------------------------------- BN intervention do(a_k)
def actor_inputs(module):
    """Record every input row the shared actor sees (one call per DAG position)."""
    seen = []
    module.actor.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    return seen


@pytest.mark.parametrize("fixed_action", [0, 1, 3])
def test_child_conditions_on_the_attackers_action(fixed_action):
    # Victim with the fixed graph 0 -> 2: agent 0 is attacked; agent 2 is its child.
    module = make_module(edges=[(0, 2)])
    obs = make_obs()
    seen = actor_inputs(module)
    mask = torch.tensor([[True, False, False]])
    fixed = torch.tensor([[fixed_action, 0, 0]])
    actions, _ = module.sample_joint(obs, module.graph(obs["obs"]), intervene=(mask, fixed))
    assert actions[0, 0].item() == fixed_action
    order = module.graph.topo.tolist()
    child_input = seen[order.index(2)][0]  # [d + n + n*A]: o_2, id, parents' one-hot actions
    parents = child_input[D + N:].reshape(N, A)
    assert torch.equal(parents[0], torch.nn.functional.one_hot(torch.tensor(fixed_action), A).float())
    assert torch.equal(parents[1], torch.zeros(A))  # agent 1 is not a parent of 2


def test_child_distribution_moves_with_the_attackers_action():
    module = make_module(edges=[(0, 2)])
    obs = make_obs()
    graph = module.graph(obs["obs"])
    mask = torch.tensor([[True, False, False]])
    params = []
    for a in range(A):
        torch.manual_seed(0)  # the same sampling noise: only the intervention differs
        params.append(module.sample_joint(obs, graph, intervene=(mask, torch.tensor([[a, 0, 0]])))[1][0, 2])
    assert any(not torch.allclose(params[0], p) for p in params[1:])


@pytest.mark.parametrize("continuous", [False, True])
def test_empty_graph_victims_ignore_the_attackers_action(continuous):
    module = make_module(continuous=continuous)
    obs = make_obs(b=64, continuous=continuous)
    graph = module.graph(obs["obs"])
    mask = torch.zeros(64, N, dtype=torch.bool)
    mask[:, 1] = True
    outs = []
    for value in (0, 2):
        fixed = torch.full((64, N, K), float(value) / 2) if continuous else torch.full((64, N), value)
        torch.manual_seed(5)
        outs.append(module.sample_joint(obs, graph, intervene=(mask, fixed)))
    (a0, p0), (a1, p1) = outs
    assert torch.equal(p0[:, [0, 2]], p1[:, [0, 2]])  # the victims' distribution
    assert torch.equal(a0[:, [0, 2]], a1[:, [0, 2]])  # and, with the same noise, their actions
    assert not torch.equal(a0[:, 1], a1[:, 1])  # the attacked agent took the fixed actions


def test_frozen_team_executes_the_intervention_in_env_units():
    module = make_module(continuous=True)
    space = gym.spaces.Box(np.full((N, K), -2.0, np.float32), np.full((N, K), 2.0, np.float32))
    team = FrozenTeam(module, space, deterministic=True)
    obs = {k: v[0].numpy() for k, v in make_obs(continuous=True).items()}
    joint = team.act(obs, {1: np.array([1.5, -2.0], np.float32)})
    assert np.allclose(joint[1], [1.5, -2.0]) and np.all(np.abs(joint) <= 2.0)


# ------------------------------------------------------------------------------- obs_pgd
def ctx(continuous, budget=0.2, attacked=(1,)):
    return AttackContext(n_agents=N, attacked=list(attacked), budget=budget, discrete=not continuous,
                         n_actions=1 if continuous else A, action_dim=K if continuous else 0,
                         obs_dim=D, state_dim=S, team="team_0", env_import="test")


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("budget", [0.05, 0.2, 1.0])
def test_obs_pgd_stays_in_its_eps_ball_and_hurts_the_policy(continuous, budget):
    module = make_module(continuous=continuous)
    victim = WhiteBoxVictim(FrozenTeam(module, module.action_space, deterministic=True))
    pgd = ObsPGD(PGDParams(), ctx(continuous, budget, attacked=(0, 2)))
    obs = {k: v[0].numpy() for k, v in make_obs(seed=3, continuous=continuous).items()}
    torch.manual_seed(0)
    out = pgd.perturb(obs, victim, [0, 2])
    delta = out["obs"] - obs["obs"]
    assert np.abs(delta).max() <= budget + 1e-6 and np.abs(delta).max() > 0
    assert np.array_equal(out["obs"][1], obs["obs"][1])  # agent 1 is not attacked
    for key in ("state", "action_mask", "alive"):
        assert np.array_equal(out[key], obs[key])

    def loss(o):  # what PGD ascends: CE of the clean action, or distance to the clean mean
        t = {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs.items()}
        graph = module.graph(t["obs"])
        clean = module.conditional_logits(t, torch.zeros(1, N, dtype=torch.long), graph)[0, [0, 2]]
        adv = module.conditional_logits({**t, "obs": torch.as_tensor(o).unsqueeze(0)},
                                        torch.zeros(1, N, dtype=torch.long), graph)[0, [0, 2]]
        if not continuous:
            return torch.nn.functional.cross_entropy(adv, clean.argmax(-1)).item()
        return ((adv[:, :K] - clean[:, :K]) ** 2).sum().item()

    rng = np.random.default_rng(0)
    random_noise = obs["obs"] + rng.uniform(-budget, budget, obs["obs"].shape).astype(np.float32)
    assert loss(out["obs"]) > loss(random_noise) >= 0  # the gradient steps beat a random point


def test_pgd_steps_project_back_to_the_ball():
    module = make_module()
    victim = WhiteBoxVictim(FrozenTeam(module, module.action_space, deterministic=True))
    # A step as large as the ball and many iterations: only the projection keeps it inside.
    pgd = ObsPGD(PGDParams(iterations=30, step_fraction=1.0, random_start=False), ctx(False, 0.1))
    obs = {k: v[0].numpy() for k, v in make_obs(seed=4).items()}
    out = pgd.perturb(obs, victim, [1])
    assert np.abs(out["obs"] - obs["obs"]).max() <= 0.1 + 1e-6

