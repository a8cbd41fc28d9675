"""Statistics across seeds, shared by reports (adversaries/report.py) and sweeps (marl/sweep.py).

- ``mean_ci``: the mean with a percentile-bootstrap 95% CI (``scipy.stats.bootstrap``);
- ``iqm_ci``: the interquartile mean (the mean of the middle 50%, Agarwal et al., NeurIPS 2021,
  "Deep RL at the edge of the statistical precipice") with the same bootstrap;
- ``curve_band``: learning curves of several seeds, aligned by x (interpolated), with their mean and
  a 95% t band.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

CI_RESAMPLES = 5000


def iqm(values, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean after trimming 25% at each end (Agarwal et al. 2021)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def _bootstrap_ci(a: np.ndarray, statistic, seed: int) -> list[float] | None:
    if a.size < 2:
        return None
    if np.all(a == a[0]):  # every resample is the same: the interval is the value itself
        return [float(a[0]), float(a[0])]
    res = stats.bootstrap((a,), statistic, confidence_level=0.95, n_resamples=CI_RESAMPLES,
                          method="percentile", random_state=seed)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def mean_ci(values, seed: int = 0) -> dict[str, Any]:
    """Mean over seeds with a percentile-bootstrap 95% CI (None with one seed)."""
    a = np.asarray(values, float)
    out: dict[str, Any] = {"mean": float(a.mean()), "n": int(a.size), "ci95": None}
    if a.size >= 2 and np.all(a == a[0]):  # the mean of equal values can miss them by an ulp
        out["mean"] = float(a[0])
    out["ci95"] = _bootstrap_ci(a, np.mean, seed)
    return out


def iqm_ci(values, seed: int = 0) -> dict[str, Any]:
    """Interquartile mean over seeds with a percentile-bootstrap 95% CI (None with one seed)."""
    a = np.asarray(values, float)
    out: dict[str, Any] = {"iqm": float(iqm(a)), "n": int(a.size), "ci95": None}
    if a.size >= 2 and np.all(a == a[0]):
        out["iqm"] = float(a[0])
    out["ci95"] = _bootstrap_ci(a, lambda x, axis=-1: iqm(x, axis=axis), seed)
    return out


def curve_band(curves: list[list[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Curves [(x, y), ...] of several seeds, x increasing: x (the first curve's points inside
    the range every curve covers), the mean of y over seeds at those x, and the half-width of a
    95% t interval across seeds (None for a single curve). Each seed is read at those x by
    linear interpolation, so seeds whose rows fall at other x (a seed whose first episode ended
    an iteration later) are compared at the same x, not row by row."""
    if any(len(c) == 0 for c in curves):
        return np.zeros(0), np.zeros(0), None if len(curves) < 2 else np.zeros(0)
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    x = np.array([p[0] for p in curves[0] if lo <= p[0] <= hi], float)
    y = np.array([np.interp(x, [p[0] for p in c], [p[1] for p in c]) for c in curves], float)
    half = None
    if len(curves) >= 2:
        half = stats.t.ppf(0.975, len(curves) - 1) * y.std(0, ddof=1) / np.sqrt(len(curves))
    return x, y.mean(0), half
