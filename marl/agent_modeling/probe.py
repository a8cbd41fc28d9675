"""How much an agent model's representation knows about the other agents: a linear probe.

Envs with scripted others of several behaviour types report the episode's type in the infos
(``type``, envs/adapter.py TYPE_INFO; evaluation only). The probe rolls out episodes with the
team's current policy, records the representation z_t each step acted with, and fits a
multinomial logistic regression (on standardised features) from z_t to the type at each step t,
on 70% of the episodes,
scored on the other 30% (Ma et al. 2024 evaluate CLAM's representations with such a probe).
Accuracy against t shows how fast the representation identifies the type; chance is
1 / (number of types).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.spaces.space_utils import unsquash_action

from envs.adapter import TYPE_INFO
from marl.modules.joint_policy import AGENT_REPR

PROBE_STEPS = (1, 2, 3, 5, 10, 15, 20, 30, 40, 50)


def rollout_representations(env, modules: dict[str, Any], episodes: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per team that models the others: ``z`` [E, L, n, k] (zero-padded), ``valid`` [E, L] and
    ``types`` [E] (-1 where the env reported none). Every team acts with its own module."""
    teams = [t for t, m in modules.items() if getattr(m, "models_agents", False)]
    _, infos = env.reset(seed=seed)
    teams = [t for t in teams if TYPE_INFO in (infos.get(t) or {})]  # envs without types: no probe
    if not teams:
        return {}
    out: dict[str, dict[str, list]] = {t: {"z": [], "types": []} for t in teams}
    with torch.random.fork_rng():  # the probe's sampling leaves training's torch stream alone
        for ep in range(episodes):
            _episode(env, modules, teams, seed + ep, out)
    result = {}
    for t in teams:
        zs = out[t]["z"]
        length = max(len(z) for z in zs)
        z = np.zeros((len(zs), length, *zs[0].shape[1:]), np.float32)
        valid = np.zeros((len(zs), length), bool)
        for e, ze in enumerate(zs):
            z[e, : len(ze)] = ze
            valid[e, : len(ze)] = True
        result[t] = {"z": z, "valid": valid, "types": np.array(out[t]["types"])}
    return result


def _episode(env, modules: dict[str, Any], teams: list[str], seed: int, out: dict) -> None:
    """One episode on env seed ``seed``: each step's representation of every probed team, and
    the episode's type (from the reset's infos, or the first step's that reports it)."""
    obs, infos = env.reset(seed=seed)
    etype = {t: int((infos.get(t) or {}).get(TYPE_INFO, -1)) for t in teams}
    steps: dict[str, list[np.ndarray]] = {t: [] for t in teams}
    while True:
        actions = {}
        with torch.no_grad():
            for team, team_obs in obs.items():
                batch = {Columns.OBS: {k: torch.as_tensor(v).unsqueeze(0) for k, v in team_obs.items()}}
                fwd = modules[team].forward_exploration(batch)
                actions[team] = unsquash_action(fwd[Columns.ACTIONS][0].numpy(), env.action_spaces[team])
                if team in steps:
                    n = team_obs["obs"].shape[0]
                    steps[team].append(fwd[AGENT_REPR][0].numpy().reshape(n, -1))
        obs, _, term, trunc, infos = env.step(actions)
        for t in teams:
            if etype[t] < 0 and TYPE_INFO in (infos.get(t) or {}):
                etype[t] = int(infos[t][TYPE_INFO])
        if term["__all__"] or trunc["__all__"]:
            break
    for t in teams:
        out[t]["z"].append(np.stack(steps[t]))
        out[t]["types"].append(etype[t])


def probe_curve(z: np.ndarray, valid: np.ndarray, types: np.ndarray, steps=PROBE_STEPS, seed: int = 0,
                agent: int = 0) -> dict[int, float]:
    """Held-out accuracy of a linear probe z_t -> type at each step t (1-based) in ``steps``
    that every probed episode reached. Episodes, not steps, are split (70/30, stratified)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = types >= 0
    z, valid, types = z[keep], valid[keep], types[keep]
    if len(np.unique(types)) < 2:
        return {}
    idx = np.arange(len(types))
    counts = np.bincount(types)
    stratify = types if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(idx, test_size=0.3, random_state=seed, stratify=stratify)
    curve = {}
    if len(np.unique(types[train])) < 2:  # too few episodes to fit a classifier
        return curve
    for t in steps:
        if t > valid.shape[1] or not valid[:, t - 1].all():
            continue
        x = z[:, t - 1, agent]
        # Standardised first: unit-norm representations vary little per coordinate, and an
        # unscaled, regularised probe would predict one class everywhere.
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], types[train])
        curve[t] = float((clf.predict(x[test]) == types[test]).mean())
    return curve


def plot_probe(curves: dict[str, dict[int, float]], n_types: int, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=label)
    if n_types:
        ax.axhline(1.0 / n_types, color="grey", ls="--", label="chance")
    ax.set_xlabel("t (steps into the episode)")
    ax.set_ylabel("linear-probe accuracy (held out)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "behaviour type from the representation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pca(z: np.ndarray, types: np.ndarray, path: Path, title: str = "") -> None:
    """The representations (one per episode) on their first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = z - z.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for k in np.unique(types):
        sel = types == k
        ax.scatter(p[sel, 0], p[sel, 1], s=8, label=f"type {k}")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "representations by behaviour type (PCA)")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
