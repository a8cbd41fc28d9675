"""The detector's scoring rule (adversaries/detection.py) on synthetic prefixes whose answer
is known: identical starts cannot be told apart, a shifted teammate can, and the attacked
agent's own view is never scored."""

from __future__ import annotations

import numpy as np

from adversaries.detection import (
    DetectSettings,
    Prefixes,
    _raw,
    _represent,
    detection_auc,
    train_clam,
)


def prefixes(e: int, shift: float, seed: int, attacked: list[int] | None = None, n: int = 3, length: int = 12,
             f: int = 4) -> Prefixes:
    """Episodes whose steps ≥ 1 of every observer's features are N(shift, 1); step 0 is N(0, 1)
    for all, so no rule can separate clean from shifted at t = 1."""
    rng = np.random.default_rng(seed)
    hist = rng.normal(size=(e, n, length, f)).astype(np.float32)
    hist[:, :, 1:] += shift
    return Prefixes(hist, np.full(e, length), [list(attacked or []) for _ in range(e)])


def test_identical_starts_score_at_chance_and_a_shift_is_detected():
    train, clean = prefixes(60, 0.0, 0), prefixes(30, 0.0, 1)
    shifted = prefixes(30, 1.5, 2, attacked=[0])
    assert abs(detection_auc(_raw, train, clean, shifted, 1, k=5) - 0.5) < 0.15
    assert detection_auc(_raw, train, clean, shifted, 8, k=5) > 0.95


def test_the_attacked_agents_own_view_is_left_out():
    train, clean = prefixes(60, 0.0, 0), prefixes(30, 0.0, 1)
    attacked = prefixes(30, 0.0, 1, attacked=[0])  # the same episodes as the clean ones...
    attacked.hist[:, 0, 1:] += 50.0  # ...but for agent 0's own (attacked) view
    assert abs(detection_auc(_raw, train, clean, attacked, 8, k=5) - 0.5) < 1e-9


def test_clam_trained_on_clean_prefixes_detects_a_shift():
    train, clean = prefixes(48, 0.0, 0), prefixes(24, 0.0, 1)
    shifted = prefixes(24, 2.0, 2, attacked=[0])
    model, losses = train_clam(train, DetectSettings(steps=30, batch=32, width=32, heads=2), seed=0)
    assert np.isfinite(losses).all()

    def embed(p, t):
        return _represent(model, p, t)

    assert detection_auc(embed, train, clean, shifted, 10, k=5) > 0.9
