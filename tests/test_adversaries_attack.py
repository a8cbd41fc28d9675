"""`run.py attack` end to end on a tiny trained victim (simple_spread, MAPPO): black-box
structure, frozen victim weights, paired evaluation, resume, and every bad input."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from adversaries.attack_env import AttackEnv, _victim
from adversaries.base import ATTACKER
from adversaries.config import load_attack_config
from adversaries.evaluation import make_env
from marl.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=1",
        "runners.num_envs_per_env_runner=4", "train.progress=log"]
EVAL = ["eval.episodes=3", "eval.gif=false"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _own_ray():
    """The attacks run in this process; leave no Ray instance behind for other modules."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    from marl.config import load_config
    from marl.train import train

    out = tmp_path_factory.mktemp("victim")
    cfg = load_config(ROOT / "configs/mappo_simple_spread.yaml", [*TINY, "train.total_env_steps=400", f"output_dir={out}"])
    return train(cfg)


def run_main(capsys, *args) -> tuple[int, list[str], list[str]]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


# ---------------------------------------------------------------------- black-box walk
_LEAVES = (type, types.ModuleType, str, bytes, int, float, bool, complex, type(None), np.ndarray)


def reachable(*roots):
    """Every object reachable from ``roots`` through attributes, slots, containers,
    closures, partials and bound methods (not through module globals)."""
    seen, stack, found = set(), list(roots), []
    while stack:
        o = stack.pop()
        if isinstance(o, _LEAVES) or id(o) in seen:
            continue
        seen.add(id(o))
        found.append(o)
        if isinstance(o, torch.Tensor):
            continue
        if isinstance(o, dict):
            stack += [*o.keys(), *o.values()]
        elif isinstance(o, list | tuple | set | frozenset):
            stack += list(o)
        if isinstance(o, functools.partial):
            stack += [o.func, *o.args, *o.keywords.values()]
        if isinstance(o, types.MethodType):
            stack += [o.__self__, o.__func__]
        if isinstance(o, types.FunctionType):
            stack += [c.cell_contents for c in (o.__closure__ or ()) if c.cell_contents is not None]
            stack += list(o.__defaults__ or ())
        try:
            stack += list(vars(o).values())
        except TypeError:
            pass
        for cls in type(o).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and hasattr(o, slot):
                    stack.append(getattr(o, slot))
    return found


def victim_hits(objects, victim_modules) -> list:
    ptrs = {p.data_ptr() for m in victim_modules for p in m.parameters()}
    ids = {id(m) for m in victim_modules}
    return [o for o in objects if id(o) in ids or (isinstance(o, torch.Tensor) and o.data_ptr() in ptrs)]


@pytest.mark.parametrize("adversary", ["gleave", "random"])
def test_black_box_attacker_reaches_only_the_act_callable(victim, adversary):
    setup = load_attack_config(None, [], victim=str(victim), adversary=adversary)
    env = AttackEnv(setup.env_config())
    plugin = setup.plugin()
    spec = plugin.module_spec()
    spec.observation_space, spec.action_space = env.observation_spaces[ATTACKER], env.action_spaces[ATTACKER]
    attacker = spec.build()
    modules = list(_victim(setup.cfg.victim.checkpoint).modules.values())
    env.reset(seed=0)
    env.step({ATTACKER: env.action_spaces[ATTACKER].sample()})  # the victims have acted
    assert victim_hits(reachable(env, plugin, attacker), modules) == []
    handle = env.victims[setup.cfg.victim.team]
    assert not hasattr(handle, "__dict__") and type(handle).__slots__ == ("_handle",)
    # The walk does find the victim where it is handed over: a white-box plugin's env (the
    # env's own victim team, whose hidden states a recurrent victim's white box must read).
    wb = load_attack_config(None, [], victim=str(victim), adversary="obs_pgd")
    wb_env = make_env(wb, wb.plugin())
    assert victim_hits(reachable(wb_env), list(_victim(wb.cfg.victim.checkpoint).modules.values()))


# ------------------------------------------------------------------- end to end + resume
def files_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gleave_run(victim, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack")
    setup = load_attack_config(None, [], victim=str(victim), adversary="gleave")
    ckpt = Path(setup.cfg.victim.checkpoint)
    frozen = _victim(str(ckpt))  # the copy the attack envs of this process act with
    before = {t: {k: v.clone() for k, v in m.state_dict().items()} for t, m in frozen.modules.items()}
    digest = files_digest(ckpt)
    code = main(["attack", str(victim), "--adversary", "gleave", *TINY, *EVAL, "eval.gif=true",
                 "train.total_env_steps=800", "train.checkpoint_every=1", f"output_dir={out}"])
    assert code == 0
    run_dir = sorted(out.iterdir())[-1]
    return run_dir, before, frozen, digest, ckpt


def test_attack_leaves_the_victim_bit_identical(gleave_run):
    run_dir, before, frozen, digest, ckpt = gleave_run
    for team, module in frozen.modules.items():
        after = module.state_dict()
        assert all(torch.equal(before[team][k], after[k]) for k in before[team]), team
    assert files_digest(ckpt) == digest
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["policy_loss"] is not None and rows[-1]["env_steps"] == 800  # the attacker trained


def test_attack_eval_is_paired_and_complete(gleave_run, victim, capsys, tmp_path):
    run_dir = gleave_run[0]
    result = json.loads((run_dir / "attack_eval.json").read_text())
    assert result["victim"]["team"] == "team_0" and result["victim"]["env"]["import"] == "mpe2.simple_spread_v3"
    assert result["adversary"] == {"name": "gleave", "threat_model": "takeover", "white_box": False,
                                   "team": "team_0", "agents": [0], "budget": None, "params": {}}
    assert result["attack_env_steps"] == 800 and result["episodes"] == 3
    assert result["episode_seeds"] == [100000, 100001, 100002]
    for side in ("clean", "attacked"):
        r = result[side]
        assert len(r["returns"]) == 3 and np.isclose(r["return_mean"], np.mean(r["returns"]))
        assert r["return_ci95"][0] <= r["return_mean"] <= r["return_ci95"][1]
    assert np.isclose(result["drop"]["return"], result["clean"]["return_mean"] - result["attacked"]["return_mean"])
    hist = result["action_histogram"]
    assert sum(hist["attacker"]) == sum(hist["replaced_agent_clean"]) == 3 * 25  # one agent, 25 steps
    assert {p.name for p in (run_dir / "plots").glob("*.gif")} == {"episode_clean.gif", "episode_attacked.gif"}
    # Paired: another attack on the same seeds sees the very same clean episodes.
    code, out, _ = run_main(capsys, "attack", str(victim), "--adversary", "random", *EVAL, f"output_dir={tmp_path}")
    other = json.loads((Path(out[-1]) / "attack_eval.json").read_text())
    assert code == 0 and other["clean"]["returns"] == result["clean"]["returns"]
    assert other["attack_env_steps"] == 0 and not (Path(out[-1]) / "checkpoints").exists()
    # Stealth, for every attack: a uniform agent is far from the victim's own policy; a
    # takeover's attacker controls every step.
    for r in (result, other):
        st = r["stealth"]
        assert 0.0 < st["action_tv"]["mean"] <= st["action_tv"]["max"] <= 1.0 and st["action_tv"]["steps"] == 75
        assert st["executed_fraction"] == 1.0 and st["states"] == {"clean": 75, "attacked": 75}
        assert 0.0 <= st["state_auc"] <= 1.0 and st["state_kl"] >= 0.0


def test_attack_seeds_differ_in_the_attackers_randomness_not_in_the_clean_episodes(victim, capsys, tmp_path):
    results = []
    for seed in (0, 1, 0):
        code, out, err = run_main(capsys, "attack", str(victim), "--adversary", "random", *EVAL, f"seed={seed}",
                                  f"output_dir={tmp_path / str(len(results))}")
        assert code == 0, err[-5:]
        results.append(json.loads((Path(out[-1]) / "attack_eval.json").read_text()))
    s0, s1, again = results
    assert s0["clean"]["returns"] == s1["clean"]["returns"]  # paired: one clean baseline per victim
    assert s0["action_histogram"]["attacker"] != s1["action_histogram"]["attacker"]
    assert s0["attacked"]["returns"] != s1["attacked"]["returns"]
    assert again["attacked"]["returns"] == s0["attacked"]["returns"]  # and reproducible


def test_resume_of_an_attack_run(gleave_run, capsys):
    run_dir = gleave_run[0]
    shutil.rmtree(run_dir / "checkpoints" / "iter_000002")
    (run_dir / "attack_eval.json").unlink()
    code, out, err = run_main(capsys, "resume", str(run_dir))
    assert code == 0, err[-5:]
    assert out[-1] == str(run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["env_steps"] == 800
    assert json.loads((run_dir / "attack_eval.json").read_text())["attack_env_steps"] == 800


def test_obs_pgd_is_labelled_white_box(victim, capsys, tmp_path):
    code, out, err = run_main(capsys, "attack", str(victim), "--adversary", "obs_pgd", *EVAL,
                              "adversary.params.iterations=3", f"output_dir={tmp_path}")
    assert code == 0, err[-5:]
    result = json.loads((Path(out[-1]) / "attack_eval.json").read_text())
    assert result["adversary"]["white_box"] is True and result["adversary"]["threat_model"] == "observation"
    assert result["adversary"]["budget"] == 0.2 and result["adversary"]["params"]["iterations"] == 3
    # π̂(·|õ) against π̂(·|o): the perturbation moves the attacked agent's own policy.
    st = result["stealth"]
    assert 0.0 < st["action_tv"]["mean"] <= 1.0 and "executed_fraction" not in st


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--adversary", "nope"], "unknown adversary 'nope'; registered: ami, gap, gleave, obs_pgd, random"),
        (["--adversary", "gleave", "adversary.agents=[3]"], "'adversary.agents': [3] must be distinct agent ids in 0..2"),
        (["--adversary", "gleave", "adversary.agents=[1,1]"], "must be distinct agent ids"),
        (["--adversary", "gleave", "env={import: mpe2.simple_spread_v3, kwargs: {N: 4}}"], "was trained for"),
        (["--adversary", "gleave", "env={import: mpe2.simple_tag_v3, kwargs: {}}"], "was trained for"),
        (["--adversary", "gleave", "victim.team=blue"], "no team 'blue'"),
        (["--adversary", "obs_pgd", "adversary.budget=-0.1"], "'adversary.budget': -0.1 is out of range"),
        (["--adversary", "obs_pgd", "adversary.budget=0"], "is out of range"),
        (["--adversary", "gleave", "adversary.budget=0.3"], "takes no budget"),
        (["--adversary", "obs_pgd", "adversary.params.steps=3"], "'adversary.params.steps'"),
        (["--adversary", "obs_pgd", "adversary.params.iterations=0"], "'adversary.params.iterations'"),
        (["--adversary", "gleave", "eval.episodes=0"], "'eval.episodes'"),
        (["--adversary", "gleave", "eval.episodez=3"], "unknown config key 'eval.episodez'"),
    ],
)
def test_bad_attack_input_exits_2_with_one_line(victim, capsys, tmp_path, args, fragment):
    code, _, err = run_main(capsys, "attack", str(victim), *args, f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not (tmp_path / "runs").exists()


def test_missing_victim_exits_2(capsys, tmp_path):
    code, _, err = run_main(capsys, "attack", str(tmp_path / "no_such_run"), "--adversary", "gleave",
                            f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and len(err) == 1 and "no_such_run' does not exist" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_random_takeover_draws_one_agent_per_episode_from_its_seed(victim):
    setup = load_attack_config(None, ["adversary.agents=random"], victim=str(victim), adversary="gleave")
    assert setup.ctx.attacked is None and setup.ctx.k == 1
    env = AttackEnv(setup.env_config())
    drawn = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        drawn.append(env.attacked[0])
        assert obs[ATTACKER]["attacked"].tolist() == [float(i == env.attacked[0]) for i in range(3)]
        assert np.array_equal(obs[ATTACKER]["obs"][0], env._team_obs["team_0"]["obs"][env.attacked[0]])
    assert set(drawn) == {0, 1, 2}
    assert [env.reset(seed=s) and env.attacked[0] for s in range(12)] == drawn  # paired: same seed, same agent


def test_attack_on_a_victim_with_planted_pickles_never_unpickles(victim, capsys, tmp_path):
    from marl.checkpoints import latest_checkpoint
    from tests.test_checkpoints import plant_pickles

    copy = tmp_path / "victim_ckpt"
    shutil.copytree(latest_checkpoint(victim), copy)
    marker = tmp_path / "PWNED"
    assert plant_pickles(copy, marker) > 10
    code, out, err = run_main(capsys, "attack", str(copy), "--adversary", "gleave", *TINY, *EVAL,
                              "train.total_env_steps=400", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err[-5:]
    assert json.loads((Path(out[-1]) / "attack_eval.json").read_text())["attack_env_steps"] == 400
    assert not marker.exists()


# ------------------------------------------------------------------------------ detection
def test_detect_scores_an_attack_run_and_refuses_another_victim(gleave_run, victim, capsys, tmp_path):
    run_dir = gleave_run[0]
    out = tmp_path / "det"
    code, lines, err = run_main(capsys, "detect", str(victim), str(run_dir), "--out", str(out),
                                "--episodes", "4", "--train-episodes", "8", "--steps", "3")
    assert code == 0, err
    result = json.loads((out / "detection.json").read_text())
    assert lines[-1] == str(out / "detection.json")
    gleave = result["attacks"]["gleave"]
    assert gleave["t"][0] == 1 and gleave["t"][-1] == 25  # simple_spread's 25 steps
    assert gleave["auc_clam"][0] == 0.5  # no teammate has acted at t = 1: nothing to tell apart
    assert all(a is None or 0.0 <= a <= 1.0 for a in gleave["auc_clam"] + gleave["auc_raw"])
    assert (out / "detection_auc.png").stat().st_size > 0
    # A detection directory goes into the report as its own section.
    rep = tmp_path / "rep"
    assert main(["report", str(run_dir), str(out), "--out", str(rep)]) == 0
    assert "## Attack detection" in (rep / "report.md").read_text()

    other = tmp_path / "other_victim"
    shutil.copytree(Path(gleave_run[4]), other / "checkpoints" / "iter_000001")
    code, _, err = run_main(capsys, "detect", str(other), str(run_dir), "--out", str(tmp_path / "d2"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: attack run") and "not the victim" in err[0]
    assert not (tmp_path / "d2").exists()
    code, _, err = run_main(capsys, "detect", str(victim), str(run_dir), "--steps", "0")
    assert code == 2 and err == ["error: --steps must be a positive integer (got 0)"]


def test_an_attacker_can_model_the_agents_with_clam(victim, capsys, tmp_path):
    """The attackers of the plugins switch CLAM on by config like any learner: the attack env
    then carries the controlled agents' episode prefix, and the encoder trains."""
    clam = ["model.agent_modeling.name=clam", "model.agent_modeling.width=32", "model.agent_modeling.heads=2",
            "model.agent_modeling.min_episodes=2", "model.agent_modeling.batch_episodes=8",
            "model.agent_modeling.encoder_every=1"]
    code, lines, err = run_main(capsys, "attack", str(victim), "--adversary", "gleave", *TINY, *EVAL, *clam,
                                "train.total_env_steps=800", f"output_dir={tmp_path}")
    assert code == 0, err
    run_dir = Path(lines[-1])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rows[-1]["agent_model/contrastive_loss"])
    cfg = (run_dir / "config.yaml").read_text()
    assert "history:" in cfg and (run_dir / "attack_eval.json").is_file()
