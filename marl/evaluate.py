"""Evaluate a trained team from a checkpoint.

The checkpoint may come from someone else's run, so its team modules are loaded from the safe
weights alone (marl/checkpoints.py: YAML, JSON and safetensors; never a pickle). The episodes
run on the project's env adapter in this process. Returns are team returns (the sum of the
agents' rewards, summed over time), as in training. A recurrent team (``model.recurrent``)
starts every episode from its initial state and carries its hidden state from step to step,
as RLlib's EnvRunners do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.spaces.space_utils import unsquash_action

from envs.errors import NonFiniteOutput
from marl.checkpoints import check_team_fits, load_checkpoint
from marl.config import build_env
from marl.errors import EnvOutputNotFinite, UserError


def _batch(obs: dict[str, np.ndarray], state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    batch = {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs.items()}}
    if state:
        batch[Columns.STATE_IN] = state
    return batch


def initial_states(modules: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Each team's initial state as a batch of one ({} for a stateless module)."""
    return {t: {k: v.unsqueeze(0) for k, v in m.get_initial_state().items()} for t, m in modules.items()}


def evaluate(
    checkpoint: Path,
    episodes: int,
    deterministic: bool = False,
    seed: int = 12345,
    decentralized: bool = False,
) -> dict[str, Any]:
    loaded = load_checkpoint(checkpoint)
    ckpt, modules = loaded.ckpt, loaded.modules
    env = build_env(loaded.cfg.env)
    try:
        for team in env.teams:  # names the file if a module is missing or of another shape
            check_team_fits(loaded, team, env)
    except UserError:
        env.close()
        raise
    if decentralized:  # Bayesian-network teams executed with the empty graph
        for module in modules.values():
            if hasattr(module, "decentralize"):  # scripted teams have no graph
                module.decentralize()
    torch.manual_seed(seed)
    try:
        return _episodes(env, modules, ckpt, episodes, deterministic, seed, decentralized)
    except NonFiniteOutput as e:  # as in training: one line, not a traceback
        raise EnvOutputNotFinite(f"evaluation stopped: {e}") from None
    finally:
        env.close()


def _episodes(env, modules, ckpt: Path, episodes: int, deterministic: bool, seed: int,
              decentralized: bool) -> dict[str, Any]:
    returns: dict[str, list[float]] = {t: [] for t in env.teams}
    lengths, wins = [], []
    for ep in range(episodes):
        obs, infos = env.reset(seed=seed + ep)
        states = initial_states(modules)  # a recurrent team's memory starts empty each episode
        total = dict.fromkeys(env.teams, 0.0)
        length, won = 0, None
        while True:
            actions = {}
            with torch.no_grad():
                for team, team_obs in obs.items():
                    fwd = modules[team].forward_inference if deterministic else modules[team].forward_exploration
                    out = fwd(_batch(team_obs, states[team]))
                    states[team] = out.get(Columns.STATE_OUT, {})
                    action = out[Columns.ACTIONS][0].numpy()
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
