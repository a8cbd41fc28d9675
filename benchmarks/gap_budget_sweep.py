"""Issue 9: attack success and stealth of `gap` (partial control) against its budget ε.

For each budget ε and attack seed it runs ``run.py attack VICTIM --adversary gap
adversary.budget=ε`` through ``attack_suite.one_attack`` (same victim checkpoint, same
attacker env-step budget and evaluation episodes for every ε; re-runnable: finished runs are
skipped, interrupted ones resumed). Optionally an unconstrained ``gleave`` takeover of the
same agent, at the same budget, for "stealth at equal success". Then one ``run.py report``
over all of them (it groups runs by adversary and ε) and ``budget_sweep.png``: the victim's
return (and win rate) and each stealth measure against ε, mean and 95% CI across seeds.

At ε = 0 the attacker's actions never run, so training it is pointless: that budget gets
``--zero-steps`` env steps (default 2000) and stands for "no attack" on the same code path.

    python benchmarks/gap_budget_sweep.py VICTIM --runs DIR --report DIR \\
        [--budgets 0 0.1 0.25 0.5 1] [--seeds 0 1 2] [--steps 50000] [--episodes 32] \\
        [--unconstrained] [--parallel 2] [--report-only] [--set victim.team=player_0 adversary.team=player_1 ...]

The last stdout line is one JSON object: per ε, the victim's return (and win rate) and the
stealth measures, mean and CI across seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attack_suite  # noqa: E402  (benchmarks/attack_suite.py)


def _row(summary: dict) -> dict:
    row = {"return": summary["return_attacked"], "return_clean": summary["return_clean"],
           "seeds": summary["seeds"], "attack_env_steps": sorted(set(summary["attack_env_steps"]))}
    if "win_rate_attacked" in summary:
        row["win_rate"] = summary["win_rate_attacked"]
        row["win_rate_clean"] = summary["win_rate_clean"]
    row["stealth"] = summary.get("stealth")
    return row


def plot(rows: dict[str, dict], unconstrained: dict | None, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = sorted(rows, key=float)
    x = [float(e) for e in eps]
    panels = [("return", "victim return")]
    if all("win_rate" in rows[e] for e in eps):
        panels.append(("win_rate", "victim win rate"))
    stealth_keys = [k for k in ("action_tv", "state_auc", "state_kl")
                    if all((rows[e].get("stealth") or {}).get(k) for e in eps)]
    fig, axes = plt.subplots(1, len(panels) + len(stealth_keys), figsize=(4 * (len(panels) + len(stealth_keys)), 3.4))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]

    def draw(ax, values, label, color):
        mean = [v["mean"] for v in values]
        lo = [v["mean"] - v["ci95"][0] if v.get("ci95") else 0.0 for v in values]
        hi = [v["ci95"][1] - v["mean"] if v.get("ci95") else 0.0 for v in values]
        ax.errorbar(x, mean, yerr=[lo, hi], marker="o", capsize=3, label=label, color=color)

    for ax, (key, label) in zip(axes, panels + [(k, k.replace("_", " ")) for k in stealth_keys], strict=False):
        values = [rows[e][key] if key in rows[e] else rows[e]["stealth"][key] for e in eps]
        draw(ax, values, "gap (partial control)", "tab:red")
        if unconstrained is not None:
            u = unconstrained[key] if key in unconstrained else (unconstrained.get("stealth") or {}).get(key)
            if u:
                ax.axhline(u["mean"], color="grey", ls="--", label="gleave takeover (unconstrained)")
        if key == "action_tv":
            ax.plot(x, x, color="black", lw=0.8, ls=":", label="bound ε")
        ax.set_xlabel("budget ε")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("gap against its budget (mean, 95% CI across attack seeds)", fontsize=10)
    fig.tight_layout()
    path = out / "budget_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("victim", type=Path)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.0, 0.1, 0.25, 0.5, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=50_000, help="attacker env steps for every ε > 0")
    p.add_argument("--zero-steps", type=int, default=2000, help="attacker env steps at ε = 0")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--unconstrained", action="store_true", help="also a gleave takeover of the same agent")
    p.add_argument("--parallel", type=int, default=1, choices=(1, 2))
    p.add_argument("--gif", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: report the runs of --runs that have finished (an interrupted sweep)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], action="extend", metavar="KEY=VALUE")
    args = p.parse_args()

    runs = args.runs.resolve()
    victim = attack_suite.pinned_victim(args.victim, runs)
    jobs = []
    for seed in args.seeds:
        for eps in args.budgets:
            steps = args.zero_steps if eps == 0 else args.steps
            jobs.append(("gap", seed, f"eps{eps:g}", [f"adversary.budget={eps:g}"], steps))
        if args.unconstrained:
            # gleave takes no budget; α's team (adversary.team) comes from --set like gap's.
            jobs.append(("gleave", seed, "takeover", [], args.steps))

    def run(job):
        name, seed, tag, extra, steps = job
        if args.report_only:
            return attack_suite.finished(runs / tag / f"{name}-s{seed}")
        a = argparse.Namespace(episodes=args.episodes, gif=args.gif, budget=steps,
                               overrides=[*args.overrides, *extra])
        (runs / tag).mkdir(parents=True, exist_ok=True)
        return attack_suite.one_attack(victim, name, seed, a, runs / tag)

    with ThreadPoolExecutor(args.parallel) as pool:
        done = list(pool.map(run, jobs))
    ok = [d for d in done if d is not None]
    if not ok:
        sys.exit("error: no attack run finished")
    data = attack_suite.write_report(ok, args.report)
    (slug, v), = data["victims"].items()
    rows, unconstrained = {}, None
    for a in v["attacks"]:
        if a["adversary"] == "gap":
            rows[f"{float(a['budget']):g}"] = _row(a)
        elif a["adversary"] == "gleave":
            unconstrained = _row(a)
    plot(rows, unconstrained, args.report)
    print(json.dumps({"victim": str(victim), "steps": args.steps, "episodes": args.episodes,
                      "missing": [f"{j[0]}-{j[2]}-s{j[1]}" for j, d in zip(jobs, done, strict=True) if d is None],
                      "gap": rows, "gleave_takeover": unconstrained}))


if __name__ == "__main__":
    main()
