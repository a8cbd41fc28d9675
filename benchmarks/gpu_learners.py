"""Training env steps/s with the Learner on the CPU against the Learner on a GPU, on
simple_spread, SMAX (smacv2_5_units) and VMAS (balance), side by side in one process.

Each run is the project's own training (``marl.train.train``: the config, the cluster check,
RLlib's Algorithm, metrics.jsonl) of MAPPO with the env's config under configs/env/ and
base.yaml's defaults (batch 2000, minibatch 500, 5 epochs, 16 envs in the driver's EnvRunner,
learner in the driver). The CPU and GPU runs of an env differ in one setting only,
``runners.num_gpus_per_learner`` 0 or 1; the envs and the sampling run on the CPU in both. The
figure is env steps per wall second over the timed iterations (the first iteration, with
compilation and warm-up, is left out), as metrics.jsonl records them.

Without a CUDA device the GPU runs are skipped, and the output says so. With one, a smoke
run of the heaviest path (BN-MAPPO with a learned DAG and CLAM, learner on the GPU, one
iteration) checks that the module lives on CUDA and the update finishes with finite metrics.

The runs share a time budget (``--budget-s``): a run that would start past it is reported as
skipped, so the JSON line always comes. The last stdout line is one JSON object:

    {"simple_spread": {"cpu": steps/s, "gpu": steps/s | null}, "smax_smacv2_5_units": {...},
     "vmas_balance": {...} | "skipped: ...", "gpu": "NVIDIA ..." | "skipped: no CUDA device",
     "smoke": ..., "settings": {...}}

    python benchmarks/gpu_learners.py [--iterations N] [--budget-s S]   (benchmarks/gpu.sh runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENVS = {  # output key -> env config under configs/env/
    "simple_spread": "simple_spread",
    "smax_smacv2_5_units": "smax_smacv2_5_units",
    "vmas_balance": "vmas_balance",
}
# A run that would start with less than this left of the budget is skipped.
RUN_RESERVE_S = 45.0


def rate(run_dir: Path) -> float:
    """Env steps per wall second over metrics.jsonl's rows after the first (warm-up)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:]
    steps = timed[-1]["env_steps"] - rows[0]["env_steps"]
    seconds = timed[-1]["time_s"] - rows[0]["time_s"]
    return steps / seconds


def train_rate(env_file: Path, gpus: float, args, out_dir: Path) -> tuple[float, dict]:
    """(env steps/s, the settings the run used)."""
    from marl.config import load_config
    from marl.train import train

    cfg = load_config(env_file, [
        f"runners.num_gpus_per_learner={gpus}",
        f"train.total_env_steps={(args.iterations + 1) * args.batch}",
        f"algo.train_batch_size={args.batch}",
        f"train.checkpoint_every={10**6}",  # one checkpoint, at the end (not timed)
        "train.progress=log",
        f"output_dir={out_dir}",
        f"name={env_file.stem}-gpus{gpus:g}",
    ])
    with contextlib.redirect_stdout(sys.stderr):
        run_dir = train(cfg)
    a, r = cfg.algo, cfg.runners
    used = {"batch": a.train_batch_size, "minibatch": a.minibatch_size, "epochs": a.num_epochs,
            "envs_per_runner": r.num_envs_per_env_runner, "env_runners": r.num_env_runners,
            "learners": r.num_learners, "torch_threads": r.torch_threads, "graph": cfg.model.graph.mode}
    return rate(run_dir), used


def smoke(out_dir: Path, gpus: float = 1) -> str:
    """One iteration of BN-MAPPO (learned DAG) with CLAM, learner on the GPU (``gpus`` 0: on
    the CPU, to try this function where there is no GPU)."""
    import numpy as np
    import torch

    from marl.algorithms import build_algorithm_config
    from marl.config import load_config

    cfg = load_config(ROOT / "configs" / "mappo_simple_spread.yaml", [
        # 400 steps in 16 envs: 16 episodes finish, so the CLAM encoder trains in this update.
        "model.graph.mode=learned", "model.agent_modeling.name=clam", "model.agent_modeling.min_episodes=8",
        "model.agent_modeling.batch_episodes=64", "model.agent_modeling.probe_episodes=0",
        "algo.train_batch_size=400", "algo.minibatch_size=200", f"runners.num_gpus_per_learner={gpus}", f"output_dir={out_dir}",
    ])
    algo = build_algorithm_config(cfg).build_algo()
    try:
        devices = algo.learner_group.foreach_learner(
            lambda learner: sorted({str(p.device) for p in learner.module["team_0"].parameters()}))
        devices = next(iter(devices)).get()
        stats = algo.train()["learners"]["team_0"]
    finally:
        algo.stop()
    keys = ("total_loss", "dag_density", "agent_model/contrastive_loss")
    bad = [k for k in keys if not np.isfinite(float(stats.get(k, float("nan"))))]
    want = "cuda" if gpus else "cpu"
    if not all(d.startswith(want) for d in devices):
        return f"failed: learner module on {devices}"
    if bad:
        return f"failed: non-finite or missing {bad}"
    name = torch.cuda.get_device_name(0) if gpus else "CPU"
    return f"ok: learner module on {devices[0]} ({name}); finite {list(keys)}"


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=5 if cuda else 2,
                   help="timed iterations per run, after one warm-up (default: 5 with CUDA, 2 without)")
    p.add_argument("--batch", type=int, default=2000, help="env steps per iteration")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no run after this (seconds)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()

    from marl.errors import UserError
    from marl.train import init_ray

    init_ray()
    out: dict = {"gpu": torch.cuda.get_device_name(0) if cuda else "skipped: no CUDA device"}
    learners = {"cpu": 0, "gpu": 1} if cuda else {"cpu": 0}
    settings: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-learners-") as tmp:
        # First: the heaviest path on the GPU, so a CUDA failure shows before the long runs.
        if cuda:
            try:
                out["smoke"] = smoke(Path(tmp))
            except Exception as e:
                out["smoke"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            out["smoke"] = "skipped: no CUDA device"
        print(json.dumps({"smoke": out["smoke"]}), file=sys.stderr, flush=True)
        for key, name in ENVS.items():
            env_file = ROOT / "configs" / "env" / f"{name}.yaml"
            if not env_file.is_file():
                out[key] = f"skipped: configs/env/{name}.yaml does not exist in this checkout"
                continue
            out[key] = {"cpu": None, "gpu": None}
            for device, gpus in learners.items():
                if time.perf_counter() - start > args.budget_s - RUN_RESERVE_S:
                    out[key][device] = "skipped: time budget"
                    continue
                try:
                    steps_per_s, used = train_rate(env_file, gpus, args, Path(tmp))
                    out[key][device] = round(steps_per_s, 1)
                    settings[key] = used
                except (UserError, ImportError, ModuleNotFoundError) as e:
                    out[key][device] = f"skipped: {type(e).__name__}: {e}"
                except Exception as e:  # a failure of one run is a result, not the end
                    out[key][device] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(json.dumps({key: out[key]}), file=sys.stderr, flush=True)
    for v in out.values():
        if isinstance(v, dict) and isinstance(v.get("cpu"), float) and isinstance(v.get("gpu"), float):
            v["gpu_vs_cpu"] = round(v["gpu"] / v["cpu"], 3)
    out["settings"] = {
        "learner": "MAPPO from configs/env/<env>.yaml over base.yaml; Learner in the driver (num_learners 0)",
        "differs": "only runners.num_gpus_per_learner: cpu 0, gpu 1 (envs and sampling on the CPU in both)",
        "per_env": settings, "timed_iterations": args.iterations, "cpus": os.cpu_count(),
        "torch": torch.__version__, "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
