"""Stealthiness of an attack: how far the policy in effect for α, and the states the team
visits, move from those of no attack (Liu et al., ICLR 2024: the policy discrepancy is at
most ε under partial control, and the state-distribution shift is bounded in terms of ε).

Three measures, each computed by ``adversaries.evaluation`` for every attack run:

- **Action total variation** TV(π_α(·|s), π̂_α(·|s)) between the policy in effect for α under
  attack and α's own, averaged over the states visited under attack (and the attacked agents).
  What π_α is depends on the threat model (``POLICY_IN_EFFECT_TV``): takeover TV(π̃, π̂);
  partial control ε·TV(π̃, π̂), exactly, since (1−ε)·π̂ + ε·π̃ − π̂ = ε·(π̃ − π̂); observation
  TV(π̂(·|õ), π̂(·|o)). Discrete actions: exact from the probabilities. Continuous: a Monte-Carlo
  estimate (below) for the policies' Gaussians in the module's [-1, 1] units, before they are
  clipped to the bounds (clipping can only lower the TV of the executed actions).
- **State-distribution shift, two-sample classifier**: the ROC AUC, on held-out episodes'
  states, of a logistic regression telling attacked from clean states (0.5 =
  indistinguishable, 1 = perfectly told apart).
- **State-distribution shift, binned visitation**: KL(d_attacked ‖ d_clean) of the states'
  visitation histograms on a 2-D PCA projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MC_SAMPLES = 512  # Monte-Carlo draws per continuous TV estimate
MC_SEED = 0  # the TV estimates use a fixed stream: the same inputs give the same figure
AUC_TEST_FRACTION = 0.3
AUC_SEED = 0
MIN_STATES = 10  # per side; fewer: no state-shift figure (None)
KL_BINS = 5  # per axis of the 2-D grid (25 cells: the visitation of a few dozen episodes fills them)
KL_DIMS = 2


# ---------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Categorical:
    probs: np.ndarray  # [A]


@dataclass(frozen=True)
class DiagGaussian:
    mean: np.ndarray  # [c]
    std: np.ndarray  # [c]

    def sample(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return self.mean + self.std * rng.standard_normal((m, self.mean.size))

    def log_density(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return (-0.5 * z**2 - np.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)


@dataclass(frozen=True)
class UniformBox:
    low: np.ndarray  # [c]
    high: np.ndarray  # [c]

    def sample(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, (m, self.low.size))

    def log_density(self, x: np.ndarray) -> np.ndarray:
        inside = np.all((x >= self.low) & (x <= self.high), -1)
        return np.where(inside, -np.log(self.high - self.low).sum(), -np.inf)


@dataclass(frozen=True)
class PointMass:
    """A deterministic policy's action (continuous)."""

    value: np.ndarray  # [c]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def from_params(params: np.ndarray, discrete: bool, deterministic: bool = False):
    """One agent's distribution from a JointPolicyModule's dist inputs: masked logits [A], or
    [mean, log_std] [2c]. A deterministic policy is the point mass of its most likely action."""
    params = np.asarray(params, np.float64)
    if discrete:
        if deterministic:
            return Categorical(np.eye(params.size)[int(params.argmax())])
        return Categorical(softmax(params))
    c = params.size // 2
    if deterministic:
        return PointMass(params[:c])
    return DiagGaussian(params[:c], np.exp(params[c:]))


def total_variation(p, q, rng: np.random.Generator | None = None) -> float:
    """TV(p, q) = sup_E |p(E) − q(E)| ∈ [0, 1].

    Categorical: ½·Σ_a |p(a) − q(a)|, exact. Continuous (Gaussian, uniform box): the
    Monte-Carlo estimate TV = E_{x∼p}[max(0, 1 − q(x)/p(x))], from ``MC_SAMPLES`` draws of p
    (unbiased, each term in [0, 1]; standard error ≤ 0.5/√MC_SAMPLES ≈ 0.022). A point mass
    against a continuous law: 1; two point masses: 0 if equal, else 1."""
    if isinstance(p, Categorical) and isinstance(q, Categorical):
        a, b = p.probs, q.probs
        size = max(a.size, b.size)  # a team's padded action count
        a, b = np.pad(a, (0, size - a.size)), np.pad(b, (0, size - b.size))
        return float(min(1.0, 0.5 * np.abs(a - b).sum()))
    if isinstance(p, PointMass) or isinstance(q, PointMass):
        if isinstance(p, PointMass) and isinstance(q, PointMass):
            return 0.0 if np.allclose(p.value, q.value) else 1.0
        return 1.0
    rng = rng if rng is not None else np.random.default_rng(MC_SEED)
    x = p.sample(rng, MC_SAMPLES)
    log_ratio = q.log_density(x) - p.log_density(x)
    return float(np.mean(np.maximum(0.0, 1.0 - np.exp(np.minimum(log_ratio, 0.0)))))


# The TV between the policy in effect for α and α's own π̂_α at one state, per threat model.
# ``step``: "attacker" (π̃), "budget" (ε) and "perturbed" (π̂ at the perturbed observation).
POLICY_IN_EFFECT_TV = {
    "takeover": lambda own, step, rng: total_variation(step["attacker"], own, rng),
    # (1−ε)·π̂ + ε·π̃ − π̂ = ε·(π̃ − π̂): TV(π_α, π̂_α) = ε·TV(π̃, π̂_α) ≤ ε (Liu et al. 2024).
    "partial_control": lambda own, step, rng: step["budget"] * total_variation(step["attacker"], own, rng),
    "observation": lambda own, step, rng: total_variation(step["perturbed"], own, rng),
}


# ---------------------------------------------------------------------- state shift
def _split(y: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices. With ``groups`` (the episode of each state; paired clean and
    attacked episodes share one), whole groups go to one side: the states of one episode are
    strongly correlated (MPE's landmarks stay put for an episode), and a split inside episodes
    lets the classifier recognise the episodes instead of the attack. Without groups: a split
    of the states stratified by class. Both with a fixed seed."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    idx = np.arange(len(y))
    if groups is not None and len(np.unique(groups)) >= 2:
        split = GroupShuffleSplit(n_splits=1, test_size=AUC_TEST_FRACTION, random_state=AUC_SEED)
        train, test = next(split.split(idx, y, groups))
        if len(np.unique(y[train])) == 2 and len(np.unique(y[test])) == 2:
            return train, test
    return train_test_split(idx, test_size=AUC_TEST_FRACTION, stratify=y, random_state=AUC_SEED)


def classifier_auc(clean: np.ndarray, attacked: np.ndarray, clean_groups=None, attacked_groups=None) -> float | None:
    """ROC AUC of a two-sample classifier (Lopez-Paz & Oquab 2017, classifier two-sample
    tests): standardised features, L2 logistic regression, balanced class weights, fitted on
    70% of the episodes (or of the states, stratified, without ``*_groups``) and scored on the
    held-out rest (fixed seed). 0.5: the attacked states cannot be told from the clean ones;
    1: they always can."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clean, attacked = np.asarray(clean, np.float64), np.asarray(attacked, np.float64)
    if len(clean) < MIN_STATES or len(attacked) < MIN_STATES:
        return None
    x = np.concatenate([clean, attacked]).reshape(len(clean) + len(attacked), -1)
    y = np.concatenate([np.zeros(len(clean), int), np.ones(len(attacked), int)])
    groups = None
    if clean_groups is not None and attacked_groups is not None:
        groups = np.concatenate([np.asarray(clean_groups), np.asarray(attacked_groups)])
    train, test = _split(y, groups)
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    model.fit(x[train], y[train])
    return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))


def binned_kl(clean: np.ndarray, attacked: np.ndarray, bins: int = KL_BINS) -> float | None:
    """KL(d_attacked ‖ d_clean) of binned state visitation, in nats.

    The states are standardised with the clean states' mean and std (a constant feature keeps
    std 1) and projected on the first two principal axes of both sets pooled (PCA by SVD; a
    projection fitted on the clean states alone would miss a shift along a direction in which
    the clean states barely vary). A fixed ``bins`` × ``bins`` grid spans the range of both
    projected sets; each cell's probability is (count + 1) / (N + bins²) (add-one smoothing, so
    KL is finite where one side never went). The figure has a finite-sample floor: the states
    of an episode are strongly correlated, so two clean sets on the same 24 MPE episode seeds
    (600 states a side) still give 0.15–0.3 nats, against about 2 for a team whose two agents
    keep moving one way (tests/test_stealth.py). Compare attacks on equal episode counts."""
    clean, attacked = np.asarray(clean, np.float64), np.asarray(attacked, np.float64)
    if len(clean) < MIN_STATES or len(attacked) < MIN_STATES:
        return None
    clean, attacked = clean.reshape(len(clean), -1), attacked.reshape(len(attacked), -1)
    mu, sd = clean.mean(0), clean.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    zc, za = (clean - mu) / sd, (attacked - mu) / sd
    pooled = np.concatenate([zc, za])
    _, _, vt = np.linalg.svd(pooled - pooled.mean(0), full_matrices=False)
    axes = vt[:KL_DIMS].T  # [d, ≤2]
    pc, pa = zc @ axes, za @ axes
    both = np.concatenate([pc, pa])
    lo, hi = both.min(0), both.max(0)
    hi = np.where(hi - lo > 1e-8, hi, lo + 1.0)
    edges = [np.linspace(lo[j], hi[j], bins + 1) for j in range(both.shape[1])]

    def hist(p):
        h, _ = np.histogramdd(p, bins=edges)
        h = h.reshape(-1) + 1.0
        return h / h.sum()

    q_clean, p_att = hist(pc), hist(pa)
    return float(np.sum(p_att * np.log(p_att / q_clean)))


def state_shift(clean: list[np.ndarray], attacked: list[np.ndarray], clean_groups=None,
                attacked_groups=None) -> dict[str, Any]:
    """Both state-shift measures; ``*_groups``: the episode (seed) of each state."""
    c, a = np.asarray(clean, np.float64), np.asarray(attacked, np.float64)
    return {
        "state_auc": classifier_auc(c, a, clean_groups, attacked_groups),
        "state_kl": binned_kl(c, a),
        "states": {"clean": int(len(c)), "attacked": int(len(a))},
    }
