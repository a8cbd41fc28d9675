"""Learned DAG vs empty graph (MAPPO) vs full graph on the paper's coordination tasks
(Chen & Zhang, ICML 2023): coordination game n=3 and n=5, Aloha (10 agents).

Every (env, graph, seed) trains with ``run.py train configs/bn/<env>_<graph>.yaml`` on the same
env-step budget, ``--jobs`` at a time. Then each final checkpoint is evaluated (stochastic
policy, 100 episodes), and every learned-graph run also with ``--decentralized`` (empty graph
forced: annealing should have made it nearly free). Writes, under ``--out``:

- ``curves_<env>.png``: training return, mean ± std over seeds, per graph mode;
- ``density.png``: the learned graphs' density ρ (and target τ) over training;
- ``summary.json``; the last stdout line is the same JSON.

Returns are team returns (sum over agents). In both of the paper's envs every agent gets the
team reward, so the coordination game's fraction of optimum is
team return / (n × the exact per-agent optimum from ``envs.coordination_game.optimal_value``).

    python benchmarks/bn_graphs.py --steps 150000 --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENVS = {"coordination3": 3, "coordination5": 5, "aloha": 10}
GRAPHS = ["empty", "full", "learned"]
FINAL_WINDOW = 5
EVAL_EPISODES = 100


def launch(env: str, graph: str, seed: int, steps: int, out: Path) -> subprocess.Popen:
    log = open(out / f"{env}_{graph}_seed{seed}.log", "w")
    cmd = [
        sys.executable, str(ROOT / "run.py"), "train", str(ROOT / "configs" / "bn" / f"{env}_{graph}.yaml"),
        f"seed={seed}", f"train.total_env_steps={steps}", f"output_dir={out / 'runs'}",
        f"name={env}-{graph}-seed{seed}", "train.progress=log", "train.checkpoint_every=1000",
    ]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def run_dir_of(out: Path, env: str, graph: str, seed: int) -> Path | None:
    found = sorted((out / "runs").glob(f"{env}-{graph}-seed{seed}-*"))
    done = [d for d in found if (d / "checkpoints").is_dir() and any((d / "checkpoints").iterdir())]
    return done[-1] if done else None


def evaluate(run_dir: Path, decentralized: bool) -> dict:
    cmd = [sys.executable, str(ROOT / "run.py"), "evaluate", str(run_dir), "--episodes", str(EVAL_EPISODES)]
    if decentralized:
        cmd.append("--decentralized")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def plot(out: Path, results: dict, optimum: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    for env, by_graph in results.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k, (graph, runs) in enumerate(by_graph.items()):
            grid = np.array([r["env_steps"] for r in runs[0]["rows"]])
            ys = np.array([[r["episode_return_mean"] or np.nan for r in run["rows"]][: len(grid)] for run in runs])
            mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
            ax.plot(grid, mean, color=f"C{k}", label=f"{graph} ({len(runs)} seeds)")
            ax.fill_between(grid, mean - std, mean + std, color=f"C{k}", alpha=0.2)
        if env in optimum:
            ax.axhline(optimum[env], color="k", ls="--", lw=1, label="exact optimum")
        ax.set_xlabel("env steps")
        ax.set_ylabel("team return (sum over agents)")
        ax.set_title(env)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"curves_{env}.png", dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (env, by_graph) in enumerate(results.items()):
        for i, run in enumerate(by_graph.get("learned", [])):
            x = [r["env_steps"] for r in run["rows"]]
            ax.plot(x, [r.get("dag_density") for r in run["rows"]], color=f"C{k}", alpha=0.7,
                    label=f"{env} ρ" if i == 0 else None)
            if i == 0:
                ax.plot(x, [r.get("dag_tau") for r in run["rows"]], color=f"C{k}", ls=":", label=f"{env} τ")
    ax.set_xlabel("env steps")
    ax.set_ylabel("DAG density")
    ax.set_title("learned graphs: density ρ and target τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "density.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--graphs", nargs="+", default=GRAPHS)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-bn")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    todo = [(e, g, s) for e in args.envs for g in args.graphs for s in args.seeds
            if run_dir_of(args.out, e, g, s) is None]
    running: list[subprocess.Popen] = []
    t0 = time.time()
    while todo or running:
        while todo and len(running) < args.jobs:
            running.append(launch(*todo.pop(0), args.steps, args.out))
        time.sleep(2)
        running = [r for r in running if r.poll() is None]
    print(f"training done in {time.time() - t0:.0f}s", file=sys.stderr)

    from envs.coordination_game import optimal_value

    optimum = {e: n * optimal_value(n) for e, n in ENVS.items() if e.startswith("coordination")}
    results: dict = {}
    summary: dict = {}
    for env in args.envs:
        for graph in args.graphs:
            for seed in args.seeds:
                run_dir = run_dir_of(args.out, env, graph, seed)
                if run_dir is None:
                    continue
                rows = metrics(run_dir)
                tail = [r["episode_return_mean"] for r in rows[-FINAL_WINDOW:] if r["episode_return_mean"] is not None]
                entry = {"seed": seed, "rows": rows, "train_final": sum(tail) / len(tail),
                         "eval": evaluate(run_dir, False)["episode_return_mean"]}
                if graph == "learned":
                    entry["eval_decentralized"] = evaluate(run_dir, True)["episode_return_mean"]
                    entry["final_density"] = rows[-1].get("dag_density")
                results.setdefault(env, {}).setdefault(graph, []).append(entry)
            runs = results.get(env, {}).get(graph, [])
            if not runs:
                continue
            s = {k: round(sum(r[k] for r in runs) / len(runs), 3) for k in ("train_final", "eval")}
            s["eval_per_seed"] = [round(r["eval"], 2) for r in runs]
            if graph == "learned":
                s["eval_decentralized"] = round(sum(r["eval_decentralized"] for r in runs) / len(runs), 3)
                s["final_density"] = round(sum(r["final_density"] for r in runs) / len(runs), 3)
            if env in optimum:
                s["eval_fraction_of_optimum"] = round(s["eval"] / optimum[env], 3)
                if "eval_decentralized" in s:
                    s["eval_decentralized_fraction_of_optimum"] = round(s["eval_decentralized"] / optimum[env], 3)
            summary.setdefault(env, {})[graph] = s
    plot(args.out, results, optimum)
    out = {"steps": args.steps, "seeds": args.seeds, "optimum_team_return": optimum, "results": summary}
    (args.out / "summary.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
