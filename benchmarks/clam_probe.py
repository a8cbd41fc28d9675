"""Issue 10: what a trained CLAM representation knows about the others' behaviour type.

For each trained run (a checkpoint or run directory whose team models agents, in an env that
reports types), roll out ``--episodes`` episodes with its policy and fit, at each step t, a
linear probe (multinomial logistic regression, 70/30 split by episode, stratified) from

- the representation z_t the policy acted with (``clam``), and
- the mean of the raw per-step features of the prefix [0:t], the encoder's own input
  (``raw``): the reference that says what the encoder adds,

to the episode's type. Writes ``clam_probe.json`` and ``probe_vs_raw.png`` (accuracy against t,
mean over runs, with chance). The last stdout line is one JSON object.

    python benchmarks/clam_probe.py RUN... --out DIR [--episodes 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.spaces.space_utils import unsquash_action

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envs.adapter import TYPE_INFO  # noqa: E402
from marl.agent_modeling.probe import PROBE_STEPS, probe_curve  # noqa: E402
from marl.checkpoints import load_checkpoint  # noqa: E402
from marl.config import build_env  # noqa: E402
from marl.modules.joint_policy import AGENT_REPR  # noqa: E402


def rollout(run: Path, episodes: int, seed: int) -> dict:
    loaded = load_checkpoint(run)
    env = build_env(loaded.cfg.env)
    team = next(t for t, m in loaded.modules.items() if getattr(m, "models_agents", False))
    zs, raws, types = [], [], []
    torch.manual_seed(seed)
    for ep in range(episodes):
        obs, infos = env.reset(seed=seed + ep)
        etype = int(infos[team][TYPE_INFO])
        z_ep, raw_ep = [], []
        while True:
            actions = {}
            with torch.no_grad():
                for t, team_obs in obs.items():
                    fwd = loaded.modules[t].forward_exploration(
                        {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in team_obs.items()}})
                    actions[t] = unsquash_action(fwd[Columns.ACTIONS][0].numpy(), env.action_spaces[t])
                    if t == team:
                        n = team_obs["obs"].shape[0]
                        z_ep.append(fwd[AGENT_REPR][0].numpy().reshape(n, -1))
                        k = int(team_obs["history_len"][0])
                        raw_ep.append(team_obs["history"][:, :k].mean(axis=1))
            obs, _, term, trunc, infos = env.step(actions)
            if term["__all__"] or trunc["__all__"]:
                break
        zs.append(np.stack(z_ep))
        raws.append(np.stack(raw_ep))
        types.append(etype)
    env.close()
    length = min(len(z) for z in zs)  # fixed-length episodes here; cut to the shortest
    valid = np.ones((episodes, length), bool)
    return {"z": np.stack([z[:length] for z in zs]), "raw": np.stack([r[:length] for r in raws]),
            "valid": valid, "types": np.array(types), "n_types": int(len(np.unique(types)))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=50_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        d = rollout(run, args.episodes, args.seed)
        curves = {kind: probe_curve(d[kind], d["valid"], d["types"]) for kind in ("z", "raw")}
        results.append({"run": str(run), "n_types": d["n_types"], "clam": curves["z"], "raw": curves["raw"]})
        print(f"[probe] {run}: clam {curves['z']} raw {curves['raw']}", flush=True)
    ts = sorted(set.intersection(*(set(r["clam"]) for r in results)))
    summary = {kind: {t: float(np.mean([r[kind][t] for r in results])) for t in ts} for kind in ("clam", "raw")}
    chance = 1.0 / results[0]["n_types"]
    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for kind, label in (("clam", "CLAM representation z_t"), ("raw", "mean raw features of the prefix")):
        ax.plot(ts, [summary[kind][t] for t in ts], marker="o", label=label)
        for r in results:
            ax.plot(ts, [r[kind][t] for t in ts], color="C0" if kind == "clam" else "C1", alpha=0.25, lw=0.8)
    ax.axhline(chance, color="grey", ls="--", label="chance")
    ax.set_xlabel("t (steps into the episode)")
    ax.set_ylabel("held-out accuracy of the type")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "probe_vs_raw.png", dpi=110)
    plt.close(fig)
    out = {"episodes": args.episodes, "steps": list(PROBE_STEPS), "chance": chance, "summary": summary, "runs": results}
    (args.out / "clam_probe.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"chance": chance, "summary": summary}))


if __name__ == "__main__":
    main()
