"""Bad input: exit code 2, one stderr line starting 'error:' that names the key or path, no
traceback, and nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from marl.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_main(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algo.lrr=1e-3"], ["algo.lrr", "did you mean 'algo.lr'"]),
        (["trian.total_env_steps=5"], ["'trian'", "did you mean 'train'"]),
        (["algo.lr=fast"], ["algo.lr", "valid number", "'fast'"]),
        (["algo.num_epochs=1.5"], ["algo.num_epochs", "integer"]),
        (["algo.gamma=1.5"], ["algo.gamma", "less than or equal to 1"]),
        (["runners.num_envs_per_env_runner=0"], ["runners.num_envs_per_env_runner", "greater than or equal to 1"]),
        (["model.graph.mode=learnd"], ["model.graph.mode", "'empty', 'full', 'fixed' or 'learned'"]),
        (["env.import=mpe2.simple_spreed_v3"], ["env.import", "cannot import 'mpe2.simple_spreed_v3'"]),
        (["env.import=mpe2:nothing_here"], ["env.import", "no callable 'nothing_here'"]),
        (["env.kwargs.M=4"], ["env.kwargs", "unexpected keyword argument 'M'"]),
        (["model.graph.mode=fixed", "model.graph.edges=[[0,1],[1,2],[2,0]]"], ["model.graph", "cycle"]),
        (["model.graph.mode=fixed", "model.graph.edges=[[0,7]]"], ["model.graph.edges", "outside 0..2"]),
        (["algo.minibatch_size=4000"], ["algo", "must not exceed train_batch_size"]),
        (["algo.lr=[[100,1e-3]]"], ["algo.lr", "must start at env step 0"]),
        (["seed"], ["override 'seed'", "key.sub=value"]),
    ],
)
def test_bad_config_values_exit_2_with_one_line(capsys, tmp_path, overrides, expected):
    out_dir = tmp_path / "runs"
    code, lines = run_main(capsys, ["train", f"output_dir={out_dir}", *overrides])
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out_dir.exists()


def test_missing_config_file(capsys, tmp_path):
    code, lines = run_main(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error:") and "nope.yaml" in lines[0] and "does not exist" in lines[0]


def test_invalid_yaml_and_non_mapping(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [unclosed\n")
    code, lines = run_main(capsys, ["train", str(bad)])
    assert code == 2 and "bad.yaml" in lines[0] and "not valid YAML" in lines[0]
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    code, lines = run_main(capsys, ["train", str(listy)])
    assert code == 2 and "must hold a mapping" in lines[0]


def test_unknown_key_in_a_file_names_the_key(capsys, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  hiden: 32\n")
    code, lines = run_main(capsys, ["train", str(cfg), f"output_dir={tmp_path / 'runs'}"])
    assert code == 2 and "model.hiden" in lines[0] and "did you mean 'model.hidden'" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_defaults_composition_reads_parent_files(tmp_path):
    from marl.config import load_config

    (tmp_path / "parent.yaml").write_text("algo:\n  lr: 1.0e-3\n  num_epochs: 3\n")
    (tmp_path / "child.yaml").write_text("defaults: [parent.yaml]\nalgo:\n  num_epochs: 7\n")
    cfg = load_config(tmp_path / "child.yaml", ["seed=4"])
    assert (cfg.algo.lr, cfg.algo.num_epochs, cfg.seed) == (1e-3, 7, 4)
    assert cfg.algo.gamma == 0.99  # from configs/base.yaml


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["resume", "/no/such/run"], "run directory '/no/such/run' does not exist"),
        (["evaluate", "/no/such/ckpt", "--episodes", "2"], "checkpoint '/no/such/ckpt' does not exist"),
        (["evaluate", ".", "--episodes", "0"], "--episodes must be a positive integer"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_cli_arguments(capsys, argv, fragment):
    code, lines = run_main(capsys, argv)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert fragment in lines[0]


def test_run_dir_without_checkpoint_is_refused(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((ROOT / "configs" / "base.yaml").read_text())
    code, lines = run_main(capsys, ["resume", str(run)])
    assert code == 2 and "no checkpoint" in lines[0]


def test_subprocess_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "train", "algo.lrr=1", f"output_dir={tmp_path / 'runs'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: unknown config key 'algo.lrr'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_every_command_has_help():
    for cmd in (["--help"], ["train", "--help"], ["resume", "--help"], ["evaluate", "--help"]):
        proc = subprocess.run([sys.executable, "run.py", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout


def test_naming_another_env_drops_the_previous_envs_kwargs():
    from marl.config import load_config

    cfg = load_config(None, ["env.import=tests.toy_envs:masked_death_env"])
    assert cfg.env.kwargs == {}
    cfg = load_config(None, ["env.kwargs.N=2"])  # same env: kwargs merge
    assert cfg.env.kwargs == {"N": 2, "max_cycles": 25}


def test_a_runs_config_from_before_newer_keys_still_loads(tmp_path):
    import yaml

    from marl.config import config_from_file, load_config

    old = load_config(None, ["env.import=envs.coordination_game", "env.kwargs={n: 3}"]).to_dict()
    del old["teams"]
    del old["runners"]["torch_threads"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = config_from_file(path)
    assert cfg.teams == {} and cfg.runners.torch_threads == 1
    assert cfg.env.kwargs == {"n": 3}  # base.yaml's simple_spread kwargs do not leak in


def test_missing_optional_package_names_it_and_its_extra(capsys, tmp_path, monkeypatch):
    import envs.smax

    code, lines = run_main(capsys, ["train", "env.import=tests.toy_envs:needs_missing_package", f"output_dir={tmp_path}/r"])
    assert code == 2 and len(lines) == 1
    assert "config key 'env.import'" in lines[0] and "needs the package 'jaxmarl_not_installed'" in lines[0]

    def no_jaxmarl(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'jaxmarl'", name="jaxmarl")

    monkeypatch.setattr(envs.smax, "_compiled", no_jaxmarl)
    code, lines = run_main(capsys, ["train", "configs/env/smax_3m.yaml", f"output_dir={tmp_path}/r"])
    assert code == 2 and "needs the package 'jaxmarl' (install it: pip install -e '.[smax]')" in lines[0]
    assert not (tmp_path / "r").exists()
