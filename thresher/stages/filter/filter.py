"""Filter stage: `thresher filter POOL --recipe NAME [--var key=value ...]`.

A recipe (configs/recipes/NAME.yaml, or any YAML file) is a list of steps, applied in order; each runs a
registered filter (filters/, or a plugin's: docs/plugins.md) on the samples the earlier steps kept, so a
recipe is the intersection of its steps. A step with `top_fraction: f` keeps, of the samples it sees
(`fraction_of: remaining`) or of the whole pool (`fraction_of: pool`, for intersections of independently
computed baselines), those whose filter score is >= the score at rank int(n * f) in descending order:
DataComp's rule, ties kept.

That threshold is global but never collected on one node: each shard task returns a 65,536-bin
histogram of its scores (by the top 16 bits of an order-preserving integer key of the float), the driver
finds the bin holding the rank, and a second pass returns only the scores inside that bin, from which the
exact threshold is read.

Outputs:
    POOL/decisions/NAME/{i:08d}.parquet   uid, keep, score, dropped_by   (schema.DECISIONS)
    POOL/decisions/NAME/manifest.json     the recipe (resolved), its hash, thresholds, funnel, inputs, plugins
    POOL/stats/filter-NAME.json           the funnel: samples in and out of each step
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.algo import topk
from thresher.algo.topk import order_key
from thresher.core import runtime, schema
from thresher.core.config import CONFIG_DIR, check_name, from_dict, opt, preset_or_path, read_yaml, substitute, to_dict
from thresher.core.errors import InputError
from thresher.core.pool import IMAGE_COLUMNS, Pool
from thresher.exec import execute

RECIPE_DIR = CONFIG_DIR / "recipes"


@dataclass
class Step:
    filter: str = opt(help="registered filter name, or module:function of a plugin's filter")
    name: str = opt("", "how decisions name this step (default: the filter's registered name)")
    params: dict = opt(help="the filter's parameters", factory=dict)
    top_fraction: float | None = opt(None, "keep this fraction by the filter's score (global threshold)")
    fraction_of: str = opt("remaining", "remaining (samples this step sees) or pool (every sample)")


@dataclass
class Recipe:
    name: str = opt(help="recipe name (the decisions directory)")
    description: str = opt("", "what it does")
    source: str = opt("", "the published rule it implements")
    plugins: list = opt(
        help="packages (distribution names) its plugin filters come from, checked first so a missing one is named",
        factory=list,
    )
    vars: dict = opt(help="defaults for {name} placeholders in string parameters (--var overrides)", factory=dict)
    steps: list = opt(help="the steps, in order", factory=list)


@dataclass
class ResolvedStep:
    name: str
    spec: Any  # filters.api.FilterSpec
    params: Any
    top_fraction: float | None
    fraction_of: str
    needs: list[str] = field(default_factory=list)
    context: Any = None  # what the filter's prepare() computed over the whole pool


def recipe_path(name_or_path: str) -> Path:
    found = preset_or_path(name_or_path, RECIPE_DIR)
    if found is None and Path(name_or_path).suffix in (".yaml", ".yml"):
        raise InputError(f"recipe file {name_or_path} does not exist")
    if found is None:
        names = ", ".join(sorted(x.stem for x in RECIPE_DIR.glob("*.yaml")))
        raise InputError(f"unknown recipe {name_or_path!r}; presets: {names}; or give a path to a YAML file")
    return found


def _not_installed(packages: list) -> list[str]:
    from importlib.metadata import PackageNotFoundError, distribution

    missing = []
    for name in packages:
        try:
            distribution(str(name))
        except PackageNotFoundError:
            missing.append(str(name))
    return missing


def missing_plugins(name_or_path: str) -> list[str]:
    """The plugin packages a recipe lists under `plugins:` that this environment lacks (reads only the
    YAML: the every-preset test skips such presets rather than failing)."""
    data = read_yaml(recipe_path(name_or_path), "recipe") or {}
    return _not_installed(data.get("plugins") or []) if isinstance(data, dict) else []


def load_recipe(
    name_or_path: str, variables: dict | None = None, _including: tuple = ()
) -> tuple[Recipe, list[ResolvedStep], Path]:
    """Parse and check a recipe completely (filters exist, parameters typed) before any data is read.
    A step `{include: OTHER}` puts another recipe's steps there (e.g. safety before quality)."""
    from thresher.filters import api

    path = recipe_path(name_or_path)
    data = read_yaml(path, "recipe")
    recipe = from_dict(Recipe, data, where=str(path))
    check_name(recipe.name, "recipe name", f"{path}: field 'name'")
    if not recipe.steps:
        raise InputError(f"{path}: a recipe needs at least one step")
    missing = _not_installed(recipe.plugins)
    if missing:
        raise InputError(
            f"{path}: needs the filter plugin package(s) {', '.join(missing)}, not installed in "
            f"this environment; install with pip (`pip install {' '.join(missing)}`, or `pip "
            f"install DIR` of its source: the recipe's `source:` says where it comes from) or put "
            f"it on PYTHONPATH; its filters then register through the thresher.filters entry point"
        )
    variables = {**recipe.vars, **(variables or {})}
    steps = []
    for i, raw in enumerate(recipe.steps):
        where = f"{path}: step {i + 1}"
        if isinstance(raw, dict) and "include" in raw:
            if set(raw) != {"include"}:
                raise InputError(f"{where}: an include step has only `include: RECIPE`")
            if str(path) in _including or len(_including) > 8:
                raise InputError(f"{where}: recipes include each other in a cycle ({' -> '.join(_including)})")
            _, included, _ = load_recipe(str(raw["include"]), variables, _including + (str(path),))
            steps.extend(included)
            continue
        step = from_dict(Step, substitute(raw, variables, where), where=where)
        where = f"{path}: step {i + 1} ({step.name or step.filter})"
        try:
            spec = api.resolve(step.filter)
        except InputError as err:
            raise InputError(f"{where}: {err}") from err
        try:
            params = from_dict(spec.params, step.params, where=f"{where} params")
        except InputError as err:
            raise InputError(str(err) if str(err).startswith(where) else f"{where} params: {err}") from None
        if step.top_fraction is not None:
            if not spec.scores:
                raise InputError(f"{where}: top_fraction needs a filter that scores; {step.filter} does not")
            if not 0 < step.top_fraction <= 1:
                raise InputError(f"{where}: top_fraction must be in (0, 1], not {step.top_fraction}")
        if step.fraction_of not in ("remaining", "pool"):
            raise InputError(f"{where}: fraction_of must be remaining or pool, not {step.fraction_of!r}")
        try:
            needs = list(spec.needs(params))
        except InputError as err:
            raise InputError(f"{where}: {err}") from err
        # a module:function step is named by its registered name, as decisions name any other step
        steps.append(ResolvedStep(step.name or spec.name, spec, params, step.top_fraction, step.fraction_of, needs))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: step names must be unique (give repeated filters a `name:`): {names}")
    return recipe, steps, path


# ---------------------------------------------------------------------------------------------------
# The columns a pool offers filters


def check_columns(steps: list[ResolvedStep], available: dict[str, str], path: Path, pool: str) -> None:
    for i, step in enumerate(steps):
        missing = [c for c in step.needs if c not in available]
        if missing and set(missing) & IMAGE_COLUMNS and not Pool(pool).has_images():
            raise InputError(
                f"{path}: step {i + 1} ({step.name}, column {', '.join(missing)}): " + Pool(pool).no_images("it")
            )
        if missing:
            hint = (
                "run `thresher features` with that --scorer-id"
                if any(c.endswith("_score") for c in missing)
                else "run `thresher dedup`"
                if any(c.startswith("dedup_") for c in missing)
                else "run `thresher features` (base features)"
            )
            raise InputError(
                f"{path}: step {i + 1} ({step.name}) needs column(s) {', '.join(missing)}, which "
                f"{pool} does not have; {hint}"
            )


# ---------------------------------------------------------------------------------------------------
# Evaluating steps on one shard


def evaluate(table: pa.Table, steps: list[ResolvedStep], thresholds: dict[int, float]):
    """Run steps in order. Stops at the first top_fraction step whose threshold is not known yet and
    returns (None, None, None, (step index, the scores it ranks)); else (keep, dropped_by, score, None)
    where score is [n, steps] float32: each step's score for every sample (NaN where a step gives none)."""
    n = table.num_rows
    alive = np.ones(n, bool)
    dropped_by = np.full(n, -1, np.int64)
    score = np.full((n, len(steps)), np.nan, np.float32)
    for i, step in enumerate(steps):
        keep, s = (
            step.spec.fn(table, step.params, step.context) if step.spec.prepare else step.spec.fn(table, step.params)
        )
        keep = np.asarray(keep, bool)
        if step.top_fraction is not None:
            # ranked and compared as float32, the precision thresholds and decisions are kept in
            s = np.where(np.isnan(s), -np.inf, s).astype(np.float32)
            eligible = np.ones(n, bool) if step.fraction_of == "pool" else alive.copy()
            if i not in thresholds:
                return None, None, None, (i, s[eligible])
            keep &= s >= np.float32(thresholds[i])
        if s is not None:
            score[:, i] = s
        newly = alive & ~keep
        dropped_by[newly] = i
        alive &= keep
    return alive, dropped_by, score, None


def _histogram_task(shard, pool, steps, thresholds, columns):
    table = Pool(pool).shard_table(shard, columns)
    _, _, _, pending = evaluate(table, steps, thresholds)
    i, s = pending
    return i, topk.histogram(order_key(s))


def _bin_values_task(shard, pool, steps, thresholds, columns, bin_index):
    table = Pool(pool).shard_table(shard, columns)
    _, _, _, (i, s) = evaluate(table, steps, thresholds)
    return s[topk.bin_of(order_key(s)) == bin_index].astype(np.float32)


def _decide_task(shard, pool, steps, thresholds, columns, out_dir):
    table = Pool(pool).shard_table(shard, columns)
    keep, dropped_by, scores, _ = evaluate(table, steps, thresholds)
    names = [s.name for s in steps]
    score = np.full(table.num_rows, np.nan, np.float32)  # the last scoring step's score each sample reached
    for i in range(len(steps)):
        reached = (dropped_by < 0) | (dropped_by >= i)
        score = np.where(reached & ~np.isnan(scores[:, i]), scores[:, i], score)
    step_scores = pa.FixedSizeListArray.from_arrays(
        pa.array(scores.ravel(), pa.float32(), from_pandas=True), len(steps)
    )
    out = pa.table(
        {
            "uid": table.column("uid"),
            "keep": pa.array(keep),
            "score": pa.array(score.astype(np.float32), pa.float32(), from_pandas=True),
            "dropped_by": pa.DictionaryArray.from_arrays(
                pa.array(dropped_by, pa.int32(), mask=dropped_by < 0), pa.array(names, pa.string())
            ).cast(pa.string()),
            "step_scores": step_scores.cast(pa.list_(pa.float32())),
        },
        schema=schema.DECISIONS,
    )
    runtime.write_parquet(out, runtime.join(out_dir, f"{shard:08d}.parquet"))
    funnel = np.bincount(dropped_by[dropped_by >= 0], minlength=len(steps))
    return {"shard": shard, "count": table.num_rows, "kept": int(keep.sum()), "dropped": funnel.tolist()}


def threshold_from(hist: np.ndarray, rank: int, values_in_bin) -> tuple[float | None, int]:
    """The score at `rank` (0-based, descending) given the merged histogram of order keys' top 16 bits;
    `values_in_bin(b)` returns every score falling in bin b. None if rank >= total (keep all)."""
    if rank >= int(hist.sum()):
        return None, -1
    b, above = topk.locate(hist, rank + 1)
    vals = np.sort(np.asarray(values_in_bin(b), dtype=np.float32))[::-1]
    return float(vals[rank - above]), b


def run(pool: str, recipe_name: str, variables: dict | None = None, ray_address: str | None = None, log=print) -> dict:
    t0 = time.time()
    recipe, steps, path = load_recipe(recipe_name, variables)
    Pool(pool).require()
    shards = Pool(pool).shards()
    if not shards:
        raise InputError(f"{pool} has no downloaded shards; run `thresher download` first")
    available = Pool(pool).available_columns()
    check_columns(steps, available, path, pool)
    columns = {c: available[c] for c in {"uid", "key"} | {c for s in steps for c in s.needs}}
    out_dir = Pool(pool).decisions_dir(recipe.name)
    # one writer at a time: two runs of one recipe (say with other --var values) would each replace the
    # other's shards and manifest, and both exit 0 (issue 15)
    with runtime.output_lock(out_dir, f"the decisions of recipe {recipe.name}"):
        return _decide(pool, recipe, steps, path, shards, columns, out_dir, variables, ray_address, t0, log)


def _decide(pool, recipe, steps, path, shards, columns, out_dir, variables, ray_address, t0, log) -> dict:
    resolved = {
        **to_dict(recipe),
        "vars": {**recipe.vars, **(variables or {})},
        "steps": [
            {
                "name": s.name,
                "filter": s.spec.name,
                "params": to_dict(s.params),
                "top_fraction": s.top_fraction,
                "fraction_of": s.fraction_of,
            }
            for s in steps
        ],
    }
    inputs = _input_manifests(pool, columns)
    fingerprint = _fingerprint(pool, path, resolved, inputs, steps)
    if _up_to_date(out_dir, fingerprint, shards):
        # the same recipe on the same inputs gives the same decisions: keep them (and their manifest's
        # sha256, which subsets and audits point to) rather than rewrite them
        log(f"[filter:{recipe.name}] decisions are up to date (same recipe, vars, inputs and code); kept")
        return runtime.read_json(runtime.join(out_dir, "manifest.json"))
    prepared = {}
    ex = execute.start(ray_address)  # a prepare may spread its reads over tasks (image_clusters does)
    for step in steps:  # pool-wide work some filters need first (e.g. k-means), on the driver
        if step.spec.prepare:
            step.context = step.spec.prepare(pool, step.params)
            prepared[step.name] = step.context.get("info") if isinstance(step.context, dict) else None
            log(f"[filter:{recipe.name}] {step.name}: prepared {prepared[step.name]}")
    steps_ref = ex.share(steps)
    thresholds: dict[int, float] = {}
    threshold_info = {}
    label = f"filter:{recipe.name}"
    for _ in range(sum(s.top_fraction is not None for s in steps)):
        i, hist = execute.fold(
            _histogram_task,
            shards,
            pool,
            steps_ref,
            thresholds,
            columns,
            add=lambda total, part: (part[0], total[1] + part[1]),
            start=(None, np.zeros(topk.BINS, np.int64)),
            label=label,
        )
        n = int(hist.sum())
        rank = int(n * steps[i].top_fraction)

        def values_in_bin(b, i=i):
            return np.concatenate(
                execute.map(_bin_values_task, shards, pool, steps_ref, thresholds, columns, b, label=label)
            )

        value, _ = threshold_from(hist, rank, values_in_bin)
        thresholds[i] = -np.inf if value is None else value
        threshold_info[steps[i].name] = {
            "ranked": n,
            "rank": rank,
            "threshold": value,
            "fraction": steps[i].top_fraction,
            "of": steps[i].fraction_of,
        }
        log(f"[filter:{recipe.name}] {steps[i].name}: top {steps[i].top_fraction} of {n} -> threshold {value}")
    runtime.makedirs(out_dir)
    stats = execute.map(
        _decide_task,
        shards,
        pool,
        steps_ref,
        thresholds,
        columns,
        out_dir,
        label=label,
        quiet=False,
        weight=lambda s: 1,
        unit="shards",
    )
    total = sum(st["count"] for st in stats)
    dropped = np.sum([st["dropped"] for st in stats], axis=0).tolist()
    funnel, remaining = [], total
    for step, d in zip(steps, dropped):
        funnel.append(
            {"step": step.name, "filter": step.spec.name, "in": remaining, "out": remaining - d, "dropped": d}
        )
        remaining -= d
    manifest = {
        "kind": "thresher.decisions",
        "recipe": recipe.name,
        "recipe_file": str(path),
        "recipe_resolved": resolved,
        "fingerprint": fingerprint,
        "recipe_sha256": runtime.file_sha256(str(path)),
        "samples": total,
        "kept": remaining,
        "thresholds": threshold_info,
        "prepared": prepared,
        "plugins": _plugin_versions(steps),
        "funnel": funnel,
        "inputs": inputs,
        "seconds": round(time.time() - t0, 2),
        **runtime.provenance(),
    }
    runtime.write_json(runtime.join(out_dir, "manifest.json"), manifest)
    runtime.makedirs(Pool(pool).path("stats"))
    runtime.write_json(
        Pool(pool).stats(f"filter-{recipe.name}"),
        {"recipe": recipe.name, "samples": total, "kept": remaining, "funnel": funnel, "thresholds": threshold_info},
    )
    log(
        f"[filter:{recipe.name}] kept {remaining} of {total}: "
        + ", ".join(f"{f['step']} -{f['dropped']}" for f in funnel)
    )
    return manifest


BUILTIN = "thresher.filters.builtin"  # the built-in steps' module (pyproject.toml's entry point `builtin`)


def _plugin_versions(steps: list[ResolvedStep]) -> dict:
    """For each filter from outside this repository, its module and the package (and version) that
    installed it: decisions from a plugin name the code that made them."""
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions()
    out = {}
    for step in steps:
        module = step.spec.fn.__module__
        if module == BUILTIN or step.spec.name in out:
            continue
        package = (dists.get(module.split(".")[0]) or [None])[0]
        out[step.spec.name] = {"module": module, "package": package, "version": version(package) if package else None}
    return out


def _fingerprint(pool: str, recipe_path, resolved: dict, inputs: dict, steps) -> str:
    """What the decisions depend on: the recipe (file and resolved steps and vars), the manifests of the
    pool and the feature sets it reads, the plugins' versions and this code's version."""
    import hashlib

    def sha(path):
        return runtime.file_sha256(path) if runtime.exists(path) else None

    parts = {
        "recipe": resolved,
        "recipe_sha256": runtime.file_sha256(str(recipe_path)),
        "inputs": inputs,
        "pool": sha(Pool(pool).manifest),
        "base": sha(Pool(pool).features_manifest("base")),
        "plugins": _plugin_versions(steps),
        "files": _param_files(steps),
        "code": runtime.code_version(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _param_files(steps) -> dict[str, str]:
    """sha256 of every file a step's parameters name (blocklists, uid files, target embeddings, probes):
    a list updated in place makes the decisions stale, as a changed recipe does."""
    out = {}
    for i, step in enumerate(steps):
        params = step.params
        for f in dataclasses.fields(params) if dataclasses.is_dataclass(params) else ():
            value = getattr(params, f.name)
            if isinstance(value, str) and value and runtime.is_file(value):
                out[f"{i}.{f.name}"] = runtime.file_sha256(value)
    return out


def _up_to_date(out_dir: str, fingerprint: str, shards: list[int]) -> bool:
    path = runtime.join(out_dir, "manifest.json")
    if not runtime.exists(path) or runtime.read_json(path).get("fingerprint") != fingerprint:
        return False
    return all(runtime.exists(runtime.join(out_dir, f"{s:08d}.parquet")) for s in shards)


def _input_manifests(pool: str, columns: dict[str, str]) -> dict:
    """The manifests of the feature sets a recipe read: for a scorer, its model and weights (and, for a
    trained checkpoint, what it was trained on), so decisions carry their filter model's provenance."""
    out = {}
    for src in sorted(set(columns.values())):
        kind, _, scorer = src.partition(":")
        if kind in ("score", "img_emb") and scorer not in out:
            out[scorer] = runtime.read_json(Pool(pool).features_manifest(scorer))
        elif kind == "dedup":
            out["dedup"] = {
                k: v
                for k, v in runtime.read_json(Pool(pool).dedup_manifest).items()
                if k in ("config", "config_hash", "removed", "created")
            }
    return out


def read(pool: str, recipe: str) -> pa.Table:
    return pa.concat_tables([runtime.read_parquet(Pool(pool).decisions(recipe, s)) for s in Pool(pool).shards()])
