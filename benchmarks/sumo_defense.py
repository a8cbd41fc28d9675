"""Issue 9: best-response attack success on sumo victims, undefended against defended.

Each group is a set of victim runs (one per training seed) of one training config: plain
self-play (``configs/sumo_selfplay.yaml``) and the same with the defense
``adversarial_training`` (Liu et al., ICLR 2024, Algorithm 2). Against every victim, the same
attack: ``gap`` at ε = 1 on the opponent seat (a full takeover of player_1: the attacker
learns a best response to the victim player_0), the same attacker env-step budget, attack
seed and paired evaluation episodes. A victim that is less exploitable loses less to its best
response. Every attack run is an ordinary ``run.py attack`` run (re-runnable: finished runs are
skipped, interrupted ones resumed).

Writes ``sumo_defense.json`` (per victim: clean and attacked return, win/loss/tie rates, the
attacker's training curve), ``best_response.png`` (the victim's return and win rate under
attack per group, mean and 95% t-interval over victim seeds) and ``attacker_curves.png`` (the
attacker's training return against env steps, per group). The last stdout line is one JSON
object with each group's figures.

    python benchmarks/sumo_defense.py --group selfplay RUN... --group defended RUN... \\
        --runs DIR --out DIR [--steps 150000] [--episodes 64] [--seed 0] [--parallel 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attack_suite  # noqa: E402  (benchmarks/attack_suite.py)
from kuhn_defense import t_interval  # noqa: E402  (benchmarks/kuhn_defense.py)

ATTACK = ["adversary.budget=1", "victim.team=player_0", "adversary.team=player_1"]


def outcome(run: Path) -> dict:
    """Clean and attacked figures of one attack run (attack_eval.json) and its curve."""
    ev = json.loads((run / attack_suite.EVAL_FILE).read_text())
    out = {"run": str(run), "victim": ev["victim"]["checkpoint"]}
    for side in ("clean", "attacked"):
        s = ev[side]
        out[side] = {"return": s["return_mean"], "win_rate": s.get("win_rate")}
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out["curve"] = [[r["env_steps"], r.get("episode_return_mean")] for r in curve]
    return out


def summarise(rows: list[dict]) -> dict:
    res = {"victims": len(rows)}
    for side in ("clean", "attacked"):
        for key in ("return", "win_rate"):
            vals = np.array([r[side][key] for r in rows if r[side][key] is not None], float)
            if len(vals):
                res[f"{key}_{side}"] = {"mean": float(vals.mean()), "ci95": t_interval(vals), "per_victim": vals.tolist()}
    return res


def plot(groups: dict[str, list[dict]], summary: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    names = list(groups)
    for ax, key, label in ((axes[0], "return", "victim return"), (axes[1], "win_rate", "victim win rate")):
        for k, side in enumerate(("clean", "attacked")):
            means, errs = [], [[], []]
            for g in names:
                s = summary[g].get(f"{key}_{side}")
                m = s["mean"] if s else np.nan
                means.append(m)
                errs[0].append(m - s["ci95"][0] if s else 0)
                errs[1].append(s["ci95"][1] - m if s else 0)
            x = np.arange(len(names)) + (k - 0.5) * 0.35
            ax.bar(x, means, 0.35, yerr=errs, capsize=3, label="clean (self-play opponent)" if side == "clean"
                   else "best-response attack (gap ε = 1)")
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle("sumo victims under a best-response attack (mean, 95% CI over victim seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "best_response.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for color, g in zip(("tab:blue", "tab:red", "tab:green"), names, strict=False):
        for k, r in enumerate(groups[g]):
            c = np.array([p for p in r["curve"] if p[1] is not None], float)
            ax.plot(c[:, 0], c[:, 1], color=color, alpha=0.7, label=g if k == 0 else None)
    ax.set_xlabel("attacker env steps")
    ax.set_ylabel("attacker training return")
    ax.set_title("best-response attacker learning curves", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "attacker_curves.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "RUN"))
    p.add_argument("--runs", type=Path, required=True, help="where the attack run directories go")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=150_000, help="attacker env steps against every victim")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the attack seed (the same for every victim)")
    p.add_argument("--parallel", type=int, default=1, choices=(1, 2))
    args = p.parse_args()

    jobs = []
    for name, *victims in args.group:
        for k, victim in enumerate(victims):
            jobs.append((name, k, Path(victim)))

    def run(job):
        name, k, victim = job
        runs = (args.runs / f"{name}-v{k}").resolve()
        ckpt = attack_suite.pinned_victim(victim, runs)
        a = argparse.Namespace(episodes=args.episodes, gif=False, budget=args.steps, overrides=ATTACK)
        return attack_suite.one_attack(ckpt, "gap", args.seed, a, runs)

    with ThreadPoolExecutor(args.parallel) as pool:
        done = list(pool.map(run, jobs))
    groups: dict[str, list[dict]] = {}
    for (name, _, _), d in zip(jobs, done, strict=True):
        if d is not None:
            groups.setdefault(name, []).append(outcome(d))
    if not groups:
        sys.exit("error: no attack run finished")
    summary = {g: summarise(rows) for g, rows in groups.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sumo_defense.json").write_text(json.dumps({"groups": groups, "summary": summary}, indent=2) + "\n")
    plot(groups, summary, args.out)
    for g, s in summary.items():
        ra, wa = s.get("return_attacked", {}), s.get("win_rate_attacked", {})
        print(f"| {g} | {s['victims']} | {s['return_clean']['mean']:.2f} | {ra.get('mean', float('nan')):.2f} "
              f"{ra.get('ci95')} | {wa.get('mean', float('nan')):.2f} {wa.get('ci95')} |")
    print(json.dumps({"steps": args.steps, "episodes": args.episodes, "seed": args.seed, "summary": summary}))


if __name__ == "__main__":
    main()
