"""`run.py report`: attack runs grouped by victim and attack over seeds, statistics across
seeds, tables before pictures, white-box labels, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from adversaries.report import write_report
from marl.errors import UserError

VICTIM = "/runs/mappo-smax_3m-1/checkpoints/iter_000250"


def fake_run(root: Path, name: str, adversary: str, seed: int, clean: float, attacked: float,
             white_box: bool = False, budget=None, curve=None, wins=None, gif=False, stealth=None,
             threat_model=None, team=None) -> Path:
    """An attack run directory as `run.py attack` leaves it (the files the report reads)."""
    d = root / name
    (d / "plots").mkdir(parents=True)
    ev = {
        "victim": {"checkpoint": VICTIM, "env": {"import": "envs.smax"}, "team": "team_0"},
        "adversary": {"name": adversary, "threat_model": threat_model or ("observation" if white_box else "takeover"),
                      "white_box": white_box, "agents": [0], "budget": budget, "params": {}},
        "seed": seed, "attack_env_steps": 1000 if curve else 0, "episodes": 4,
        "episode_seeds": [100, 101, 102, 103],
        "clean": {"returns": [clean] * 4, "return_mean": clean},
        "attacked": {"returns": [attacked] * 4, "return_mean": attacked},
        "action_histogram": {"attacker": [1, 2, 3], "replaced_agent_clean": [3, 2, 1]},
    }
    if wins is not None:
        ev["clean"]["win_rate"], ev["attacked"]["win_rate"] = wins
    if stealth is not None:
        ev["stealth"] = stealth
    if team is not None:
        ev["adversary"]["team"] = team
    if gif:
        for kind in ("clean", "attacked"):
            (d / "plots" / f"episode_{kind}.gif").write_bytes(b"GIF89a")
        ev["gifs"] = ["plots/episode_clean.gif", "plots/episode_attacked.gif"]
    (d / "attack_eval.json").write_text(json.dumps(ev))
    rows = [{"iteration": i + 1, "env_steps": s, "episode_return_mean": r} for i, (s, r) in enumerate(curve or [])]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "attacks"
    gleave = [(10.0, 4.0), (10.0, 6.0), (12.0, 2.0)]
    for s, (c, a) in enumerate(gleave):
        fake_run(root, f"gleave-{s}", "gleave", s, c, a, curve=[(500, -9.0 + s), (1000, -5.0 + s)],
                 wins=(0.9, 0.3 + 0.1 * s), gif=(s == 0))
    fake_run(root, "pgd-0", "obs_pgd", 0, 10.0, 9.0, white_box=True, budget=0.2, wins=(0.9, 0.8))
    return root


def test_report_groups_seeds_and_gives_bootstrap_cis_across_them(runs, tmp_path):
    out = tmp_path / "report"
    report = write_report([runs], out)  # a folder of attack runs is searched one level down
    (victim,) = report["victims"].values()
    gleave, pgd = victim["attacks"]  # sorted by adversary name
    assert gleave["adversary"] == "gleave" and gleave["seeds"] == [0, 1, 2]
    assert gleave["return_attacked"]["mean"] == pytest.approx(4.0)
    lo, hi = gleave["return_attacked"]["ci95"]
    assert 2.0 <= lo < 4.0 < hi <= 6.0  # a percentile bootstrap of (4, 6, 2) stays inside them
    assert gleave["drop"]["mean"] == pytest.approx(np.mean([6.0, 4.0, 10.0]))
    # Relative drop paired per seed: mean of (c − a)/|c| = (0.6, 0.4, 10/12).
    assert gleave["relative_drop"]["mean"] == pytest.approx(np.mean([0.6, 0.4, 10 / 12]))
    assert gleave["win_rate_attacked"]["mean"] == pytest.approx(0.4)
    assert pgd["white_box"] and pgd["return_attacked"] == {"mean": 9.0, "n": 1, "ci95": None}
    assert gleave["action_histogram"]["attacker"] == [3, 6, 9]


def test_report_markdown_puts_tables_first_and_labels_white_box(runs, tmp_path):
    out = tmp_path / "report"
    write_report([runs], out)
    md = (out / "report.md").read_text()
    table, pictures = md.index("| attack |"), md.index("![")
    assert table < pictures
    assert "obs_pgd **(white-box)**, ε=0.2" in md and "| gleave |" in md
    assert "4.00 [" in md  # attacked return with its CI
    for link in re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md, flags=re.M):
        assert (out / link).is_file(), link  # every picture the report shows is in it
    assert (out / "mappo-smax_3m-1_curves.png").is_file() and (out / "mappo-smax_3m-1_win_rate.png").is_file()
    assert "clean episode (seed 100)" in md and "attacked episode (seed 100)" in md


def test_report_bad_input(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not an attack run and holds none"):
        write_report([tmp_path / "empty"], tmp_path / "r1")
    with pytest.raises(UserError, match="does not exist"):
        write_report([tmp_path / "nope"], tmp_path / "r2")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        write_report([runs], taken)
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    broken = runs / "gleave-0" / "attack_eval.json"
    broken.write_text("{")
    with pytest.raises(UserError, match="is not a valid attack evaluation"):
        write_report([runs], tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


def test_run_py_report_command(runs, tmp_path, capsys):
    from marl.cli import main

    out = tmp_path / "rep"
    assert main(["report", str(runs / "gleave-0"), str(runs / "gleave-1"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.md")
    (victim,) = __import__("json").loads((out / "report.json").read_text())["victims"].values()
    assert victim["attacks"][0]["seeds"] == [0, 1]
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run directory") and not (tmp_path / "rep2").exists()


def test_report_of_seeds_with_identical_results_draws_its_bars(tmp_path):
    """Attacks that do not train can give the same figure for every seed; the mean of three
    copies of -366.8836 is not exactly -366.8836 in floating point. The report must still
    draw (matplotlib refuses negative error bars) with a CI that contains the mean."""
    root = tmp_path / "attacks"
    for s in range(3):
        fake_run(root, f"random-{s}", "random", s, -401.79, -366.8836)
    report = write_report([root], tmp_path / "report")
    (victim,) = report["victims"].values()
    (rnd,) = victim["attacks"]
    lo, hi = rnd["return_attacked"]["ci95"]
    assert lo <= rnd["return_attacked"]["mean"] <= hi
    assert (tmp_path / "report" / victim["returns_png"]).is_file()


def stealth_of(tv, auc, kl, executed=None):
    out = {"action_tv": {"mean": tv, "max": min(1.0, tv + 0.05), "ci95": [tv, tv], "per_episode": [tv], "steps": 100},
           "state_auc": auc, "state_kl": kl, "states": {"clean": 100, "attacked": 100}}
    if executed is not None:
        out["executed_fraction"] = executed
    return out


def test_report_shows_stealth_columns_and_the_success_stealth_plane(tmp_path):
    root = tmp_path / "attacks"
    for s, (tv, auc, kl, attacked) in enumerate([(0.9, 0.95, 2.0, 2.0), (0.8, 0.9, 1.6, 4.0)]):
        fake_run(root, f"gleave-{s}", "gleave", s, 10.0, attacked, stealth=stealth_of(tv, auc, kl))
    for s, (tv, auc, kl) in enumerate([(0.1, 0.55, 0.2), (0.12, 0.5, 0.3)]):
        fake_run(root, f"gap-{s}", "gap", s, 10.0, 7.0, budget=0.25, threat_model="partial_control",
                 stealth=stealth_of(tv, auc, kl, executed=0.25))
    fake_run(root, "gap-opp", "gap", 0, 10.0, 5.0, budget=1.0, threat_model="partial_control",
             stealth=stealth_of(0.7, 0.8, 1.0, executed=1.0), team="team_1")  # α on the other team
    fake_run(root, "old", "random", 0, 10.0, 9.0)  # a run from before the stealth measures
    out = tmp_path / "report"
    report = write_report([root], out)
    (victim,) = report["victims"].values()
    by_label = {(a["adversary"], a["budget"], a["adversary_team"]): a for a in victim["attacks"]}
    gap = by_label[("gap", 0.25, None)]["stealth"]
    assert gap["action_tv"]["mean"] == pytest.approx(0.11) and gap["action_tv"]["n"] == 2
    lo, hi = gap["state_kl"]["ci95"]
    assert 0.2 <= lo <= 0.25 <= hi <= 0.3 and gap["executed_fraction"]["mean"] == pytest.approx(0.25)
    assert by_label[("gap", 1.0, "team_1")]["stealth"]["executed_fraction"]["mean"] == 1.0
    assert by_label[("random", None, None)]["stealth"] == {k: None for k in gap}
    md = (out / "report.md").read_text()
    assert "| action TV | state AUC | state KL |" in md
    assert "| gap, ε=0.25 | partial_control | 2 |" in md and "0.110 [0.100, 0.120]" in md
    assert "gap, ε=1.0, α in team `team_1`" in md
    row = next(line for line in md.splitlines() if line.startswith("| random |"))
    assert row.endswith("| — | — | — |")
    assert report["stealth_png"] == "stealth_plane.png" and (out / "stealth_plane.png").is_file()
    assert "![Attack success against stealth](stealth_plane.png)" in md
    assert md.index("| attack |") < md.index("![")


def test_curve_band_compares_seeds_at_the_same_x_not_row_by_row():
    # Seed 1's first row comes an iteration later (its first episode ended later): the band
    # must compare both seeds at x = 2 and 3, not seed 0's x = 1 with seed 1's x = 2.
    from marl.stats import curve_band

    x, mean, half = curve_band([[(1, 0.0), (2, 1.0), (3, 2.0)], [(2, 1.0), (3, 3.0)]])
    assert x.tolist() == [2.0, 3.0] and mean.tolist() == [1.0, 2.5]
    assert half[0] == 0.0 and half[1] > 0
    x, mean, _ = curve_band([[(0, 0.0), (10, 1.0)], [(0, 2.0), (5, 2.5), (10, 3.0)]])
    assert x.tolist() == [0.0, 10.0] and mean.tolist() == [1.0, 2.0]
