"""Clean vs attacked on the same episode seeds (paired) -> ``attack_eval.json``.

Both runs go through the same AttackEnv: a clean episode is one in which no attacker action
(and no perturbation) reaches the env. Returns are the victim team's return (the sum of its
agents' rewards, summed over time), as in training and ``run.py evaluate``. Confidence
intervals: percentile bootstrap over episodes (scipy.stats.bootstrap), and over the paired
differences for the drop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.utils.spaces.space_utils import unsquash_action
from scipy import stats

from adversaries.attack_env import AttackEnv
from adversaries.base import ATTACKER
from adversaries.config import AttackSetup
from adversaries.victims import FrozenTeam, WhiteBoxVictim

EVAL_FILE = "attack_eval.json"


def ci95(x: list[float], seed: int) -> list[float]:
    a = np.asarray(x, float)
    if a.size < 2 or np.all(a == a[0]):
        return [float(a.mean()), float(a.mean())]
    res = stats.bootstrap((a,), np.mean, confidence_level=0.95, n_resamples=2000,
                          method="percentile", random_state=seed)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _summary(returns: list[float], wins: list[bool], seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "returns": [float(r) for r in returns],
        "return_mean": float(np.mean(returns)),
        "return_ci95": ci95(returns, seed),
    }
    if wins:
        out["wins"] = [bool(w) for w in wins]
        out["win_rate"] = float(np.mean(wins))
        out["win_rate_ci95"] = ci95([float(w) for w in wins], seed)
    return out


def attacker_policy(setup: AttackSetup, env: AttackEnv, plugin, module=None) -> Callable | None:
    """The attacker's action (env units) from its observation: the trained RLlib module
    (sampling, as in training) or the plugin's rule. None: the threat model needs none."""
    if setup.plugin_cls.threat_model == "observation":
        return None
    if module is not None:
        from ray.rllib.core.columns import Columns

        def act(obs):
            batch = {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs.items()}}
            with torch.no_grad():
                return module.forward_exploration(batch)[Columns.ACTIONS][0].numpy()
        raw = act
    else:
        raw = plugin.act
    space = env.action_spaces[ATTACKER]
    # As RLlib's EnvRunners do: continuous actions in [-1, 1] onto the bounds.
    return lambda obs: unsquash_action(raw(obs), space)


def make_env(setup: AttackSetup, plugin, render: bool = False) -> AttackEnv:
    config = setup.env_config()
    if render:
        config["env"] = {**config["env"], "kwargs": {**config["env"]["kwargs"], "render_mode": "rgb_array"}}
    env = AttackEnv(config)
    if setup.plugin_cls.threat_model == "observation":  # white-box: the victim's own module
        wb = WhiteBoxVictim(FrozenTeam(setup.victim.modules[env.team], env.team_space, setup.cfg.victim.deterministic))
        env.perturb = lambda team_obs, ids: plugin.perturb(team_obs, wb, ids)
    return env


def episode_rng_seed(seed: int, attack_seed: int | None) -> int:
    """The seed of an episode's sampling. Clean: the episode seed alone, so every attack on a
    victim is compared with the same clean episodes. Attacked: the episode seed and the attack
    seed together, so that attack seeds differ in the attacker's randomness (the random rule,
    PGD's random start, a trained attacker's sampling) and not only in its weights."""
    if attack_seed is None:
        return seed
    return int(np.random.SeedSequence([attack_seed, seed]).generate_state(1)[0])


def run_episode(env: AttackEnv, seed: int, policy: Callable | None, attacked: bool, plugin=None, frames=None,
                attack_seed: int | None = None):
    """One episode on env seed ``seed`` (the same start for clean and attacked: paired):
    (team return, won or None, actions of the attacked agents at each step [T, k(, c)])."""
    rng_seed = episode_rng_seed(seed, attack_seed if attacked else None)
    torch.manual_seed(rng_seed)
    if plugin is not None and hasattr(plugin, "rng"):
        plugin.rng = np.random.default_rng(rng_seed)
    perturb = env.perturb
    env.perturb = perturb if attacked else None
    obs, _ = env.reset(seed=seed)
    total, won, taken = 0.0, None, []
    if frames is not None:
        frames.append(env.render())
    try:
        while True:
            action = {ATTACKER: policy(obs[ATTACKER])} if (attacked and policy is not None) else {}
            obs, _, term, trunc, info = env.step(action)
            info = info[ATTACKER]
            total += info["team_reward"]
            if "won" in info:
                won = bool(info["won"])
            taken.append(np.asarray(env.last_joint)[env.attacked])
            if frames is not None:
                frames.append(env.render())
            if term["__all__"] or trunc["__all__"]:
                break
    finally:
        env.perturb = perturb
    return total, won, taken


def _histogram(actions: list[np.ndarray], discrete: bool, n_actions: int) -> Any:
    """Discrete: counts per action over every step and attacked agent; continuous: the
    per-dimension mean and std."""
    steps = [np.asarray(step) for episode in actions for step in episode]
    if discrete:
        return np.bincount(np.concatenate([s.reshape(-1) for s in steps]).astype(int), minlength=n_actions).tolist()
    a = np.concatenate([s.reshape(-1, s.shape[-1]) for s in steps])
    return {"mean": a.mean(0).tolist(), "std": a.std(0).tolist()}


def evaluate_attack(setup: AttackSetup, run_dir: Path, module=None, env_steps: int = 0) -> dict[str, Any]:
    cfg, ctx = setup.cfg, setup.ctx
    plugin = setup.plugin()
    env = make_env(setup, plugin)
    policy = attacker_policy(setup, env, plugin, module)
    seeds = [cfg.eval.seed + i for i in range(cfg.eval.episodes)]
    runs: dict[str, dict[str, list]] = {}
    for name, attacked in (("clean", False), ("attacked", True)):
        runs[name] = {"returns": [], "wins": [], "actions": []}
        for seed in seeds:
            ret, won, taken = run_episode(env, seed, policy, attacked, plugin, attack_seed=cfg.seed)
            runs[name]["returns"].append(ret)
            if won is not None:
                runs[name]["wins"].append(won)
            runs[name]["actions"].append(taken)
    env.close()

    clean, attacked = (np.asarray(runs[k]["returns"]) for k in ("clean", "attacked"))
    drop = float(clean.mean() - attacked.mean())
    result = {
        "victim": {"checkpoint": cfg.victim.checkpoint, "env": cfg.to_dict()["env"], "team": cfg.victim.team},
        "adversary": {
            "name": cfg.adversary.name,
            "threat_model": setup.plugin_cls.threat_model,
            "white_box": setup.plugin_cls.white_box,
            "agents": cfg.adversary.agents,
            "budget": cfg.adversary.budget,
            "params": cfg.adversary.params,
        },
        "seed": cfg.seed,
        "attack_env_steps": int(env_steps),
        "episodes": cfg.eval.episodes,
        "episode_seeds": seeds,
        "clean": _summary(runs["clean"]["returns"], runs["clean"]["wins"], cfg.seed),
        "attacked": _summary(runs["attacked"]["returns"], runs["attacked"]["wins"], cfg.seed),
        "drop": {
            "return": drop,
            "relative": drop / abs(float(clean.mean())) if clean.mean() != 0 else None,
            "return_ci95": ci95((clean - attacked).tolist(), cfg.seed),  # paired differences
        },
        "action_histogram": {
            "attacker": _histogram(runs["attacked"]["actions"], ctx.discrete, ctx.n_actions),
            "replaced_agent_clean": _histogram(runs["clean"]["actions"], ctx.discrete, ctx.n_actions),
        },
    }
    if cfg.eval.gif:
        result["gifs"] = _gifs(setup, plugin, policy, seeds[0], run_dir)
    tmp = run_dir / (EVAL_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, run_dir / EVAL_FILE)
    return result


def _gifs(setup: AttackSetup, plugin, policy, seed: int, run_dir: Path) -> list[str]:
    """GIFs of the first seed, clean and attacked, where the env renders rgb_array (MPE)."""
    try:
        env = make_env(setup, plugin, render=True)
        env.reset(seed=seed)
        frame = env.render()
    except Exception:  # noqa: BLE001 - an env without render_mode="rgb_array" (or a display): no GIF
        return []
    if not isinstance(frame, np.ndarray):
        env.close()
        return []
    import imageio.v2 as imageio

    out = []
    (run_dir / "plots").mkdir(exist_ok=True)
    for name, attacked in (("clean", False), ("attacked", True)):
        frames: list[np.ndarray] = []
        run_episode(env, seed, policy, attacked, plugin, frames, attack_seed=setup.cfg.seed)
        path = run_dir / "plots" / f"episode_{name}.gif"
        imageio.mimsave(path, [f for f in frames if isinstance(f, np.ndarray)], duration=0.1, loop=0)
        out.append(str(path.relative_to(run_dir)))
    env.close()
    return out
