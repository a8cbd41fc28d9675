"""Plot one metric of metrics.jsonl against env steps for one or more run directories.

    python benchmarks/plot_runs.py --metric win_rate --out win_rate.png runs/<run> [runs/<run> ...]
    python benchmarks/plot_runs.py --metric win_rate --out win_rate.png \\
        --group before runs/<seed0> runs/<seed1> runs/<seed2> --group after runs/<...> ...

``--group LABEL RUN [RUN ...]`` (repeatable) draws each group's seeds faint, their mean bold and
a 95% t interval across the seeds shaded (``benchmarks/learning.py``'s ``t_interval``; with 3
seeds a bootstrap has only 10 distinct resamples). The curves are interpolated onto a common
env-step grid, since runs report at slightly different step counts.

The last stdout line is one JSON object: each run's final value of the metric (mean of its
last 5 iterations) and its maximum; for a group, also the mean of the runs' final values with
its 95% t interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import t_interval  # noqa: E402

FINAL_WINDOW = 5


def load(run: Path, metric: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["env_steps"], r[metric]) for r in rows if r.get(metric) is not None]


def final_and_max(pts: list[tuple[int, float]]) -> dict[str, float]:
    tail = [y for _, y in pts[-FINAL_WINDOW:]]
    return {"final": round(sum(tail) / len(tail), 4), "max": round(max(y for _, y in pts), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--metric", default="episode_return_mean")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="")
    p.add_argument("--labels", nargs="*", help="one label per run (default: directory names)")
    p.add_argument("--group", nargs="+", action="append", default=[], metavar=("LABEL", "RUN"),
                   help="a label and its runs (seeds): mean and 95%% t interval across them")
    args = p.parse_args()
    if not args.runs and not args.group:
        p.error("give run directories or --group LABEL RUN [RUN ...]")
    if any(len(g) < 2 for g in args.group):
        p.error("--group needs a label and at least one run directory")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary: dict = {}
    for k, run in enumerate(args.runs):
        pts = load(run, args.metric)
        label = args.labels[k] if args.labels else run.name
        if not pts:  # e.g. a metric added after the run was made
            print(f"{run}: no '{args.metric}' in metrics.jsonl; left out", file=sys.stderr)
            continue
        ax.plot(*zip(*pts, strict=True), label=label)
        summary[label] = final_and_max(pts)
    for k, (label, *runs) in enumerate(args.group):
        color = f"C{(len(args.runs) + k) % 10}"
        curves = [load(Path(r), args.metric) for r in runs]
        if not all(curves):
            p.error(f"group '{label}': a run has no '{args.metric}' in metrics.jsonl")
        end = max(c[-1][0] for c in curves)
        grid = np.linspace(0, end, 201)
        ys = []
        for pts in curves:
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, color=color, alpha=0.25, lw=0.7)
            ys.append(np.interp(grid, x, y, left=np.nan, right=np.nan))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid points before a run's first report
            mean, lo, hi = t_interval(ys) if len(ys) > 1 else (ys[0], ys[0], ys[0])
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2, lw=0)
        ax.plot(grid, mean, color=color, lw=2, label=f"{label} (mean of {len(runs)}, 95% t CI)")
        finals = [final_and_max(c)["final"] for c in curves]
        fm, flo, fhi = t_interval(np.array(finals)[:, None]) if len(finals) > 1 else ([finals[0]],) * 3
        summary[label] = {"runs": [str(r) for r in runs], "final": finals, "final_mean": round(float(fm[0]), 4),
                          "final_ci95": [round(float(flo[0]), 4), round(float(fhi[0]), 4)]}
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
