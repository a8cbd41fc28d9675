"""Per-group table of evaluation results (the JSON files ``run.py evaluate --json`` writes):
each seed's win rate (or return), and the group's mean with a 95% t interval across seeds
(``benchmarks/learning.py``'s ``t_interval``), plus the pooled binomial standard error of one
group's episodes, which says how much of the spread is episode noise.

    python benchmarks/eval_table.py --group "feed-forward" s0.json s1.json s2.json \\
        --group GRU g0.json g1.json g2.json [--metric win_rate]

Prints a Markdown table; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import t_interval  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", nargs="+", action="append", metavar=("LABEL", "EVAL_JSON"), required=True,
                   help="a label and its seeds' evaluation JSON files")
    p.add_argument("--metric", default="win_rate", help="win_rate or episode_return_mean")
    args = p.parse_args()
    out = {}
    print("| group | per seed | mean [95% t CI] | episodes per seed |\n|---|---|---|---|")
    for label, *files in args.group:
        rows = [json.loads(Path(f).read_text()) for f in files]
        values = [float(r[args.metric]) for r in rows]
        episodes = [int(r["episodes"]) for r in rows]
        if len(values) > 1:  # seeds are rows of one column
            m, lo_, hi_ = t_interval([[v] for v in values])
            mean, lo, hi = float(m[0]), float(lo_[0]), float(hi_[0])
        else:
            mean = lo = hi = values[0]
        entry = {"values": values, "mean": mean, "ci95": [lo, hi], "episodes": episodes, "files": files}
        if args.metric == "win_rate":  # binomial standard error of one seed's estimate
            entry["binomial_se_per_seed"] = [math.sqrt(v * (1 - v) / n) for v, n in zip(values, episodes, strict=True)]
        out[label] = entry
        per_seed = " / ".join(f"{v:.2f}" for v in values)
        print(f"| {label} | {per_seed} | {mean:.2f} [{lo:.2f}, {hi:.2f}] | {', '.join(map(str, episodes))} |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
