"""Queries over the catalog (catalog.py): filters as pushed-down scan expressions, pages by row number.

A filter is a dict of the browser's query parameters (`Filter.parse` checks each against the catalog's
columns: an unknown recipe, step, scorer or subset is a 400 naming it, never a silent empty page). A page
is two reads: a scan of the filter's columns that returns the matching row numbers (the total), then the
row groups that hold one page's rows (`Catalog.take`); the caption, URL and everything shown are read for
those row groups only.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from thresher.app.browse.catalog import SHOWN, Columns, Recipe
from thresher.core.errors import InputError

PAGE_MAX = 200
DEDUP_STATES = ("kept", "dropped", "exact", "perceptual", "semantic", "contamination")


@dataclass
class Filter:
    expr: ds.Expression | None
    sort: tuple[str, bool] | None  # (column, descending)

    @staticmethod
    def parse(params: dict[str, str], cols: Columns) -> Filter:
        names = set(cols.schema().names)
        parts = _decision(params, cols) + _ranges(params, names) + _facets(params, cols, names)
        expr = None
        for p in parts:
            expr = p if expr is None else expr & p
        return Filter(expr, _sort(params, names))


def _decision(params: dict[str, str], cols: Columns) -> list[ds.Expression]:
    """recipe=R&state=any|kept|dropped|dropped:STEP."""
    if not params.get("recipe"):
        return []
    r = _recipe(cols, params["recipe"])
    state = params.get("state", "any")
    if state in ("kept", "dropped"):
        return [ds.field(f"keep:{r.name}") == (state == "kept")]
    if state.startswith("dropped:"):
        step = _step(r, state.split(":", 1)[1])["name"]
        return [ds.field(f"dropped_by:{r.name}") == step]
    if state != "any":
        raise InputError(f"state must be any, kept, dropped or dropped:STEP, not {state[:40]!r}")
    return []


def _ranges(params: dict[str, str], names: set[str]) -> list[ds.Expression]:
    """min:COLUMN=X, max:COLUMN=Y for a score column (score:SCORER, step:RECIPE:STEP)."""
    out = []
    for name, value in params.items():
        if name.startswith(("min:", "max:")) and value != "":
            column = name.split(":", 1)[1]
            if column not in names or not column.startswith(("score:", "step:")):
                raise InputError(f"{name}: no score column {column!r} in this pool")
            bound = _number(name, value)
            out.append(ds.field(column) >= bound if name.startswith("min:") else ds.field(column) <= bound)
    return out


def _facets(params: dict[str, str], cols: Columns, names: set[str]) -> list[ds.Expression]:
    """lang, status, failure, dedup, q (a caption substring, any case), subset=[!]NAME,..."""
    out = []
    for key in ("lang", "status", "failure"):
        if params.get(key):
            if key == "lang" and not cols.has_base:
                raise InputError("lang: this pool has no base features (thresher features POOL)")
            out.append(ds.field(key) == params[key])
    dedup = params.get("dedup")
    if dedup:
        if not cols.has_dedup:
            raise InputError("dedup: this pool has no dedup results (thresher dedup POOL)")
        if dedup not in DEDUP_STATES:
            raise InputError(f"dedup must be one of {', '.join(DEDUP_STATES)}, not {dedup[:40]!r}")
        kept_or_not = ds.field("dedup_keep") == (dedup == "kept")
        out.append(kept_or_not if dedup in ("kept", "dropped") else ds.field("dedup_reason") == dedup)
    if params.get("q"):
        out.append(pc.match_substring(ds.field("caption"), params["q"], ignore_case=True))
    for s in filter(None, params.get("subset", "").split(",")):
        name = s.lstrip("!")
        if f"in:{name}" not in names:
            raise InputError(f"subset: no subset {name[:40]!r} was given to thresher browse --subset")
        out.append(ds.field(f"in:{name}") == (not s.startswith("!")))
    return out


def _sort(params: dict[str, str], names: set[str]) -> tuple[str, bool] | None:
    """sort=COLUMN[:asc|:desc] for a score column: (column, descending)."""
    if not params.get("sort"):
        return None
    column, _, order = params["sort"].rpartition(":")  # score:SCORER:desc
    if order not in ("asc", "desc"):
        column, order = params["sort"], "desc"
    if column not in names or not column.startswith(("score:", "step:")):
        raise InputError(f"sort: no score column {column[:60]!r} in this pool")
    return column, order != "asc"


def _number(name: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise InputError(f"{name}: not a number: {value[:40]!r}") from None
    if math.isnan(v):
        raise InputError(f"{name}: not a number: {value[:40]!r}")
    return v


def _recipe(cols: Columns, name: str) -> Recipe:
    r = next((r for r in cols.recipes if r.name == name), None)
    if r is None:
        raise InputError(f"recipe: no decisions for {name!r} in this pool (thresher filter POOL --recipe {name})")
    return r


def _step(recipe: Recipe, step: str) -> dict:
    s = next((s for s in recipe.steps if s["name"] == step), None)
    if s is None:
        raise InputError(f"recipe {recipe.name} has no step {step!r}")
    return s


class Catalog:
    def __init__(self, path: str, cols: Columns):
        self.path, self.cols = path, cols
        self.dataset = ds.dataset(path, format="parquet")
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)])  # row number where each row group starts
        self.rows = int(self.starts[-1])
        self.lock = threading.Lock()  # one ParquetFile, read from the server's threads one at a time

    def matching(self, f: Filter) -> np.ndarray:
        """Row numbers matching `f`, in its sort order (else by shard and key)."""
        columns = ["row"] + ([f.sort[0]] if f.sort else [])
        t = self.dataset.to_table(columns=columns, filter=f.expr)
        rows = t.column("row").to_numpy()
        if f.sort:
            scores = t.column(f.sort[0]).to_numpy(zero_copy_only=False).astype(np.float64)
            scores = np.where(np.isnan(scores), -np.inf if f.sort[1] else np.inf, scores)
            order = np.argsort(-scores if f.sort[1] else scores, kind="stable")
            rows = rows[order]
        return rows

    def page(self, f: Filter, offset: int = 0, limit: int = 60) -> dict:
        rows = self.matching(f) if f.expr is not None or f.sort else np.arange(self.rows)
        limit = max(0, min(limit, PAGE_MAX))
        return {"total": int(len(rows)), "offset": offset, "rows": self.take(rows[offset : offset + limit])}

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> list[dict]:
        if not len(rows):
            return []
        columns = columns or self.shown()
        # the row groups that hold them, each read once (Dataset.take scans the whole file)
        groups = np.searchsorted(self.starts, rows, side="right") - 1
        parts = {}
        with self.lock:
            for g in np.unique(groups):
                parts[int(g)] = self.file.read_row_group(int(g), columns=columns)
        return [parts[int(g)].slice(int(r - self.starts[g]), 1).to_pylist()[0] for r, g in zip(rows, groups)]

    def shown(self) -> list[str]:
        """The columns a tile shows: what says where a sample is from, its scores, its decisions."""
        names = self.dataset.schema.names
        return [c for c in names if c in SHOWN or c.startswith(("score:", "keep:", "dropped_by:", "in:"))]

    def find(self, shard: int, key: str) -> dict | None:
        t = self.dataset.to_table(filter=(ds.field("shard") == shard) & (ds.field("key") == key))
        return t.to_pylist()[0] if t.num_rows else None

    def values(self, column: str, f: Filter | None = None) -> pa.Array:
        return self.dataset.to_table(columns=[column], filter=f.expr if f else None).column(column).combine_chunks()

    def counts(self, column: str) -> list[tuple[str, int]]:
        """(value, count) of a column's non-null values, most frequent first."""
        vc = pc.value_counts(self.values(column)).to_pylist()
        return sorted(((v["values"], v["counts"]) for v in vc if v["values"] is not None), key=lambda x: -x[1])

    def group(self, group: str) -> list[dict]:
        """The samples of one duplicate group (dedup's `duplicate_group` is the uid its group keeps)."""
        rows = self.dataset.to_table(
            columns=["row"], filter=(ds.field("dedup_group") == group) | (ds.field("uid") == group)
        ).column("row")
        return self.take(rows.to_numpy())

    def scored_steps(self, recipe: Recipe) -> list[str]:
        """The steps of a recipe that gave scores (a near-threshold view needs them)."""
        return [
            s["name"]
            for s in recipe.steps
            if self.dataset.count_rows(filter=ds.field(f"step:{recipe.name}:{s['name']}").is_valid()) > 0
        ]

    def threshold(self, recipe: str, step: str, around: int = 12, bins: int = 60) -> dict:
        """A step's scores over the samples that reached it, its threshold, and the samples just either side."""
        r = _recipe(self.cols, recipe)
        s = _step(r, step)
        i = next(k for k, x in enumerate(r.steps) if x["name"] == step)
        earlier = [x["name"] for x in r.steps[:i]]
        reached = ds.field(f"keep:{recipe}").is_valid()  # downloaded, so decided
        if earlier:  # and not dropped by an earlier step
            by = ds.field(f"dropped_by:{recipe}")
            reached = reached & (by.is_null() | ~pc.is_in(by, value_set=pa.array(earlier, pa.string())))
        col = f"step:{recipe}:{step}"
        t = self.dataset.to_table(
            columns=["row", col, f"dropped_by:{recipe}"], filter=reached & ds.field(col).is_valid()
        )
        scores = t.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        finite = np.isfinite(scores)
        t, scores = t.filter(pa.array(finite)), scores[finite]
        dropped = t.column(f"dropped_by:{recipe}").to_numpy(zero_copy_only=False) == step
        info = r.thresholds.get(step) or {}
        threshold, source = info.get("threshold"), "top_fraction" if info else None
        if threshold is None and dropped.any() and (~dropped).any() and scores[~dropped].min() > scores[dropped].max():
            threshold, source = float(scores[~dropped].min()), "inferred: the lowest score the step kept"
        if not len(scores):
            return {
                "recipe": recipe,
                "step": s,
                "reached": 0,
                "threshold": threshold,
                "bins": [],
                "above": [],
                "below": [],
            }
        # the central 98% of the scores and the threshold: a long tail would squeeze the cut into one bin;
        # what lies beyond is counted in the end bins (and said, as `clipped`)
        lo, hi = np.percentile(scores, [1, 99])
        if threshold is not None:
            lo, hi = min(lo, threshold), max(hi, threshold)
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        shown = np.clip(scores, edges[0], edges[-1])
        kept_h, _ = np.histogram(shown[~dropped], edges)
        drop_h, _ = np.histogram(shown[dropped], edges)
        rows = t.column("row").to_numpy()
        kept_i, drop_i = np.flatnonzero(~dropped), np.flatnonzero(dropped)
        above = rows[kept_i[np.argsort(scores[kept_i], kind="stable")[:around]]]
        below = rows[drop_i[np.argsort(-scores[drop_i], kind="stable")[:around]]]
        return {
            "recipe": recipe,
            "step": s,
            "rule": info or s.get("params") or {},
            "reached": int(len(scores)),
            "dropped": int(dropped.sum()),
            "threshold": threshold,
            "threshold_source": source,
            "edges": edges.tolist(),
            "clipped": {"below": int((scores < edges[0]).sum()), "above": int((scores > edges[-1]).sum())},
            "kept": kept_h.tolist(),
            "dropped_hist": drop_h.tolist(),
            "above": self.take(above, self.shown() + [col]),
            "below": self.take(below, self.shown() + [col]),
        }
