"""Training env steps per second of recurrent MAPPO against feed-forward MAPPO, side by side in
one process (issue 12):

- ``feed_forward``: this project's MAPPO (empty graph, MLP actor and critic, hidden 64);
- ``gru``: the same with ``model.recurrent: {cell: gru, hidden: 64}`` (GRU actor and GRU
  critic, stepped while acting, trained on zero-padded sequences of ``max_seq_len`` steps);
- ``gru_actor``: the same with a feed-forward critic (``model.recurrent.critic: false``).

Same env, train batch, minibatch, epochs, env runners and vectorised envs for all three; timed
over whole ``Algorithm.train()`` calls (sampling + learning) after a warm-up call, interleaved
one call of each in turn (benchmarks/throughput.py ``time_algos``), so that load from other
processes hits them alike. ``per_cpu_s`` gives env steps per CPU second of this process
(sampling and learning both run in it), which a shared machine's load disturbs far less. The
last stdout line is one JSON object.

    python benchmarks/recurrent_throughput.py [--env simple_spread] [--iterations 3] [--max-seq-len 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build(args, extra: list[str]):
    from marl.algorithms import build_algorithm_config
    from marl.config import load_config

    cfg = load_config(CONFIGS / "env" / f"{args.env}.yaml", [
        f"algo.train_batch_size={args.batch}", f"algo.minibatch_size={args.minibatch}",
        f"algo.num_epochs={args.epochs}", f"runners.num_envs_per_env_runner={args.envs}",
        "runners.num_env_runners=0", "model.graph.mode=empty", *extra,
    ])
    return build_algorithm_config(cfg).build_algo()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="simple_spread", help="a config under configs/env")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--envs", type=int, default=16, help="vectorised envs per env runner")
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--minibatch", type=int, default=500)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-seq-len", type=int, default=20)
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    import ray
    import torch

    import benchmarks.throughput as throughput

    torch.set_num_threads(1)  # as the trainer does (runners.torch_threads)
    throughput.ADAM = throughput.AdamStepCounter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)

    gru = ["model.recurrent.cell=gru", "model.recurrent.hidden=64", f"model.recurrent.max_seq_len={args.max_seq_len}"]
    variants = {"feed_forward": [], "gru": gru, "gru_actor": [*gru, "model.recurrent.critic=false"]}
    details = throughput.time_algos({k: build(args, v) for k, v in variants.items()}, args.iterations)
    print(json.dumps(details), file=sys.stderr, flush=True)
    out = {k: round(d["steps_per_s"], 1) for k, d in details.items()}
    out["per_cpu_s"] = {k: round(d["steps_per_cpu_s"], 1) for k, d in details.items()}
    out["optimizer_steps"] = {k: round(d["optimizer_steps"], 2) for k, d in details.items()}
    for table, key in (("ratios", "steps_per_s"), ("ratios_per_cpu_s", "steps_per_cpu_s")):
        base = details["feed_forward"][key]
        out[table] = {f"{k}_vs_feed_forward": round(details[k][key] / base, 3) for k in ("gru", "gru_actor")}
    out["settings"] = {k: getattr(args, k) for k in ("env", "envs", "batch", "minibatch", "epochs", "iterations", "max_seq_len")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
