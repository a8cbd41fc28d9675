"""Defense ``adversarial_training`` (Liu et al., ICLR 2024): config checks, the partial-control
wrapper env (replacement rate, executed flags, zero-sum reward), and, in RLlib, the two
timescales and the resume of a defended run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from adversaries.defenses.adversarial_training import AdversarialTraining
from adversaries.defenses.partial_control import REPLACED_FRACTION, PartialControlEnv
from envs.adapter import EXECUTED_INFO, TeamEnv
from marl.cli import main
from marl.config import load_config
from marl.defenses import load_defenses

COORD5 = "configs/env/coordination5.yaml"
COORD3 = "configs/env/coordination3.yaml"
PUSH = "configs/env/simple_push.yaml"


def run_main(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "config, overrides, expected",
    [
        (COORD3, ["defense.name=adverserial", "defense.budget=0.1"], ["defense.name", "'adverserial'", "registered: adversarial_training"]),
        (COORD3, ["defense.budget=0.1"], ["defense.name", "is missing", "adversarial_training"]),
        (COORD3, ["defense.name=[x]", "defense.budget=0.1"], ["defense.name", "is not a registered defense"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=0", "defense.agents=[0]"], ["defense.budget", "greater than 0"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=1.5", "defense.agents=[0]"], ["defense.budget", "less than or equal to 1"]),
        (COORD3, ["defense.name=adversarial_training", "defense.agents=[0]"], ["defense.budget", "missing"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=0.1"], ["defense.agents", "one-team env needs", "0..2"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=0.1", "defense.agents=[3]"], ["defense.agents", "[3]", "0..2"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=0.1", "defense.agents=[1,1]"], ["defense.agents", "distinct"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=0.1", "defense.agents=[0]", "defense.attacker_lr=1e-3"],
         ["defense.attacker_lr", "did you mean 'defense.attacker_lr_scale'"]),
        (COORD3, ["defense.name=adversarial_training", "defense.budget=0.1", "defense.agents=[0]", "defense.attacker_updates=0"],
         ["defense.attacker_updates", "greater than 0"]),
        (PUSH, ["defense.name=adversarial_training", "defense.budget=0.1", "defense.teams=[goods]"], ["defense.teams", "no team 'goods'"]),
        (PUSH, ["defense.name=adversarial_training", "defense.budget=0.1", "defense.agents=[1]"], ["defense.agents", "[1]", "opponent"]),
        (PUSH, ["defense.name=adversarial_training", "defense.budget=0.1", "teams.good.role=scripted", "defense.teams=[good]"],
         ["defense.teams", "'good' is scripted"]),
        ("configs/env/simple_tag.yaml", ["defense.name=adversarial_training", "defense.budget=0.1", "defense.agents=[2]"],
         ["defense.agents", "0..0 of team 'prey'"]),
        (COORD3, ["defense=0.1"], ["defense", "dictionary"]),
    ],
)
def test_bad_defense_configs_exit_2_with_one_line_and_no_run_dir(capsys, tmp_path, config, overrides, expected):
    out_dir = tmp_path / "runs"
    code, lines = run_main(capsys, ["train", config, f"output_dir={out_dir}", *overrides])
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out_dir.exists()


def test_defense_is_registered_and_its_defaults_fill_the_config():
    assert load_defenses()["adversarial_training"] is AdversarialTraining
    cfg = load_config(COORD3, ["defense.name=adversarial_training", "defense.budget=0.2", "defense.agents=[2]"])
    assert cfg.defense == {
        "name": "adversarial_training", "budget": 0.2, "agents": [2], "teams": None,
        "attacker_lr_scale": 10.0, "attacker_updates": 1,
    }
    assert cfg.name == "mappo-coordination_game-adversarial_training"
    assert load_config(COORD3).defense is None  # the default: no defense


def test_no_defense_builds_plain_training():
    """``defense: null`` is training exactly as before: the team env, the teams' modules only,
    no timescale or per-module settings."""
    from marl.algorithms import build_algorithm_config
    from marl.learners import JointPPOLearner

    algo = build_algorithm_config(load_config(COORD3, ["runners.num_envs_per_env_runner=1"]))
    assert algo.env is TeamEnv
    assert set(algo.policies) == {"team_0"} and set(algo.rl_module_spec.rl_module_specs) == {"team_0"}
    assert "update_every" not in algo.learner_config_dict
    assert algo.algorithm_config_overrides_per_module == {}
    assert algo.learner_class is JointPPOLearner

    defended = build_algorithm_config(load_config(COORD3, [
        "defense.name=adversarial_training", "defense.budget=0.2", "defense.agents=[2]",
        "defense.attacker_updates=3", "algo.lr=1e-4",
    ]))
    assert defended.env is PartialControlEnv
    assert set(defended.policies) == {"team_0", "attacker_team_0"}
    assert defended.learner_config_dict["update_every"] == {"team_0": 3}
    assert defended.get_config_for_module("attacker_team_0").lr == pytest.approx(1e-3)
    assert defended.get_config_for_module("team_0").lr == pytest.approx(1e-4)


# ---------------------------------------------------------------------- the wrapper env
def coordination_env(budget: float, agents=(1, 3), n: int = 5) -> PartialControlEnv:
    return PartialControlEnv({
        "env": {"import": "envs.coordination_game", "kwargs": {"n": n}},
        "attacks": [{"attacker": "attacker_team_0", "victim": "team_0", "team": "team_0", "agents": list(agents)}],
        "budget": budget, "seed": 0,
    })


def play(env: PartialControlEnv, steps: int, seed: int = 0):
    """Team actions all 0, attacker actions all 1: the action that ran shows who acted."""
    executed_joint, records = [], []
    inner_step = env.env.step

    def spy(actions):  # the joint actions the team env really executes
        executed_joint.append({t: np.array(a) for t, a in actions.items()})
        return inner_step(actions)

    env.env.step = spy
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        acts = {t: np.zeros(env.env.specs[t].n_agents, np.int64) for t in env.teams}
        k = len(env.active.agents)
        acts[env.active.attacker] = np.ones(k, np.int64)
        obs, rew, term, trunc, infos = env.step(acts)
        records.append((env.active, rew, infos, executed_joint[-1]))
        if term["__all__"] or trunc["__all__"]:
            obs, _ = env.reset()
    return records


def test_an_attacker_that_models_agents_sees_alphas_episode_history():
    env = PartialControlEnv({
        "env": {"import": "envs.coordination_game", "kwargs": {"n": 5}, "history": {"length": 6}},
        "attacks": [{"attacker": "attacker_team_0", "victim": "team_0", "team": "team_0", "agents": [1, 3]}],
        "budget": 0.5, "seed": 0,
    })
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        acts = {"team_0": np.zeros(5, np.int64), "attacker_team_0": np.ones(2, np.int64)}
        obs, *_ = env.step(acts)
    a = obs["attacker_team_0"]
    np.testing.assert_array_equal(a["history"], obs["team_0"]["history"][[1, 3]])
    assert a["history_len"][0] == 4 and env.observation_spaces["attacker_team_0"].contains(a)


def test_replacement_rate_is_the_budget_and_flags_mark_exactly_the_replaced_steps():
    env = coordination_env(0.3)
    records = play(env, 2000)
    alpha = [1, 3]
    taken = np.array([infos["attacker_team_0"][EXECUTED_INFO] for _, _, infos, _ in records])  # [T, 2]
    team_flags = np.array([infos["team_0"][EXECUTED_INFO] for _, _, infos, _ in records])  # [T, 5]
    ran = np.array([joint["team_0"] for *_, joint in records])  # [T, 5]
    assert taken.shape == (2000, 2) and team_flags.shape == (2000, 5)
    assert abs(taken.mean() - 0.3) < 0.03  # 4000 Bernoulli(0.3) draws: sd 0.007
    # α's flag is False exactly where the attacker's action ran, the others always True.
    assert np.array_equal(team_flags[:, alpha], ~taken)
    assert team_flags[:, [0, 2, 4]].all()
    # The action that ran: the attacker's (1) where replaced, the team's own (0) elsewhere.
    assert np.array_equal(ran[:, alpha] == 1, taken)
    assert not ran[:, [0, 2, 4]].any()
    # Zero-sum: the attacker is paid the victim's reward, negated.
    for _, rew, _, _ in records:
        assert rew["attacker_team_0"] == -rew["team_0"]
    # The episode's share of replaced steps comes in the attacker's last info.
    ends = [infos["attacker_team_0"][REPLACED_FRACTION] for _, _, infos, _ in records
            if REPLACED_FRACTION in infos["attacker_team_0"]]
    assert len(ends) == 2000 // 25 and abs(np.mean(ends) - 0.3) < 0.03


def test_budget_one_gives_the_attacker_every_step_and_the_seed_fixes_the_draws():
    records = play(coordination_env(1.0), 100)
    assert all(infos["attacker_team_0"][EXECUTED_INFO].all() for _, _, infos, _ in records)
    assert all(not infos["team_0"][EXECUTED_INFO][[1, 3]].any() for _, _, infos, _ in records)
    assert all((joint["team_0"][[1, 3]] == 1).all() for *_, joint in records)
    a = [infos["attacker_team_0"][EXECUTED_INFO] for _, _, infos, _ in play(coordination_env(0.5), 60, seed=7)]
    b = [infos["attacker_team_0"][EXECUTED_INFO] for _, _, infos, _ in play(coordination_env(0.5), 60, seed=7)]
    c = [infos["attacker_team_0"][EXECUTED_INFO] for _, _, infos, _ in play(coordination_env(0.5), 60, seed=8)]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_attacker_observes_alpha_rows_and_acts_in_alpha_space():
    env = coordination_env(0.5, agents=(4, 0))
    obs, _ = env.reset(seed=1)
    att, team = obs["attacker_team_0"], obs["team_0"]
    assert np.array_equal(att["obs"], team["obs"][[4, 0]]) and np.array_equal(att["state"], team["state"])
    assert env.observation_spaces["attacker_team_0"].contains(att)
    assert env.action_spaces["attacker_team_0"].shape == (2,)


def test_competitive_env_draws_the_victim_per_episode_and_attacks_its_opponent():
    cfg = load_config(PUSH, ["defense.name=adversarial_training", "defense.budget=1.0"])
    defense = AdversarialTraining(AdversarialTraining.Params.model_validate(cfg.defense))
    attacks = defense.attacks(cfg, {"adversary": 1, "good": 1})
    assert {(a["attacker"], a["victim"], a["team"]) for a in attacks} == {
        ("attacker_adversary", "adversary", "good"), ("attacker_good", "good", "adversary"),
    }
    env = PartialControlEnv({"env": cfg.to_dict()["env"], "attacks": attacks, "budget": 1.0, "seed": 0})
    seen = set()
    for ep in range(20):
        obs, _ = env.reset(seed=ep)
        a = env.active
        seen.add(a.attacker)
        assert set(obs) == {"adversary", "good", a.attacker}  # only this episode's attacker acts
        acts = {t: env.action_spaces[t].sample() for t in obs}
        _, rew, _, _, infos = env.step(acts)
        assert rew[a.attacker] == -rew[a.victim]
        assert not infos[a.team][EXECUTED_INFO].any()  # ε = 1: α (the opponent) never ran its own
        assert EXECUTED_INFO not in infos[a.victim]  # the victim plays its own policy in full
    assert seen == {"attacker_adversary", "attacker_good"}


def test_competitive_opponent_learns_only_from_the_episodes_where_it_is_the_victim():
    """At ε < 1 the opponent α still plays some steps itself, beside an attacker that is its
    ally (paid −r_victim): none of its steps in those episodes enter its surrogate."""
    cfg = load_config(PUSH, ["defense.name=adversarial_training", "defense.budget=0.5"])
    defense = AdversarialTraining(AdversarialTraining.Params.model_validate(cfg.defense))
    attacks = defense.attacks(cfg, {"adversary": 1, "good": 1})
    env = PartialControlEnv({"env": cfg.to_dict()["env"], "attacks": attacks, "budget": 0.5, "seed": 0})
    taken = []
    for ep in range(10):
        obs, _ = env.reset(seed=ep)
        a = env.active
        for _ in range(5):
            acts = {t: env.action_spaces[t].sample() for t in obs}
            obs, _, _, _, infos = env.step(acts)
            assert not infos[a.team][EXECUTED_INFO].any()
            taken.append(infos[a.attacker][EXECUTED_INFO].mean())
    assert 0 < np.mean(taken) < 1  # the attacker itself ran only on its replaced steps


# --------------------------------------------------------------------------- in RLlib
TINY = [
    "algo.train_batch_size=100", "algo.minibatch_size=50", "algo.num_epochs=1",
    "runners.num_envs_per_env_runner=2", "train.progress=log", "model.hidden=16", "model.layers=1",
]
DEFENSE = ["defense.name=adversarial_training", "defense.budget=0.5", "defense.agents=[0]"]


def _weights(algo, module_id: str) -> dict[str, torch.Tensor]:
    def read(learner):
        return {k: v.detach().clone() for k, v in learner.module[module_id].state_dict().items()}

    return next(iter(algo.learner_group.foreach_learner(read))).get()


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_timescales_in_one_algorithm(tmp_path, monkeypatch):
    """K = 2: the team's module changes on every 2nd iteration only, the attacker's on every
    one, each with its own learning rate. The learner's batches carry the wrapper's flags:
    α's replaced steps and the attacker's unplayed ones are out of the surrogates."""
    import marl.learners.joint_ppo as joint_ppo
    from marl.train import Trainer, create_run_dir

    seen: list[tuple[str, torch.Tensor]] = []
    original = joint_ppo.JointPPOLearner.compute_loss_for_module

    def compute(self, *, module_id, config, batch, fwd_out):
        real = batch["loss_mask"].bool()
        seen.append((module_id, batch["executed"][real].detach().clone()))
        return original(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    monkeypatch.setattr(joint_ppo.JointPPOLearner, "compute_loss_for_module", compute)

    cfg = load_config(COORD3, [*TINY, *DEFENSE, "defense.attacker_updates=2", "algo.lr=1e-3",
                               "train.total_env_steps=300", f"output_dir={tmp_path}"])
    run_dir = create_run_dir(cfg)
    trainer = Trainer(cfg, run_dir)
    try:
        trainer.build()
        lrs = next(iter(trainer.algo.learner_group.foreach_learner(
            lambda lr: {m: lr.get_optimizer(m).param_groups[0]["lr"] for m in ("team_0", "attacker_team_0")}
        ))).get()
        assert lrs == {"team_0": pytest.approx(1e-3), "attacker_team_0": pytest.approx(1e-2)}
        team, att = _weights(trainer.algo, "team_0"), _weights(trainer.algo, "attacker_team_0")
        for it in range(1, 4):
            seen.clear()
            trainer.algo.train()
            team2, att2 = _weights(trainer.algo, "team_0"), _weights(trainer.algo, "attacker_team_0")
            assert _changed(team, team2) == (it % 2 == 0), it
            assert _changed(att, att2), it
            team, att = team2, att2
            flags = {m: torch.cat([f for mid, f in seen if mid == m]) for m, _ in seen}
            assert ("team_0" in flags) == (it % 2 == 0), it  # no team loss between its updates
            assert 0.25 < flags["attacker_team_0"].float().mean() < 0.75  # ε_d = 0.5
            if "team_0" in flags:  # α = agent 0: out where replaced; agents 1, 2 always in
                assert 0.25 < flags["team_0"][:, 0].float().mean() < 0.75
                assert flags["team_0"][:, 1:].bool().all()
        trainer.run()  # the Trainer's own rows (the budget is already spent after 3 iterations)
    finally:
        trainer.stop()


@pytest.mark.slow
def test_defended_run_writes_metrics_and_resumes_with_the_attacker_state(tmp_path):
    from safetensors.torch import load_file

    from marl.checkpoints import latest_checkpoint
    from marl.train import RUN_STATE, RunState, Trainer, load_run, train

    overrides = [*TINY, *DEFENSE, "train.checkpoint_every=1", f"output_dir={tmp_path}"]
    run = train(load_config(COORD3, [*overrides, "train.total_env_steps=200"]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.2 < r["defense/replaced_fraction"] < 0.8  # ε_d = 0.5 on ~100 steps
        # One victim, zero-sum: the attacker's mean return is the team's, negated.
        assert r["defense/attacker_return_mean"] == pytest.approx(-r["episode_return_mean"])
        assert r["team_0/episode_return_mean"] == pytest.approx(r["episode_return_mean"])
    ckpt = latest_checkpoint(run)
    assert (ckpt / "teams" / "attacker_team_0.safetensors").is_file()

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["total_env_steps"] = 400  # extend the budget, then resume from iteration 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    cfg, ckpt = load_run(run)
    state = RunState(**json.loads((ckpt / RUN_STATE).read_text()))
    trainer = Trainer(cfg, run, state)
    try:
        trainer.build(resume_from=ckpt)
        # The attacker continues from its checkpoint: weights, optimizer and update count.
        saved = load_file(str(ckpt / "teams" / "attacker_team_0.safetensors"))
        now = _weights(trainer.algo, "attacker_team_0")
        assert all(torch.equal(now[k], saved[k]) for k in saved)
        steps, count = next(iter(trainer.algo.learner_group.foreach_learner(lambda lr: (
            [float(s["step"]) for s in lr.get_optimizer("attacker_team_0").state.values()], lr.update_count
        )))).get()
        # Adam's state came back (a fresh optimizer has none): >= 1 step per iteration so far.
        assert count == 2 and steps and min(steps) >= 2
        trainer.run()
    finally:
        trainer.stop()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(r["defense/replaced_fraction"] is not None for r in rows)


@pytest.mark.slow
def test_competitive_defense_trains_both_seats_in_rllib(tmp_path):
    """simple_push, both teams defended: each episode one attacker partly controls the other
    team; both attackers and both teams train in the one Algorithm."""
    from marl.train import train

    run = train(load_config(PUSH, [*TINY, "defense.name=adversarial_training", "defense.budget=0.5",
                                  "train.total_env_steps=200", f"output_dir={tmp_path}"]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for team in ("adversary", "good", "attacker_adversary", "attacker_good"):
        assert any(f"{team}/policy_loss" in r for r in rows), team
    assert all(0.2 < r["defense/replaced_fraction"] < 0.8 for r in rows)
    # The teams' return excludes the attackers' (zero-sum) rewards.
    last = rows[-1]
    assert last["episode_return_mean"] == pytest.approx(
        last["adversary/episode_return_mean"] + last["good/episode_return_mean"])
