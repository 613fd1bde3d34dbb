"""The per-replicate estimator of `thresher compare` (`--estimator replicates`): a scaling law fitted to
each replicate's own frontier, the units' mean predictions at the target and a Welch t interval between the
recipes (thresher/experiments/difference.py); the direct measured check at the largest point both recipes
measured (which the joint estimator keeps beside its law); the curve and prediction bands (a bootstrap of
the frontier points when a recipe has a single replicate); and the held-out check of `--fit-below`. The
joint estimator (thresher/experiments/joint.py) uses these fits for the report's curves. Reads and writes
no file: thresher/experiments/tables.py reads the arms, compare.py and compare_report.py write the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thresher.core.errors import InputError
from thresher.experiments import scaling
from thresher.experiments.difference import Difference, welch


@dataclass
class FitOptions:
    """The options `thresher fit` takes, so a comparison can be made with any published procedure."""

    frontier: str = "bins"
    loss: str = "log"
    forms: tuple = ("power", "offset")
    bins_per_decade: float = 4.0
    n_bootstrap: int = 200  # used for bands only when a recipe has a single replicate
    fit_below: float | None = None
    fit_above: float | None = None  # the joint law: only points at or above this compute
    estimator: str = "joint"  # joint (thresher/experiments/joint.py) or replicates (a law per replicate, Welch t)
    rows: str = "auto"  # checkpoints of few runs, or independent runs (tables.rows_kind)


@dataclass
class Replicate:
    key: str  # e.g. "draw 0 / seed 1"
    unit: str  # its independent unit (the draw, or the replicate itself)
    x: np.ndarray
    y: np.ndarray  # errors
    points: list  # each point's key (scale, epoch), to match measured points across arms
    law: scaling.Law | None = None
    note: str = ""  # why there is no law


@dataclass
class Arm:
    name: str
    reps: list[Replicate]
    unit_kind: str  # "draw" or "seed" or "run"

    def units(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, r in enumerate(self.reps):
            out.setdefault(r.unit, []).append(i)
        return out

    def unit_means(self, per_rep: np.ndarray) -> np.ndarray:
        """One value per unit: the mean of its replicates' finite values."""
        vals = []
        for idx in self.units().values():
            v = per_rep[idx]
            v = v[np.isfinite(v)]
            if len(v):
                vals.append(float(v.mean()))
        return np.asarray(vals)


# ---------------------------------------------------------------------------------------------------
# Fits per replicate


def fit_replicates(arm: Arm, opts: FitOptions) -> None:
    """A law per replicate, on its own frontier (points at or below opts.fit_below)."""
    for r in arm.reps:
        use = np.flatnonzero(r.x <= opts.fit_below) if opts.fit_below is not None else np.arange(len(r.x))
        xs, ys = r.x[use], r.y[use]
        front = frontier(xs, ys, opts)
        if len(front) < 3:
            r.law, r.note = None, f"{len(front)} frontier point(s); a fit needs 3"
            continue
        try:
            r.law = scaling.fit_law(
                xs[front],
                ys[front],
                opts.forms,
                loss=opts.loss,
                starts=projected_starts(xs[front], ys[front], opts.forms),
            )
        except InputError:
            try:  # the one start failed: the default grid of starts
                r.law = scaling.fit_law(xs[front], ys[front], opts.forms, loss=opts.loss)
            except InputError as err:
                r.law, r.note = None, str(err)


def projected_starts(x: np.ndarray, y: np.ndarray, forms) -> dict:
    """One good start per form: for each alpha on a grid, A and E of A*C^-alpha + E are a linear least
    squares; the best alpha gives the start. One start instead of the default grid's 12-36 makes the
    replicate fits (and the 2,000-trial calibration benchmark) fast; the default grid is the fallback
    when it does not converge, and a poor start would show in the benchmark's figures."""
    ref = float(np.exp(np.mean(np.log(x))))
    c = x / ref
    alphas = np.geomspace(0.01, 3.0, 48)[:, None]
    basis = np.power(c[None, :], -alphas)  # [alphas, points]
    bm, ym = basis.mean(axis=1, keepdims=True), y.mean()
    slope = ((basis - bm) * (y - ym)).sum(axis=1, keepdims=True) / np.maximum(
        ((basis - bm) ** 2).sum(axis=1, keepdims=True), 1e-300
    )
    e = np.clip(ym - slope * bm, 0.0, y.min() * 0.99)  # E within its bounds, then A for that E
    a_coef = np.maximum(((y - e) * basis).sum(axis=1, keepdims=True) / (basis**2).sum(axis=1, keepdims=True), 1e-9)
    err = ((a_coef * basis + e - y) ** 2).mean(axis=1)
    i = int(np.argmin(err))
    la, alpha, e = math.log(float(a_coef[i, 0])), float(alphas[i, 0]), float(e[i, 0])
    out = {"power": [np.array([la, alpha, e])]}
    if "offset" in forms:
        out["offset"] = [np.array([la, alpha, e, 0.01])]
    return out


def predictions(arm: Arm, c) -> np.ndarray:
    """[replicates, len(c)]: each replicate's law at c (nan where it has none)."""
    c = np.atleast_1d(np.asarray(c, float))
    return np.array([r.law.predict(c) if r.law is not None else np.full(len(c), np.nan) for r in arm.reps])


def unit_predictions(arm: Arm, c) -> np.ndarray:
    """[units, len(c)]: the units' mean predictions (units with no fitted replicate left out)."""
    p = predictions(arm, c)
    rows = []
    for idx in arm.units().values():
        v = p[idx]
        v = v[np.isfinite(v).all(axis=1)]
        if len(v):
            rows.append(v.mean(axis=0))
    return np.array(rows) if rows else np.empty((0, p.shape[1]))


def mean_curve(arm: Arm, c) -> np.ndarray:
    return np.nanmean(unit_predictions(arm, c), axis=0) if any(r.law for r in arm.reps) else np.full(len(c), np.nan)


# ---------------------------------------------------------------------------------------------------
# The difference at a measured point and at the target


def measured_difference(arm_a: Arm, arm_b: Arm, level: float, below: float | None = None, above: float | None = None):
    """(x, point key, Difference) at the largest point both arms measured (within the given range)."""
    keys = common_points(arm_a, arm_b, below, above)
    if not keys:
        return None
    x, key = keys[-1]
    return x, key, welch(*(arm.unit_means(values_at(arm, key)) for arm in (arm_a, arm_b)), level)


def common_points(arm_a: Arm, arm_b: Arm, below=None, above=None) -> list[tuple[float, object]]:
    def xs(arm):
        return {p: float(r.x[i]) for r in arm.reps for i, p in enumerate(r.points)}

    xa, xb = xs(arm_a), xs(arm_b)
    keys = [(max(xa[k], xb[k]), k) for k in set(xa) & set(xb)]
    keys = [(x, k) for x, k in keys if (below is None or x <= below) and (above is None or x > above)]
    return sorted(keys, key=lambda t: t[0])


def values_at(arm: Arm, key) -> np.ndarray:
    out = []
    for r in arm.reps:
        hit = [r.y[i] for i, p in enumerate(r.points) if p == key]
        out.append(float(np.mean(hit)) if hit else float("nan"))
    return np.asarray(out)


def extrapolated_difference(arm_a: Arm, arm_b: Arm, target: float, level: float) -> Difference:
    d = welch(unit_predictions(arm_a, target)[:, 0], unit_predictions(arm_b, target)[:, 0], level)
    missing = [f"{arm.name} {r.key}: {r.note}" for arm in (arm_a, arm_b) for r in arm.reps if r.law is None]
    if missing and not d.reason:
        d.reason = "no fit for " + "; ".join(missing)
    elif missing:
        d.reason += "; no fit for " + "; ".join(missing)
    return d


# ---------------------------------------------------------------------------------------------------
# Bands: for the recipe's curve, and for a new measured point


def bands(arm: Arm, c, level: float, opts: FitOptions | None = None, seed: int = 0) -> dict:
    """{'curve': (lo, hi), 'prediction': (lo, hi), 'kind': ...} at c.

    With 2 or more replicates: the curve band is the t interval of the replicates' mean prediction;
    the prediction band, for one new run's point, adds that run's own deviation (the replicates'
    spread) and its points' scatter about their law (RMS residual): mean +- t * sqrt(s^2 (1 + 1/n) + r^2).
    With one replicate, the curve band resamples its frontier points (scaling.bootstrap), which measures
    the fit alone, and the prediction band adds the residual scatter; the report says which."""
    from scipy import stats

    c = np.atleast_1d(np.asarray(c, float))
    p = predictions(arm, c)
    ok = np.isfinite(p).all(axis=1)
    p = p[ok]
    laws = [r for r, k in zip(arm.reps, ok) if k]
    if not laws:
        nan = np.full(len(c), np.nan)
        return {"curve": (nan, nan), "prediction": (nan, nan), "kind": "none"}
    resid = np.sqrt(np.mean([_residual_sq(r) for r in laws]))
    q = 0.5 + level / 2
    if len(p) >= 2:
        u = unit_predictions(arm, c)
        u = u[np.isfinite(u).all(axis=1)]
        m, n, nu = u.mean(axis=0), len(p), len(u)
        s_rep = p.std(axis=0, ddof=1)
        h_curve = (
            float(stats.t.ppf(q, nu - 1)) * u.std(axis=0, ddof=1) / math.sqrt(nu)
            if nu >= 2
            else np.full(len(c), np.inf)
        )
        h_pred = float(stats.t.ppf(q, n - 1)) * np.sqrt(s_rep**2 * (1 + 1 / n) + resid**2)
        return {
            "curve": (m - h_curve, m + h_curve),
            "prediction": (m - h_pred, m + h_pred),
            "kind": f"replicates ({nu} units, {n} runs; t intervals)",
        }
    r = laws[0]
    m = p[0]
    opts = opts or FitOptions()
    boots = (
        scaling.bootstrap(*_frontier_points(r, opts, opts.fit_below), r.law, opts.n_bootstrap, seed, opts.loss)
        if opts.n_bootstrap
        else []
    )
    if boots:
        pr = np.array([b.predict(c) for b in boots])
        lo, hi = np.quantile(pr, 1 - q, axis=0), np.quantile(pr, q, axis=0)
    else:
        lo, hi = m.copy(), m.copy()
    z = float(stats.norm.ppf(q))
    return {
        "curve": (lo, hi),
        "prediction": (m - np.sqrt((m - lo) ** 2 + (z * resid) ** 2), m + np.sqrt((hi - m) ** 2 + (z * resid) ** 2)),
        "kind": "one replicate: frontier points resampled (fit uncertainty only; run-to-run spread unmeasured)",
    }


def frontier(x: np.ndarray, y: np.ndarray, opts: FitOptions) -> np.ndarray:
    return scaling.frontier_of(x, y, opts.frontier, opts.bins_per_decade)


def _frontier_points(r: Replicate, opts: FitOptions, below: float | None = None):
    use = np.flatnonzero(r.x <= below) if below is not None else np.arange(len(r.x))
    f = use[frontier(r.x[use], r.y[use], opts)]
    return r.x[f], r.y[f]


def _residual_sq(r: Replicate) -> float:
    """The replicate's points' mean squared scatter about its law (raw error units, df-corrected)."""
    x, y = r.x, r.y
    k = 4 if r.law.form == "offset" else 3
    res = r.law.predict(x) - y
    return float(np.sum(res**2) / max(len(x) - k, 1))


def held_out(arm: Arm, level: float, opts: FitOptions) -> dict:
    """Each replicate's frontier points above opts.fit_below against the bands of the fits below it."""
    rows = []
    for r in arm.reps:
        fx, fy = _frontier_points(r, opts)
        for xv, yv in zip(fx, fy):
            if xv <= opts.fit_below:
                continue
            b = bands(arm, [xv], level, opts)
            rows.append(
                {
                    "replicate": r.key,
                    "x": float(xv),
                    "actual": float(yv),
                    "predicted": _num(float(np.mean(m))) if len(m := _finite(predictions(arm, [xv]))) else None,
                    "inside_curve": bool(b["curve"][0][0] <= yv <= b["curve"][1][0]),
                    "inside_prediction": bool(b["prediction"][0][0] <= yv <= b["prediction"][1][0]),
                }
            )
    share = lambda k: float(np.mean([row[k] for row in rows])) if rows else None  # noqa: E731
    return {
        "above": opts.fit_below,
        "band": "prediction (a new run's point: curve + run spread + residual scatter)",
        "points": rows,
        "share_inside_prediction": share("inside_prediction"),
        "share_inside_curve": share("inside_curve"),
    }


def _finite(v: np.ndarray) -> np.ndarray:
    return v[np.isfinite(v)]


def _num(v: float):
    return v if math.isfinite(v) else None
