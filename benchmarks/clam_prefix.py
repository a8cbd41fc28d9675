"""Cost per env step of CLAM's rollout-time encoding of the current episode prefix.

At every step each env's ego agent needs the EMA encoder's representation of its episode so
far, prefix [0, t] (Ma et al. 2024). The encoder's set-attention blocks are not causal (every
step attends to every other), so there is no exact incremental cache: each step re-encodes the
prefix. What can be saved is the bookkeeping and the batching:

- ``batched`` (the project's way): the prefix lives in a preallocated [B, T, f] tensor written
  in place each step, and all envs are encoded in one masked call, ``CLAM.represent``, which
  cuts the batch to the longest prefix (exact: padding cannot change the output);
- ``batched_full_T``: the same without the cut (always T = max_len steps, masked);
- ``naive``: each env's prefix rebuilt from Python lists with ``torch.tensor(list)`` every step
  and encoded alone.

All three give the same representations (checked). Episodes of T steps, B envs, features as
numpy arrays as an env hands them over. Rounds alternate the methods so that load from other
processes hits them alike; the median round counts. The last stdout line is one JSON object.

    python benchmarks/clam_prefix.py [--envs 16] [--steps 50] [--feat 21] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marl.agent_modeling import CLAM  # noqa: E402
from marl.agent_modeling.clam import prefix_mask  # noqa: E402


def batched(model: CLAM, feats: np.ndarray, trim: bool = True) -> torch.Tensor:
    steps, b, f = feats.shape
    buf = torch.zeros(b, steps, f)
    lengths = torch.zeros(b, dtype=torch.long)
    out = []
    for t in range(steps):
        buf[:, t] = torch.from_numpy(feats[t])
        lengths += 1
        if trim:
            out.append(model.represent(buf, lengths))
        else:
            with torch.no_grad():
                out.append(F.normalize(model.ema_encoder(buf, prefix_mask(lengths, steps)), dim=-1))
    return torch.stack(out)


def naive(model: CLAM, feats: np.ndarray) -> torch.Tensor:
    steps, b, _ = feats.shape
    hist: list[list[list[float]]] = [[] for _ in range(b)]
    out = []
    for t in range(steps):
        reps = []
        for i in range(b):
            hist[i].append(feats[t, i].tolist())
            x = torch.tensor(hist[i])[None]
            reps.append(model.represent(x, torch.tensor([len(hist[i])]))[0])
        out.append(torch.stack(reps))
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--feat", type=int, default=21, help="per-step features (predator-prey: 6 + 15)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CLAM(args.feat, max_len=args.steps).eval()
    feats = np.random.default_rng(0).standard_normal((args.steps, args.envs, args.feat)).astype(
        np.float32)

    methods = {
        "batched": lambda: batched(model, feats),
        "batched_full_T": lambda: batched(model, feats, trim=False),
        "naive": lambda: naive(model, feats),
    }
    reference = methods["batched"]()
    max_diff = {k: float((fn() - reference).abs().max()) for k, fn in methods.items()}
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for k, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - start) / args.steps * 1e6)
    us = {k: round(statistics.median(v), 1) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "clam_prefix", "envs": args.envs, "steps": args.steps, "feat": args.feat,
        "threads": args.threads, "rounds": args.rounds,
        "us_per_step": us,
        "us_per_env_step": {k: round(v / args.envs, 1) for k, v in us.items()},
        "speedup_batched_vs_naive": round(us["naive"] / us["batched"], 2),
        "max_abs_diff_vs_batched": max_diff,
    }))


if __name__ == "__main__":
    main()
