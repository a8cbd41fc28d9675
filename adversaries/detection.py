"""CLAM as an attack detector: ``run.py detect VICTIM ATTACK_RUN...``.

No agent-modelling work has used it this way: a team member's contrastive representation of
its teammates (CLAM, Ma et al. 2024) is trained on clean episodes of the victim team only, and
an attacked episode, where one teammate's actions come from an attacker, should fall away from
the clean cluster.

1. Episodes: the victim team plays in the attack env with the episode history switched on
   (envs/adapter.py: each agent's per-step features of the others: its observation and the
   others' one-hot last actions, or the env's own ``model_features``). Clean episodes for
   training come from seeds disjoint from the evaluation's; evaluation pairs a clean and an
   attacked episode on each seed, with the attack run's trained attacker (its safe weights;
   nothing is unpickled) or its rule.
2. Per detector seed, one CLAM is trained on the clean episodes' prefixes of every observer
   (``contrastive_loss``: NT-Xent on two augmented views), for ``steps`` Adam steps.
3. Score at step t of an episode, for observer i (every victim agent except the attacked
   ones): the mean distance of i's representation of the prefix [0:t] to its k nearest
   clean training representations of the same observer at the same t (a one-class rule fitted
   on clean episodes only). The detection ROC AUC at t separates attacked from clean
   episodes' scores. The same rule on the mean raw features of the prefix is the baseline
   that tells what the representation adds.

Writes ``detection.json`` (per attack run: AUC against t for CLAM and the raw baseline; per
attack: mean and 95% t-interval across seeds) and ``detection_auc.png``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adversaries.attack_env import AttackEnv
from adversaries.evaluation import attacker_policy, make_env, run_episode
from adversaries.run import load_attack_run
from marl.agent_modeling import make_agent_model
from marl.checkpoints import load_modules, resolve_checkpoint
from marl.errors import UserError

DETECTION_FILE = "detection.json"
EVAL_STEPS = (1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 75, 100)


@dataclass
class DetectSettings:
    history: int | None = None  # steps of each episode's prefix scored (and CLAM's max length);
                                # None: the env's own history where it keeps one, else 50
    train_episodes: int = 200  # clean episodes CLAM and the clean cluster are fitted on
    episodes: int = 64         # paired clean/attacked evaluation episodes per attack run
    steps: int = 1500          # CLAM training steps
    batch: int = 128           # prefixes per contrastive batch
    neighbours: int = 5        # k of the k-nearest-neighbour score
    lr: float = 3e-3
    width: int = 128           # CLAM's set-attention width and heads (the paper's)
    heads: int = 4
    train_seed: int = 1_000_000  # clean training episodes use seeds from here on


@dataclass
class Prefixes:
    """Per episode: the victim team's history [n, L, f] of the first L steps, the episode's
    length, and the attacked agents of the victim team (empty for a clean episode)."""

    hist: np.ndarray
    length: np.ndarray
    attacked: list[list[int]]


def _collect(env: AttackEnv, seeds: list[int], policy, attacked: bool, attack_seed: int | None,
             plugin, length: int) -> Prefixes:
    hists, lengths, ids = [], [], []
    for seed in seeds:
        kept: dict[str, Any] = {}

        def observe(e: AttackEnv, kept=kept) -> None:
            obs = e._team_obs[e.team]
            kept["steps"] = kept.get("steps", 0) + 1
            if kept["steps"] <= length:  # before the window slides: the prefix from step 0
                kept["hist"] = obs["history"]

        run_episode(env, seed, policy, attacked, plugin, attack_seed=attack_seed, observe=observe)
        hists.append(kept["hist"])
        lengths.append(min(kept["steps"], length))
        same_team = env.adv_team == env.team
        ids.append(list(env.attacked) if attacked and same_team else [])
    return Prefixes(np.stack(hists), np.array(lengths), ids)


def _env(setup, plugin, length: int) -> AttackEnv:
    """The attack env with the episode history on. Where the victim or the attacker models
    agents, the env has a history already and their modules read it: it is kept as it is."""
    if setup.env_config()["env"].get("history"):
        return make_env(setup, plugin)
    return make_env(setup, plugin, history={"length": length, "last_actions": True})


def _history_length(setup, requested: int | None) -> int:
    own = setup.env_config()["env"].get("history")
    if own:
        if requested is not None and requested != own["length"]:
            raise UserError(
                f"--history {requested}: the attack run's env keeps {own['length']} steps of history (its victim "
                "or attacker models agents and reads it); leave --history out or give that length"
            )
        return int(own["length"])
    return 50 if requested is None else requested


def train_clam(clean: Prefixes, settings: DetectSettings, seed: int):
    """CLAM on every observer's clean prefixes (Ma et al. 2024 defaults, DESIGN.md)."""
    torch.manual_seed(seed)
    e, n, length, f = clean.hist.shape
    model = make_agent_model({"name": "clam", "max_len": length, "width": settings.width,
                              "heads": settings.heads}, f)
    hist = torch.from_numpy(clean.hist.reshape(e * n, length, f))
    lengths = torch.from_numpy(np.repeat(clean.length, n))
    opt = torch.optim.Adam(model.online_parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(settings.steps):
        # Without replacement: a prefix twice in one batch would be its own negative.
        idx = torch.randperm(len(hist), generator=gen)[: settings.batch]
        loss, _ = model.contrastive_loss(hist[idx], lengths[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.ema_update()
        losses.append(float(loss))
    model.eval()
    return model, losses


def _represent(model, p: Prefixes, t: int) -> np.ndarray:
    e, n, length, f = p.hist.shape
    hist = torch.from_numpy(p.hist[:, :, :t].reshape(e * n, min(t, length), f))
    lengths = torch.from_numpy(np.minimum(np.repeat(p.length, n), t))
    return model.represent(hist, lengths).numpy().reshape(e, n, -1)


def _raw(p: Prefixes, t: int) -> np.ndarray:
    """Baseline: the mean raw features of the prefix [0:t], per observer."""
    return p.hist[:, :, :t].mean(axis=2)


def _knn_scores(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each test point to its k nearest training points."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, len(train))).fit(train)
    dist, _ = nn.kneighbors(test)
    return dist.mean(axis=1)


def detection_auc(embed, clean_train: Prefixes, clean: Prefixes, attacked: Prefixes, t: int,
                  k: int) -> float | None:
    """ROC AUC at step t: attacked episodes' observers against the paired clean episodes' same
    observers (every victim agent but the attacked ones), scored by the observer's k-NN
    distance to the clean training episodes (features standardised by the clean training set)."""
    from sklearn.metrics import roc_auc_score

    reach = (clean.length >= t) & (attacked.length >= t)
    if reach.sum() < 2 or (clean_train.length >= t).sum() < k:
        return None
    ref = embed(clean_train, t)[clean_train.length >= t]  # [E, n, d]
    c, a = embed(clean, t), embed(attacked, t)
    mu, sd = ref.reshape(-1, ref.shape[-1]).mean(0), ref.reshape(-1, ref.shape[-1]).std(0) + 1e-6
    scores, labels = [], []
    for i in range(ref.shape[1]):
        model_ref = (ref[:, i] - mu) / sd
        rows = [j for j in np.flatnonzero(reach) if i not in attacked.attacked[j]]
        if not rows:
            continue
        for x, label in ((c[rows, i], 0), (a[rows, i], 1)):
            scores.append(_knn_scores(model_ref, (x - mu) / sd, k))
            labels.append(np.full(len(rows), label))
    if not scores:
        return None
    y, s = np.concatenate(labels), np.concatenate(scores)
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def _t_interval(x: list[float]) -> list[float]:
    from scipy import stats

    a = np.asarray(x, float)
    if len(a) < 2:
        return [float(a.mean())] * 2
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return [float(a.mean() - half), float(a.mean() + half)]


def detect(victim: Path, attack_runs: list[Path], out: Path, settings: DetectSettings | None = None,
           log=print) -> dict[str, Any]:
    settings = settings or DetectSettings()
    victim_ckpt = resolve_checkpoint(victim).resolve()
    loaded = []
    for run in attack_runs:
        setup, ckpt, _ = load_attack_run(run)
        attacked_ckpt = resolve_checkpoint(Path(setup.cfg.victim.checkpoint)).resolve()
        if attacked_ckpt != victim_ckpt:
            raise UserError(f"attack run '{run}' attacked '{attacked_ckpt}', not the victim '{victim_ckpt}'")
        loaded.append((run, setup, ckpt))
    lengths = {_history_length(setup, settings.history) for _, setup, _ in loaded}
    if len(lengths) > 1:
        raise UserError(f"the attack runs' envs keep histories of different lengths {sorted(lengths)}; detect them apart")
    if settings.train_episodes < settings.neighbours or settings.episodes < 2:
        raise UserError(
            f"--train-episodes must be at least {settings.neighbours} (the k-NN rule's k) and --episodes at least 2 "
            f"(got {settings.train_episodes} and {settings.episodes})"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' exists and is not an empty directory; name a new one (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)

    length = lengths.pop()
    settings.history = length
    _, setup0, _ = loaded[0]
    plugin0 = setup0.plugin()
    env0 = _env(setup0, plugin0, length)
    train_seeds = [settings.train_seed + j for j in range(settings.train_episodes)]
    log(f"[detect] {len(train_seeds)} clean training episodes")
    clean_train = _collect(env0, train_seeds, None, False, None, plugin0, length)
    env0.close()
    steps = [t for t in EVAL_STEPS if t <= int(clean_train.length.max())]

    models: dict[int, Any] = {}
    per_run = []
    for run, setup, ckpt in loaded:
        seed = setup.cfg.seed
        if seed not in models:
            log(f"[detect] training CLAM, seed {seed} ({settings.steps} steps)")
            models[seed] = train_clam(clean_train, settings, seed)
        model, losses = models[seed]
        plugin = setup.plugin()
        env = _env(setup, plugin, length)
        module = load_modules(ckpt)["attacker"] if ckpt is not None else None
        policy = attacker_policy(setup, env, plugin, module)
        seeds = [setup.cfg.eval.seed + j for j in range(settings.episodes)]
        log(f"[detect] {run}: {len(seeds)} paired episodes")
        clean = _collect(env, seeds, policy, False, seed, plugin, length)
        attacked = _collect(env, seeds, policy, True, seed, plugin, length)
        env.close()
        def embed(p: Prefixes, t: int, model=model) -> np.ndarray:
            return _represent(model, p, t)

        clam = [detection_auc(embed, clean_train, clean, attacked, t, settings.neighbours) for t in steps]
        raw = [detection_auc(_raw, clean_train, clean, attacked, t, settings.neighbours) for t in steps]
        per_run.append({
            "run": str(run), "adversary": setup.cfg.adversary.name, "seed": seed, "t": steps,
            "auc_clam": clam, "auc_raw": raw, "clam_final_loss": float(np.mean(losses[-50:])),
        })

    by_attack: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["adversary"] for r in per_run):
        rows = [r for r in per_run if r["adversary"] == name]
        agg: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "t": steps}
        for key in ("auc_clam", "auc_raw"):
            cols = [[r[key][j] for r in rows if r[key][j] is not None] for j in range(len(steps))]
            agg[key] = [float(np.mean(c)) if c else None for c in cols]
            agg[key + "_ci95"] = [_t_interval(c) if c else None for c in cols]
        by_attack[name] = agg
    result = {"victim": str(victim_ckpt), "settings": settings.__dict__, "runs": per_run, "attacks": by_attack}
    result["png"] = plot_detection(by_attack, out)
    (out / DETECTION_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def plot_detection(by_attack: dict[str, dict[str, Any]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, (name, agg) in enumerate(by_attack.items()):
        color = f"C{k}"
        for key, ls, label in (("auc_clam", "-", "CLAM"), ("auc_raw", ":", "raw features")):
            pts = [(t, m, ci) for t, m, ci in zip(agg["t"], agg[key], agg[key + "_ci95"], strict=True) if m is not None]
            if not pts:
                continue
            t, m, ci = zip(*pts, strict=True)
            ax.plot(t, m, ls, color=color, marker="o" if key == "auc_clam" else None, ms=3, label=f"{name}, {label}")
            if key == "auc_clam":
                ax.fill_between(t, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("t (steps into the episode)")
    ax.set_ylabel("detection ROC AUC")
    ax.set_ylim(0.3, 1.02)
    ax.set_title("attacked teammate vs clean, from a teammate's view", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "detection_auc.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def markdown(result: dict[str, Any], t_show=(1, 5, 10, 25, 50)) -> str:
    """The detection table: AUC at a few t, CLAM and the raw-feature baseline."""
    lines = []
    for name, agg in result["attacks"].items():
        cols = [t for t in t_show if t in agg["t"]]
        if not lines:
            lines += ["| attack | seeds | " + " | ".join(f"AUC t={t} CLAM (raw)" for t in cols) + " |",
                      "|---|---|" + "---|" * len(cols)]
        cells = []
        for t in cols:
            j = agg["t"].index(t)
            c, r, ci = agg["auc_clam"][j], agg["auc_raw"][j], agg["auc_clam_ci95"][j]
            cells.append("—" if c is None else f"{c:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] ({'—' if r is None else f'{r:.2f}'})")
        lines.append(f"| {name} | {len(agg['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
