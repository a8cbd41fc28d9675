"""Kuhn poker: the OpenSpiel env (masks, no-op, zero-sum returns, seeded deals), exact
exploitability against OpenSpiel's own algorithms, the ε-budgeted exploitability of Liu et al.
(ICLR 2024), and `run.py evaluate --exploitability / --export-policy` on a trained checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pyspiel = pytest.importorskip("pyspiel")
from open_spiel.python import policy as os_policy  # noqa: E402
from open_spiel.python.algorithms import best_response, expected_game_score  # noqa: E402
from open_spiel.python.algorithms import exploitability as os_exploitability  # noqa: E402
from pettingzoo.test import parallel_api_test  # noqa: E402

from envs import kuhn_exploitability as kx  # noqa: E402
from envs.adapter import TeamEnv  # noqa: E402
from envs.kuhn_poker import BET, NOOP, PASS, KuhnPokerEnv, information_states  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GAME = pyspiel.load_game("kuhn_poker")
ENV_CONFIG = {"import": "envs.kuhn_poker", "kwargs": {}, "teams": {"player_0": ["player_0"], "player_1": ["player_1"]}}
KEYS = sorted(os_policy.TabularPolicy(GAME).state_lookup)


def uniform_table():
    return {k: [0.5, 0.5] for k in KEYS}


def nash_table(a: float):
    """Kuhn's equilibrium family (Kuhn 1950; as on Wikipedia, "Kuhn poker"), a ∈ [0, 1/3].
    Cards J=0, Q=1, K=2; [p_pass, p_bet]."""
    return {
        "0": [1 - a, a], "0pb": [1.0, 0.0],
        "1": [1.0, 0.0], "1pb": [2 / 3 - a, 1 / 3 + a],
        "2": [1 - 3 * a, 3 * a], "2pb": [0.0, 1.0],
        "0p": [2 / 3, 1 / 3], "0b": [1.0, 0.0],
        "1p": [1.0, 0.0], "1b": [2 / 3, 1 / 3],
        "2p": [0.0, 1.0], "2b": [0.0, 1.0],
    }


def random_table(seed: int):
    rng = np.random.default_rng(seed)
    return {k: list(rng.dirichlet([0.5, 0.5])) for k in KEYS}


def openspiel_policy(table):
    tab = os_policy.TabularPolicy(GAME)
    for key, row in tab.state_lookup.items():
        tab.action_probability_array[row] = table[key]
    return tab


# ------------------------------------------------------------------------------ the env
def test_env_passes_pettingzoo_parallel_api_test():
    parallel_api_test(KuhnPokerEnv(), num_cycles=200)


def test_only_the_player_to_act_has_pass_and_bet_the_other_only_the_noop():
    env = KuhnPokerEnv()
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        while env.agents:
            seat = env.state_.current_player()
            for s, agent in enumerate(env.possible_agents):
                want = [1, 1, 0] if s == seat else [0, 0, 1]
                assert obs[agent]["action_mask"].tolist() == want
                # the observation is OpenSpiel's information-state tensor of that player
                assert obs[agent]["observation"].tolist() == pytest.approx(env.state_.information_state_tensor(s))
            actor = env.possible_agents[seat]
            obs, *_ = env.step({actor: int(rng.integers(2)), env.possible_agents[1 - seat]: NOOP})


def test_returns_are_zero_sum_paid_at_the_end_and_equal_openspiels():
    env = KuhnPokerEnv()
    for seed in range(30):
        env.reset(seed=seed)
        reference = GAME.new_initial_state()
        for card in env.state_.history()[:2]:  # the same deal
            reference.apply_action(card)
        rng = np.random.default_rng(100 + seed)
        total = {a: 0.0 for a in env.possible_agents}
        while env.agents:
            actor = env.possible_agents[env.state_.current_player()]
            action = int(rng.integers(2))
            reference.apply_action(action)
            _, rew, terms, truncs, _ = env.step({actor: action})
            if not reference.is_terminal():
                assert rew == {"player_0": 0.0, "player_1": 0.0}
                assert not any(terms.values())
            for a, r in rew.items():
                total[a] += r
        assert all(terms.values()) and not any(truncs.values())
        assert total["player_0"] + total["player_1"] == 0.0
        assert [total["player_0"], total["player_1"]] == reference.returns()


def test_noop_or_masked_action_of_the_acting_player_counts_as_pass():
    env = KuhnPokerEnv()
    env.reset(seed=0)
    env.step({"player_0": NOOP, "player_1": BET})  # player_1 is not to act: its bet is ignored
    assert env.state_.history()[2:] == [PASS]
    assert env.state_.current_player() == 1


def test_reset_seed_fixes_the_deal():
    env = KuhnPokerEnv()
    deals = {}
    for seed in range(12):
        env.reset(seed=seed)
        deals[seed] = env.state_.history()[:2]
        env.reset(seed=seed)
        assert env.state_.history()[:2] == deals[seed]
    assert len({tuple(d) for d in deals.values()}) > 1  # seeds do change the deal


def test_adapter_gives_each_seat_its_own_team_with_a_three_action_mask():
    env = TeamEnv(ENV_CONFIG)
    assert {t: s.agents for t, s in env.specs.items()} == {"player_0": ["player_0"], "player_1": ["player_1"]}
    obs, _ = env.reset(seed=1)
    assert obs["player_0"]["action_mask"].tolist() == [[1, 1, 0]]
    assert obs["player_1"]["action_mask"].tolist() == [[0, 0, 1]]
    obs, rew, term, *_ = env.step({"player_0": np.array([BET]), "player_1": np.array([NOOP])})
    assert obs["player_1"]["action_mask"].tolist() == [[1, 1, 0]] and not term["__all__"]
    obs, rew, term, *_ = env.step({"player_0": np.array([NOOP]), "player_1": np.array([BET])})
    assert term["__all__"] and rew["player_0"] == -rew["player_1"] and abs(rew["player_0"]) == 2.0


def test_information_states_are_openspiels_and_match_what_the_env_shows():
    infos = information_states(GAME)
    assert sorted(i.key for i in infos) == KEYS
    by_key = {i.key: i for i in infos}
    env = KuhnPokerEnv()
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        while env.agents:
            seat = env.state_.current_player()
            agent = env.possible_agents[seat]
            info = by_key[env.state_.information_state_string(seat)]
            assert info.agent == agent and info.seat == seat
            assert info.obs.tolist() == obs[agent]["observation"].tolist()
            assert info.mask.tolist() == obs[agent]["action_mask"].tolist()
            obs, *_ = env.step({agent: int(rng.integers(2))})


# ---------------------------------------------------------------------- exploitability
def test_exploitability_of_uniform_random_is_openspiels_0_4583():
    ours = kx.exploitability(uniform_table(), GAME)
    theirs = os_exploitability.exploitability(GAME, os_policy.UniformRandomPolicy(GAME))
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert ours == pytest.approx(11 / 24, abs=1e-9)  # 0.4583


@pytest.mark.parametrize("a", [0.0, 1 / 6, 1 / 3])
def test_nash_equilibria_have_zero_exploitability_and_value_minus_one_eighteenth(a):
    table = nash_table(a)
    assert kx.exploitability(table, GAME) == pytest.approx(0.0, abs=1e-12)
    assert kx.seat_value(table, 0, GAME) == pytest.approx(-1 / 18, abs=1e-12)
    # at every budget the attacker gains nothing against an equilibrium
    for eps in (0.25, 1.0):
        assert kx.budgeted_exploitability(table, eps, game=GAME) == pytest.approx(0.0, abs=1e-12)


def test_a_table_without_every_information_state_is_refused():
    table = uniform_table()
    del table["1pb"]
    with pytest.raises(ValueError, match="'1pb'"):
        kx.exploitability(table, GAME)
    with pytest.raises(ValueError, match="sum to 1"):
        kx.exploitability({**uniform_table(), "0": [0.9, 0.3]}, GAME)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budgeted_exploitability_at_eps_1_is_openspiels_best_response_per_seat(seed):
    table = random_table(seed)
    policy = openspiel_policy(table)
    for victim in (0, 1):
        alpha = 1 - victim
        br = best_response.BestResponsePolicy(GAME, alpha, policy).value(GAME.new_initial_state())
        assert kx.budgeted_best_response(table, victim, 1.0, game=GAME)[0] == pytest.approx(br, abs=1e-9)
    assert kx.budgeted_exploitability(table, 1.0, game=GAME) == pytest.approx(
        os_exploitability.exploitability(GAME, policy), abs=1e-9
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budgeted_exploitability_is_monotone_in_eps_and_plain_value_at_eps_0(seed):
    table, own = random_table(seed), random_table(50 + seed)
    eps_grid = np.linspace(0, 1, 11)
    values = [kx.budgeted_exploitability(table, e, game=GAME) for e in eps_grid]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0] + 0.05  # a random profile is exploitable
    # ε = 0 with α's own policy π̂_α = ``own``: α's plain value, by OpenSpiel's own evaluator.
    mixed_0 = openspiel_policy({**table, **{k: own[k] for k in KEYS if len(k) % 2 == 1}})  # α seat 0
    mixed_1 = openspiel_policy({**table, **{k: own[k] for k in KEYS if len(k) % 2 == 0}})  # α seat 1
    v_alpha0 = expected_game_score.policy_value(GAME.new_initial_state(), [mixed_0, mixed_0])[0]
    v_alpha1 = expected_game_score.policy_value(GAME.new_initial_state(), [mixed_1, mixed_1])[1]
    assert kx.budgeted_exploitability(table, 0.0, own=own, game=GAME) == pytest.approx(
        (v_alpha0 + v_alpha1) / 2, abs=1e-12
    )
    # the profile's own policy at ε = 0 in a zero-sum game: the two seats' values cancel
    assert values[0] == pytest.approx(0.0, abs=1e-12)


def test_no_mixed_attack_beats_the_enumerated_pure_best_response():
    """The value is multilinear in π̃, so the pure maximum bounds every mixed π̃."""
    table, eps = random_table(7), 0.4
    best, _ = kx.budgeted_best_response(table, 0, eps, game=GAME)
    rng = np.random.default_rng(0)
    alpha_keys = [k for k in KEYS if len(k) % 2 == 0]  # seat 1's information states
    for _ in range(30):
        attack = {k: rng.dirichlet([1, 1]) for k in alpha_keys}
        mixed = {**table, **{k: (1 - eps) * np.asarray(table[k]) + eps * attack[k] for k in alpha_keys}}
        value = expected_game_score.policy_value(GAME.new_initial_state(), [openspiel_policy(mixed)] * 2)[1]
        assert value <= best + 1e-12


# ----------------------------------------------------------------- policy extraction
def test_policy_table_is_the_modules_distribution_at_what_the_env_shows():
    from ray.rllib.core.columns import Columns

    from marl.checkpoints import TeamCheckpoint
    from marl.exploitability import exact_game_of, policy_table
    from marl.modules.joint_policy import JointPolicyModule
    from marl.modules.scripted import ScriptedTeamModule

    env = TeamEnv(ENV_CONFIG)
    torch.manual_seed(0)
    modules = {}
    for team in env.teams:
        modules[team] = JointPolicyModule(
            observation_space=env.observation_spaces[team], action_space=env.action_spaces[team],
            model_config={"hidden": 16, "layers": 1},
        )
        with torch.no_grad():  # make the policy far from uniform
            for p in modules[team].actor.parameters():
                p.mul_(50.0)
    loaded = TeamCheckpoint(Path("."), None, modules, env.observation_spaces, env.action_spaces)
    game = exact_game_of(env)
    table = policy_table(loaded, env, game)
    assert sorted(table) == KEYS
    # Play the env and query each module at the observation it actually receives.
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        while True:
            seat = env.env.state_.current_player()
            team = f"player_{seat}"
            batch = {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs[team].items()}}
            logits = modules[team].forward_exploration(batch)[Columns.ACTION_DIST_INPUTS][0]
            probs = torch.softmax(logits.double(), -1)[:2].numpy()
            key = env.env.state_.information_state_string(seat)
            assert np.abs(np.asarray(table[key]) - probs).max() < 1e-6, (key, table[key], probs)
            act = {t: np.array([NOOP]) for t in env.teams}
            act[team] = np.array([int(rng.integers(2))])
            obs, _, term, *_ = env.step(act)
            if term["__all__"]:
                break
    assert max(abs(p[0] - 0.5) for p in table.values()) > 0.2  # not a uniform table by accident
    # A scripted random team plays the uniform distribution over its allowed actions.
    scripted = {t: ScriptedTeamModule(observation_space=env.observation_spaces[t], action_space=env.action_spaces[t],
                                      model_config={"policy": "random"}) for t in env.teams}
    table = policy_table(TeamCheckpoint(Path("."), None, scripted, {}, {}), env, game)
    assert kx.exploitability(table, GAME) == pytest.approx(11 / 24, abs=1e-9)


def test_a_team_holding_both_seats_is_refused():
    from marl.errors import UserError
    from marl.exploitability import seat_teams

    env = TeamEnv({**ENV_CONFIG, "teams": None})
    with pytest.raises(UserError, match="own team"):
        seat_teams(env)


# --------------------------------------------------------------------- end to end (CLI)
TINY = [
    "algo.train_batch_size=200", "algo.minibatch_size=100", "algo.num_epochs=2",
    "runners.num_envs_per_env_runner=2", "train.total_env_steps=400", "train.progress=log",
]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def kuhn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("train", "configs/kuhn_selfplay.yaml", *TINY, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_evaluate_exploitability_and_export_agree_with_openspiel(kuhn_run, tmp_path):
    exported, results = tmp_path / "policy.json", tmp_path / "exact.json"
    proc = run_cli("evaluate", str(kuhn_run), "--exploitability", "--export-policy", str(exported),
                   "--json", str(results))
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed == json.loads(results.read_text())
    doc = json.loads(exported.read_text())
    assert doc["game"] == "kuhn_poker" and sorted(doc["policy"]) == KEYS
    # Anyone can check the number with OpenSpiel alone.
    theirs = os_exploitability.exploitability(GAME, openspiel_policy(doc["policy"]))
    assert printed["exploitability"] == pytest.approx(theirs, abs=1e-12)
    assert 0.0 < printed["exploitability"] < 11 / 24 + 0.3
    assert printed["budgeted_exploitability"]["1"] == pytest.approx(theirs, abs=1e-9)
    assert printed["budgeted_exploitability"]["0"] == pytest.approx(0.0, abs=1e-12)
    assert printed["seat_value"]["player_0"] == pytest.approx(-printed["seat_value"]["player_1"], abs=1e-12)
    # --deterministic: the most likely action at every information state
    proc = run_cli("evaluate", str(kuhn_run), "--export-policy", str(exported), "--deterministic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(sorted(p) == [0.0, 1.0] for p in json.loads(exported.read_text())["policy"].values())


@pytest.mark.slow
def test_exploitability_of_a_non_kuhn_checkpoint_is_bad_use(kuhn_run, tmp_path):
    from marl.checkpoints import latest_checkpoint

    foreign = tmp_path / "foreign"
    shutil.copytree(latest_checkpoint(kuhn_run), foreign)
    cfg = yaml.safe_load((foreign / "config.yaml").read_text())
    cfg["env"] = {"import": "mpe2.simple_spread_v3", "kwargs": {"N": 3, "max_cycles": 25}, "teams": None}
    (foreign / "config.yaml").write_text(yaml.safe_dump(cfg))
    exported = tmp_path / "policy.json"
    proc = run_cli("evaluate", str(foreign), "--exploitability", "--export-policy", str(exported))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error:") and "exact tree" in lines[0] and "simple_spread" in lines[0]
    assert not exported.exists()
    proc = run_cli("evaluate", str(kuhn_run), "--export-policy", str(tmp_path / "no" / "p.json"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --export-policy")
