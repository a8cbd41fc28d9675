"""The ``gap`` plugin (Liu et al., ICLR 2024: partial control with budget ε) on tiny trained
victims: ε = 0 changes nothing, ε = 1 is a takeover, the action TV stays ≤ ε, the budget is
validated, `run.py attack --adversary gap` runs end to end, and α may be the victim's opponent
in a competitive env (simple_push)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adversaries.base import ATTACKER
from adversaries.config import load_attack_config
from adversaries.evaluation import attacker_policy, evaluate_attack, make_env, run_episode
from envs.adapter import EXECUTED_INFO
from marl.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=1",
        "runners.num_envs_per_env_runner=4", "train.progress=log"]
EVAL = ["eval.episodes=3", "eval.gif=false"]
SEEDS = [100000, 100001, 100002]
PUSH = ["victim.team=good", "adversary.team=adversary"]  # α: the victim's opponent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _own_ray():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def train_victim(out: Path, config: str) -> Path:
    from marl.config import load_config
    from marl.train import train

    return train(load_config(ROOT / config, [*TINY, "train.total_env_steps=400", f"output_dir={out}"]))


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """simple_spread, MAPPO: α is a member of the victim team (cooperative)."""
    return train_victim(tmp_path_factory.mktemp("victim"), "configs/mappo_simple_spread.yaml")


@pytest.fixture(scope="module")
def push_victim(tmp_path_factory):
    """simple_push, both teams trained (adversary vs good): α can be the good agent's opponent."""
    return train_victim(tmp_path_factory.mktemp("push"), "configs/env/simple_push.yaml")


def attack_setup(victim, budget, adversary="gap", extra=()):
    over = [*EVAL, *extra] + ([f"adversary.budget={budget}"] if budget is not None else [])
    return load_attack_config(None, over, victim=str(victim), adversary=adversary)


def untrained_attacker(setup, env):
    """The attacker's module as RLlib would build it, with fresh weights: its sampling draws
    from torch's generator, so a leak into the victims' stream would show."""
    spec = setup.plugin().module_spec()
    spec.observation_space, spec.action_space = env.observation_spaces[ATTACKER], env.action_spaces[ATTACKER]
    return spec.build()


def episodes(setup, module, attacked, attack_seed=7):
    plugin = setup.plugin()
    env = make_env(setup, plugin)
    policy = attacker_policy(setup, env, plugin, module)
    out = [run_episode(env, s, policy, attacked, plugin, attack_seed=attack_seed) for s in SEEDS]
    env.close()
    return out


def same_rollouts(a, b) -> bool:
    return all(
        x.ret == y.ret and len(x.states) == len(y.states)
        and all(np.array_equal(s, t) for s, t in zip(x.states, y.states, strict=True))
        and all(np.array_equal(s, t) for s, t in zip(x.taken, y.taken, strict=True))
        for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------- ε = 0 and ε = 1
@pytest.mark.parametrize("which", ["cooperative", "competitive"])
def test_eps_zero_leaves_the_victims_rollouts_identical_to_no_attack(victim, push_victim, which):
    v, extra = (victim, ()) if which == "cooperative" else (push_victim, PUSH)
    setup = attack_setup(v, 0.0, extra=extra)
    module = untrained_attacker(setup, make_env(setup, setup.plugin()))
    clean = episodes(setup, module, attacked=False)
    attacked = episodes(setup, module, attacked=True)
    assert same_rollouts(clean, attacked)
    assert all(not e.any() for ep in attacked for e in ep.executed) and len(attacked[0].executed) == 25
    assert all(tv == 0.0 for ep in attacked for tv in ep.tv)
    # The same attacker with a budget does change the rollouts: the comparison can fail.
    half = attack_setup(v, 0.5, extra=extra)
    assert not same_rollouts(clean, episodes(half, module, attacked=True))


def test_eps_one_gives_the_attacker_full_control_as_a_takeover(victim):
    gap = attack_setup(victim, 1.0)
    takeover = attack_setup(victim, None, adversary="gleave")
    env = make_env(gap, gap.plugin())
    module = untrained_attacker(gap, env)
    full = episodes(gap, module, attacked=True)
    assert all(e.all() for ep in full for e in ep.executed) and len(full[0].executed) == 25
    assert same_rollouts(full, episodes(takeover, module, attacked=True))  # same attacker, same seeds
    # The attacker's infos say so, per attacked agent, for its learner (marl/learners/executed.py).
    obs, _ = env.reset(seed=1)
    action = env.action_spaces[ATTACKER].sample()
    _, reward, _, _, info = env.step({ATTACKER: action})
    assert info[ATTACKER][EXECUTED_INFO].tolist() == [True] and env.last_joint[0] == action[0]
    assert reward[ATTACKER] == -info[ATTACKER]["team_reward"]


@pytest.mark.parametrize("which", ["cooperative", "competitive"])
def test_executed_flags_follow_the_coin_at_half_budget(victim, push_victim, which):
    v, extra = (victim, ()) if which == "cooperative" else (push_victim, PUSH)
    setup = attack_setup(v, 0.5, extra=extra)
    env = make_env(setup, setup.plugin())
    victim_team, alpha_team = setup.cfg.victim.team, setup.cfg.adversary.team
    obs, _ = env.reset(seed=3)
    # The attacker sees and acts as α's team: in simple_push, the adversary's observation.
    assert obs[ATTACKER]["obs"].shape == (1, env.env.specs[alpha_team].obs_dim)
    assert np.array_equal(obs[ATTACKER]["obs"][0], env._team_obs[alpha_team]["obs"][0])
    flags, matches, paid = [], [], []
    for _ in range(25):
        action = env.action_spaces[ATTACKER].sample()
        _, reward, _, _, info = env.step({ATTACKER: action})
        flag = bool(info[ATTACKER][EXECUTED_INFO][0])
        flags.append(flag)
        if flag:  # on the controlled steps α executed the attacker's action
            matches.append(env.last_joint[0] == action[0])
        paid.append((reward[ATTACKER], -env.last_rewards[victim_team], -env.last_rewards[alpha_team]))
    assert 0 < sum(flags) < 25 and all(matches)
    assert all(r == v for r, v, _ in paid)  # zero-sum against the victim team (Liu et al. 2024)
    if which == "competitive":  # not against α's own team
        assert any(r != a for r, _, a in paid)


# -------------------------------------------------------------------------- stealth
def test_gap_action_tv_is_at_most_eps_and_the_measures_are_reported(victim, tmp_path):
    results = {}
    for adversary, budget in (("gap", 0.3), ("gleave", None)):
        setup = attack_setup(victim, budget, adversary=adversary)
        module = untrained_attacker(setup, make_env(setup, setup.plugin()))
        results[adversary] = evaluate_attack(setup, tmp_path, module)["stealth"]
    gap, takeover = results["gap"], results["gleave"]
    assert 0.0 < gap["action_tv"]["mean"] <= gap["action_tv"]["max"] <= 0.3
    assert gap["action_tv"]["steps"] == 3 * 25 and 0.1 < gap["executed_fraction"] < 0.5
    assert takeover["action_tv"]["mean"] > gap["action_tv"]["mean"]  # ε·TV against TV
    assert takeover["executed_fraction"] == 1.0
    for st in (gap, takeover):
        assert 0.0 <= st["state_auc"] <= 1.0 and st["state_kl"] >= 0.0
        assert st["states"] == {"clean": 75, "attacked": 75}
    assert json.loads((tmp_path / "attack_eval.json").read_text())["stealth"] == takeover


# ------------------------------------------------------------------------ bad input
def run_main(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "config key 'adversary.budget' is required for adversary 'gap' (partial_control)"),
        (["adversary.budget=1.5"], "'adversary.budget': 1.5 is out of range; expected the probability ε"),
        (["adversary.budget=-0.01"], "is out of range"),
        (["adversary.budget=0.5", "adversary.team=blue"], "'adversary.team': the env has no team 'blue'"),
    ],
)
def test_bad_gap_input_exits_2_with_one_line(victim, capsys, tmp_path, args, fragment):
    code, _, err = run_main(capsys, "attack", str(victim), "--adversary", "gap", *args, f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not (tmp_path / "runs").exists()


def test_ami_refuses_to_attack_through_the_opponent(push_victim, capsys, tmp_path):
    code, _, err = run_main(capsys, "attack", str(push_victim), "--adversary", "ami", "victim.team=good",
                            "adversary.team=adversary", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and len(err) == 1 and "adversary 'ami' attacks through a member of the victim team" in err[0], err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------- end to end
@pytest.mark.parametrize("which, budget", [("cooperative", 0.5), ("competitive", 0.5), ("cooperative", 0.0)])
def test_run_py_attack_gap_end_to_end(victim, push_victim, capsys, tmp_path, which, budget):
    v, extra = (victim, []) if which == "cooperative" else (push_victim, PUSH)
    code, out, err = run_main(capsys, "attack", str(v), "--adversary", "gap", f"adversary.budget={budget}", *extra,
                              *TINY, *EVAL, "train.total_env_steps=400", f"output_dir={tmp_path}")
    assert code == 0, err[-5:]
    run_dir = Path(out[-1])
    result = json.loads((run_dir / "attack_eval.json").read_text())
    adv = result["adversary"]
    assert adv["name"] == "gap" and adv["threat_model"] == "partial_control" and adv["budget"] == budget
    assert (result["victim"]["team"], adv["team"]) == (("team_0", "team_0") if which == "cooperative" else ("good", "adversary"))
    st = result["stealth"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] == 400 and rows[-1]["policy_loss"] is not None  # the attacker trained
    if budget:
        assert st["action_tv"]["max"] <= budget and 0.2 < st["executed_fraction"] < 0.8
    else:
        # No step ran the attacker's action: the flags reached its learner through RLlib and
        # left every slot out of the surrogate (value and entropy still train) ...
        assert all(r["policy_loss"] == 0.0 for r in rows) and rows[-1]["vf_loss"] > 0
        # ... and the evaluation's attacked episodes are the clean ones.
        assert st["executed_fraction"] == 0.0 and st["action_tv"]["max"] == 0.0
        assert result["attacked"]["returns"] == result["clean"]["returns"] and st["state_auc"] == 0.5
