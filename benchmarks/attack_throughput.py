"""Attack training env steps/s against plain training of the same team, in one process.

The team: this project's MAPPO on simple_spread (3 agents, 25 steps). ``plain`` trains it;
``attack`` trains a gleave attacker (one agent taken over) against a frozen copy of it,
through the attack env (the victims act in the env, one forward pass per env step). Both use
the same train batch, minibatch, epochs, env runners and vectorised envs, and are timed over
whole ``Algorithm.train()`` calls after a warm-up iteration, alternating rounds so that load
from other processes hits both alike. The last stdout line is one JSON object.

    python benchmarks/attack_throughput.py [--victim RUN_OR_CHECKPOINT] [--iterations 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent


def overrides(args) -> list[str]:
    return [
        f"algo.train_batch_size={args.batch}", f"algo.minibatch_size={args.minibatch}",
        f"algo.num_epochs={args.epochs}", f"runners.num_envs_per_env_runner={args.envs}",
        "runners.num_env_runners=0", "train.progress=log",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--victim", help="a trained simple_spread team (default: train a tiny one)")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--minibatch", type=int, default=500)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import ray
    import torch

    from adversaries.config import load_attack_config
    from adversaries.run import attack_algorithm_config
    from benchmarks.throughput import time_algo
    from marl.algorithms import build_algorithm_config
    from marl.config import load_config
    from marl.train import train

    torch.set_num_threads(1)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)

    team_cfg = load_config(ROOT / "configs/mappo_simple_spread.yaml", overrides(args))
    victim = args.victim
    if victim is None:
        out = tempfile.mkdtemp(prefix="attack_bench_")
        victim = str(train(load_config(ROOT / "configs/mappo_simple_spread.yaml",
                                       [*overrides(args), f"train.total_env_steps={args.batch}", f"output_dir={out}"])))
    setup = load_attack_config(None, overrides(args), victim=victim, adversary="gleave")

    plain, attack = [], []
    for _ in range(args.rounds):
        plain.append(time_algo(build_algorithm_config(team_cfg).build_algo(), args.iterations))
        attack.append(time_algo(attack_algorithm_config(setup).build_algo(), args.iterations))
    result = {
        "plain_env_steps_per_s": round(statistics.median(plain), 1),
        "attack_env_steps_per_s": round(statistics.median(attack), 1),
        "attack_vs_plain": round(statistics.median(attack) / statistics.median(plain), 3),
        "rounds": {"plain": [round(x, 1) for x in plain], "attack": [round(x, 1) for x in attack]},
        "settings": {k: getattr(args, k) for k in ("envs", "batch", "minibatch", "epochs", "iterations", "rounds")},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
