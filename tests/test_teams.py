"""Competitive MPE with several teams: each team its own module; a team can train, be frozen
(loaded from a checkpoint) or be scripted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModule

from marl.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=1",
        "runners.num_envs_per_env_runner=4", "train.progress=log", "configs/mappo_simple_spread.yaml"]
ADVERSARY = ["env.import=mpe2.simple_adversary_v3", "env.teams={adversary: [adversary_], good: [agent_]}"]
pytestmark = pytest.mark.slow


def train(*args):
    config = [a for a in TINY if a.endswith(".yaml")]
    rest = [a for a in TINY if not a.endswith(".yaml")]
    proc = subprocess.run([sys.executable, "run.py", "train", *config, *rest, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def module_weights(run_dir: Path, team: str) -> dict[str, torch.Tensor]:
    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    module = RLModule.from_checkpoint(str(ckpt / "learner_group" / "learner" / "rl_module" / team))
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def both_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("teams")
    return train(*ADVERSARY, "train.total_env_steps=800", f"output_dir={out}")


def test_each_team_has_its_module_and_return(both_trained):
    rows = [json.loads(x) for x in (both_trained / "metrics.jsonl").read_text().splitlines()]
    assert {"adversary/episode_return_mean", "good/episode_return_mean"} <= set(rows[-1])
    assert set(module_weights(both_trained, "adversary")) and set(module_weights(both_trained, "good"))
    proc = subprocess.run([sys.executable, "run.py", "evaluate", str(both_trained), "--episodes", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    assert set(result["team_return_mean"]) == {"adversary", "good"}


def test_frozen_team_keeps_its_checkpoint_weights(both_trained, tmp_path):
    run = train(*ADVERSARY, "teams.good.role=frozen", f"teams.good.checkpoint={both_trained}",
                "train.total_env_steps=800", f"output_dir={tmp_path}")
    before, after = module_weights(both_trained, "good"), module_weights(run, "good")
    assert all(torch.equal(before[k], after[k]) for k in before)
    adv_before, adv_after = module_weights(both_trained, "adversary"), module_weights(run, "adversary")
    assert any(not torch.equal(adv_before[k], adv_after[k]) for k in adv_before)  # still training


def test_scripted_team_plays_by_its_rule(tmp_path):
    run = train("env.import=mpe2.simple_tag_v3", "env.teams={predators: [adversary_], prey: [agent_]}",
                "teams.prey.role=scripted", "teams.prey.policy=random", "train.total_env_steps=800",
                f"output_dir={tmp_path}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "prey/episode_return_mean" in rows[-1] and "predators/episode_return_mean" in rows[-1]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["teams.blue.role=scripted"], "the env has no team 'blue'"),
        (["teams.good.role=frozen"], "a frozen team needs 'checkpoint'"),
        (["teams.good.role=frozen", "teams.good.checkpoint=/no/such"], "'/no/such' does not exist"),
        (["teams.good.role=scripted", "teams.good.policy=dance"], "'dance' is neither one of"),
        (["teams.good.role=scripted", "teams.adversary.role=scripted"], "at least one must train"),
    ],
)
def test_bad_team_roles_are_reported(capsys, tmp_path, overrides, fragment):
    code = main(["train", *ADVERSARY, *overrides, f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not (tmp_path / "runs").exists()


def test_frozen_checkpoint_must_fit_the_team(capsys, both_trained, tmp_path):
    # The 'good' module (2 agents) cannot play simple_tag's prey (1 agent).
    code = main(["train", "env.import=mpe2.simple_tag_v3", "env.teams={predators: [adversary_], prey: [agent_]}",
                 "teams.prey.role=frozen", f"teams.prey.checkpoint={both_trained}", "teams.prey.module=good",
                 f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "teams.prey.checkpoint" in err and "was trained for" in err
