"""Scaling-law fits: `thresher fit` (and the laws `thresher compare` fits per replicate, thresher/experiments/compare.py).

The method of Nezhurina et al. (2025), "Scaling Laws for Robust Comparison of Open Foundation
Language-Vision Models and Datasets" (and Cherti et al., 2023, before it):

1. From every (compute, error) point, keep the Pareto frontier: the lowest error in each log-spaced
   compute bin, then only bins that improve on every bin of lower compute.
2. Fit Err(C) = A * C^-alpha + E, and the offset form A * (C + C0)^-alpha + E, by least squares on
   log-errors from a grid of starting values with bounded parameters (alpha > 0, 0 <= E < min error,
   C0 >= 0); keep the form with the lower BIC.
3. Bootstrap the frontier points for confidence intervals of the parameters and of predictions (the
   fit's own uncertainty: where the frontier points are independent runs; constant-LR checkpoints of one
   run are not, and `thresher compare` resamples whole runs instead), and a prediction band for a new
   frontier point (the curve band plus the points' scatter).
4. Optionally fit only below `holdout_above` and report predicted against actual above it, with the
   share of held-out frontier points inside the prediction band.

Reproducing a published fit needs the publication's own choices, so two are options (`frontier="laion"`,
`loss="mse"`); the defaults above are unchanged.

Works on any results table (CSV or Parquet): ours from `thresher grid`, or a published one with other
column names (`--x`, `--y`, `--group`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from thresher.core.errors import InputError

ALPHAS = (0.03, 0.1, 0.3, 1.0)
E_FRACTIONS = (0.0, 0.5, 0.9)
C0_STARTS = (0.01, 0.3, 3.0)  # in units of the frontier's geometric-mean compute
OFFSET_MIN_POINTS = 8  # the offset form is tried only on frontiers at least this long


@dataclass
class Law:
    form: str  # "power" or "offset"
    A: float
    alpha: float
    E: float
    C0: float | None = None
    loss: float = float("nan")  # mean squared residual (log or raw, per the fit's loss) on its points
    raw: tuple | None = field(default=None, repr=False, compare=False)  # (scaled params, x_ref): refit start

    @classmethod
    def from_scaled(cls, form: str, p: np.ndarray, ref: float, loss: float) -> Law:
        """A law from parameters fitted in scaled units (c = x / ref, log A)."""
        alpha = float(p[1])
        return cls(
            form,
            A=float(math.exp(p[0]) * ref**alpha),
            alpha=alpha,
            E=float(p[2]),
            C0=float(p[3] * ref) if form == "offset" else None,
            loss=loss,
            raw=(p, ref),
        )

    def predict(self, c) -> np.ndarray:
        c = np.asarray(c, dtype=float)
        return self.A * np.power(c + (self.C0 or 0.0), -self.alpha) + self.E

    def params(self) -> dict:
        out = {"A": self.A, "alpha": self.alpha, "E": self.E}
        if self.form == "offset":
            out["C0"] = self.C0
        return out


# ---------------------------------------------------------------------------------------------------
# Frontier


def pareto_frontier(x: np.ndarray, y: np.ndarray, bins_per_decade: float = 4.0) -> np.ndarray:
    """Indices of the frontier: per log-spaced bin of x, the point of lowest y; then only bins whose
    best y is below that of every bin of lower x. Sorted by x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (x > 0))
    if len(ok) == 0:
        return ok
    b = np.floor(np.log10(x[ok]) * bins_per_decade).astype(np.int64)
    best = {}
    for i, bb in zip(ok, b):
        if bb not in best or y[i] < y[best[bb]]:
            best[bb] = i
    out, lowest = [], np.inf
    for bb in sorted(best):
        i = best[bb]
        if y[i] < lowest:
            out.append(i)
            lowest = y[i]
    return np.asarray(out, dtype=np.int64)


LAION_BIN_UNIT = 1500.0  # GFLOPs: the LAION rule sets its bin count from x_max / 1500 (x in GFLOPs)


def laion_frontier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The frontier rule of Nezhurina et al. (2025) ("pareto_bin"), so their fits can be reproduced:
    int(log2(x_max / 1500)) geometric bin edges from x_min to x_max, half-open bins; the lowest y per
    bin; keep the first bin's point, then only points lower than the last kept; the point at x_max
    (outside every half-open bin) is added if it is lower still. Indices, sorted by x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (x > 0))
    if len(ok) == 0:
        return ok
    ok = ok[np.argsort(x[ok], kind="stable")]
    xs = x[ok]
    n_edges = max(int(math.log2(xs[-1] / LAION_BIN_UNIT)) if xs[-1] > LAION_BIN_UNIT else 0, 2)
    edges = np.geomspace(xs[0], xs[-1], n_edges)
    best = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = ok[(xs >= lo) & (xs < hi)]
        if len(inside):
            best.append(inside[np.argmin(y[inside])])
    at_max = ok[xs == xs[-1]]
    best.append(at_max[np.argmin(y[at_max])])
    out = [best[0]]
    for i in best[1:]:
        if y[i] < y[out[-1]]:
            out.append(i)
    return np.asarray(out, dtype=np.int64)


FRONTIERS = ("bins", "laion")


def frontier_of(x: np.ndarray, y: np.ndarray, rule: str = "bins", bins_per_decade: float = 4.0) -> np.ndarray:
    """The frontier's indices by `rule`: our log10 bins, or the LAION rule (what `--frontier` picks)."""
    return laion_frontier(x, y) if rule == "laion" else pareto_frontier(x, y, bins_per_decade)


LOSSES = ("log", "mse")


# ---------------------------------------------------------------------------------------------------
# Fitting


def _fit_form(form: str, c: np.ndarray, y: np.ndarray, starts: list[np.ndarray], loss: str = "log"):
    """Best least-squares fit over `starts`, in scaled units (c = x / x_ref). loss "log": residuals of
    log-errors (relative, our default); "mse": raw error residuals, as published LAION fits use."""
    from scipy.optimize import least_squares

    ymin = float(y.min())
    logy = np.log(y)
    e_hi = ymin * (1 - 1e-9)

    def model(p):
        a, alpha, e = p[0], p[1], p[2]
        cc = c + p[3] if form == "offset" else c
        return np.exp(a) * np.power(cc, -alpha) + e

    def resid(p):
        if loss == "mse":
            return model(p) - y
        return np.log(np.maximum(model(p), 1e-300)) - logy

    lo = [-50.0, 1e-6, 0.0] + ([0.0] if form == "offset" else [])
    hi = [50.0, 5.0, e_hi] + ([1e3] if form == "offset" else [])
    best = None
    for p0 in starts:
        p0 = np.clip(p0, np.array(lo) + 1e-12, np.array(hi) - 1e-12)
        try:
            r = least_squares(resid, p0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=400)
        except (ValueError, FloatingPointError):
            continue
        mean_sq = float(np.mean(r.fun**2))
        if np.isfinite(mean_sq) and (best is None or mean_sq < best[1]):
            best = (r.x, mean_sq)
    return best


def _starts(form: str, c: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    out = []
    ymin = float(y.min())
    for alpha in ALPHAS:
        for ef in E_FRACTIONS:
            e = ef * ymin
            # A so that the law passes near the median point
            i = len(c) // 2
            a = math.log(max(y[i] - e, 1e-12)) + alpha * math.log(c[i])
            if form == "offset":
                out += [np.array([a, alpha, e, c0]) for c0 in C0_STARTS]
            else:
                out.append(np.array([a, alpha, e]))
    return out


def fit_law(x, y, forms=("power", "offset"), starts: dict | None = None, loss: str = "log") -> Law:
    """The best law over `forms` by BIC (on `loss` residuals). Needs at least 3 points; the offset form
    is tried only with OFFSET_MIN_POINTS or more."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        raise InputError(f"a fit needs at least 3 frontier points, got {len(x)}")
    if (y <= 0).any():
        raise InputError("errors must be positive to fit a power law (give --accuracy for accuracies)")
    ref = float(np.exp(np.mean(np.log(x))))
    c = x / ref
    best, best_aic = None, np.inf
    for form in forms:
        k = 4 if form == "offset" else 3
        if form == "offset" and len(x) < OFFSET_MIN_POINTS:
            continue  # four parameters on a handful of points extrapolate wildly (seen on 5-point frontiers)
        got = _fit_form(form, c, y, (starts or {}).get(form) or _starts(form, c, y), loss)
        if got is None:
            continue
        p, mean_sq = got
        # BIC: the offset form must earn its extra parameter (it contains the power law at C0 = 0)
        aic = len(x) * math.log(max(mean_sq, 1e-300)) + k * math.log(len(x))
        if aic < best_aic - 1e-9:
            best_aic = aic
            best = Law.from_scaled(form, p, ref, mean_sq)
    if best is None:
        raise InputError("no fit converged")
    return best


def bootstrap(x, y, law: Law, n: int, seed: int = 0, loss: str = "log") -> list[Law]:
    """Refit the chosen form on `n` resamples (with replacement) of the points."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    raw, ref = law.raw
    out = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) < 3:
            continue
        xs, ys = x[idx], y[idx]
        c = xs / ref
        got = _fit_form(law.form, c, ys, [raw.copy()], loss)  # from the full fit: converges in almost every resample
        if got is None or got[1] > 10 * max(law.loss, 1e-12):
            got = _fit_form(law.form, c, ys, [raw.copy()] + _starts(law.form, c, ys), loss)
        if got is None:
            continue
        out.append(Law.from_scaled(law.form, got[0], ref, got[1]))
    return out


def interval(values, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    q = (1 - level) / 2
    return float(np.quantile(v, q)), float(np.quantile(v, 1 - q))


@dataclass
class GroupFit:
    name: str
    law: Law
    frontier: np.ndarray  # indices into the group's points
    x: np.ndarray
    y: np.ndarray
    boots: list = field(default_factory=list)
    holdout_above: float | None = None
    loss: str = "log"

    def band(self, c, kind: str = "curve", level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """`curve`: the bootstrap's quantiles of the law at c (where the curve is). `prediction`: where a
        new frontier point at c falls: the curve band widened, in quadrature, by the fitted points' own
        scatter about the law (their RMS residual, in the loss's units: log-errors or errors)."""
        from scipy import stats

        c = np.atleast_1d(np.asarray(c, float))
        p = self.law.predict(c)
        q = (1 - level) / 2
        if self.boots:
            preds = np.array([b.predict(c) for b in self.boots])
            lo, hi = np.quantile(preds, q, axis=0), np.quantile(preds, 1 - q, axis=0)
        else:
            lo, hi = p.copy(), p.copy()
        if kind == "curve":
            return lo, hi
        k = 4 if self.law.form == "offset" else 3
        n = len(self.frontier)
        h = float(stats.norm.ppf(1 - q)) * math.sqrt(self.law.loss * n / max(n - k, 1))
        if self.loss == "log":  # residuals of log-errors: the band is multiplicative
            return (
                p * np.exp(-np.hypot(np.log(p / np.maximum(lo, 1e-300)), h)),
                p * np.exp(np.hypot(np.log(np.maximum(hi, 1e-300) / p), h)),
            )
        return p - np.hypot(p - lo, h), p + np.hypot(hi - p, h)


def fit_group(
    name: str,
    x,
    y,
    *,
    holdout_above: float | None = None,
    n_bootstrap: int = 200,
    bins_per_decade: float = 4.0,
    seed: int = 0,
    forms=("power", "offset"),
    frontier: str = "bins",
    loss: str = "log",
) -> GroupFit:
    if frontier not in FRONTIERS or loss not in LOSSES:
        raise InputError(f"frontier must be one of {FRONTIERS} and loss one of {LOSSES}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    usable = x <= holdout_above if holdout_above is not None else np.ones(len(x), bool)
    idx = np.flatnonzero(usable)
    front = idx[frontier_of(x[idx], y[idx], frontier, bins_per_decade)]
    if len(front) < 3:
        raise InputError(
            f"group {name!r}: {len(front)} frontier point(s)"
            + (f" at or below --holdout-above {holdout_above}" if holdout_above is not None else "")
            + "; a fit needs at least 3 (more compute scales, or fewer bins per decade)"
        )
    law = fit_law(x[front], y[front], forms, loss=loss)
    boots = bootstrap(x[front], y[front], law, n_bootstrap, seed, loss) if n_bootstrap else []
    return GroupFit(name, law, front, x, y, boots, holdout_above, loss)


def describe(g: GroupFit, predict: list[float]) -> dict:
    params_ci = {k: interval([b.params()[k] for b in g.boots]) for k in g.law.params()} if g.boots else {}
    preds = []
    for c in predict:
        lo, hi = g.band(np.array([c]))
        preds.append({"x": c, "y": float(g.law.predict(c)), "lo": float(lo[0]), "hi": float(hi[0])})
    out = {
        "form": g.law.form,
        "params": g.law.params(),
        "params_ci95": params_ci,
        "loss": g.law.loss,
        "bootstraps": len(g.boots),
        "frontier": [{"x": float(g.x[i]), "y": float(g.y[i])} for i in g.frontier],
        "points": int(len(g.x)),
        "predictions": preds,
    }
    if g.holdout_above is not None:
        above = np.flatnonzero(g.x > g.holdout_above)
        # the points above the cut that are on the whole data's frontier: what the law claims to predict
        whole = set(pareto_frontier(g.x, g.y).tolist())
        lo, hi = g.band(g.x[above]) if len(above) else (np.array([]), np.array([]))
        plo, phi = g.band(g.x[above], "prediction") if len(above) else (np.array([]), np.array([]))
        rows = [
            {
                "x": float(g.x[i]),
                "actual": float(g.y[i]),
                "predicted": float(g.law.predict(g.x[i])),
                "lo": float(lo[j]),
                "hi": float(hi[j]),
                "inside_ci": bool(lo[j] <= g.y[i] <= hi[j]),
                "prediction_lo": float(plo[j]),
                "prediction_hi": float(phi[j]),
                "inside_prediction": bool(plo[j] <= g.y[i] <= phi[j]),
                "frontier": i in whole,
            }
            for j, i in enumerate(above)
        ]
        err = [r["predicted"] - r["actual"] for r in rows]
        front = [r for r in rows if r["frontier"]]
        out["holdout"] = {
            "above": g.holdout_above,
            "points": rows,
            "rmse": float(np.sqrt(np.mean(np.square(err)))) if err else None,
            "band": "prediction (95%: curve bootstrap + the fitted points' scatter), scored on "
            "the held-out points on the whole data's frontier",
            "share_inside_prediction": float(np.mean([r["inside_prediction"] for r in front])) if front else None,
            "share_inside_curve": float(np.mean([r["inside_ci"] for r in front])) if front else None,
        }
    return out


# ---------------------------------------------------------------------------------------------------
# Tables: read and checked by thresher/experiments/results.py (names kept here for importers)

from thresher.experiments.results import (  # noqa: E402, F401
    RULES,
    finite_json,
    metric_rule,
    numeric,
    positive,
    read_table,
    require_columns,
    with_values,
)


def points(df, x: str, y: str, group: str | None, accuracy: bool, where: str, left_out: dict | None = None):
    """{group: (compute, error)}: every row's numbers checked by RULES first, so an error names the row;
    rows without a value of y are left out (counted per group into `left_out`)."""
    require_columns(df, [x, y] + ([group] if group else []), where)
    table = df
    df, lacking = with_values(table, y, where)
    if left_out is not None and lacking.any():
        gone = table[lacking]
        left_out.update(gone[group].astype(str).value_counts().to_dict() if group else {"all": len(gone)})
    numeric(df, x, where, "compute")
    numeric(df, y, where, metric_rule(accuracy))
    groups = {}
    keys = sorted(df[group].astype(str).unique()) if group else ["all"]
    for key in keys:
        sub = df[df[group].astype(str) == key] if group else df
        xs = numeric(sub, x, where)
        ys = numeric(sub, y, where)
        if accuracy:
            ys = 1.0 - ys
        groups[key] = (xs, ys)
    return groups


def fit_table(
    path: str,
    x: str,
    y: str,
    group: str | None,
    out: str,
    *,
    accuracy: bool = False,
    holdout_above: float | None = None,
    predict: list[float] | None = None,
    n_bootstrap: int = 200,
    bins_per_decade: float = 4.0,
    forms=("power", "offset"),
    seed: int = 0,
    frontier: str = "bins",
    loss: str = "log",
) -> dict:
    import os

    # the numbers given on the command line, before the table is read
    predict = [positive(c, "--predict") for c in predict or []]
    if holdout_above is not None:
        holdout_above = positive(holdout_above, "--holdout-above")
    df = read_table(path)
    fits, left_out = {}, {}
    for name, (xs, ys) in points(df, x, y, group, accuracy, path, left_out).items():
        fits[name] = fit_group(
            name,
            xs,
            ys,
            holdout_above=holdout_above,
            n_bootstrap=n_bootstrap,
            bins_per_decade=bins_per_decade,
            seed=seed,
            forms=forms,
            frontier=frontier,
            loss=loss,
        )
    result = {
        "source": path,
        "x": x,
        "y": y,
        "group": group,
        "accuracy": accuracy,
        "frontier": frontier,
        "loss": loss,
        "left_out": {"why": f"no value of {y}", "rows": left_out},  # per group: rows lacking the metric
        "groups": {k: describe(g, predict) for k, g in fits.items()},
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "fits.json"), "w") as f:
        json.dump(finite_json(result), f, indent=2, allow_nan=False)
    plot(
        fits,
        os.path.join(out, "fits.png"),
        x_label=x,
        y_label=("1 - " + y) if accuracy else y,
        extend_to=max([*(predict or []), *[float(g.x.max()) for g in fits.values()]]),
    )
    return result


# ---------------------------------------------------------------------------------------------------
# Plots


def plot(
    fits: dict[str, GroupFit],
    path: str,
    x_label: str,
    y_label: str,
    extend_to: float | None = None,
    marker: float | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thresher.core.plotting import plain

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, g) in enumerate(fits.items()):
        name = plain(name)  # a group is a value of the user's table
        col = colors[k % len(colors)]
        ax.scatter(g.x, g.y, s=10, color=col, alpha=0.25, label=f"{name}: all points")
        ax.scatter(
            g.x[g.frontier],
            g.y[g.frontier],
            s=28,
            color=col,
            edgecolor="black",
            linewidth=0.5,
            label=f"{name}: frontier",
        )
        lo_x = float(g.x[g.frontier].min())
        hi_x = float(g.x[g.frontier].max())
        inside = np.geomspace(lo_x, hi_x, 200)
        p = g.law
        law_txt = (
            f"{p.A:.3g}·C^-{p.alpha:.3f} + {p.E:.3f}"
            if p.form == "power"
            else f"{p.A:.3g}·(C+{p.C0:.3g})^-{p.alpha:.3f} + {p.E:.3f}"
        )
        ax.plot(inside, p.predict(inside), color=col, label=f"{name}: {law_txt}")
        top = max(extend_to or hi_x, hi_x, float(g.x.max()))
        full = np.geomspace(lo_x, top, 300)
        if top > hi_x:
            beyond = np.geomspace(hi_x, top, 100)
            ax.plot(beyond, p.predict(beyond), color=col, linestyle="--")
        lo, hi = g.band(full)
        ax.fill_between(full, lo, hi, color=col, alpha=0.15)
        if g.holdout_above is not None:
            held = g.x > g.holdout_above
            if held.any():
                ax.scatter(g.x[held], g.y[held], marker="x", s=50, color=col, label=f"{name}: held out")
    if marker:
        ax.axvline(marker, color="grey", linestyle=":", label=f"target {marker:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(plain(x_label))
    ax.set_ylabel(plain(y_label))
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
