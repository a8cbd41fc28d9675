"""Issue 10: return of no agent modelling, CLAM and the oracle, side by side at one budget.

Three variants of one training config, each with the same seeds, env steps, batch, epochs and
PPO settings (MAPPO, the project's learner):

- ``none``: the ego agent's policy on its own observation;
- ``clam``: plus CLAM's representation of the others (``model.agent_modeling.name=clam``,
  Ma et al. 2024), trained inside the learner on its contrastive loss only;
- ``oracle``: plus the true behaviour type of the others as a one-hot in the observation (and
  the state), the upper bound (``env.kwargs.oracle=true``).

Every run is an ordinary ``run.py train`` run directory (re-runnable: finished runs are
skipped). Writes ``clam_return.json`` (per variant: final return per seed, mean, 95%
t-interval, IQM; the CLAM runs' probe accuracy against t), ``return_curves.png`` (mean and
95% band over seeds against env steps) and ``probe_accuracy.png``. The final return of a run
is the mean ``episode_return_mean`` over its last ``--last`` iterations up to the budget (a
longer run of the same config and seed is read up to the budget). Prints a Markdown
table; the last stdout line is one JSON object.

    python benchmarks/clam_return.py CONFIG --runs DIR --out DIR [--seeds 0 1 2] \\
        [--steps 150000] [--parallel 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "none": [],
    "clam": ["model.agent_modeling.name=clam"],
    "oracle": ["env.kwargs.oracle=true"],
}


def t_interval(x: np.ndarray) -> list[float]:
    if len(x) < 2:
        return [float(x.mean())] * 2
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return [float(x.mean() - half), float(x.mean() + half)]


def iqm(x: np.ndarray) -> float:
    return float(stats.trim_mean(x, 0.25))


def finished(out: Path) -> Path | None:
    if not out.is_dir():
        return None
    for d in sorted(out.iterdir(), reverse=True):
        if (d / "checkpoints").is_dir() and (d / "plots").is_dir() and any((d / "checkpoints").glob("iter_*")):
            rows = (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").is_file() else []
            if rows and json.loads(rows[-1])["env_steps"] >= TOTAL[0]:
                return d
    return None


TOTAL = [0]


def one_run(config: Path, variant: str, seed: int, runs: Path, overrides: list[str]) -> Path | None:
    out = runs / f"{variant}-s{seed}"
    done = finished(out)
    if done is not None:
        print(f"[clam] {variant} seed {seed}: done already ({done})", flush=True)
        return done
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "run.py", "train", str(config), *overrides, *VARIANTS[variant],
           f"seed={seed}", f"train.total_env_steps={TOTAL[0]}", f"output_dir={out}", "train.progress=log",
           f"name={variant}-s{seed}"]
    with open(runs / f"{variant}-s{seed}.log", "w") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"[clam] {variant} seed {seed}: exit {code}", flush=True)
    return finished(out)


def read(run: Path, last: int) -> dict:
    # A run longer than the budget counts up to the budget only: with constant schedules (the
    # default lr and entropy) its first steps are a run of the budget itself.
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["env_steps"] <= TOTAL[0] + 100] or rows[:1]
    curve = [(r["env_steps"], r["episode_return_mean"]) for r in rows if r.get("episode_return_mean") is not None]
    out = {"run": str(run), "curve": curve, "final": float(np.mean([c[1] for c in curve[-last:]])),
           "time_s": rows[-1]["time_s"]}
    probe = sorted((run / "plots").glob("probe_accuracy_*.json"))
    if probe:
        out["probe"] = {int(k): v for k, v in json.loads(probe[0].read_text()).items()}
    return out


def plot(results: dict[str, list[dict]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, (variant, runs) in enumerate(results.items()):
        n = min(len(r["curve"]) for r in runs)
        steps = np.array([c[0] for c in runs[0]["curve"][:n]])
        ys = np.array([[c[1] for c in r["curve"][:n]] for r in runs])
        m = ys.mean(0)
        ax.plot(steps, m, color=f"C{k}", label=f"{variant} ({len(runs)} seeds)")
        if len(runs) > 1:
            half = stats.t.ppf(0.975, len(runs) - 1) * ys.std(0, ddof=1) / np.sqrt(len(runs))
            ax.fill_between(steps, m - half, m + half, color=f"C{k}", alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "return_curves.png", dpi=110)
    plt.close(fig)

    probes = [r["probe"] for r in results.get("clam", []) if r.get("probe")]
    if probes:
        ts = sorted(set.intersection(*(set(p) for p in probes)))
        acc = np.array([[p[t] for t in ts] for p in probes])
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(ts, acc.mean(0), marker="o", label=f"CLAM, linear probe ({len(probes)} seeds)")
        for row in acc:
            ax.plot(ts, row, color="C0", alpha=0.3, lw=0.8)
        ax.set_xlabel("t (steps into the episode)")
        ax.set_ylabel("held-out accuracy of the type")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "probe_accuracy.png", dpi=110)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=150_000)
    p.add_argument("--last", type=int, default=5, help="iterations averaged for a run's final return")
    p.add_argument("--parallel", type=int, default=1, choices=(1, 2, 3))
    p.add_argument("--set", dest="overrides", nargs="+", default=[], action="extend", metavar="KEY=VALUE")
    args = p.parse_args()
    TOTAL[0] = args.steps
    runs = args.runs.resolve()
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.parallel) as pool:
        done = list(pool.map(lambda j: one_run(args.config.resolve(), j[0], j[1], runs, args.overrides), jobs))
    results: dict[str, list[dict]] = {}
    for (variant, _), d in zip(jobs, done, strict=True):
        if d is not None:
            results.setdefault(variant, []).append(read(d, args.last))
    if not results:
        sys.exit("error: no run finished")
    summary = {}
    for variant, rs in results.items():
        final = np.array([r["final"] for r in rs])
        summary[variant] = {"seeds": len(rs), "final": final.tolist(), "mean": float(final.mean()),
                            "ci95": t_interval(final), "iqm": iqm(final),
                            "time_s": float(np.mean([r["time_s"] for r in rs]))}
    if {"none", "clam", "oracle"} <= set(summary):
        n, c, o = (summary[k]["mean"] for k in ("none", "clam", "oracle"))
        summary["clam_minus_none"] = c - n
        summary["relative_gain"] = (c - n) / abs(n) if n else None
        summary["oracle_gain_recovered"] = (c - n) / (o - n) if o != n else None
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out, f"{args.config.stem}: none vs CLAM vs oracle")
    (args.out / "clam_return.json").write_text(json.dumps({"config": str(args.config), "steps": args.steps,
                                                           "overrides": args.overrides, "summary": summary,
                                                           "runs": results}, indent=2) + "\n")
    for variant in args.variants:
        s = summary.get(variant)
        if s:
            print(f"| {variant} | {s['seeds']} | {s['mean']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] "
                  f"| {s['iqm']:.2f} | {s['time_s']:.0f} |")
    print(json.dumps({"config": str(args.config), "steps": args.steps, "summary": summary}))


if __name__ == "__main__":
    main()
