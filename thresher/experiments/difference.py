"""The difference of two recipes' errors and its verdict, for `thresher compare`: a t interval for
error B - error A, P(B better), the three-way verdict at a confidence level, and the smallest difference
the grid could have detected (`settle`). Both estimators end here: Welch's t over the independent units'
means (`welch`: the per-replicate estimator, thresher/experiments/replicates.py, and the plain measured
check beside the joint law), and the joint law's contrast (`compare.joint_difference`). Reads and writes
nothing; thresher/experiments/compare.py puts the verdicts into words and into compare.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POWER = 0.8  # the power at which the smallest detectable difference is stated


@dataclass
class Difference:
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    sd_a: float
    sd_b: float
    level: float
    diff: float = float("nan")  # error B - error A (negative: B better)
    se: float = float("nan")
    df: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")
    p_b_better: float | None = None
    better: str | None = None  # "a", "b" or None
    mde: float = float("nan")  # smallest |difference| detectable at POWER
    reason: str = ""

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def welch(a: np.ndarray, b: np.ndarray, level: float) -> Difference:
    """Welch's t interval for mean(b) - mean(a), a posterior P(B better) under a flat prior on the
    difference (the t distribution's mass below zero), and the verdict at `level`."""

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan")  # noqa: E731
    d = Difference(
        float(a.mean()) if len(a) else float("nan"),
        float(b.mean()) if len(b) else float("nan"),
        len(a),
        len(b),
        sd(a),
        sd(b),
        level,
    )
    if len(a) < 2 or len(b) < 2:
        d.reason = (
            f"{min(len(a), len(b))} independent run(s) in one recipe: a single run measures no "
            f"run-to-run spread; give at least 2 (seeds: in the scale file, or --draws)"
        )
        d.diff = d.mean_b - d.mean_a
        return d
    va, vb = d.sd_a**2 / len(a), d.sd_b**2 / len(b)
    d.diff = d.mean_b - d.mean_a
    d.se = math.sqrt(va + vb)
    d.df = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if va else 0) + (vb**2 / (len(b) - 1) if vb else 0) or 1e-300)
    d.df = float(min(max(d.df, 1.0), len(a) + len(b) - 2))
    return settle(d)


def settle(d: Difference) -> Difference:
    """The interval, P(B better), the verdict and the smallest detectable difference, from the difference,
    its standard error and degrees of freedom (a t distribution: both estimators end here)."""
    from scipy import stats

    if d.se == 0:
        d.se = 1e-12  # identical runs: a difference, if any, is exact
    t = float(stats.t.ppf(0.5 + d.level / 2, d.df))
    d.lo, d.hi = d.diff - t * d.se, d.diff + t * d.se
    d.p_b_better = float(stats.t.cdf(-d.diff / d.se, d.df))
    d.better = "b" if d.hi < 0 else "a" if d.lo > 0 else None
    d.mde = (t + float(stats.t.ppf(POWER, d.df))) * d.se
    return d


def runs_needed(d: Difference, effect: float) -> int | None:
    """Independent runs per recipe for POWER to detect `effect` at d.level, at the measured spread."""
    from scipy import stats

    if not (math.isfinite(d.sd_a) and math.isfinite(d.sd_b)) or effect == 0:
        return None
    z = stats.norm.ppf(0.5 + d.level / 2) + stats.norm.ppf(POWER)
    n = math.ceil(z**2 * (d.sd_a**2 + d.sd_b**2) / effect**2)
    return max(n + 1, 2)  # +1: the t distribution's heavier tails at small n
