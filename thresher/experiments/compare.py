"""A/B comparison of two recipes by scaling laws: `thresher compare GRID --a A --b B --metric M ...`.

Writes REPORT/compare.json, compare.html (the runs, two plots, both verdicts), compare.png (measured
points and fitted curves) and compare_diff.png (the difference B - A against compute).

**What the confidence covers.** The independent units of a grid are its runs, not its checkpoints: the
constant-LR checkpoints of one run share its initialisation, its data order and its subset, so
resampling them as if independent (what a point bootstrap does) leaves the run-to-run spread out of the
interval, and a null comparison then names a winner most of the time (issue 14). Here:

- A *replicate* is one complete small grid of a recipe: every scale trained with one (draw, seed), where
  `draw` is the subset draw (`thresher subset --draws K`) and `seed` the training seed (a scale file's
  `seeds:`). Replicates are independent of each other by construction.
- The *unit* is the draw when a recipe has several draws (the replicates of one draw are averaged: its
  seeds share its data), else the replicate (one draw, several seeds: the interval then covers training
  seeds but not the subset draw, and the report says so).
- **Measured verdict**: at the largest compute both recipes measured (the same scale and checkpoint),
  each unit's measured error; the difference of the means with a Welch t interval.
- **Extrapolated verdict**: a law fitted to each replicate's own frontier (one fit per replicate, points
  at or below `fit_below`), its prediction at the target, the units' means, and a Welch t interval.
  This is a model with a per-run effect: each replicate's curve is the recipe's curve plus its own
  deviation, and the deviations are what the t interval measures.
- **Three-way verdict** at `confidence`: B better (the whole interval of error B - error A below zero),
  A better (above zero), or no detectable difference, with the smallest difference the grid could have
  detected (80% power) and what would resolve it. A recipe with fewer than 2 units gives no verdict:
  one run measures no run-to-run spread.

`benchmarks/ab_calibration.py` checks the false-positive rate and power of exactly this procedure on
simulated grids and on real ones; docs/scaling-laws.md gives its figures and what it does not cover.

This module holds the verdicts (analyse, the joint law's and the backtest's, their sentences and compare.json's
fields) and the command's table entry (from_table, compare_table). The rest is in its own modules:
thresher/experiments/tables.py reads the results table (arms and joint points), replicates.py is the
per-replicate estimator (fits, bands, held-out check), difference.py the t interval both estimators end in,
joint.py the joint law, and compare_report.py writes the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from thresher.core.errors import InputError
from thresher.experiments import joint, scaling
from thresher.experiments.difference import (
    POWER,
    Difference,
    runs_needed,
    settle,
    welch,  # noqa: F401 - compare.welch, as tests reach it
)
from thresher.experiments.replicates import (
    Arm,
    FitOptions,
    _num,
    bands,
    common_points,  # noqa: F401 - compare.common_points, as tests reach it
    extrapolated_difference,
    fit_replicates,
    held_out,
    mean_curve,
    measured_difference,
    unit_predictions,
    values_at,  # noqa: F401 - compare.values_at, as tests reach it
)
from thresher.experiments.tables import (
    TableSpec,
    arms_from_table,
    points_from_table,
    runs_table,
    select_rows,
    target_point,
)

# ---------------------------------------------------------------------------------------------------
# The verdict, in words


def _fmt_diff(d: Difference) -> str:
    if not math.isfinite(d.lo):
        return f"difference {d.diff:+.4f}"
    return (
        f"difference {d.diff:+.4f}, {d.level:.0%} interval {d.lo:+.4f} to {d.hi:+.4f}; "
        f"P(B better) = {d.p_b_better:.2f}; {d.n_a} vs {d.n_b} runs"
    )


def sentence(d: Difference, a: str, b: str, where: str) -> str:
    if d.better:
        win = b if d.better == "b" else a
        return (
            f"{win} is better {where}: error {min(d.mean_a, d.mean_b):.4f} vs {max(d.mean_a, d.mean_b):.4f} "
            f"({_fmt_diff(d)})"
        )
    if d.reason.startswith((NO_LAW, "no joint law")):  # no numbers: nothing was predicted there
        return f"no verdict {where}: {d.reason}"
    head = f"no detectable difference {where}: error {d.mean_a:.4f} ({a}) vs {d.mean_b:.4f} ({b}) ({_fmt_diff(d)})"
    if d.reason and not math.isfinite(d.lo):
        return head + f"; {d.reason}"
    return head + f"; this grid could detect a difference of {d.mde:.4f} ({POWER:.0%} power)"


def resolution(d: Difference, target_law_diff, measured_max: float) -> str:
    """What would turn 'no detectable difference' into a verdict, from the measured spread."""
    if d.better or not math.isfinite(d.mde):
        return ""
    parts = []
    effect = d.diff if abs(d.diff) > 1e-12 else d.mde / 2
    n = runs_needed(d, effect)
    if n:
        parts.append(f"about {n} independent runs per recipe to detect a difference of {abs(effect):.4f}")
    # the compute at which the fitted curves' difference exceeds what this many runs can detect
    cs = np.geomspace(measured_max, measured_max * 1e3, 61)
    gaps = np.abs(target_law_diff(cs))
    beyond = cs[gaps > d.mde]
    if len(beyond):
        parts.append(
            f"or a scale of about {beyond[0]:.3g} (x{beyond[0] / measured_max:.1f} the largest measured), "
            f"where the fitted curves differ by more than {d.mde:.4f}, if the run-to-run spread stays "
            f"as measured"
        )
    return ("to resolve it: " + ", ".join(parts)) if parts else ""


# ---------------------------------------------------------------------------------------------------
# The whole comparison


@dataclass
class Comparison:
    arm_a: Arm
    arm_b: Arm
    target: float
    level: float
    opts: FitOptions
    measured: tuple | None = None  # (x, key, Difference)
    extrapolated: Difference | None = None
    result: dict = field(default_factory=dict)
    direct: dict | None = None  # the replicate estimator's verdicts, beside the joint law's
    joint: object = None  # joint.Joint: the law the verdicts use
    joint_error: str = ""
    point: object = None  # joint.Target: where the extrapolated verdict is


ESTIMATORS = ("joint", "replicates")
NO_LAW = "the law's shape is not pinned by these points"


def analyse(
    arm_a: Arm,
    arm_b: Arm,
    target: float,
    level: float = 0.95,
    opts: FitOptions | None = None,
    pts: joint.Points | None = None,
    point: joint.Target | None = None,
) -> Comparison:
    """Fits, both verdicts and the report's fields; writes nothing (the calibration benchmark calls this).
    With the joint estimator (`pts`: every point of both recipes), the verdicts are the joint law's; the
    per-replicate fits still draw the report's curves and give the direct measured check."""
    opts = opts or FitOptions()
    if not 0.5 <= level < 1:
        raise InputError(f"--confidence {level}: give a level between 0.5 and 1, e.g. 0.95")
    if opts.estimator not in ESTIMATORS:
        raise InputError(f"--estimator {opts.estimator!r}: give one of {', '.join(ESTIMATORS)}")
    for arm in (arm_a, arm_b):
        fit_replicates(arm, opts)
    cmp = Comparison(arm_a, arm_b, target, level, opts)
    cmp.measured = measured_difference(arm_a, arm_b, level)
    cmp.extrapolated = extrapolated_difference(arm_a, arm_b, target, level)
    if opts.estimator == "joint":
        if pts is None:
            raise InputError("the joint estimator needs the table's points (tables.points_from_table)")
        joint_verdicts(cmp, pts, point or joint.Target(compute=target))
    cmp.result = _result(cmp)
    return cmp


def joint_verdicts(cmp: Comparison, pts: joint.Points, point: joint.Target) -> None:
    """Replace both verdicts with the joint law's (thresher/experiments/joint.py); keep the replicate estimator's as
    `cmp.direct` (the measured one is the plain Welch interval at the point, the check beside the law)."""
    cmp.direct = {"measured": cmp.measured, "extrapolated": cmp.extrapolated}
    fit_pts = joint.restrict(pts, cmp.opts.fit_below, cmp.opts.fit_above)
    try:
        cmp.joint = joint.choose(fit_pts)
    except InputError as err:
        cmp.joint_error = str(err)
        d = Difference(*(float("nan"),) * 2, 0, 0, *(float("nan"),) * 2, cmp.level, reason=f"no joint law: {err}")
        cmp.extrapolated = d
        return
    f = cmp.joint.fit
    units = (fit_pts.units_of(0), fit_pts.units_of(1))
    m = cmp.joint.measured
    cmp.measured = (m.compute, m.describe(), joint_difference(f, m, cmp.level, units))
    cmp.extrapolated = joint_difference(f, point, cmp.level, units)
    cmp.point = point
    if f.at_bound():  # the data do not pin the law's shape: no verdict past the measured points
        d = cmp.extrapolated  # no numbers either: what the law says there is not a prediction
        d.lo = d.hi = d.mde = d.diff = d.mean_a = d.mean_b = float("nan")
        d.p_b_better = None
        d.better = None
        d.reason = f"{NO_LAW} ({', '.join(f.at_bound())}, at its bound): read the measured verdict"


def joint_difference(f: joint.Fit, where: joint.Target, level: float, units: tuple) -> Difference:
    c = joint.contrast(f, where)
    # the spread per unit this standard error implies (se^2 = 2 sd^2 / n with n units a recipe): what
    # runs_needed scales to say how many units would resolve an undecided comparison
    sd = c.se * math.sqrt(units[0] * units[1] / max(units[0] + units[1], 1)) if min(units) else float("nan")
    d = Difference(c.mean_a, c.mean_b, units[0], units[1], sd, sd, level)
    d.diff, d.se, d.df = c.diff, c.se, c.df
    return settle(d)


def _result(cmp: Comparison) -> dict:
    a, b, ex, t = cmp.arm_a.name, cmp.arm_b.name, cmp.extrapolated, cmp.target
    measured_max = max(float(r.x.max()) for arm in (cmp.arm_a, cmp.arm_b) for r in arm.reps)
    measured_min = min(float(r.x.min()) for arm in (cmp.arm_a, cmp.arm_b) for r in arm.reps)
    fitted = [r for arm in (cmp.arm_a, cmp.arm_b) for r in arm.reps if r.law is not None]
    law_diff = lambda c: mean_curve(cmp.arm_b, c) - mean_curve(cmp.arm_a, c)  # noqa: E731
    if cmp.joint is not None:  # the joint law's own curves (each recipe's best measured model size)
        f, u = cmp.joint.fit, cmp.point.U if cmp.point is not None else None
        law_diff = lambda c: joint.curve(f, 1, c, u) - joint.curve(f, 0, c, u)  # noqa: E731
        fitted = [True]
    lo = max(measured_min, cmp.opts.fit_above or 0.0)  # a law says nothing below the points it was fitted on
    cross = _crossings(law_diff, lo, max(measured_max, t) * 100, 200 if cmp.joint else 2000) if fitted else []
    where_t = f"at compute {t:.3g} (x{t / measured_max:.3g} the largest measured)"
    verdict = sentence(ex, a, b, where_t)
    unfit = [
        f"recipe {arm.name}: " + "; ".join(sorted({r.note for r in arm.reps}))
        for arm in (cmp.arm_a, cmp.arm_b)
        if not any(r.law for r in arm.reps)
    ]
    if unfit:  # too few points to fit is an answer, not a crash: the report says so and what would fix it
        verdict = (
            "no comparison: " + "; ".join(unfit) + " (more compute scales or checkpoints, or fewer bins per decade)"
        )
    res = resolution(ex, law_diff, measured_max)
    measured = None
    flags = []
    if cmp.measured:
        mx, key, md = cmp.measured
        measured = {
            "x": mx,
            "point": list(key) if isinstance(key, tuple) else key,
            **md.to_dict(),
            "verdict": sentence(md, a, b, f"at the largest measured compute {mx:.3g}"),
            "better": {"a": a, "b": b}.get(md.better),
        }
        if md.better and ex.better and md.better != ex.better:
            flags.append(
                f"the measured and extrapolated verdicts disagree: {measured['verdict'].split(' is')[0]} "
                f"now, the other at the target"
            )
        elif bool(md.better) != bool(ex.better):
            flags.append("only one of the measured and extrapolated verdicts finds a difference")
    for c in cross:
        flags.append(
            f"the fitted curves cross at {c:.3g}"
            + (" (inside the measured range)" if c <= measured_max else " (extrapolated)")
        )
    if t > measured_max * 10:
        flags.append(
            f"the target lies x{t / measured_max:.3g} past the largest measured compute: more than a "
            f"decade of extrapolation"
        )
    if cmp.arm_a.unit_kind == "seed" or cmp.arm_b.unit_kind == "seed":
        flags.append(
            "one subset draw per recipe: the interval covers training seeds, not the draw of the subset "
            "(thresher subset --draws K makes the draw a replicate too)"
        )
    ci = {k: _mean_interval(arm, t, cmp.level, cmp.opts) for k, arm in (("a", cmp.arm_a), ("b", cmp.arm_b))}
    extra = _joint_fields(cmp, flags) if cmp.opts.estimator == "joint" else {}
    if "ci" in extra:
        ci = extra.pop("ci")
    return {
        "a": a,
        "b": b,
        "target_compute": t,
        "confidence": cmp.level,
        "error_a": _num(ex.mean_a),
        "error_b": _num(ex.mean_b),
        "ci_a": ci["a"],
        "ci_b": ci["b"],
        "better": {"a": a, "b": b}.get(ex.better),
        "p_b_better": ex.p_b_better,
        "difference": ex.to_dict(),
        "crossings": [{"x": c, "inside_measured_range": c <= measured_max} for c in cross],
        "verdict": verdict,
        "resolve": res,
        "measured": measured,
        "flags": flags,
        "measured_range": [measured_min, measured_max],
        "extrapolation_factor": t / measured_max,
        "units": {
            k: {"kind": arm.unit_kind, "count": len(arm.units()), "replicates": len(arm.reps)}
            for k, arm in (("a", cmp.arm_a), ("b", cmp.arm_b))
        },
        "estimator": cmp.opts.estimator,
        "method": METHODS[cmp.opts.estimator],
        **extra,
        "fits": {
            arm.name: [
                {
                    "replicate": r.key,
                    "unit": r.unit,
                    "points": len(r.x),
                    **(
                        {
                            "form": r.law.form,
                            "params": r.law.params(),
                            "loss": r.law.loss,
                            "prediction": float(r.law.predict(t)),
                        }
                        if r.law
                        else {"note": r.note}
                    ),
                }
                for r in arm.reps
            ]
            for arm in (cmp.arm_a, cmp.arm_b)
        },
        "fit_options": {
            "frontier": cmp.opts.frontier,
            "loss": cmp.opts.loss,
            "forms": list(cmp.opts.forms),
            "bins_per_decade": cmp.opts.bins_per_decade,
            "fit_below": cmp.opts.fit_below,
        },
    }


METHODS = {
    "joint": "one joint law for both recipes (shared shape and capacity term, each recipe its own asymptote and "
    "data term), a mixed model over every run and checkpoint: random effects per independent unit and per run, "
    "AR(1) along a run's checkpoints; Satterthwaite t (thresher/experiments/joint.py)",
    "replicates": "per-replicate fits, Welch t over independent units (draws, else seeds)",
}


def _joint_fields(cmp: Comparison, flags: list) -> dict:
    """compare.json's joint-law fields, and its flags (target epochs past the measured ones, the direct
    measurement disagreeing with the law, the asymptote assumption)."""
    if cmp.joint is None:
        return {"joint": {"error": cmp.joint_error}}
    j, f = cmp.joint, cmp.joint.fit
    a, b = cmp.arm_a.name, cmp.arm_b.name
    c_a, c_b = (joint.target_of(f, cmp.point, k) for k in (0, 1))
    where = {
        name: {
            "gflops_per_sample": t[0],
            "samples_seen": t[1],
            "subset_size": _num(float(t[2])),
            "epochs": _num(float(t[1] / t[2])) if math.isfinite(t[2]) else None,
        }
        for name, t in ((a, c_a), (b, c_b))
    }
    target_epochs = max((w["epochs"] or 0.0) for w in where.values())
    s_max = float(f.pts.s.max())
    s_target = max(w["samples_seen"] for w in where.values())
    if s_target > s_max * 1.5:
        flags.append(
            f"at the target the law trains for {s_target:.3g} samples, x{s_target / s_max:.3g} the most any "
            f"measured run saw: the data term is extrapolated that far"
        )
    if math.isfinite(j.epochs_measured) and target_epochs > j.epochs_measured * (1 + 1e-9):
        flags.append(
            f"the target repeats its subset {target_epochs:.3g} times, past the {j.epochs_measured:.3g} "
            f"of any measured run: the repetition term is extrapolated"
        )
    miss, noise = f.lack_of_fit()
    if miss > 2 * noise:
        flags.append(
            f"the law misses the measured points' means by {miss:.3g} (RMS), more than twice their noise "
            f"({noise:.3g}): its form does not describe these runs well; trust the measured verdict over "
            f"the extrapolated one"
        )
    direct = cmp.direct["measured"]
    if direct and cmp.measured and direct[2].better and cmp.measured[2].better != direct[2].better:
        flags.append(
            "the joint law's measured verdict differs from the plain average of the runs at that point "
            f"({sentence(direct[2], a, b, 'at ' + format(direct[0], '.3g'))})"
        )
    shared = None
    if j.shared is not None:
        d = joint_difference(j.shared, cmp.point, cmp.level, (len(cmp.arm_a.units()), len(cmp.arm_b.units())))
        shared = {
            **d.to_dict(),
            "reading": "if both recipes had one asymptote (an assumption the verdict does not make): "
            + sentence(d, a, b, "at the target"),
        }
    ci = None
    if not f.at_bound():  # each recipe's law at the target with its interval (the coefficients' covariance)
        at = [joint.interval(f, cmp.point, k, cmp.level) for k in (0, 1)]
        ci = {"a": [at[0][1], at[0][2]], "b": [at[1][1], at[1][2]]}
    out = {
        "ci": ci or {"a": None, "b": None},
        "joint": {
            "asymptote": "per recipe",
            "p_asymptote": _num(j.p_asymptote),
            "shared_asymptote": shared,
            "law": f.params(),
            "variances": f.variances(),
            "target": where,
            "epochs_measured_max": _num(j.epochs_measured),
            "lack_of_fit": {"rms_miss": miss, "noise": noise},
            "shape_at_bound": f.at_bound(),
            "rows": f.pts.independent_runs and "independent runs" or "checkpoints of runs",
            "converged": f.converged,
        },
        "direct": {
            k: (v[2].to_dict() | {"x": v[0]}) if k == "measured" and v else (v.to_dict() if v else None)
            for k, v in cmp.direct.items()
        },
    }
    return out


def _mean_interval(arm: Arm, c: float, level: float, opts: FitOptions) -> list | None:
    """The curve band at c: the t interval of the recipe's mean prediction (None with fewer than 2 units)."""
    if len(unit_predictions(arm, c)) < 2:
        return None
    lo, hi = bands(arm, [c], level, opts)["curve"]
    return [float(lo[0]), float(hi[0])]


def _crossings(diff, lo: float, hi: float, n: int = 2000) -> list[float]:
    c = np.geomspace(lo, hi, n)
    d = diff(c)
    s = np.sign(d)
    out = []
    for i in np.flatnonzero((s[:-1] * s[1:]) < 0):
        l, r = math.log(c[i]), math.log(c[i + 1])
        for _ in range(50):
            m = (l + r) / 2
            if np.sign(diff(np.array([math.exp(m)]))[0]) == s[i]:
                l = m
            else:
                r = m
        out.append(float(math.exp((l + r) / 2)))
    return out


# ---------------------------------------------------------------------------------------------------
# Backtest: would the extrapolation have called what was measured?

OUTCOMES = {
    ("same", True, True): "right",
    ("differ", True, True): "wrong",
    (None, True, False): "unsupported (a difference the runs do not show)",
    (None, False, True): "missed (the runs show a difference the fits did not)",
    (None, False, False): "rightly undecided",
}


def backtest(arm_a: Arm, arm_b: Arm, below: float, level: float, opts: FitOptions, pts=None) -> dict:
    """Fit on points at or below `below`; the extrapolated verdict at the largest point both recipes
    measured above it, scored against the measured verdict there (the runs' plain average: no law)."""
    hit = measured_difference(arm_a, arm_b, level, above=below)
    if hit is None:
        raise InputError(f"--backtest {below:g}: no point measured by both recipes above it")
    x, key, measured = hit
    import copy

    opts = copy.copy(opts)
    opts.fit_below = below
    if opts.estimator == "joint" and pts is not None:
        at = joint.largest_common(pts, above=below)
        j = joint.choose(joint.restrict(pts, below, opts.fit_above))
        predicted = joint_difference(j.fit, at, level, (pts.units_of(0), pts.units_of(1)))
    else:
        fa, fb = copy.deepcopy(arm_a), copy.deepcopy(arm_b)
        for arm in (fa, fb):
            fit_replicates(arm, opts)
        predicted = extrapolated_difference(fa, fb, x, level)
    both = bool(predicted.better) and bool(measured.better)
    agree = ("same" if predicted.better == measured.better else "differ") if both else None
    outcome = OUTCOMES[(agree, bool(predicted.better), bool(measured.better))]
    return {
        "fit_below": below,
        "x": x,
        "factor": x / below,
        "predicted": predicted.to_dict(),
        "measured": measured.to_dict(),
        "outcome": outcome,
        "predicted_verdict": sentence(
            predicted, arm_a.name, arm_b.name, f"at {x:.3g} (fitted at or below {below:.3g})"
        ),
        "measured_verdict": sentence(measured, arm_a.name, arm_b.name, f"at {x:.3g} (measured)"),
    }


# ---------------------------------------------------------------------------------------------------
# The command


def from_table(path: str, a: str, b: str, metric: str, target, *, where: list | None = None, **kw) -> Comparison:
    """Read the results table (rows with every --where COLUMN=VALUE) and compare A with B at `target` (a
    compute figure, or 'Nx': N times the largest compute measured), or at `point` ({model, samples,
    subset_size}); the other keywords are compare_table's. `compare_report.run` writes it out."""
    df = select_rows(scaling.read_table(path), where or [], path)
    cmp = compare_table(df, a, b, metric, target, where=path, **kw)
    cmp.result.update({"source": path, "where": list(where or [])})
    return cmp


def compare_table(
    df,
    a: str,
    b: str,
    metric: str,
    target,
    *,
    x: str = "gflops_total",
    group: str = "recipe",
    accuracy: bool = True,
    level: float = 0.95,
    opts: FitOptions | None = None,
    point: dict | None = None,
    where: str = "results",
    backtest_below: float | None = None,
) -> Comparison:
    """from_table on a table already read (the calibration and ladder benchmarks call this)."""
    import pandas as pd

    opts = opts or FitOptions()
    cuts = (("--fit-below", opts.fit_below), ("--fit-above", opts.fit_above), ("--backtest", backtest_below))
    for flag, cut in cuts:  # computes the user gave: checked before any fit
        if cut is not None:
            scaling.positive(cut, flag)
    spec = TableSpec(metric, x=x, group=group, accuracy=accuracy, where=where, rows=opts.rows)
    pts, notes = points_from_table(df, a, b, spec)
    df = df[pd.to_numeric(df[metric], errors="coerce").notna()]  # as points_from_table: rows lacking it left out
    arm_a, arm_b = arms_from_table(df, a, b, spec)
    tp = target_point(point, df, pts) if point else None
    target = tp.compute if tp is not None else resolve_target(target, arm_a, arm_b)
    cmp = analyse(arm_a, arm_b, target, level, opts, pts=pts, point=tp)
    result = cmp.result
    result.update({"metric": metric, "x": x, "accuracy": accuracy, "rows": notes})
    left = {k: v for k, v in notes["left_out"].items() if v}
    if left:
        result["flags"].append(
            "rows without a value of the metric were left out: "
            + ", ".join(f"{n} of recipe {k}" for k, n in left.items())
        )
    if opts.fit_below is not None:
        result["held_out"] = {k: held_out(arm, level, opts) for k, arm in (("a", arm_a), ("b", arm_b))}
    if backtest_below is not None:
        result["backtest"] = backtest(arm_a, arm_b, backtest_below, level, opts, pts=pts)
    result["runs"] = runs_table(df, a, b, metric, x, group)
    return cmp


def json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v))


def resolve_target(target, arm_a: Arm, arm_b: Arm) -> float:
    """--target-compute: a compute, or 'Nx' (N times the largest measured); positive and finite (`-3x`,
    `0` and `nan` once gave a verdict 'at compute -810' and a compare.json holding NaN)."""
    largest = max(float(r.x.max()) for arm in (arm_a, arm_b) for r in arm.reps)
    multiple = isinstance(target, str) and target.strip().lower().endswith("x")
    try:
        value = scaling.positive(target.strip()[:-1] if multiple else target, "--target-compute")
        value *= largest if multiple else 1.0
    except InputError:
        value = math.nan
    if not math.isfinite(value):  # positive() refused it, or a huge multiple overflowed
        raise InputError(
            f"--target-compute {target!r}: give a positive compute (e.g. 1e12) or a positive multiple of the "
            f"largest measured compute (e.g. 10x)"
        )
    return value
