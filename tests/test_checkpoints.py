"""Checkpoints from other people are untrusted input (marl/checkpoints.py): every checkpoint
carries each team's weights as safetensors beside a JSON description, evaluate and frozen teams
load from those alone, a planted pickle never runs, and every bad checkpoint is one `error:`
line with exit code 2."""

from __future__ import annotations

import json
import pathlib
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from marl.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["configs/mappo_simple_spread.yaml", "algo.train_batch_size=400", "algo.minibatch_size=200",
        "algo.num_epochs=1", "runners.num_envs_per_env_runner=4", "train.progress=log",
        "model.graph.mode=learned"]  # learned graph: 0-d and integer-valued buffers travel too
ADVERSARY = ["env.import=mpe2.simple_adversary_v3", "env.teams={adversary: [adversary_], good: [agent_]}"]
RLLIB_MODULES = Path("learner_group") / "learner" / "rl_module"


class Bait:
    """Unpickling this creates ``marker``: a stand-in for code planted in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant_pickles(ckpt: Path, marker: Path) -> int:
    """Replace every pickle in the checkpoint (module_state.pkl, class_and_ctor_args.pkl,
    state.pkl, rng_state.pkl ...) with the bait."""
    payload = pickle.dumps(Bait(marker))
    planted = list(ckpt.rglob("*.pkl")) + [ckpt / "rng_state.pkl"]
    for path in planted:
        path.write_bytes(payload)
    return len(planted)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny two-team run (simple_adversary: 'adversary' 1 agent, 'good' 2 agents)."""
    out = tmp_path_factory.mktemp("ckpt_runs")
    proc = run_cli("train", *TINY, *ADVERSARY, "train.total_env_steps=400", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return run_dir / "checkpoints" / "iter_000001"


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    dst = tmp_path / "iter_000001"
    shutil.copytree(trained, dst)
    return dst


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


# ---------------------------------------------------------------------------- round trip
@pytest.mark.slow
def test_safe_weights_equal_the_trained_modules_bit_for_bit_and_act_identically(trained):
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModule

    from marl.checkpoints import load_checkpoint

    loaded = load_checkpoint(trained.parent.parent)  # a run directory resolves to its latest
    assert loaded.ckpt == trained and set(loaded.modules) == {"adversary", "good"}
    for team, module in loaded.modules.items():
        assert not module.training
        # Our own checkpoint, so RLlib's pickled copy may be read here, as the reference.
        reference = RLModule.from_checkpoint(str(trained / RLLIB_MODULES / team))
        mine, theirs = module.state_dict(), reference.state_dict()
        assert mine.keys() == theirs.keys()
        assert {"value_norm.running_mean", "graph.mode_share", "graph.edge_freq"} <= set(mine)
        for key in mine:
            assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key
        space = loaded.observation_spaces[team]
        space.seed(0)
        obs = {k: torch.as_tensor(np.stack([space.sample()[k] for _ in range(4)])) for k in space.spaces}
        obs["action_mask"] = torch.ones_like(obs["action_mask"])
        with torch.no_grad():
            a = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
            b = reference.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
            torch.manual_seed(1)
            c = module.forward_exploration({Columns.OBS: obs})
            torch.manual_seed(1)
            d = reference.eval().forward_exploration({Columns.OBS: obs})
        assert torch.equal(a, b)
        assert torch.equal(c[Columns.ACTIONS], d[Columns.ACTIONS])
        assert torch.equal(c[Columns.ACTION_LOGP], d[Columns.ACTION_LOGP])
    # The description is strict JSON (no NaN/Infinity) and names registered classes only.
    text = (trained / "teams" / "teams.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert {d["module_class"] for d in data["teams"].values()} == {"JointPolicyModule"}
    assert json.loads((trained / "rng_state.json").read_text()).keys() == {"python", "numpy", "torch"}
    assert not (trained / "rng_state.pkl").exists()


def test_rng_state_round_trips_through_json():
    from marl.train import rng_state, set_rng_state

    state = json.loads(json.dumps(rng_state()))
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


# ------------------------------------------------------------------------ planted pickle
def test_the_bait_works_when_unpickled(tmp_path):
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Bait(marker)))
    assert marker.exists()


@pytest.mark.slow
def test_evaluate_a_checkpoint_with_planted_pickles_never_unpickles(copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    assert plant_pickles(copy, marker) > 10
    code = main(["evaluate", str(copy), "--episodes", "1"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["episodes"] == 1
    assert not marker.exists()


@pytest.mark.slow
def test_frozen_team_from_a_planted_checkpoint_uses_the_safe_weights_everywhere(copy, tmp_path):
    """Frozen 'good' from a checkpoint full of bait: the safe weights reach the Learner and a
    remote EnvRunner (and a local one, where there is one), stay unchanged by training, and
    no bait runs."""
    import ray

    from marl.algorithms import build_algorithm_config
    from marl.checkpoints import load_checkpoint
    from marl.config import load_config

    marker = tmp_path / "PWNED"
    plant_pickles(copy, marker)
    cfg = load_config(TINY[0], [*TINY[1:], *ADVERSARY, "teams.good.role=frozen", f"teams.good.checkpoint={copy}",
                                "runners.num_env_runners=1", f"output_dir={tmp_path / 'runs'}"])
    want = load_checkpoint(copy).modules["good"].state_dict()

    def same(state) -> bool:
        # RLlib hands EnvRunner states over as NumPy (0-d buffers as float64 scalars).
        return state.keys() == want.keys() and all(
            torch.equal(torch.as_tensor(np.array(state[k]), dtype=want[k].dtype).reshape(want[k].shape), want[k])
            for k in want
        )

    ray.shutdown()  # an earlier in-process test may have left this process's Ray running
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        algo = build_algorithm_config(cfg).build_algo()
        try:
            for trained_once in (False, True):
                if trained_once:
                    algo.train()
                assert same(algo.learner_group.get_weights(["good"])["good"])
                remote = algo.env_runner_group.foreach_env_runner(
                    lambda er: er.module["good"].get_state(), local_env_runner=False)
                assert len(remote) == 1 and same(remote[0])
                if algo.env_runner is not None:
                    assert same(algo.env_runner.module["good"].get_state())
            adversary = algo.learner_group.get_weights(["adversary"])["adversary"]
            start = load_checkpoint(copy).modules["adversary"].state_dict()
            assert any(not torch.equal(torch.as_tensor(adversary[k]), start[k]) for k in start)  # fresh, training
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert not marker.exists()


# ------------------------------------------------------------------------ bad checkpoints
def _teams_json(ckpt: Path) -> dict:
    return json.loads((ckpt / "teams" / "teams.json").read_text())


def _write_teams_json(ckpt: Path, data: dict) -> None:
    (ckpt / "teams" / "teams.json").write_text(json.dumps(data))


def _rehash(ckpt: Path, team: str) -> None:
    from marl.checkpoints import _sha256

    data = _teams_json(ckpt)
    data["teams"][team]["sha256"] = _sha256(ckpt / "teams" / data["teams"][team]["weights"])
    _write_teams_json(ckpt, data)


def _truncate(ckpt: Path) -> None:
    path = ckpt / "teams" / "good.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_and_rehash(ckpt: Path) -> None:
    _truncate(ckpt)
    _rehash(ckpt, "good")


def _swap_weights(ckpt: Path) -> None:  # the 1-agent adversary's weights under the 2-agent team
    shutil.copy(ckpt / "teams" / "adversary.safetensors", ckpt / "teams" / "good.safetensors")
    _rehash(ckpt, "good")


def _edit(**changes):
    def apply(ckpt: Path) -> None:
        data = _teams_json(ckpt)
        for key, value in changes.items():
            if key in ("format", "version"):
                data[key] = value
            else:
                data["teams"]["good"][key] = value
        _write_teams_json(ckpt, data)
    return apply


def _other_env(ckpt: Path) -> None:  # the config now names an env whose team 'good' has 3 agents
    import yaml

    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["env"] = {"import": "mpe2.simple_spread_v3", "kwargs": {}, "teams": {"good": ["agent_"]}}
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))


BAD = {
    "teams.json missing (written before safe weights)": (
        lambda c: shutil.rmtree(c / "teams"), "teams/teams.json", "lacks safe team weights"),
    "weights file missing": (
        lambda c: (c / "teams" / "good.safetensors").unlink(), "good.safetensors", "is missing"),
    "weights truncated": (_truncate, "good.safetensors", "truncated or altered"),
    "weights truncated, hash forged": (_truncate_and_rehash, "good.safetensors", "not a readable safetensors"),
    "weights of another team shape": (_swap_weights, "good.safetensors", "expects"),
    "teams.json not JSON": (
        lambda c: (c / "teams" / "teams.json").write_text("{not json"), "teams.json", "is not valid JSON"),
    "another format": (_edit(format="someone-else/v9"), "teams.json", "expected 'marl-robust/team-weights'"),
    "another version": (_edit(version=99), "teams.json", "format version 99; expected 1"),
    "unregistered module class": (_edit(module_class="os.system"), "teams.json", "is not one of"),
    "weights path outside the checkpoint": (_edit(weights="../../x.safetensors"), "teams.json", "plain"),
    "description the class rejects": (_edit(model_config={"hidden": "many"}), "teams.json", "cannot rebuild"),
    "config.yaml missing": (lambda c: (c / "config.yaml").unlink(), "config.yaml", "lacks config.yaml"),
    "another env": (_other_env, "teams.json", "was trained for observations"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_one_error_line_naming_the_file(case, copy, tmp_path, capsys):
    breakage, file, fragment = BAD[case]
    marker = tmp_path / "PWNED"
    plant_pickles(copy, marker)  # a bad safe part never makes the loader fall back to pickles
    breakage(copy)
    code = main(["evaluate", str(copy), "--episodes", "1"])
    err = one_error_line(capsys)
    assert code == 2 and str(copy) in err and file in err and fragment in err, err
    assert not marker.exists()


def test_a_path_that_is_no_checkpoint_is_refused(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--episodes", "1"]) == 2
    assert "is neither a checkpoint" in one_error_line(capsys)


@pytest.mark.slow
def test_frozen_team_of_another_shape_is_refused_before_ray_starts(copy, tmp_path, capsys):
    # 'good' (2 agents) cannot play simple_tag's prey (1 agent).
    code = main(["train", *TINY, "env.import=mpe2.simple_tag_v3", "env.teams={predators: [adversary_], prey: [agent_]}",
                 "teams.prey.role=frozen", f"teams.prey.checkpoint={copy}", "teams.prey.module=good",
                 f"output_dir={tmp_path / 'runs'}"])
    err = one_error_line(capsys)
    assert code == 2 and "teams.prey.checkpoint" in err and str(copy / "teams" / "teams.json") in err
    assert "was trained for" in err and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- checkpoints written before
@pytest.mark.slow
def test_resume_adds_safe_weights_to_an_older_checkpoint(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained.parent.parent, run)
    ckpt = run / "checkpoints" / trained.name
    shutil.rmtree(ckpt / "teams")  # as written before this change: no safe weights,
    (ckpt / "rng_state.json").unlink()  # and the RNG state as a pickle: resume never reads it
    marker = tmp_path / "PWNED"
    (ckpt / "rng_state.pkl").write_bytes(pickle.dumps(Bait(marker)))
    assert main(["evaluate", str(run), "--episodes", "1"]) == 2
    err = one_error_line(capsys)
    assert "lacks safe team weights" in err and "run.py resume" in err
    resumed = run_cli("resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (ckpt / "teams" / "teams.json").is_file()
    assert not marker.exists()
    from marl.checkpoints import load_checkpoint

    before, after = load_checkpoint(trained).modules, load_checkpoint(ckpt).modules
    for team in before:
        a, b = before[team].state_dict(), after[team].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ 0-d buffers (BN teams)
@pytest.mark.slow
def test_zero_dim_buffers_keep_their_dtype_and_shape_in_the_safe_weights(trained):
    """RLlib's get_weights() (convert_to_numpy) turns a 0-d tensor, such as LearnedDAG's
    mode_share, into a Python float; the safe weights must still hold it as float32 ()."""
    from safetensors.torch import load_file

    files = sorted((trained / "teams").glob("*.safetensors"))
    shares = [load_file(str(f)).get("graph.mode_share") for f in files]
    shares = [t for t in shares if t is not None]
    assert shares, "the fixture trains a learned graph"
    assert all(t.dtype == torch.float32 and t.shape == () for t in shares)


def test_a_zero_dim_buffer_written_as_float64_of_shape_1_still_loads(tmp_path):
    """Checkpoints written before the fix hold mode_share as float64 (1,): they load, the
    value cast back to the module's float32 ()."""
    from safetensors.torch import save_file

    from marl.checkpoints import _load_weights, _sha256
    from tests.test_bn_policy import LEARNED
    from tests.test_joint_policy import make_module

    written = make_module(graph=LEARNED, seed=3)
    tensors = {k: v.clone() for k, v in written.state_dict().items()}
    tensors["graph.mode_share"] = torch.tensor([0.375], dtype=torch.float64)
    (tmp_path / "teams").mkdir()
    save_file(tensors, str(tmp_path / "teams" / "team_0.safetensors"))
    desc = {"weights": "team_0.safetensors", "sha256": _sha256(tmp_path / "teams" / "team_0.safetensors")}
    module = make_module(graph=LEARNED, seed=4)
    _load_weights(tmp_path, "team_0", desc, module)
    assert module.graph.mode_share.dtype == torch.float32 and module.graph.mode_share.dim() == 0
    assert float(module.graph.mode_share) == 0.375
    assert torch.equal(module.state_dict()["actor.0.weight"], written.state_dict()["actor.0.weight"])
