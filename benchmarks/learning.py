"""Learning curves: this project's MAPPO vs RLlib's stock PPO (one shared policy) on
simple_spread (3 agents, 25 steps), same env-step budget and seeds.

Methods (``--methods``):

- ``mappo``: the project's trainer (``marl.train``), exactly as ``run.py train`` does;
- ``stock_matched``: RLlib's PPO with MAPPO's PPO settings, including the three RLlib defaults
  MAPPO does not use turned off or matched (no value-loss clip, no KL penalty, minibatch of
  n × the team minibatch in agent rows);
- ``stock_defaults``: RLlib's PPO with the shared settings only, RLlib's defaults for the rest
  (``rllib_ppo`` in curves.json files written before these three methods).

Each (method, seed) runs in its own process (``--jobs`` at a time). Team return is the sum of
the agents' rewards over the episode for all (RLlib's ``episode_return_mean``, smoothed over
the last 20 episodes). Writes ``<out>/curves.json`` and ``<out>/learning_simple_spread.png``
(per-seed curves faint, mean bold, 95% t interval across seeds shaded); the last stdout line is
one JSON object with each method's final return (mean of the last 5 iterations) per seed.
``--reuse`` takes the runs it lists from an earlier curves.json instead of running them.

    python benchmarks/learning.py --steps 1000000 --seeds 0 1 2 --jobs 1 \
        [--methods stock_matched] [--reuse benchmarks/results/curves.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENV_KWARGS = {"N": 3, "max_cycles": 25, "continuous_actions": False}
# Shared PPO settings (the project's defaults in configs/base.yaml).
PPO = {"lr": 5e-4, "gamma": 0.99, "lambda_": 0.95, "clip_param": 0.2, "entropy_coeff": 0.01,
       "vf_loss_coeff": 1.0, "grad_clip": 10.0, "train_batch_size": 2000, "minibatch_size": 500,
       "num_epochs": 5}
ENVS_PER_RUNNER = 16
FINAL_WINDOW = 5
N_AGENTS = ENV_KWARGS["N"]
# Stock RLlib PPO, two ways. ``stock_defaults`` is the earlier benchmark's run: PPO above plus
# every RLlib default it did not set, three of which MAPPO does not use: the value loss clipped
# at vf_clip_param=10 (squared error on raw returns), the adaptive KL penalty (use_kl_loss=True,
# kl_coeff=0.2), and minibatch_size counted in agent rows, so 500 rows = 1/3 of MAPPO's 500 team
# steps (3x the optimizer steps). ``stock_matched`` turns those three off/matches them.
STOCK = {
    "stock_defaults": {},
    "stock_matched": {"vf_clip_param": float("inf"), "use_kl_loss": False, "kl_coeff": 0.0,
                      "minibatch_size": N_AGENTS * PPO["minibatch_size"]},
}
# Earlier name of stock_defaults in stored curves.json files.
ALIASES = {"rllib_ppo": "stock_defaults"}
COLORS = {"mappo": "C0", "stock_matched": "C2", "stock_defaults": "C1"}


def run_mappo(steps: int, seed: int, out: Path) -> list[tuple[int, float]]:
    from marl.config import load_config
    from marl.train import train

    overrides = [f"algo.{k}={v}" for k, v in PPO.items()] + [
        f"train.total_env_steps={steps}", f"seed={seed}", f"output_dir={out / 'runs'}",
        f"name=mappo-seed{seed}", "train.progress=log", "train.checkpoint_every=100",
        f"runners.num_envs_per_env_runner={ENVS_PER_RUNNER}",
    ]
    run_dir = train(load_config(ROOT / "configs" / "mappo_simple_spread.yaml", overrides))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["env_steps"], r["episode_return_mean"]) for r in rows if r["episode_return_mean"] is not None]


def run_stock_ppo(steps: int, seed: int, method: str) -> list[tuple[int, float]]:
    from mpe2 import simple_spread_v3
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    from marl.train import init_ray

    init_ray()
    register_env("pz_simple_spread", lambda cfg: ParallelPettingZooEnv(simple_spread_v3.parallel_env(**cfg)))
    algo = (
        PPOConfig()
        .environment("pz_simple_spread", env_config=ENV_KWARGS)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=ENVS_PER_RUNNER, rollout_fragment_length="auto")
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda aid, *a, **k: "shared")
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh"))
        .training(**{**PPO, **STOCK[method]})
        .reporting(metrics_num_episodes_for_smoothing=20)
        .debugging(seed=seed, log_level="ERROR")
        .build_algo()
    )
    curve, sampled = [], 0
    while sampled < steps:
        er = algo.train()["env_runners"]
        sampled = int(er["num_env_steps_sampled_lifetime"])
        ret = er.get("episode_return_mean")
        if ret is not None:
            curve.append((sampled, float(ret)))
        print(f"{method} seed {seed}: {sampled} steps, return {ret}", flush=True)
    algo.stop()
    return curve


def child(method: str, seed: int, steps: int, out: Path) -> None:
    import torch

    torch.set_num_threads(1)  # small MLPs: threads only contend (the trainer does the same)
    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)
    t0 = time.time()
    curve = run_mappo(steps, seed, out) if method == "mappo" else run_stock_ppo(steps, seed, method)
    (out / f"{method}-seed{seed}.json").write_text(
        json.dumps({"method": method, "seed": seed, "wall_s": time.time() - t0, "curve": curve})
    )


def t_interval(ys, confidence: float = 0.95):
    """Mean and two-sided t confidence interval across seeds (rows), per column. With 3 seeds a
    bootstrap has only 10 distinct resamples and understates the spread; the t interval does
    not (t_0.975 with 2 degrees of freedom is 4.30)."""
    import numpy as np
    from scipy import stats

    ys = np.asarray(ys, dtype=float)
    n = np.sum(~np.isnan(ys), axis=0)
    mean = np.nanmean(ys, axis=0)
    sem = np.nanstd(ys, axis=0, ddof=1) / np.sqrt(n)
    half = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sem
    return mean, mean - half, mean + half


def plot(results: dict[str, list[dict]], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    grid = np.linspace(0, steps, 101)
    for method, runs in results.items():
        color = COLORS.get(method)
        ys = []
        for run in runs:
            x, y = zip(*run["curve"], strict=True)
            ys.append(np.interp(grid, x, y, left=np.nan, right=np.nan))
            ax.plot(x, y, alpha=0.25, lw=0.7, color=color)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid points before a run's first report
            mean, lo, hi = t_interval(ys) if len(ys) > 1 else (ys[0], ys[0], ys[0])
        ax.fill_between(grid, lo, hi, color=color, alpha=0.15, lw=0)
        label = f"{method} (mean of {len(runs)} seeds, 95% t CI)"
        if not all(run.get("complete", True) for run in runs):
            reached = min(run["curve"][-1][0] for run in runs)
            label += f", stopped at {reached // 1000}k+ steps"
        ax.plot(grid, mean, lw=2, color=color, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("team return (sum over agents)")
    ax.set_title("simple_spread_v3, N=3, 25 steps")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def partial_from_log(log: Path, method: str, seed: int) -> dict | None:
    """A stock run stopped before its budget: its curve so far, from the per-iteration lines
    ``run_stock_ppo`` prints (``<method> seed <s>: <steps> steps, return <r>``)."""
    pattern = re.compile(rf"^{re.escape(method)} seed {seed}: (\d+) steps, return (\S+)$")
    curve = []
    for line in log.read_text().splitlines():
        m = pattern.match(line.strip())
        if m and m.group(2) != "None":
            curve.append((int(m.group(1)), float(m.group(2))))
    if not curve:
        return None
    return {"method": method, "seed": seed, "curve": curve, "complete": False}


def load_reused(path: Path, methods: list[str], seeds: list[int]) -> dict[tuple[str, int], dict]:
    """Runs of an earlier curves.json (same script and settings), by (method, seed); earlier
    method names are mapped to today's (``ALIASES``). Each run is marked with its source."""
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", path.name], cwd=path.resolve().parent,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    source = f"{path.name} at commit {commit}" if commit else str(path)
    reused = {}
    for name, runs in json.loads(path.read_text()).items():
        method = ALIASES.get(name, name)
        for run in runs:
            if method in methods and run["seed"] in seeds:
                reused[(method, run["seed"])] = {**run, "method": method,
                                                 "reused_from": run.get("reused_from", source)}
    return reused


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=["mappo", *STOCK], default=["mappo", *STOCK])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-learning")
    p.add_argument("--reuse", type=Path, metavar="CURVES_JSON",
                   help="take (method, seed) runs not in --out from this earlier curves.json")
    p.add_argument("--partial", action="store_true",
                   help="run nothing; collect what exists, stock runs still running from their logs")
    p.add_argument("--compare-at", type=int, metavar="STEPS",
                   help="also report each run's return over the last 5 iterations up to STEPS")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child[0], int(args.child[1]), args.steps, args.out)
        return

    reused = load_reused(args.reuse, args.methods, args.seeds) if args.reuse else {}
    todo = [(m, s) for m in args.methods for s in args.seeds
            if not (args.out / f"{m}-seed{s}.json").exists() and (m, s) not in reused]
    running: list[subprocess.Popen] = []
    if args.partial:
        todo = []
    while todo or running:
        while todo and len(running) < args.jobs:
            m, s = todo.pop(0)
            log = open(args.out / f"{m}-seed{s}.log", "w")
            cmd = [sys.executable, __file__, "--child", m, str(s), "--steps", str(args.steps), "--out", str(args.out)]
            running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(2)
        running = [r for r in running if r.poll() is None]

    results: dict[str, list[dict]] = {}
    for m in args.methods:
        for s in args.seeds:
            f = args.out / f"{m}-seed{s}.json"
            if f.exists():
                results.setdefault(m, []).append(json.loads(f.read_text()))
            elif (m, s) in reused:
                results.setdefault(m, []).append(reused[(m, s)])
            elif args.partial and m != "mappo" and (args.out / f"{m}-seed{s}.log").exists():
                run = partial_from_log(args.out / f"{m}-seed{s}.log", m, s)
                if run is not None:
                    results.setdefault(m, []).append(run)
    (args.out / "curves.json").write_text(json.dumps(results))
    plot(results, args.out / "learning_simple_spread.png", args.steps)
    def final(curve, upto=None):
        tail = [y for x, y in curve if upto is None or x <= upto][-FINAL_WINDOW:]
        return round(sum(tail) / len(tail), 2)

    summary = {m: {f"seed{r['seed']}": final(r["curve"]) for r in runs} for m, runs in results.items()}
    report = {"final_team_return": summary, "steps": args.steps,
              "steps_reached": {m: {f"seed{r['seed']}": r["curve"][-1][0] for r in runs}
                                for m, runs in results.items()}}
    if args.compare_at:
        report[f"team_return_at_{args.compare_at}"] = {
            m: {f"seed{r['seed']}": final(r["curve"], args.compare_at) for r in runs} for m, runs in results.items()
        }
    for per_seed in [*summary.values(), *report.get(f"team_return_at_{args.compare_at}", {}).values()]:
        vals = list(per_seed.values())
        per_seed["mean"] = round(sum(vals) / len(vals), 2)
        if len(vals) > 1:
            _, lo, hi = t_interval([[v] for v in vals])
            per_seed["ci95"] = [round(float(lo[0]), 2), round(float(hi[0]), 2)]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
