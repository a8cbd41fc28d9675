"""Exact exploitability of Kuhn poker self-play runs, at every checkpoint of each run.

Each checkpoint is read from its safe weights (marl/checkpoints.py) and analysed exactly
(marl/exploitability.py: OpenSpiel's exploitability and the ε-budgeted exploitability of Liu
et al., ICLR 2024), in this process. Writes a JSON file with one curve per run and prints a
Markdown table of the final checkpoints.

    python benchmarks/kuhn_selfplay.py RUN_DIR... --out benchmarks/results/kuhn/selfplay.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from marl.checkpoints import checkpoints
from marl.config import config_from_file
from marl.exploitability import exact_evaluation


def curve(run_dir: Path) -> dict:
    cfg = config_from_file(run_dir / "config.yaml")
    points = []
    for ckpt in checkpoints(run_dir):
        result, _, _ = exact_evaluation(ckpt)
        iteration = int(ckpt.name.split("_")[-1])
        points.append({
            "iteration": iteration,
            "env_steps": iteration * cfg.algo.train_batch_size,  # approximately: RLlib overshoots a few steps
            "exploitability": result["exploitability"],
            "seat_value_player_0": result["seat_value"]["player_0"],
            "budgeted_exploitability": result["budgeted_exploitability"],
        })
    return {"run": str(run_dir), "seed": cfg.seed, "curve": points}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    runs = [curve(r) for r in args.runs]
    args.out.write_text(json.dumps(runs, indent=2) + "\n")
    finals = [r["curve"][-1] for r in runs]
    budgets = list(finals[0]["budgeted_exploitability"])
    print("| seed | iteration | exploitability | value of seat 0 | " + " | ".join(f"ε={b}" for b in budgets) + " |")
    print("|---" * (4 + len(budgets)) + "|")
    for r, f in zip(runs, finals, strict=True):
        cells = " | ".join(f"{f['budgeted_exploitability'][b]:.4f}" for b in budgets)
        print(f"| {r['seed']} | {f['iteration']} | {f['exploitability']:.4f} | {f['seat_value_player_0']:+.4f} | {cells} |")
    e = np.array([f["exploitability"] for f in finals])
    print(f"\nexploitability over seeds: mean {e.mean():.4f}, std {e.std(ddof=1) if len(e) > 1 else 0.0:.4f}")


if __name__ == "__main__":
    main()
