"""Recurrent teams inside RLlib (issue 12): its connectors carry each team's hidden states
from step to step and reset them at episode starts, with agents that die mid-episode, rollout
fragments that cut episodes, and sequences that cut them again; checkpoints, resume,
evaluation and victims; and the memory env that a recurrent team solves and a feed-forward
one cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from ray.rllib.core.columns import Columns

import marl.learners.joint_ppo as joint_ppo
from marl.config import load_config
from marl.evaluate import evaluate
from marl.train import resume, train

pytestmark = pytest.mark.slow

# MaskedDeathEnv (tests/toy_envs.py): 3 agents, agent_2 dies at step 2 of 7; every agent's
# observation holds t + 1 + its index. 30 steps per env and fragment cut episodes of 7 in
# flight; sequences of 3 cut them again.
DEATH = [
    "env={import: 'tests.toy_envs:masked_death_env', kwargs: {max_steps: 7}}",
    "model.recurrent.hidden=8", "model.recurrent.max_seq_len=3", "model.critic=decentralized",
    "model.graph.mode=learned", "algo.train_batch_size=60", "algo.minibatch_size=30", "algo.num_epochs=2",
    "runners.num_envs_per_env_runner=2", "train.progress=log", "train.checkpoint_every=2",
]


@pytest.fixture
def first_minibatches(monkeypatch):
    """Per learner update, what its first minibatch saw (parameters not yet moved)."""
    seen: list[dict] = []
    cls = joint_ppo.JointPPOLearner
    original_before, original_compute = cls.before_gradient_based_update, cls.compute_loss_for_module

    def before(self, *, timesteps):
        seen.append({})
        return original_before(self, timesteps=timesteps)

    def compute(self, *, module_id, config, batch, fwd_out):
        if not seen[-1]:
            module = self.module[module_id].unwrapped()
            b, t = batch[Columns.ACTIONS].shape[:2]
            n, a = module.n, module.A
            logp = module.head.logp(fwd_out[Columns.ACTION_DIST_INPUTS].reshape(b, t, n, a), batch[Columns.ACTIONS])
            old = module.head.logp(batch[Columns.ACTION_DIST_INPUTS].reshape(b, t, n, a), batch[Columns.ACTIONS])
            acted = batch[Columns.LOSS_MASK].bool().unsqueeze(-1) & (batch[Columns.OBS]["alive"] > 0)
            seen[-1].update(
                ratio_gap=float((logp - old)[acted].abs().max().detach()),
                start_t=(batch[Columns.OBS]["obs"][:, 0, 0, 0] - 1).round().long(),  # t at each sequence start
                real=batch[Columns.LOSS_MASK][:, 0].bool(),
                state_in={k: v.detach().clone() for k, v in batch[Columns.STATE_IN].items()},
                shape=(b, t),
            )
        return original_compute(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    monkeypatch.setattr(cls, "before_gradient_based_update", before)
    monkeypatch.setattr(cls, "compute_loss_for_module", compute)
    return seen


def test_states_reset_per_episode_carry_within_it_and_resume_with_episodes_in_flight(tmp_path, first_minibatches):
    """BN-MAPPO (learned DAG) with a GRU actor and per-agent GRU critics, on an env whose
    agent dies mid-episode: RLlib's sequences start from the state the rollout reached (zeros
    at an episode's first step, the carried state elsewhere), so the first minibatch of every
    update has ratio 1 on every acting agent, before and after a resume from a checkpoint
    taken with episodes in flight. The checkpoint evaluates (deterministic, decentralised)."""
    run = train(load_config(None, [*DEATH, "train.total_env_steps=120", f"output_dir={tmp_path}"]))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["total_env_steps"] = 240
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    resume(run)
    assert len(first_minibatches) == 4  # 2 updates, then 2 after the resume
    for mb in first_minibatches:
        assert mb["shape"][1] == 3  # [B, max_seq_len] sequences
        assert mb["ratio_gap"] < 1e-5
        starts, real = mb["start_t"], mb["real"]
        actor = mb["state_in"]["actor"]  # [B, n, H]
        assert set(mb["state_in"]) == {"actor", "critic"} and actor.shape[1:] == (3, 8)
        fresh = starts == 0
        assert fresh.any() and (~fresh & real).any()
        assert actor[fresh & real].abs().max() == 0  # an episode's first sequence: the initial state
        assert actor[~fresh & real].abs().amax(dim=(1, 2)).min() > 0  # later ones: the carried state
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["vf_loss"]) for r in rows)
    out = evaluate(run, episodes=3, deterministic=True, decentralized=True)
    assert np.isfinite(out["episode_return_mean"]) and out["episode_len_mean"] == 7


# ------------------------------------------------------------------------------ memory env
MEMORY = [
    "algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=8", "algo.lr=3e-3",
    "model.graph.mode=empty", "model.hidden=32", "runners.num_envs_per_env_runner=4",
    "train.total_env_steps=2400", "train.checkpoint_every=100", "train.progress=log",
]
RECURRENT = ["model.recurrent.hidden=32", "model.recurrent.max_seq_len=5"]


def _win_rates(run) -> list[float]:
    return [json.loads(x)["win_rate"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def memory_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    runs = {}
    for name, extra in (("recurrent", RECURRENT), ("feed_forward", [])):
        cfg = load_config("configs/env/memory_cue.yaml", [*MEMORY, *extra, f"output_dir={out / name}"])
        runs[name] = train(cfg)
    return runs


def test_a_recurrent_team_solves_the_memory_task_and_a_feed_forward_one_cannot(memory_runs):
    """2 agents, 2 cues, 4 steps: chance (the best without memory) is 1/2 of the episodes."""
    rec, ff = _win_rates(memory_runs["recurrent"]), _win_rates(memory_runs["feed_forward"])
    assert len(rec) == len(ff) == 6  # 2,400 env steps each, same batch, minibatch and epochs
    assert rec[-1] >= 0.8, rec
    assert max(ff) <= 0.6, ff
    # Evaluated from its checkpoint, the greedy team carries the cue through each episode.
    out = evaluate(memory_runs["recurrent"], episodes=20, deterministic=True)
    assert out["win_rate"] >= 0.9


def test_a_recurrent_victim_acts_from_its_memory_and_stays_a_black_box(memory_runs):
    from adversaries.attack_env import AttackEnv, _victim
    from adversaries.base import ATTACKER
    from adversaries.config import load_attack_config
    from adversaries.victims import _FROZEN
    from tests.test_adversaries_attack import reachable, victim_hits

    setup = load_attack_config(None, ["victim.deterministic=true"], victim=str(memory_runs["recurrent"]), adversary="gleave")
    env = AttackEnv(setup.env_config())
    team = _FROZEN[env.victims[setup.cfg.victim.team]._handle]
    wins = []
    for seed in range(10):  # clean episodes: the victims act alone, from their hidden states
        env.reset(seed=seed)
        assert team.hidden.abs().max() == 0  # every episode starts from the initial state
        done = False
        while not done:
            _, _, term, trunc, info = env.step({})
            done = term["__all__"] or trunc["__all__"]
        assert team.hidden.abs().max() > 0
        wins.append(info[ATTACKER]["won"])
    assert np.mean(wins) >= 0.9
    plugin = setup.plugin()
    spec = plugin.module_spec()
    spec.observation_space, spec.action_space = env.observation_spaces[ATTACKER], env.action_spaces[ATTACKER]
    attacker = spec.build()
    env.reset(seed=0)
    env.step({ATTACKER: env.action_spaces[ATTACKER].sample()})
    found = reachable(env, plugin, attacker)
    assert victim_hits(found, list(_victim(setup.cfg.victim.checkpoint).modules.values())) == []
    assert not any(isinstance(o, torch.Tensor) and o.data_ptr() == team.hidden.data_ptr() for o in found)
    assert not any(o is team for o in found)
