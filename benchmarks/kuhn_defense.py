"""Issue 9: exact exploitability of Kuhn poker victims, undefended against defended, side by side.

Each group is a set of runs (one per seed) of the same training config: plain self-play,
the defense ``adversarial_training`` with two timescales (attacker lr ×10, the default) or
one (×1), ... Every checkpoint of every run is analysed exactly (``kuhn_selfplay.curve``:
OpenSpiel's exploitability and the ε-budgeted exploitability of Liu et al., ICLR 2024).
Writes ``kuhn_defense.json`` (every curve), ``exploitability.png`` (the exploitability
of each group against env steps, mean and 95% t-interval across seeds: the learning
dynamics) and ``budgeted.png`` (the final victims' ε-budgeted exploitability against ε,
i.e. the value of the best partial-control attack on them). Prints a Markdown table; the
last stdout line is one JSON object with each group's final figures.

    python benchmarks/kuhn_defense.py --group selfplay RUN... --group "defense x10" RUN... \\
        --group "defense x1" RUN... --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kuhn_selfplay import curve  # noqa: E402  (benchmarks/kuhn_selfplay.py)


def t_interval(x: np.ndarray) -> list[float]:
    if len(x) < 2:
        return [float(x.mean())] * 2
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return [float(x.mean() - half), float(x.mean() + half)]


def summarise(runs: list[dict]) -> dict:
    n = min(len(r["curve"]) for r in runs)  # the checkpoints every seed has
    steps = [p["env_steps"] for p in runs[0]["curve"][:n]]
    curves = np.array([[p["exploitability"] for p in r["curve"][:n]] for r in runs])
    final = curves[:, -1]
    budgets = list(runs[0]["curve"][n - 1]["budgeted_exploitability"])
    budgeted = {b: np.array([r["curve"][n - 1]["budgeted_exploitability"][b] for r in runs]) for b in budgets}
    return {
        "seeds": [r["seed"] for r in runs],
        "env_steps": steps,
        "exploitability_mean": curves.mean(0).tolist(),
        "exploitability_ci95": [t_interval(curves[:, i]) for i in range(n)],
        "final_exploitability": final.tolist(),
        "final_mean": float(final.mean()),
        "final_ci95": t_interval(final),
        "budgeted_final_mean": {b: float(v.mean()) for b, v in budgeted.items()},
        "budgeted_final_ci95": {b: t_interval(v) for b, v in budgeted.items()},
    }


def plot(groups: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in groups.items():
        x = np.array(g["env_steps"])
        m = np.array(g["exploitability_mean"])
        lo, hi = np.array(g["exploitability_ci95"]).T
        lo = np.maximum(lo, 0.0)  # exploitability is ≥ 0; the t-interval is drawn cut at 0
        ax.plot(x, m, marker="o", label=f"{name} ({len(g['seeds'])} seeds)")
        ax.fill_between(x, lo, hi, alpha=0.2)
    ax.axhline(0.05, color="black", ls=":", lw=0.8, label="target: 0.05 from Nash")
    ax.set_xlabel("env steps")
    ax.set_ylabel("exact exploitability (0 = Nash)")
    ax.set_title("Kuhn poker: exploitability of the last iterate (mean, 95% t-CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "exploitability.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in groups.items():
        budgets = list(g["budgeted_final_mean"])
        x = [float(b) for b in budgets]
        m = np.array([g["budgeted_final_mean"][b] for b in budgets])
        lo, hi = np.array([g["budgeted_final_ci95"][b] for b in budgets]).T
        ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=name)
    ax.set_xlabel("attack budget ε (partial control of the opponent)")
    ax.set_ylabel("ε-budgeted exploitability (best attack's value)")
    ax.set_title("Kuhn poker: exact value of the best partial-control attack", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "budgeted.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                   help="a group name followed by its run directories (one per seed)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {g[0]: [curve(Path(r)) for r in g[1:]] for g in args.group}
    groups = {name: summarise(runs) for name, runs in raw.items()}
    (args.out / "kuhn_defense.json").write_text(json.dumps({"groups": groups, "runs": raw}, indent=2) + "\n")
    plot(groups, args.out)
    budgets = list(next(iter(groups.values()))["budgeted_final_mean"])
    print("| victim | seeds | env steps | exploitability, final [95% t-CI] | per seed | "
          + " | ".join(f"ε={b}" for b in budgets) + " |")
    print("|---" * (5 + len(budgets)) + "|")
    for name, g in groups.items():
        lo, hi = g["final_ci95"]
        per_seed = ", ".join(f"{e:.3f}" for e in g["final_exploitability"])
        cells = " | ".join(f"{g['budgeted_final_mean'][b]:.4f}" for b in budgets)
        print(f"| {name} | {len(g['seeds'])} | {g['env_steps'][-1]} | {g['final_mean']:.4f} [{lo:.4f}, {hi:.4f}] "
              f"| {per_seed} | {cells} |")
    print(json.dumps({name: {"final_mean": g["final_mean"], "final_ci95": g["final_ci95"],
                             "budgeted_final_mean": g["budgeted_final_mean"]} for name, g in groups.items()}))


if __name__ == "__main__":
    main()
