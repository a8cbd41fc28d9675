"""The learner inside a real RLlib Algorithm, in this process so that what each update *uses*
can be recorded: scheduled values after a resume, and per-iteration metrics that are means
over every minibatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import marl.learners.joint_ppo as joint_ppo
from marl.config import load_config
from marl.train import resume, train

pytestmark = pytest.mark.slow
# 400 env steps per iteration (plus RLlib's one extra row per episode chunk), minibatches of 200.
TINY = [
    "algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=2",
    "runners.num_envs_per_env_runner=4", "train.progress=log", "train.checkpoint_every=2",
    "algo.entropy_coeff=[[0,0.05],[4000,0.0]]", "algo.lr=[[0,1e-3],[4000,1e-4]]",
]


@pytest.fixture
def recorded(monkeypatch):
    """Per training iteration, every loss call's entropy coefficient, learning rate and stats."""
    calls: list[list[dict]] = []
    original = joint_ppo.joint_ppo_loss
    learner_cls = joint_ppo.JointPPOLearner
    original_compute = learner_cls.compute_loss_for_module
    original_before = learner_cls.before_gradient_based_update

    def before(self, *, timesteps):
        calls.append([])
        return original_before(self, timesteps=timesteps)

    def compute(self, *, module_id, config, batch, fwd_out):
        lr = next(iter(self._named_optimizers.values())).param_groups[0]["lr"]
        calls[-1].append({"lr": float(lr)})
        return original_compute(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    def loss(*args, **kwargs):
        total, stats = original(*args, **kwargs)
        calls[-1][-1].update(entropy_coeff=float(kwargs["entropy_coeff"]),
                         approx_kl=float(stats["approx_kl"]), clip_fraction=float(stats["clip_fraction"]))
        return total, stats

    monkeypatch.setattr(joint_ppo, "joint_ppo_loss", loss)
    monkeypatch.setattr(learner_cls, "compute_loss_for_module", compute)
    monkeypatch.setattr(learner_cls, "before_gradient_based_update", before)
    return calls


def test_resumed_run_uses_the_same_scheduled_values_as_an_uninterrupted_one(tmp_path, recorded):
    straight = train(load_config(None, [*TINY, "train.total_env_steps=1600", f"output_dir={tmp_path / 'a'}"]))
    uninterrupted = list(recorded)
    assert len(uninterrupted) == 4
    recorded.clear()

    run = train(load_config(None, [*TINY, "train.total_env_steps=800", f"output_dir={tmp_path / 'b'}"]))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["total_env_steps"] = 1600  # extend the budget, then resume from iteration 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    recorded.clear()
    resume(run)
    after = list(recorded)
    assert len(after) == 2
    for k, (a, b) in enumerate(zip(uninterrupted[2:], after, strict=True)):
        # The value used by every update, from the first one after the restore.
        assert b[0]["entropy_coeff"] == pytest.approx(a[0]["entropy_coeff"], abs=1e-7), k
        assert b[0]["lr"] == pytest.approx(a[0]["lr"], rel=1e-6), k
        assert {c["entropy_coeff"] for c in b} == {b[0]["entropy_coeff"]}
    # And the schedule is the one configured: iteration i uses schedule(400 i) in both runs.
    for i, it in enumerate(uninterrupted, start=1):
        assert it[0]["entropy_coeff"] == pytest.approx(np.interp(400 * i, [0, 4000], [0.05, 0.0]), abs=1e-7)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    # Per-iteration learner metrics are the mean over the iteration's minibatches.
    for row, it in zip(rows, uninterrupted, strict=True):
        assert row["approx_kl"] == pytest.approx(np.mean([c["approx_kl"] for c in it]), rel=1e-5)
        assert row["clip_fraction"] == pytest.approx(np.mean([c["clip_fraction"] for c in it]), rel=1e-5, abs=1e-9)


def test_executed_flags_reach_the_loss_row_by_row(tmp_path, monkeypatch):
    """The env's per-agent ``executed`` infos arrive in the learner's batch aligned with the
    actions they describe (the info of action t comes with observation t+1), through RLlib's
    real connector pipeline: chunk boundaries and the bootstrap row included."""
    from envs.adapter import TeamEnv
    from tests.toy_envs import OverrideEnv

    seen = []
    original = joint_ppo.JointPPOLearner.compute_loss_for_module

    def compute(self, *, module_id, config, batch, fwd_out):
        seen.append({k: batch[k].detach().clone() for k in ("executed", "loss_mask") if k in batch}
                    | {"t": batch["obs"]["obs"][..., 0].detach().clone()})
        return original(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    monkeypatch.setattr(joint_ppo.JointPPOLearner, "compute_loss_for_module", compute)
    overrides = [*TINY[:5], "env={import: 'tests.toy_envs:override_env', kwargs: {max_steps: 7}}",
                 "train.total_env_steps=400", f"output_dir={tmp_path}"]
    train(load_config(None, overrides))
    assert seen and all("executed" in s for s in seen)
    assert TeamEnv({"import": "tests.toy_envs:override_env", "kwargs": {"max_steps": 7}}).specs  # one team
    for s in seen:
        real = s["loss_mask"].bool()
        t = s["t"][real].round().long()  # [rows, n agents]: every agent sees the step count
        want = torch.stack([torch.tensor([OverrideEnv.executed(int(x), i) for i in range(2)]) for x in t[:, 0]])
        assert torch.equal(s["executed"][real].bool(), want)
        assert 0 < s["executed"][real].mean() < 1


def test_plain_training_carries_no_executed_column(tmp_path, monkeypatch):
    """Without partial control nothing is masked: the batch has no ``executed`` column, so the
    loss takes its unmasked path."""
    keys = []
    original = joint_ppo.JointPPOLearner.compute_loss_for_module

    def compute(self, *, module_id, config, batch, fwd_out):
        keys.append(set(batch.keys()))
        return original(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    monkeypatch.setattr(joint_ppo.JointPPOLearner, "compute_loss_for_module", compute)
    train(load_config(None, [*TINY[:5], "train.total_env_steps=400", f"output_dir={tmp_path}"]))
    assert keys and not any("executed" in k for k in keys)
