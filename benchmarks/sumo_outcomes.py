"""Win, loss and tie rates of a sumo self-play checkpoint (envs/sumo.py, configs/sumo_selfplay.yaml).

Loads the checkpoint's two modules from their safe weights (as ``run.py evaluate`` does) and
plays ``--episodes`` episodes on the team adapter for each pairing:

- ``selfplay``: player_0's module against player_1's (the pair that trained together);
- ``player_0_vs_random`` / ``player_1_vs_random``: one trained seat against uniform random
  actions in the other seat;
- ``player_0_vs_idle`` / ``player_1_vs_idle``: against a player that never moves.

Outcomes are from the first-named seat's side, read from the teams' ``won`` infos (neither
won = tie). Policies sample (as in training) unless ``--deterministic``. The env's shaping is
turned off: rewards are the sparse +1/-1/0. The last stdout line is one JSON object.

    python benchmarks/sumo_outcomes.py RUN_DIR_OR_CHECKPOINT [--episodes 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.utils.spaces.space_utils import unsquash_action  # noqa: E402

from marl.checkpoints import check_team_fits, load_checkpoint  # noqa: E402
from marl.config import build_env  # noqa: E402

SEATS = ("player_0", "player_1")


def play(env, players: dict, episodes: int, seed: int, deterministic: bool) -> dict:
    """``players``: seat -> module, or "random" / "idle". Rates from player_0's side."""
    rng = np.random.default_rng(seed)
    counts = {"win": 0, "loss": 0, "tie": 0}
    lengths = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        steps = 0
        while True:
            actions = {}
            for seat in SEATS:
                space = env.action_spaces[seat]
                if players[seat] == "random":
                    actions[seat] = rng.uniform(space.low, space.high).astype(np.float32)
                elif players[seat] == "idle":
                    actions[seat] = np.zeros(space.shape, np.float32)
                else:
                    module = players[seat]
                    fwd = module.forward_inference if deterministic else module.forward_exploration
                    batch = {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs[seat].items()}}
                    with torch.no_grad():
                        action = fwd(batch)[Columns.ACTIONS][0].numpy()
                    actions[seat] = unsquash_action(action, space)
            obs, _, term, trunc, infos = env.step(actions)
            steps += 1
            if term["__all__"] or trunc["__all__"]:
                break
        won = {seat: bool(infos[seat].get("won")) for seat in SEATS}
        counts["win" if won["player_0"] else "loss" if won["player_1"] else "tie"] += 1
        lengths.append(steps)
    out = {f"{k}_rate": v / episodes for k, v in counts.items()}
    out["episode_len_mean"] = float(np.mean(lengths))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="checkpoint or run directory (its latest checkpoint)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    loaded = load_checkpoint(args.checkpoint)
    env_cfg = loaded.cfg.env.model_copy(deep=True)
    env_cfg.kwargs = {**env_cfg.kwargs, "shaping": 0.0}
    env = build_env(env_cfg)
    for seat in SEATS:
        check_team_fits(loaded, seat, env)
    m = loaded.modules
    pairings = {
        "selfplay": {"player_0": m["player_0"], "player_1": m["player_1"]},
        "player_0_vs_random": {"player_0": m["player_0"], "player_1": "random"},
        "player_0_vs_idle": {"player_0": m["player_0"], "player_1": "idle"},
        # player_1's side: play it in its own seat and read the rates from player_0's side, flipped.
        "player_1_vs_random": {"player_0": "random", "player_1": m["player_1"]},
        "player_1_vs_idle": {"player_0": "idle", "player_1": m["player_1"]},
    }
    out = {"checkpoint": str(loaded.ckpt), "episodes": args.episodes, "deterministic": args.deterministic}
    for name, players in pairings.items():
        rates = play(env, players, args.episodes, args.seed, args.deterministic)
        if name.startswith("player_1"):
            rates["win_rate"], rates["loss_rate"] = rates["loss_rate"], rates["win_rate"]
        out[name] = {k: round(v, 4) for k, v in rates.items()}
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    env.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
