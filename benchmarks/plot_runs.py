"""Plot one metric of metrics.jsonl against env steps for one or more run directories.

    python benchmarks/plot_runs.py --metric win_rate --out win_rate.png runs/<run> [runs/<run> ...]

The last stdout line is one JSON object: each run's final value of the metric (mean of its
last 5 iterations) and its maximum.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metric", default="episode_return_mean")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="")
    p.add_argument("--labels", nargs="*", help="one label per run (default: directory names)")
    args = p.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary = {}
    for k, run in enumerate(args.runs):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        pts = [(r["env_steps"], r[args.metric]) for r in rows if r.get(args.metric) is not None]
        label = args.labels[k] if args.labels else run.name
        ax.plot(*zip(*pts, strict=True), label=label)
        tail = [y for _, y in pts[-5:]]
        summary[label] = {"final": round(sum(tail) / len(tail), 4), "max": round(max(y for _, y in pts), 4)}
    ax.set_xlabel("env steps")
    ax.set_ylabel(args.metric)
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps({"metric": args.metric, "runs": summary}))


if __name__ == "__main__":
    main()
