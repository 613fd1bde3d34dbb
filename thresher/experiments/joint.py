"""One joint scaling law for both recipes of a comparison, fitted as a linear mixed model: what
`thresher compare` uses by default (`--estimator joint`; `--estimator replicates` is the earlier
per-replicate fits with a Welch t, thresher/experiments/replicates.py). Its points come from the results
table by thresher/experiments/tables.py (points_from_table).

The law, over every run and every checkpoint of both recipes (Hoffmann et al., 2022, "approach 3",
with Muennighoff et al., 2023's effective data for repeated samples):

    err = E_k + P_k * g^-a + B_k * D_k^-b  +  u_unit + v_run + e_point

- g: forward GFLOPs per sample (the model's size); s: samples seen; U: the subset's size (unique samples);
- D_k = s while s <= U, else U + U R_k (1 - exp(-(s/U - 1) / R_k)): a sample repeated r times is worth
  less each time, and R_k (repetitions) sets how fast; only when the table names subset sizes and some
  run repeats its subset; else D_k = s;
- the shape (a, b) is shared by both recipes; each recipe has its own linear coefficients E_k, P_k, B_k
  (and R_k): the recipe effect. Without model sizes (a compute-only table) the law is E_k + B_k C^-b;
- random effects: u per independent unit (a subset draw, else a replicate), v per training run (its
  checkpoints share it), and e, AR(1) along a run's checkpoints. A table whose rows are independent runs
  (cosine schedules, most published tables) has a single residual: the runs' scatter about the law.

Given the shape and R_k the law is linear in its coefficients, so it is a linear mixed model: the shape
and the variance components are found by maximum likelihood (the coefficients profiled out by
generalised least squares), then the variance components by REML at that shape. A difference between
the recipes at a target (a model size and samples seen, or a compute: the best of the measured model
sizes at it) is a contrast of the coefficients; its variance adds the shape's uncertainty (the profile
likelihood's curvature, delta method) and its degrees of freedom are Satterthwaite's (from the REML
curvature of the variance components), as lmerTest gives them. With few independent units those
degrees of freedom are few, and the interval pays for it.

Why not statsmodels' MixedLM: the shape is nonlinear, so every comparison fits hundreds of linear mixed
models (and the calibration benchmark thousands of comparisons), and MixedLM has no AR(1) residual; the
covariance here is one dense matrix of at most a few hundred rows. tests/test_joint.py checks the
estimates against closed forms: ordinary least squares and n - p degrees of freedom for independent rows,
the ANOVA variances for a balanced nested layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from thresher.core.errors import InputError

A_BOUNDS = (0.05, 3.0)
B_BOUNDS = (0.05, 3.0)
LOG_R_BOUNDS = (math.log(0.1), math.log(1e3))
RHO_BOUNDS = (-0.5, 0.95)


@dataclass
class Points:
    """Every measured point of both recipes: the joint law's data."""

    y: np.ndarray  # errors
    k: np.ndarray  # 0 for recipe A, 1 for B
    g: np.ndarray  # GFLOPs per sample (ones where the table has no model size)
    s: np.ndarray  # samples seen (compute where the table has no model size)
    U: np.ndarray  # subset size (inf where unknown)
    unit: np.ndarray  # int code of the independent unit
    run: np.ndarray  # int code of the training run
    order: np.ndarray  # checkpoint index within its run
    names: tuple = ("a", "b")
    has_g: bool = True
    independent_runs: bool = False  # every row its own run
    free_e: bool = True  # the asymptote per recipe (else shared: the recipes differ in their data term)

    def __post_init__(self):
        # whether any run repeats its subset: only then is there a repetition term to fit
        self.repeats = bool(np.any(np.isfinite(self.U) & (self.s > self.U * (1 + 1e-9))))

    def units_of(self, k: int) -> int:
        return len(np.unique(self.unit[self.k == k]))


@dataclass
class Target:
    """Where to compare: a model size g and samples seen s (on a subset of U), or a compute (the best of
    the measured model sizes at it)."""

    compute: float | None = None
    g: float | None = None
    s: float | None = None
    U: float | None = None

    def describe(self) -> str:
        if self.compute is not None and self.g is None:
            return f"compute {self.compute:.3g}"
        size = f" on subsets of {self.U:.6g}" if self.U is not None and math.isfinite(self.U) else ""
        return f"model {self.g:.4g} GFLOPs/sample at {self.s:.6g} samples seen{size}"


@dataclass
class Fit:
    pts: Points
    a: float
    b: float
    log_r: np.ndarray  # [2]: per recipe (ignored without repetition)
    phi: np.ndarray  # variance parameters (log variances, then rho)
    beta: np.ndarray
    cov_beta: np.ndarray
    cov_theta: np.ndarray  # shape parameters' covariance (a, b[, log R_0, log R_1])
    cov_phi: np.ndarray  # REML covariance of the variance parameters
    loglik: float
    g_ref: float
    s_ref: float
    levels: list = field(default_factory=list)  # names of the variance components
    converged: bool = True
    structure: object = None

    def at_bound(self) -> list[str]:
        """Shape parameters the data push to a bound: the law's form does not describe these points (a
        data exponent at 0.05 is a straight line in log samples), so nothing past them can be read off it."""
        names = (["a"] if self.pts.has_g else []) + ["b"]
        vals = ([self.a] if self.pts.has_g else []) + [self.b]
        bounds = ([A_BOUNDS] if self.pts.has_g else []) + [B_BOUNDS]
        return [f"{n} = {v:.3g}" for n, v, (lo, hi) in zip(names, vals, bounds) if v <= lo * 1.001 or v >= hi * 0.999]

    def lack_of_fit(self) -> tuple[float, float]:
        """(RMS of the law's misses of each measured point's mean over its units, the noise such a mean
        has): a law that misses its own points by much more than their noise describes them badly."""
        x = features(
            self.pts, self.a, self.b, self.log_r, self.pts.g, self.pts.s, self.pts.U, self.pts.k, self.g_ref, self.s_ref
        )
        r = self.pts.y - x @ self.beta
        cells = {}
        for i, key in enumerate(zip(self.pts.k, self.pts.g, self.pts.s, self.pts.U)):
            cells.setdefault(key, []).append(r[i])
        misses = np.array([np.mean(v) for v in cells.values()])
        total = sum(math.exp(p) for n, p in zip(self.levels, self.phi) if n != "ar1")
        per_cell = np.mean([len(v) for v in cells.values()])
        return float(np.sqrt(np.mean(misses**2))), float(math.sqrt(total / per_cell))

    def theta(self) -> np.ndarray:
        return np.r_[self.a, self.b, self.log_r] if self.pts.repeats else np.r_[self.a, self.b]

    def variances(self) -> dict:
        out = {name: float(math.exp(v)) for name, v in zip(self.levels, self.phi)}
        if "ar1" in self.levels:
            out["ar1"] = float(self.phi[self.levels.index("ar1")])
        return out

    def params(self) -> dict:
        """The law in the table's units: a, b, P, and per recipe E, B (and R)."""
        coef = dict(zip(columns(self.pts), self.beta))
        out = {"a": self.a if self.pts.has_g else None, "b": self.b, "recipes": {}}
        if self.pts.has_g:
            out["P"] = float(coef["P"] * self.g_ref**self.a)
        for k, name in enumerate(self.pts.names):
            row = {"E": float(coef.get(f"E_{k}", coef.get("E")))}
            row["B"] = float(coef[f"B_{k}"] * self.s_ref**self.b)
            if self.pts.repeats:
                row["R"] = float(math.exp(self.log_r[k]))
            out["recipes"][name] = row
        out["asymptote"] = "per recipe" if self.pts.free_e else "shared"
        return out


# ---------------------------------------------------------------------------------------------------
# The law's features and the covariance


def effective(s, U, log_r: float) -> np.ndarray:
    """Effective samples: s up to one epoch, then each repetition worth exp(-r/R) of a new sample."""
    s, U = np.asarray(s, float), np.asarray(U, float)
    r = math.exp(log_r)
    over = np.isfinite(U) & (s > U)
    with np.errstate(invalid="ignore", over="ignore"):
        rep = np.where(over, U + U * r * (1 - np.exp(-(s / np.where(over, U, 1.0) - 1) / r)), s)
    return rep


def columns(pts: Points) -> list[str]:
    """The law's coefficients: the asymptote per recipe (or shared), the capacity term shared, the data
    term per recipe."""
    return (["E_0", "E_1"] if pts.free_e else ["E"]) + (["P"] if pts.has_g else []) + ["B_0", "B_1"]


def features(pts: Points, a: float, b: float, log_r, g, s, U, k, g_ref: float, s_ref: float) -> np.ndarray:
    """Rows of the design matrix (columns() names them) for points (g, s, U) of recipes k."""
    g, s, U, k = (np.atleast_1d(np.asarray(v, float)) for v in (g, s, U, k))
    cols = [(k == 0) * 1.0, (k == 1) * 1.0] if pts.free_e else [np.ones(len(s))]
    if pts.has_g:
        cols.append(np.power(g / g_ref, -a))
    d = np.empty(len(s))
    for kk in (0, 1):
        m = k == kk
        d[m] = effective(s[m], U[m], log_r[kk]) if pts.repeats else s[m]
    dd = np.power(d / s_ref, -b)
    cols += [dd * (k == 0), dd * (k == 1)]
    return np.stack(cols, axis=1)


def _levels(pts: Points) -> list[str]:
    """The variance components this table can tell apart: a unit level only if units hold several runs
    (or rows) and each recipe has at least 2 (one unit per recipe is the recipe effect itself), a run
    level only if some run has several points, AR(1) only along runs of several points."""
    names = []
    n = len(pts.y)
    runs_have_points = len(np.unique(pts.run)) < n
    units_per_recipe = min(len(np.unique(pts.unit[pts.k == k])) for k in (0, 1))
    nested = len(np.unique(pts.unit)) < len(np.unique(pts.run if runs_have_points else np.arange(n)))
    if nested and units_per_recipe >= 2:
        names.append("unit")
    if runs_have_points:
        names.append("run")
    names.append("residual")
    if runs_have_points:
        names.append("ar1")
    return names


class Structure:
    """The covariance's fixed parts, computed once per fit: V = sum of var_l * same-group masks, plus the
    residual's AR(1) along each run."""

    def __init__(self, pts: Points):
        self.levels = _levels(pts)
        self.masks = {
            "unit": (pts.unit[:, None] == pts.unit[None, :]).astype(float),
            "run": (pts.run[:, None] == pts.run[None, :]).astype(float),
        }
        self.lag = np.abs(pts.order[:, None] - pts.order[None, :])
        self.eye = np.eye(len(pts.y))

    def cov(self, phi: np.ndarray) -> np.ndarray:
        v = np.zeros_like(self.eye)
        res = math.exp(phi[self.levels.index("residual")])
        for name, p in zip(self.levels, phi):
            if name in self.masks:
                v += math.exp(p) * self.masks[name]
        if "ar1" in self.levels:
            rho = float(phi[self.levels.index("ar1")])
            v += res * self.masks["run"] * np.power(rho, self.lag)
        else:
            v += res * self.eye
        return v


def _gls(x: np.ndarray, y: np.ndarray, v: np.ndarray):
    """(beta, cov_beta, ML log-lik, REML log-lik) for y = x beta + noise ~ N(0, v)."""
    from scipy.linalg import solve_triangular

    n, p = x.shape
    try:
        lo = np.linalg.cholesky(v)
        w = solve_triangular(lo, np.column_stack([x, y]), lower=True, check_finite=False)
        xw, yw = w[:, :p], w[:, p]
        xtx = xw.T @ xw
        c = np.linalg.cholesky(xtx)
    except (np.linalg.LinAlgError, ValueError):
        return None
    beta = np.linalg.solve(xtx, xw.T @ yw)
    r = yw - xw @ beta
    logdet_v = 2 * float(np.log(np.diag(lo)).sum())
    rss = float(r @ r)
    ml = -0.5 * (logdet_v + rss + n * math.log(2 * math.pi))
    reml = -0.5 * (logdet_v + rss + 2 * float(np.log(np.diag(c)).sum()) + (n - p) * math.log(2 * math.pi))
    return beta, np.linalg.inv(xtx), ml, reml


# ---------------------------------------------------------------------------------------------------
# Fitting

GRID_A = np.geomspace(0.08, 2.0, 10)
GRID_B = np.geomspace(0.08, 2.0, 10)
GRID_LOG_R = np.log([0.5, 2.0, 8.0, 50.0])


def _start(pts: Points, g_ref: float, s_ref: float) -> np.ndarray:
    """The shape whose ordinary least squares fit is best, on a grid: where the likelihood search starts."""
    best, arg = np.inf, None
    for a in GRID_A if pts.has_g else GRID_A[:1]:
        for b in GRID_B:
            for lr in GRID_LOG_R if pts.repeats else GRID_LOG_R[:1]:
                log_r = np.array([lr, lr])
                x = features(pts, a, b, log_r, pts.g, pts.s, pts.U, pts.k, g_ref, s_ref)
                coef, *_ = np.linalg.lstsq(x, pts.y, rcond=None)
                rss = float(np.sum((x @ coef - pts.y) ** 2))
                if rss < best:
                    best, arg = rss, [a, b] + ([lr, lr] if pts.repeats else [])
    return np.asarray(arg, float)


def fit(pts: Points) -> Fit:
    """Shape and variances by ML (from the best least-squares shape), then the variances again by REML at
    that shape."""
    from scipy.optimize import minimize

    if len(np.unique(pts.k)) < 2:
        raise InputError("the joint law needs points of both recipes")
    g_ref = float(np.exp(np.mean(np.log(pts.g))))
    s_ref = float(np.exp(np.mean(np.log(pts.s))))
    st = Structure(pts)
    levels = st.levels
    n_theta = 4 if pts.repeats else 2
    p = len(columns(pts))
    if len(pts.y) <= p + len(levels):
        raise InputError(f"{len(pts.y)} points for a law with {p} coefficients and {len(levels)} variances")
    th_bounds = [A_BOUNDS, B_BOUNDS] + ([LOG_R_BOUNDS] * 2 if pts.repeats else [])
    th0 = _start(pts, g_ref, s_ref)
    x0 = features(
        pts, th0[0], th0[1], th0[2:4] if pts.repeats else np.zeros(2), pts.g, pts.s, pts.U, pts.k, g_ref, s_ref
    )
    coef, *_ = np.linalg.lstsq(x0, pts.y, rcond=None)
    var_r = max(float(np.var(pts.y - x0 @ coef)), 1e-10)
    lv = (math.log(var_r * 1e-6), math.log(var_r * 100))
    phi_bounds = [RHO_BOUNDS if name == "ar1" else lv for name in levels]
    ph0 = np.array([0.3 if name == "ar1" else math.log(var_r / (len(levels) - ("ar1" in levels))) for name in levels])

    def unpack(z):
        th, ph = z[:n_theta], z[n_theta:]
        return th[0], th[1], (th[2:4] if pts.repeats else np.zeros(2)), ph

    def nll(z, reml=False):
        a, b, log_r, ph = unpack(z)
        x = features(pts, a, b, log_r, pts.g, pts.s, pts.U, pts.k, g_ref, s_ref)
        got = _gls(x, pts.y, st.cov(ph))
        return 1e12 if got is None else -(got[3] if reml else got[2])

    best = minimize(nll, np.r_[th0, ph0], method="L-BFGS-B", bounds=th_bounds + phi_bounds)
    th = best.x[:n_theta]
    a, b, log_r, _ = unpack(best.x)
    # REML for the variances at the fitted shape: less biased with few units, which sets the interval
    rr = minimize(lambda ph: nll(np.r_[th, ph], reml=True), best.x[n_theta:], method="L-BFGS-B", bounds=phi_bounds)
    phi = rr.x
    x = features(pts, a, b, log_r, pts.g, pts.s, pts.U, pts.k, g_ref, s_ref)
    beta, cov_beta, ml, _ = _gls(x, pts.y, st.cov(phi))
    cov_theta = _inverse_hessian(lambda t: nll(np.r_[t, phi]), th, th_bounds)
    cov_phi = _inverse_hessian(lambda ph: nll(np.r_[th, ph], reml=True), phi, phi_bounds)
    f = Fit(pts, a, b, np.asarray(log_r, float), phi, beta, cov_beta, cov_theta, cov_phi, ml, g_ref, s_ref, levels)
    f.converged = bool(best.success)
    f.structure = st
    return f


def _inverse_hessian(f, z: np.ndarray, bounds) -> np.ndarray:
    """The inverse of f's numerical Hessian at z (pseudo-inverse: a parameter at its bound, or one the data
    do not pin, contributes nothing rather than an infinity)."""
    n = len(z)
    h = np.zeros((n, n))
    step = np.array([max(1e-4, 1e-3 * abs(v)) for v in z])
    f0 = f(z)
    at_bound = [abs(z[i] - bounds[i][0]) < 2 * step[i] or abs(z[i] - bounds[i][1]) < 2 * step[i] for i in range(n)]

    def e(i):
        v = np.zeros(n)
        v[i] = step[i]
        return v

    for i in range(n):
        for j in range(i, n):
            if i == j:
                h[i, i] = (f(z + e(i)) - 2 * f0 + f(z - e(i))) / step[i] ** 2
            else:
                h[i, j] = h[j, i] = (
                    f(z + e(i) + e(j)) - f(z + e(i) - e(j)) - f(z - e(i) + e(j)) + f(z - e(i) - e(j))
                ) / (4 * step[i] * step[j])
    keep = [i for i in range(n) if not at_bound[i] and h[i, i] > 0]
    out = np.zeros((n, n))
    if keep:
        sub = h[np.ix_(keep, keep)]
        w, vecs = np.linalg.eigh(sub)
        inv = (vecs * np.where(w > 1e-9 * max(w.max(), 1e-300), 1 / np.maximum(w, 1e-300), 0.0)) @ vecs.T
        out[np.ix_(keep, keep)] = inv
    return out


# ---------------------------------------------------------------------------------------------------
# Predictions and the contrast


def target_of(f: Fit, t: Target, k: int, log_r=None, a=None, b=None):
    """(g, s, U) of recipe k's target: the given model size, or the best measured size at the compute."""
    pts = f.pts
    U = t.U if t.U is not None else _default_u(pts, k)
    if t.g is not None:
        return t.g, t.s, U
    gs = np.unique(pts.g)  # the measured model sizes: the law never picks a model nobody trained
    s = t.compute / gs
    a, b = (f.a, f.b) if a is None else (a, b)
    log_r = f.log_r if log_r is None else log_r
    x = features(pts, a, b, log_r, gs, s, np.full(len(gs), U), np.full(len(gs), k), f.g_ref, f.s_ref)
    i = int(np.argmin(x @ f.beta))
    return gs[i], s[i], U


def _default_u(pts: Points, k: int) -> float:
    u = pts.U[(pts.k == k) & np.isfinite(pts.U)]
    return float(np.max(u)) if len(u) else float("inf")


def predict(f: Fit, t: Target, k: int, beta=None, theta=None) -> float:
    a, b, log_r = f.a, f.b, f.log_r
    if theta is not None:
        a, b = theta[0], theta[1]
        log_r = theta[2:4] if f.pts.repeats else log_r
    g, s, U = target_of(f, t, k, log_r, a, b)
    x = features(f.pts, a, b, log_r, [g], [s], [U], [k], f.g_ref, f.s_ref)[0]
    return float(x @ (f.beta if beta is None else beta))


def curve(f: Fit, k: int, computes, U: float | None = None) -> np.ndarray:
    return np.array([predict(f, Target(compute=float(c), U=U), k) for c in computes])


@dataclass
class Contrast:
    mean_a: float
    mean_b: float
    diff: float  # B - A
    se: float
    df: float
    target_a: tuple  # (g, s, U) where recipe A is predicted
    target_b: tuple


def contrast(f: Fit, t: Target) -> Contrast:
    """error B - error A at t: its estimate, its standard error (coefficients' GLS covariance plus the
    shape's by the delta method) and its Satterthwaite degrees of freedom."""
    ga, gb = target_of(f, t, 0), target_of(f, t, 1)
    xa = features(f.pts, f.a, f.b, f.log_r, [ga[0]], [ga[1]], [ga[2]], [0], f.g_ref, f.s_ref)[0]
    xb = features(f.pts, f.a, f.b, f.log_r, [gb[0]], [gb[1]], [gb[2]], [1], f.g_ref, f.s_ref)[0]
    c = xb - xa
    diff = float(c @ f.beta)
    var_beta = float(c @ f.cov_beta @ c)
    var_theta = _theta_variance(f, t)
    df = _satterthwaite(f, c, var_beta)
    return Contrast(float(xa @ f.beta), float(xb @ f.beta), diff, math.sqrt(max(var_beta + var_theta, 0.0)), df, ga, gb)


def _profiled_diff(f: Fit, theta: np.ndarray, t: Target) -> float:
    """The difference at t with the shape set to theta and the coefficients refitted (GLS at the fitted
    variances): how the estimate moves with the shape."""
    log_r = theta[2:4] if f.pts.repeats else f.log_r
    x = features(f.pts, theta[0], theta[1], log_r, f.pts.g, f.pts.s, f.pts.U, f.pts.k, f.g_ref, f.s_ref)
    got = _gls(x, f.pts.y, f.structure.cov(f.phi))
    if got is None:
        return float("nan")
    beta = got[0]
    return predict(f, t, 1, beta, theta) - predict(f, t, 0, beta, theta)


def _theta_variance(f: Fit, t: Target) -> float:
    th = f.theta()
    if not np.any(f.cov_theta):
        return 0.0
    grad = np.zeros(len(th))
    for i in range(len(th)):
        h = max(1e-4, 1e-3 * abs(th[i]))
        up, dn = th.copy(), th.copy()
        up[i] += h
        dn[i] -= h
        grad[i] = (_profiled_diff(f, up, t) - _profiled_diff(f, dn, t)) / (2 * h)
    grad = np.nan_to_num(grad)
    return float(max(grad @ f.cov_theta @ grad, 0.0))


def _satterthwaite(f: Fit, c: np.ndarray, var_beta: float) -> float:
    """2 q^2 / Var(q) for q = c' Cov(beta) c, Var(q) from the REML covariance of the variance parameters."""
    x = features(f.pts, f.a, f.b, f.log_r, f.pts.g, f.pts.s, f.pts.U, f.pts.k, f.g_ref, f.s_ref)
    n, p = x.shape

    def q(phi):
        got = _gls(x, f.pts.y, f.structure.cov(phi))
        return float(c @ got[1] @ c) if got is not None else float("nan")

    grad = np.zeros(len(f.phi))
    for i in range(len(f.phi)):
        h = 1e-4
        up, dn = f.phi.copy(), f.phi.copy()
        up[i] += h
        dn[i] -= h
        grad[i] = (q(up) - q(dn)) / (2 * h)
    grad = np.nan_to_num(grad)
    vq = float(grad @ f.cov_phi @ grad)
    top = float(n - p)
    if vq <= 0 or not math.isfinite(vq):
        return top
    return float(min(max(2 * var_beta**2 / vq, 1.0), top))


# ---------------------------------------------------------------------------------------------------
# The comparison: which law, where, and the contrasts


@dataclass
class Joint:
    fit: Fit  # the law the verdicts use: each recipe its own asymptote
    shared: Fit | None  # the same law with one asymptote for both: a reading under that assumption, not a verdict
    p_asymptote: float  # likelihood-ratio test of per-recipe asymptotes against a shared one
    measured: Target  # the largest point both recipes measured
    epochs_measured: float  # the most repetitions of a subset any measured point has (nan: sizes unknown)


def choose(pts: Points) -> Joint:
    """The law with each recipe's own asymptote (the verdicts), and with a shared one (a sensitivity
    reading). The verdicts never assume the asymptotes equal: a recipe whose data term is smaller but whose
    asymptote is higher wins where measured and loses further out, and with a shared asymptote the law
    cannot see that (benchmarks/ab_calibration.py's cross-asymptote world: 57% wrong-way verdicts at 10x).
    The price: the asymptotes' difference is confounded with the replicates' own offsets, so far from the
    measured range the interval is at least the replicate spread over the units."""
    from dataclasses import replace

    from scipy import stats

    free = fit(replace(pts, free_e=True))
    try:
        shared = fit(replace(pts, free_e=False))
    except InputError:
        shared = None
    p = float(stats.chi2.sf(max(2 * (free.loglik - shared.loglik), 0.0), 1)) if shared else float("nan")
    ep = pts.s / pts.U
    return Joint(free, shared, p, largest_common(pts), float(np.max(ep)) if np.isfinite(ep).any() else float("nan"))


def largest_common(pts: Points, above: float | None = None, below: float | None = None) -> Target:
    """The point (model size, samples seen, subset size) of largest compute that both recipes measured."""
    keys = [set(zip(pts.g[pts.k == k], pts.s[pts.k == k], pts.U[pts.k == k])) for k in (0, 1)]
    both = [
        t
        for t in keys[0] & keys[1]
        if (above is None or t[0] * t[1] > above) and (below is None or t[0] * t[1] <= below)
    ]
    if not both:
        raise InputError("no point (model size, samples seen, subset size) measured by both recipes")
    g, s, U = max(both, key=lambda t: (t[0] * t[1], t[0]))
    return Target(compute=g * s, g=g, s=s, U=U)


def restrict(pts: Points, below: float | None = None, above: float | None = None) -> Points:
    """The points at or below a compute (--fit-below, --backtest) and at or above one (--fit-above)."""
    from dataclasses import replace

    c = pts.g * pts.s
    m = np.ones(len(c), bool)
    if below is not None:
        m &= c <= below * (1 + 1e-9)
    if above is not None:
        m &= c >= above * (1 - 1e-9)
    return replace(pts, **{k: getattr(pts, k)[m] for k in ("y", "k", "g", "s", "U", "unit", "run", "order")})


def interval(f: Fit, t: Target, k: int, level: float) -> tuple[float, float, float]:
    """(prediction, lo, hi) of recipe k at t: the coefficients' covariance and a t with the law's residual
    degrees of freedom (the curve's band; the verdicts' intervals are contrast's)."""
    from scipy import stats

    q = float(stats.t.ppf(0.5 + level / 2, max(len(f.pts.y) - len(f.beta), 1)))
    g, s, u = target_of(f, t, k)
    x = features(f.pts, f.a, f.b, f.log_r, [g], [s], [u], [k], f.g_ref, f.s_ref)[0]
    m, h = float(x @ f.beta), q * math.sqrt(max(float(x @ f.cov_beta @ x), 0.0))
    return m, m - h, m + h


def band(f: Fit, k: int, computes, level: float, U: float | None = None) -> tuple:
    """Recipe k's law along compute (the best measured model size at each) and its interval."""
    rows = np.array([interval(f, Target(compute=float(c), U=U), k, level) for c in computes])
    return rows[:, 0], rows[:, 1], rows[:, 2]
