"""A results table (`thresher fit`, `thresher compare`): reading it (CSV or Parquet, rows numbered from 0),
and the one rule for its numbers (`RULES`: compute, sizes and samples seen positive and finite, an accuracy
in [0, 1], ...), applied by `numeric` and `with_values` with the file, row and column named; the
command-line numbers (`positive`) and JSON without NaN (`finite_json`)."""

from __future__ import annotations

import math

import numpy as np

from thresher.core.errors import InputError


def read_table(path: str):
    """A results table, its rows numbered from 0 in file order (errors name row i + 1)."""
    import pandas as pd

    if path.endswith(".parquet"):
        return pd.read_parquet(path).reset_index(drop=True)
    if path.endswith(".csv"):
        return pd.read_csv(path)
    raise InputError(f"{path}: give a .csv or .parquet results table")


# What a number in a results table must be, by what it measures: the one rule of `fit` and `compare`.
# Negative compute used to enter the measured range and still give a verdict, an accuracy of 1.5 dropped
# its replicate silently, and `fit` dropped zero and infinite compute that `compare` refused (issue 25).
RULES = {
    "compute": (lambda v: np.isfinite(v) & (v > 0), "a positive, finite number"),
    "accuracy": (lambda v: (v >= 0) & (v <= 1), "an accuracy from 0 to 1"),
    "error": (lambda v: np.isfinite(v) & (v >= 0), "an error: finite, 0 or more"),
    "size": (lambda v: np.isnan(v) | (v > 0), "a positive number (or empty: not known)"),
}


def numeric(rows, col: str, where: str, rule: str | None = None) -> np.ndarray:
    """A column as floats, or an error naming the table, the column and the first value that is not a
    number (pandas would raise a bare ValueError); with a `rule` of RULES, also the first row whose
    value breaks it, an empty cell included."""
    try:
        values = rows[col].to_numpy(dtype=float)
    except (ValueError, TypeError):
        _not_a_number(rows, col, where, next(i for i, v in enumerate(rows[col]) if not _is_number(v)))
    if rule is not None:
        ok, what = RULES[rule]
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~ok(values))
        if len(bad):
            i = bad[0]
            value = "an empty cell" if np.isnan(values[i]) else f"{values[i]:g}"
            raise InputError(
                f"{where}: row {_row(rows.index[i])}, column {col!r}: {value}, but it must be {what} "
                f"({len(bad)} such row(s)); fix or remove the row"
            )
    return values


def _row(label) -> str:
    """A row as the user counts it: the table's data rows from 1 (the header not counted)."""
    return str(label + 1) if isinstance(label, (int, np.integer)) else repr(label)


def _not_a_number(rows, col: str, where: str, i: int):
    raise InputError(
        f"{where}: row {_row(rows.index[i])}, column {col!r} must hold numbers; it holds {rows[col].iloc[i]!r}"
    ) from None


def with_values(rows, col: str, where: str):
    """(the rows with a value in `col`, the boolean mask of rows without one). An empty cell is a row the
    metric was not measured on, left out with a note by the caller; any other cell must be a number."""
    import pandas as pd

    val = pd.to_numeric(rows[col], errors="coerce")
    bad = rows[col].notna() & val.isna() & (rows[col].astype(str).str.strip() != "")
    if bad.any():
        _not_a_number(rows, col, where, int(bad.to_numpy().argmax()))
    lacking = val.isna().to_numpy()
    kept = rows[~lacking].copy()
    kept[col] = val[~lacking]
    return kept, lacking


def metric_rule(accuracy: bool) -> str:
    """The rule a metric column follows: an accuracy (1 - it is fitted), or already an error."""
    return "accuracy" if accuracy else "error"


def positive(value, what: str) -> float:
    """A number the user gave (a target compute, a point to predict at, a cut), as a float; an error
    naming `what` unless it is positive and finite (`nan`, `0` and `-3` once gave a verdict 'at compute
    -810' and a compare.json holding NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} {value!r}: give a number, e.g. 1e12") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{what} {value!r}: give a positive, finite number, e.g. 1e12")
    return v


def finite_json(value):
    """`value` for json.dump: NaN and infinities as null, NumPy numbers and arrays as Python's, so a
    results file (fits.json, compare.json) is always valid JSON (json.dump writes a bare NaN)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [finite_json(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (ValueError, TypeError):
        return False


def require_columns(df, cols, where: str) -> None:
    """An error naming the table, the missing column and the columns it has."""
    for col in cols:
        if col not in df.columns:
            raise InputError(f"{where}: no column {col!r}; columns: {', '.join(map(str, df.columns))}")
