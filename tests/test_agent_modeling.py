"""Agent modelling wired into the project's learners (issue 10): the episode history the env
adapter carries, the representation in the module, the two optimizers in the learner, and the
off switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.evaluation.postprocessing import Postprocessing

from envs.adapter import TeamEnv
from marl.config import build_env, load_config
from marl.learners.episode_buffer import EpisodeBuffer
from marl.learners.joint_ppo import joint_ppo_loss
from marl.modules import JointPolicyModule
from marl.modules.joint_policy import AGENT_REPR

SPREAD = {"import": "mpe2.simple_spread_v3", "kwargs": {"N": 3, "max_cycles": 25}}
CLAM_SMALL = ["model.agent_modeling.name=clam", "model.agent_modeling.width=32", "model.agent_modeling.heads=2"]


# ----------------------------------------------------------------------------- the history
def test_history_holds_the_prefix_oldest_first_with_the_others_last_actions():
    env = TeamEnv({**SPREAD, "history": {"length": 4, "last_actions": True}})
    obs, _ = env.reset(seed=0)
    h = obs["team_0"]["history"]
    assert h.shape == (3, 4, 18 + 10)  # own observation + the two others' one-hot actions
    assert obs["team_0"]["history_len"][0] == 1
    np.testing.assert_array_equal(h[:, 0, :18], obs["team_0"]["obs"])
    assert not h[:, 0, 18:].any() and not h[:, 1:].any()  # no action yet, nothing after step 0
    first = obs["team_0"]
    plays = [np.array([1, 2, 3]), np.array([4, 0, 1]), np.array([2, 2, 2]), np.array([3, 1, 4]), np.array([0, 4, 3])]
    seen = [first["obs"].copy()]
    for t, joint in enumerate(plays, start=1):
        obs, *_ = env.step({"team_0": joint})
        seen.append(obs["team_0"]["obs"].copy())
        o = obs["team_0"]
        n = min(t + 1, 4)
        assert o["history_len"][0] == n
        window = list(range(t + 1 - n, t + 1))  # the steps the window holds, oldest first
        for slot, step in enumerate(window):
            np.testing.assert_array_equal(o["history"][:, slot, :18], seen[step])
        # Agent 0's row at the newest slot: agents 1 and 2's actions of the last step.
        last = o["history"][0, n - 1, 18:]
        assert last[:5].argmax() == joint[1] and last[5:].argmax() == joint[2] and last.sum() == 2
        assert o["history"][1, n - 1, 18:][:5].argmax() == joint[0]
    # Each step's observation is its own copy: the first one still holds one step.
    assert first["history_len"][0] == 1 and not first["history"][:, 1:].any()
    assert env.observation_spaces["team_0"].contains(obs["team_0"])


def test_history_uses_the_envs_own_model_features_where_it_has_them():
    from tests.toy_envs import FeatureEnv

    env = TeamEnv({"import": "tests.toy_envs:FeatureEnv", "kwargs": {}, "history": {"length": 3}})
    obs, _ = env.reset(seed=0)
    assert obs["team_0"]["history"].shape == (1, 3, FeatureEnv.FEATURES)
    obs, *_ = env.step({"team_0": np.array([1])})
    np.testing.assert_array_equal(obs["team_0"]["history"][0, 1], env.env.model_features("a"))
    np.testing.assert_array_equal(obs["team_0"]["history"][0, 0], np.zeros(FeatureEnv.FEATURES))


def test_no_history_without_agent_modeling():
    env = TeamEnv(SPREAD)
    obs, _ = env.reset(seed=0)
    assert set(obs["team_0"]) == {"obs", "state", "action_mask", "alive"}
    cfg = load_config("configs/mappo_simple_spread.yaml")
    assert cfg.env.history is None
    on = load_config("configs/mappo_simple_spread.yaml", [*CLAM_SMALL, "model.agent_modeling.history=7"])
    assert on.env.history is not None and on.env.history.length == 7


# -------------------------------------------------------------------------------- module
def _module(overrides=()):
    cfg = load_config("configs/mappo_simple_spread.yaml", list(overrides))
    env = build_env(cfg.env)
    team = next(iter(env.teams))
    spec = RLModuleSpec(
        module_class=JointPolicyModule, observation_space=env.observation_spaces[team],
        action_space=env.action_spaces[team], model_config=cfg.model.model_dump(mode="json"),
    )
    return spec.build(), env, team


def _batch(env, team, b=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    o = {k: torch.as_tensor(v).unsqueeze(0).repeat(b, *[1] * np.ndim(v)) for k, v in obs[team].items()}
    o["obs"] = torch.randn(o["obs"].shape, generator=g)
    o["state"] = torch.randn(o["state"].shape, generator=g)
    return {
        Columns.OBS: o,
        Columns.ACTIONS: torch.randint(0, 5, (b, 3), generator=g),
        Columns.ACTION_DIST_INPUTS: torch.randn(b, 15, generator=g),
        Postprocessing.ADVANTAGES: torch.randn(b, generator=g),
        Postprocessing.VALUE_TARGETS: torch.randn(b, generator=g),
    }


# Recorded at commit 450fe8b, before agent modelling existed: MAPPO's module on simple_spread
# built under torch seed 0, and its PPO loss on the batch below (same draws as then). The
# orthogonal initialisation's QR differs in the last bits with the thread count and the CPU,
# hence the tolerances (far below what any change of layer, input or loss term moves).
BEFORE_PARAM_SUM = -26.43385710888731
BEFORE_LOSS = 0.4547036588191986


def test_off_switch_is_exactly_the_learner_without_agent_modeling():
    torch.manual_seed(0)
    module, env, team = _module(["model.agent_modeling=null"])
    assert not module.models_agents and not hasattr(module, "agent_model")
    assert len(list(module.parameters())) == 12
    assert float(sum(p.detach().double().sum() for p in module.parameters())) == pytest.approx(BEFORE_PARAM_SUM, rel=1e-5)
    g = torch.Generator().manual_seed(1)
    b = 8
    batch = {
        Columns.OBS: {"obs": torch.randn(b, 3, 18, generator=g),
                      "state": torch.randn(b, env.observation_spaces[team]["state"].shape[0], generator=g),
                      "action_mask": torch.ones(b, 3, 5), "alive": torch.ones(b, 3)},
        Columns.ACTIONS: torch.randint(0, 5, (b, 3), generator=g),
        Columns.ACTION_DIST_INPUTS: torch.randn(b, 15, generator=g),
        Postprocessing.ADVANTAGES: torch.randn(b, generator=g),
        Postprocessing.VALUE_TARGETS: torch.randn(b, generator=g),
    }
    loss, _ = joint_ppo_loss(module, batch, module.forward_train(batch), clip_param=0.2, vf_loss_coeff=1.0,
                             entropy_coeff=0.01)
    assert float(loss) == pytest.approx(BEFORE_LOSS, rel=1e-4)


def test_representation_is_appended_to_actor_and_critic_and_exists_at_the_first_step():
    torch.manual_seed(0)
    module, env, team = _module(CLAM_SMALL)
    off, _, _ = _module()
    assert module.actor[0].in_features == off.actor[0].in_features + 20
    assert module.critic[0].in_features == off.critic[0].in_features + 3 * 20  # every agent's z
    obs, _ = env.reset(seed=0)
    out = module.forward_exploration({Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs[team].items()}})
    z = out[AGENT_REPR].reshape(3, 20)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))


def test_learner_reuses_the_representation_each_step_acted_with():
    """The EMA encoder moves between rollout and update; the stored z keeps the PPO ratio at 1
    on the first pass, where re-encoding would not."""
    torch.manual_seed(0)
    module, env, team = _module(CLAM_SMALL)
    batch = _batch(env, team)
    acted = module.forward_exploration(batch)
    batch[Columns.ACTIONS] = acted[Columns.ACTIONS]
    batch[AGENT_REPR] = acted[AGENT_REPR]
    with torch.no_grad():  # the online encoder trains and the EMA copy follows it
        for p in module.agent_model.online_parameters():
            p.add_(0.5 * torch.randn_like(p))
        module.agent_model.ema_update()
    stored = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(stored, acted[Columns.ACTION_DIST_INPUTS])
    del batch[AGENT_REPR]
    fresh = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    assert not torch.allclose(fresh, acted[Columns.ACTION_DIST_INPUTS])


def test_encoder_gradient_comes_only_from_the_contrastive_loss():
    torch.manual_seed(0)
    module, env, team = _module(CLAM_SMALL)
    batch = _batch(env, team)
    batch[AGENT_REPR] = module.forward_exploration(batch)[AGENT_REPR]
    del batch[AGENT_REPR]  # the harder case: z encoded inside the training forward pass
    loss, _ = joint_ppo_loss(module, batch, module.forward_train(batch), clip_param=0.2, vf_loss_coeff=1.0,
                             entropy_coeff=0.01)
    loss.backward()
    model = module.agent_model
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in module.actor.parameters())
    module.zero_grad(set_to_none=True)

    hist = torch.randn(16, 50, batch[Columns.OBS]["history"].shape[-1])
    c_loss, _ = model.contrastive_loss(hist, torch.full((16,), 30), torch.Generator().manual_seed(0))
    c_loss.backward()
    assert all(p.grad is None for n, p in module.named_parameters() if not n.startswith("agent_model."))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.online_parameters())
    assert all(p.grad is None for p in model.ema_encoder.parameters())


def test_episode_buffer_is_a_ring_and_samples_without_replacement():
    buf = EpisodeBuffer(capacity=4, length=3, dim=2, seed=0)
    buf.add(np.arange(6 * 3 * 2, dtype=np.float32).reshape(6, 3, 2), np.array([1, 2, 3, 3, 2, 1]))
    assert buf.size == 4
    # The two oldest were overwritten: slots hold episodes 4, 5, 2, 3.
    assert buf.hist[0, 0, 0] == 4 * 6 and buf.lengths.tolist() == [2, 1, 3, 3]
    hist, lengths = buf.sample(10)
    assert len(hist) == 4 and sorted(h[0, 0] for h in hist) == sorted(buf.hist[:, 0, 0])


@pytest.mark.slow
def test_clam_trains_inside_the_rllib_learner(tmp_path):
    """Three iterations of MAPPO with CLAM on simple_spread: the learner holds two optimizers,
    the encoder's weights move, the EMA copy lags them by the momentum, the buffer fills with
    finished episodes, and the run evaluates and resumes from its checkpoint."""
    from marl.train import Trainer, create_run_dir

    cfg = load_config("configs/mappo_simple_spread.yaml", [
        *CLAM_SMALL, "model.agent_modeling.min_episodes=4", "model.agent_modeling.batch_episodes=16",
        "model.agent_modeling.encoder_every=4",
        "model.agent_modeling.probe_episodes=0", "algo.train_batch_size=300", "algo.minibatch_size=150",
        "algo.num_epochs=1", "runners.num_envs_per_env_runner=2", "train.total_env_steps=900",
        "train.progress=log", f"output_dir={tmp_path}",
    ])
    trainer = Trainer(cfg, create_run_dir(cfg))
    trainer.build()
    try:
        learner = trainer.algo.learner_group._learner
        module = learner.module["team_0"].unwrapped()
        names = {name for name, _ in learner.get_optimizers_for_module("team_0")}
        assert names == {"default_optimizer", "agent_model"}
        encoder_params = {id(p) for p in module.agent_model.online_parameters()}
        policy_opt = dict(learner.get_optimizers_for_module("team_0"))["default_optimizer"]
        in_policy = {id(p) for g in policy_opt.param_groups for p in g["params"]}
        assert not encoder_params & in_policy
        before = [p.detach().clone() for p in module.agent_model.encoder.parameters()]
        trainer.run()
        after = list(module.agent_model.encoder.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert learner.episode_buffers["team_0"].size >= 2 * 300 // 25 - 2
        ema = [p.detach().clone() for p in module.agent_model.ema_encoder.parameters()]
        assert any(not torch.equal(e, b) for e, b in zip(ema, before, strict=True))  # the EMA followed...
        assert any(not torch.equal(e, a) for e, a in zip(ema, after, strict=True))  # ...and lags
        # 2 minibatch steps per update, an encoder step every 4: still one per update, so the
        # loss is in every iteration's metrics (a missing one would read as NaN and stop the run).
        rows = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(np.isfinite(r["agent_model/contrastive_loss"]) for r in rows)
    finally:
        trainer.stop()
    from marl.evaluate import evaluate

    out = evaluate(trainer.run_dir / "checkpoints" / "iter_000003", episodes=2)
    assert np.isfinite(out["episode_return_mean"])


@pytest.mark.slow
def test_clam_with_two_learners_keeps_them_identical():
    """runners.num_learners=2 (DDP over gloo): the encoder, which is not in the module's
    forward pass, trains without stopping DDP, and its gradients are averaged, so after two
    updates both Learners hold the same weights (their value normalisers see their own shards)."""
    import ray

    from marl.algorithms import build_algorithm_config

    cfg = load_config("configs/mappo_simple_spread.yaml", [
        *CLAM_SMALL, "model.agent_modeling.min_episodes=4", "model.agent_modeling.batch_episodes=16",
        "algo.train_batch_size=300", "algo.minibatch_size=150", "algo.num_epochs=1",
        "runners.num_envs_per_env_runner=2", "runners.num_learners=2",
    ])

    def weights(learner):
        return {k: v.detach().cpu().clone() for k, v in learner.module["team_0"].unwrapped().state_dict().items()}

    ray.shutdown()  # an earlier in-process test may have left this process's Ray running
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        algo = build_algorithm_config(cfg).build_algo()
        try:
            before = [r.get() for r in algo.learner_group.foreach_learner(weights)]
            for _ in range(2):
                out = algo.train()
            after = [r.get() for r in algo.learner_group.foreach_learner(weights)]
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert np.isfinite(out["learners"]["team_0"]["agent_model/contrastive_loss"])
    a, b = after
    assert a.keys() == b.keys() and len(a) > 50
    assert [k for k in a if not k.startswith("value_norm.") and not torch.equal(a[k], b[k])] == []
    moved = [k for k in a if k.startswith("agent_model.encoder.") and not torch.equal(a[k], before[0][k])]
    assert moved, "the encoder did not train"
