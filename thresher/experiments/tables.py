"""Reading a results table for `thresher compare`: the rows every `--where COLUMN=VALUE` selects, each
recipe's replicates (`arms_from_table`: the per-replicate estimator's data, thresher/experiments/replicates.py)
and every point of both recipes (`points_from_table`: the joint law's data, thresher/experiments/joint.py),
both read by one TableSpec (the metric, compute and recipe columns, accuracy or error, the rows' kind). Every
number passes scaling.RULES (thresher/experiments/scaling.py): an error names the row and the column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.core.errors import InputError
from thresher.experiments import scaling
from thresher.experiments.joint import Points, Target
from thresher.experiments.replicates import Arm, Replicate

REPLICATE_COLUMNS = ("draw", "seed")  # results.csv columns that name a run's replicate
POINT_COLUMNS = ("subset_size", "scale", "epoch")  # columns that name the same measured point in every replicate
ROWS = ("auto", "checkpoints", "runs")
SIZE_COLUMNS = ("gflops_per_sample", "gflops")  # a model's forward GFLOPs per sample: ours, LAION's


@dataclass(frozen=True)
class TableSpec:
    """How to read a results table's rows: what compare's arms and the joint law's points both take."""

    metric: str
    x: str = "gflops_total"  # the compute column
    group: str = "recipe"  # the column that names each row's recipe
    accuracy: bool = True  # the metric is an accuracy (error = 1 - metric), else an error
    where: str = "results"  # the table, as messages name it
    rows: str = "auto"  # checkpoints of few runs, or independent runs (rows_kind; the joint law's points)


def select_rows(df, where: list, path: str):
    """Rows with COLUMN=VALUE for every --where (compared as text)."""
    for cond in where:
        col, eq, val = cond.partition("=")
        if not eq or col not in df.columns:
            raise InputError(
                f"--where {cond!r}: give COLUMN=VALUE with a column of {path}: {', '.join(map(str, df.columns))}"
            )
        df = df[df[col].astype(str) == val]
        if df.empty:
            raise InputError(f"--where {cond!r}: no rows of {path} have it")
    return df


def rows_kind(df, rows: str = "auto") -> tuple[str, str]:
    """Whether the table's rows are checkpoints of few runs or independent runs, and why we think so."""
    if rows not in ROWS:
        raise InputError(f"--rows {rows!r}: give one of {', '.join(ROWS)}")
    if rows != "auto":
        return rows, "as --rows says"
    if "lr_scheduler" in df.columns and (df["lr_scheduler"].astype(str) == "const").any():
        return "checkpoints", "lr_scheduler const: each run's constant-LR checkpoints are rows"
    if "epoch" in df.columns and "total_epochs" in df.columns and (df["epoch"] < df["total_epochs"]).any():
        return "checkpoints", "rows before a run's last epoch: checkpoints of one run"
    return "runs", "no checkpoint columns (epoch, lr_scheduler const): every row is its own training run"


def arms_from_table(df, a: str, b: str, spec: TableSpec) -> tuple[Arm, Arm]:
    """Each recipe's replicates (one per draw and seed): their points' compute and error."""
    metric, x, group, accuracy, where = spec.metric, spec.x, spec.group, spec.accuracy, spec.where
    scaling.require_columns(df, (x, metric, group), where)
    present = sorted(df[group].astype(str).unique())
    arms = []
    for name in (a, b):
        sub = df[df[group].astype(str) == name]
        if sub.empty:
            raise InputError(f"{where}: no rows with {group} = {name!r}; present: {', '.join(present)}")
        arms.append(_arm(name, sub, x, metric, accuracy, where))
    return arms[0], arms[1]


def _arm(name, sub, x, metric, accuracy, where) -> Arm:
    cols = [c for c in REPLICATE_COLUMNS if c in sub.columns]
    point_cols = [c for c in POINT_COLUMNS if c in sub.columns]
    draws = sub["draw"].nunique() if "draw" in sub.columns else 1
    unit_kind = "draw" if draws > 1 else ("seed" if cols else "run")
    reps = []
    groups = sub.groupby(cols, sort=True) if cols else [((), sub)]
    for key, rows in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = " / ".join(f"{c} {v}" for c, v in zip(cols, key)) or "all rows"
        unit = f"draw {key[cols.index('draw')]}" if unit_kind == "draw" else label
        xs = scaling.numeric(rows, x, where, "compute")  # scaling.RULES: an error names the row
        ys = scaling.numeric(rows, metric, where, scaling.metric_rule(accuracy))
        ys = 1.0 - ys if accuracy else ys
        pts = list(zip(*(rows[c].astype(str) for c in point_cols))) if point_cols else [f"{v:.6g}" for v in xs]
        reps.append(Replicate(label, unit, xs, ys, pts))
    return Arm(name, reps, unit_kind)


def points_from_table(df, a: str, b: str, spec: TableSpec) -> tuple[Points, dict]:
    """The joint law's points of recipes a and b, and notes (rows kind, rows left out for lacking the
    metric). Model size from gflops_per_sample (or gflops), samples from samples_seen (else x / size),
    subset size from subset_size."""
    metric, x, group, accuracy, rows, where = spec.metric, spec.x, spec.group, spec.accuracy, spec.rows, spec.where
    from thresher.experiments.scaling import metric_rule, numeric, require_columns, with_values

    require_columns(df, (x, metric, group), where)
    kind, why = rows_kind(df, rows)
    sub = df[df[group].astype(str).isin([a, b])].copy()
    for name in (a, b):
        if not (sub[group].astype(str) == name).any():
            present = ", ".join(sorted(df[group].astype(str).unique()))
            raise InputError(f"{where}: no rows with {group} = {name!r}; present: {present}")
    import pandas as pd

    recipes = sub[group].astype(str)
    sub, gone = with_values(sub, metric, where)  # a row lacking the metric is left out, with a note
    lacking = {name: int(((recipes == name).to_numpy() & gone).sum()) for name in (a, b)}
    notes = {"rows": kind, "rows_why": why, "left_out": lacking}
    size_col = next((c for c in SIZE_COLUMNS if c in sub.columns), None)
    # every number by the rules of scaling.RULES: an error names the row and the column
    xs = numeric(sub, x, where, "compute")
    g = numeric(sub, size_col, where, "compute") if size_col else np.ones(len(sub))
    s = numeric(sub, "samples_seen", where, "compute") if "samples_seen" in sub.columns and size_col else xs / g
    U = numeric(sub, "subset_size", where, "size") if "subset_size" in sub.columns else np.full(len(sub), np.inf)
    y = numeric(sub, metric, where, metric_rule(accuracy))
    y = 1.0 - y if accuracy else y
    k = (sub[group].astype(str) == b).to_numpy().astype(int)
    keys = _unit_and_run_keys(sub, group, kind)
    unit = pd.factorize(keys[0])[0]
    run = pd.factorize(keys[1])[0]
    order = sub["epoch"].to_numpy(float) if "epoch" in sub.columns else np.argsort(np.argsort(s)).astype(float)
    pts = Points(y, k, g, s, U, unit, run, order, (a, b), has_g=len(np.unique(g)) > 1, independent_runs=kind == "runs")
    if not pts.has_g:
        pts.g = np.ones(len(y))
    notes["units"] = {name: pts.units_of(kk) for kk, name in enumerate((a, b))}
    notes["runs"] = {name: len(np.unique(run[k == kk])) for kk, name in enumerate((a, b))}
    return pts, notes


def _unit_and_run_keys(sub, group: str, kind: str):
    """Each row's independent unit (the subset draw when a recipe has several, else the replicate) and
    its run (the unit's training at one scale; with independent rows, the row itself)."""
    rep_cols = [c for c in ("subset_size", "draw", "seed") if c in sub.columns]
    draws = sub.groupby(group)["draw"].nunique().max() if "draw" in sub.columns else 1
    unit_cols = [c for c in rep_cols if not (c == "seed" and draws > 1)]
    as_str = lambda cols: sub[[group, *cols]].astype(str).agg("|".join, axis=1).to_numpy()  # noqa: E731
    if kind == "runs":
        run = np.array([f"row {i}" for i in range(len(sub))])
        unit = as_str(unit_cols) if unit_cols else run
        return unit, run
    run_cols = rep_cols + [c for c in ("scale", "model") if c in sub.columns][:1]
    return (as_str(unit_cols) if unit_cols else as_str([])), as_str(run_cols)


def target_point(point: dict, df, pts: Points) -> Target:
    """--target-model/--target-samples/--target-subset-size as a joint.Target: the model by its GFLOPs per
    sample (a number, or a model the table names), samples seen, and the subset size (default: the
    largest the table has)."""
    model, samples, size = point.get("model"), point.get("samples"), point.get("subset_size")
    if model is None or samples is None:
        raise InputError("a target point needs --target-model and --target-samples")
    try:
        g = float(model)
    except (TypeError, ValueError):
        col = next((c for c in SIZE_COLUMNS if c in df.columns), None)
        rows = df[df["model"].astype(str) == str(model)] if "model" in df.columns else df.iloc[:0]
        if col is None or rows.empty:
            raise InputError(
                f"--target-model {model!r}: not a number of GFLOPs per sample, nor a model the table names"
            ) from None
        g = float(rows[col].iloc[0])
    g = scaling.positive(g, f"--target-model {model!r}: GFLOPs per sample")
    samples = scaling.positive(samples, "--target-samples")
    size = scaling.positive(size, "--target-subset-size") if size is not None else None
    if not pts.has_g:
        g = 1.0
    U = float(size) if size is not None else float(np.max(pts.U))
    return Target(compute=g * samples, g=g, s=samples, U=U)


def runs_table(df, a: str, b: str, metric: str, x: str, group: str) -> list[dict]:
    """One row per run (recipe, scale, draw, seed): its last checkpoint's compute and metric."""
    keys = [c for c in (group, "scale", "draw", "seed") if c in df.columns]
    sub = df[df[group].astype(str).isin([a, b])]
    rows = []
    for key, g in sub.groupby(keys, sort=True):
        last = g.loc[g[x].idxmax()]
        rows.append(
            {
                **dict(
                    zip(
                        keys,
                        (k.item() if hasattr(k, "item") else k for k in (key if isinstance(key, tuple) else (key,))),
                    )
                ),
                "points": int(len(g)),
                x: float(last[x]),
                metric: float(last[metric]),
            }
        )
    return rows
