"""Clean vs attacked on the same episode seeds (paired) -> ``attack_eval.json``.

Both runs go through the same AttackEnv: a clean episode is one in which no attacker action
(and no perturbation) reaches the env. Returns are the victim team's return (the sum of its
agents' rewards, summed over time), as in training and ``run.py evaluate``. Confidence
intervals: percentile bootstrap over episodes (scipy.stats.bootstrap), and over the paired
differences for the drop. Every run also measures its stealth (``"stealth"``:
adversaries/stealth.py): the action TV between the policy in effect for the attacked agent
and its own, and the shift of the states visited under attack from the clean ones.

Randomness: the victims sample from torch's stream seeded by the episode seed, clean and
attacked alike; the attacker draws from streams of its own (``TorchStream``, its rule's
generator, the partial-control coin), seeded by the attack seed and the episode seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.utils.spaces.space_utils import unsquash_action
from scipy import stats

from adversaries import stealth
from adversaries.attack_env import COIN_STREAM, AttackEnv
from adversaries.base import ATTACKER
from adversaries.config import AttackSetup
from adversaries.victims import own_policy, white_box

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


class TorchStream:
    """A private stream of torch's CPU generator: draws made inside ``with stream:`` come from
    it, and the global stream (the victims' sampling) neither moves nor is read."""

    def __init__(self, seed: int):
        self.state = torch.Generator().manual_seed(int(seed)).get_state()

    def __enter__(self):
        self._outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        return self

    def __exit__(self, *exc):
        self.state = torch.get_rng_state()
        torch.set_rng_state(self._outer)


def attacker_policy(setup: AttackSetup, env: AttackEnv, plugin, module=None) -> Callable | None:
    """obs -> (the attacker's action in env units, its distribution per attacked agent for the
    stealth measures, or None where the plugin's rule gives none): the trained RLlib module
    (sampling, as in training) or the plugin's rule. None: the threat model needs no action."""
    if setup.plugin_cls.threat_model == "observation":
        return None
    discrete, k = setup.ctx.discrete, env.k
    if module is not None:
        from ray.rllib.core.columns import Columns

        def raw(obs):
            batch = {Columns.OBS: {key: torch.as_tensor(v).unsqueeze(0) for key, v in obs.items()}}
            with torch.no_grad():
                out = module.forward_exploration(batch)
            params = out[Columns.ACTION_DIST_INPUTS][0].numpy().reshape(k, -1)
            return out[Columns.ACTIONS][0].numpy(), [stealth.from_params(p, discrete) for p in params]
    else:
        def raw(obs):
            dists = plugin.action_distribution(obs)
            return plugin.act(obs), dists
    space = env.action_spaces[ATTACKER]

    def act(obs):
        # As RLlib's EnvRunners do: continuous actions in [-1, 1] onto the bounds.
        action, dists = raw(obs)
        return unsquash_action(action, space), dists
    return act


def make_env(setup: AttackSetup, plugin, render: bool = False, history: dict | None = None) -> AttackEnv:
    """The attack env of an evaluation; ``history`` switches on the team observations'
    episode history (envs/adapter.py), which the detector reads."""
    config = setup.env_config()
    if history is not None:
        config["env"] = {**config["env"], "history": history}
    if render:
        config["env"] = {**config["env"], "kwargs": {**config["env"]["kwargs"], "render_mode": "rgb_array"}}
    env = AttackEnv(config)
    if setup.plugin_cls.threat_model == "observation":  # white-box: the victim's own module
        wb = white_box(env.victims[env.adv_team])  # the env's own victim team (and its memory)
        env.perturb = lambda team_obs, ids: plugin.perturb(team_obs, wb, ids)
    return env


def episode_rng_seed(seed: int, attack_seed: int | None) -> int:
    """The seed of the attacker's randomness in an attacked episode: the episode seed and the
    attack seed together, so that attack seeds differ in the attacker's randomness (the random
    rule, PGD's random start, a trained attacker's sampling, the partial-control coin) and not
    only in its weights. The victims' sampling follows the episode seed alone, clean and
    attacked alike (common random numbers: an attack that changes nothing, such as
    partial control at ε = 0, leaves the clean episode as it was)."""
    if attack_seed is None:
        return seed
    return int(np.random.SeedSequence([attack_seed, seed]).generate_state(1)[0])


@dataclass
class Episode:
    """One evaluation episode: the victim team's return, its win (or None), α's executed
    actions [T, k(, c)], the global state before each step, the action TV of each (step,
    attacked agent alive) under attack, and which attacker actions ran (partial control)."""

    ret: float
    won: bool | None
    taken: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    tv: list[float] = field(default_factory=list)
    executed: list[np.ndarray] = field(default_factory=list)


def _step_tv(env: AttackEnv, pre: dict[str, np.ndarray], dists, discrete: bool) -> list[float]:
    """TV(π_α, π̂_α) at this step's state for each living attacked agent (adversaries/stealth.py).
    π̂_α is read back from the frozen victim (trusted code, adversaries.victims.own_policy)."""
    victim = env.victims[env.adv_team]
    own, deterministic = own_policy(victim, pre)
    if own is None:  # a scripted team has no distribution
        return []
    perturbed = own_policy(victim)[0] if env.last_perturbed is not None else None
    if env.threat_model == "observation" and perturbed is None:
        return []
    if env.threat_model != "observation" and dists is None:  # a rule without a distribution
        return []
    out = []
    for j, i in enumerate(env.attacked):
        if pre["alive"][i] <= 0:
            continue
        step = {
            "attacker": dists[j] if dists is not None else None,
            "budget": float(env.budget) if env.budget is not None else 1.0,
            "perturbed": stealth.from_params(perturbed[i], discrete, deterministic) if perturbed is not None else None,
        }
        own_i = stealth.from_params(own[i], discrete, deterministic)
        out.append(stealth.POLICY_IN_EFFECT_TV[env.threat_model](own_i, step, None))
    return out


def run_episode(env: AttackEnv, seed: int, policy: Callable | None, attacked: bool, plugin=None, frames=None,
                attack_seed: int | None = None, observe: Callable[[AttackEnv], None] | None = None) -> Episode:
    """One episode on env seed ``seed`` (the same start for clean and attacked: paired). The
    victims sample from torch's stream seeded by ``seed``; everything the attacker draws
    (its sampling, its rule's generator, PGD's start, the coin) comes from streams of its own.
    ``observe(env)`` is called after the reset and after every step (trusted callers only)."""
    rng_seed = episode_rng_seed(seed, attack_seed if attacked else None)
    torch.manual_seed(seed)
    stream = TorchStream(rng_seed)
    if plugin is not None and hasattr(plugin, "rng"):
        plugin.rng = np.random.default_rng(rng_seed)
    perturb = env.perturb
    if attacked and perturb is not None:
        def isolated(team_obs, ids):
            with stream:
                return perturb(team_obs, ids)
        env.perturb = isolated
    else:
        env.perturb = None
    obs, _ = env.reset(seed=seed)
    env.coin_rng = np.random.default_rng(np.random.SeedSequence([rng_seed, COIN_STREAM]))
    ep = Episode(0.0, None)
    discrete = not env.team_spec.continuous
    if frames is not None:
        frames.append(env.render())
    if observe is not None:
        observe(env)
    try:
        while True:
            pre = env._team_obs[env.adv_team]
            ep.states.append(np.asarray(env._team_obs[env.team]["state"], np.float32).copy())
            dists, action = None, {}
            if attacked and policy is not None:
                with stream:
                    a, dists = policy(obs[ATTACKER])
                action = {ATTACKER: a}
            obs, _, term, trunc, info = env.step(action)
            info = info[ATTACKER]
            ep.ret += info["team_reward"]
            if "won" in info:
                ep.won = bool(info["won"])
            ep.taken.append(np.asarray(env.last_joint)[env.attacked])
            if attacked:
                ep.tv += _step_tv(env, pre, dists, discrete)
                if env.last_executed is not None:
                    ep.executed.append(env.last_executed.copy())
            if frames is not None:
                frames.append(env.render())
            if observe is not None:
                observe(env)
            if term["__all__"] or trunc["__all__"]:
                break
    finally:
        env.perturb = perturb
    return ep


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
    episodes: dict[str, list[Episode]] = {}
    for name, attacked in (("clean", False), ("attacked", True)):
        episodes[name] = [run_episode(env, seed, policy, attacked, plugin, attack_seed=cfg.seed) for seed in seeds]
        runs[name] = {
            "returns": [e.ret for e in episodes[name]],
            "wins": [e.won for e in episodes[name] if e.won is not None],
            "actions": [e.taken for e in episodes[name]],
        }
    env.close()

    clean, attacked = (np.asarray(runs[k]["returns"]) for k in ("clean", "attacked"))
    drop = float(clean.mean() - attacked.mean())
    result = {
        "victim": {"checkpoint": cfg.victim.checkpoint, "env": cfg.to_dict()["env"], "team": cfg.victim.team},
        "adversary": {
            "name": cfg.adversary.name,
            "threat_model": setup.plugin_cls.threat_model,
            "white_box": setup.plugin_cls.white_box,
            "team": cfg.adversary.team,
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
        "stealth": measure_stealth(episodes["clean"], episodes["attacked"], cfg.seed),
    }
    if cfg.eval.gif:
        result["gifs"] = _gifs(setup, plugin, policy, seeds[0], run_dir)
    tmp = run_dir / (EVAL_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, run_dir / EVAL_FILE)
    return result


def measure_stealth(clean: list[Episode], attacked: list[Episode], seed: int) -> dict[str, Any]:
    """The stealth measures of adversaries/stealth.py: the action TV between the policy in
    effect for α and α's own (mean over every (step, attacked agent alive) of the attacked
    episodes; CI by bootstrap over the episodes' means), and the state-distribution shift of
    the attacked episodes' states against the clean ones' (classifier AUC, binned KL)."""
    per_episode = [float(np.mean(e.tv)) for e in attacked if e.tv]
    steps = [t for e in attacked for t in e.tv]
    out: dict[str, Any] = {
        "action_tv": None if not steps else {
            "mean": float(np.mean(steps)),
            "max": float(np.max(steps)),
            "ci95": ci95(per_episode, seed),
            "per_episode": per_episode,
            "steps": len(steps),
        },
        # Grouped by episode seed: a clean episode and its paired attacked one fall on the same
        # side of the classifier's train/test split (stealth.classifier_auc).
        **stealth.state_shift(
            [s for e in clean for s in e.states], [s for e in attacked for s in e.states],
            [j for j, e in enumerate(clean) for _ in e.states], [j for j, e in enumerate(attacked) for _ in e.states],
        ),
    }
    executed = [x for e in attacked for x in e.executed]
    if executed:  # the share of (step, attacked agent) the attacker's action ran (takeover: 1)
        out["executed_fraction"] = float(np.mean(np.concatenate(executed)))
    return out


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
