"""Evaluate a trained team from a checkpoint.

The team's modules are loaded with RLlib's own ``RLModule.from_checkpoint``; the episodes run
on the project's env adapter in this process. Returns are team returns (the sum of the agents'
rewards, summed over time), as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.spaces.space_utils import unsquash_action

from marl.config import build_env, config_from_file
from marl.errors import UserError
from marl.train import latest_checkpoint

MODULES_SUBDIR = Path("learner_group") / "learner" / "rl_module"


def resolve_checkpoint(path: Path) -> Path:
    """Accept a checkpoint directory or a run directory (its latest checkpoint)."""
    if not path.exists():
        raise UserError(f"checkpoint '{path}' does not exist")
    if (path / MODULES_SUBDIR).is_dir():
        return path
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise UserError(
            f"'{path}' is neither a checkpoint (no {MODULES_SUBDIR}/) nor a run directory with checkpoints"
        )
    return ckpt


def load_team_modules(ckpt: Path) -> dict[str, RLModule]:
    root = ckpt / MODULES_SUBDIR
    modules = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        module = RLModule.from_checkpoint(str(sub.resolve()))
        module.eval()
        modules[sub.name] = module
    if not modules:
        raise UserError(f"checkpoint '{ckpt}' holds no module under {MODULES_SUBDIR}/")
    return modules


def _batch(obs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs.items()}}


def evaluate(
    checkpoint: Path,
    episodes: int,
    deterministic: bool = False,
    seed: int = 12345,
    decentralized: bool = False,
) -> dict[str, Any]:
    ckpt = resolve_checkpoint(checkpoint)
    cfg = config_from_file(ckpt / "config.yaml")
    modules = load_team_modules(ckpt)
    env = build_env(cfg.env)
    if decentralized:  # Bayesian-network teams executed with the empty graph
        for module in modules.values():
            if hasattr(module, "decentralize"):  # scripted teams have no graph
                module.decentralize()
    torch.manual_seed(seed)
    returns: dict[str, list[float]] = {t: [] for t in env.teams}
    lengths, wins = [], []
    for ep in range(episodes):
        obs, infos = env.reset(seed=seed + ep)
        total = dict.fromkeys(env.teams, 0.0)
        length, won = 0, None
        while True:
            actions = {}
            with torch.no_grad():
                for team, team_obs in obs.items():
                    fwd = modules[team].forward_inference if deterministic else modules[team].forward_exploration
                    action = fwd(_batch(team_obs))[Columns.ACTIONS][0].numpy()
                    # As RLlib's EnvRunners do: continuous actions in [-1, 1] onto the bounds.
                    actions[team] = unsquash_action(action, env.action_spaces[team])
            obs, rew, term, trunc, infos = env.step(actions)
            length += 1
            for team, r in rew.items():
                total[team] += r
            for info in infos.values():
                if "won" in info:
                    won = bool(info["won"])
            if term["__all__"] or trunc["__all__"]:
                break
        for team in env.teams:
            returns[team].append(total[team])
        lengths.append(length)
        if won is not None:
            wins.append(won)
    env.close()

    # As in training: the episode return sums every agent's reward (one team: the team return).
    total = np.sum([returns[t] for t in env.teams], axis=0)
    out: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "episodes": episodes,
        "deterministic": deterministic,
        "decentralized": decentralized,
        "episode_return_mean": float(np.mean(total)),
        "episode_return_std": float(np.std(total)),
        "episode_len_mean": float(np.mean(lengths)),
    }
    if len(env.teams) > 1:
        out["team_return_mean"] = {t: float(np.mean(r)) for t, r in returns.items()}
    if wins:
        out["win_rate"] = float(np.mean(wins))
    return out
