"""Subset stage: `thresher subset POOL --recipe NAME [--recipe NAME2 ...] --size N --out DIR --seed S`,
and `thresher subset POOL --recipe NAME [--size N] --uids-only FILE.npy` (write_uid_file).

From a recipe's decisions (POOL/decisions/NAME, written by the filter stage, which this runs first when
they are missing or stale), select exactly N samples and reshard them:

- A recipe that ranks (it has a `top_fraction` step) gives the top N by its last ranking step's score,
  ties broken by uid. A keep/drop recipe gives N drawn uniformly from the kept samples: the top N by a
  seeded hash of the uid, so a larger N always extends a smaller one and the draw is reproducible.
- The Nth key is found by the one top-k search the filter's thresholds use (topk.py): per-shard
  65,536-bin histograms merged on the driver, then only the keys inside one bin are gathered.
- Output order is a seeded permutation of the selected samples (a Feistel network over their global
  index), so every output shard can compute which samples it holds without any node holding the list.

Layout of a subset (DataComp's shard naming: open_clip and DataComp tooling read it as is):

    DIR/{j:08d}.tar        WebDataset shard; the pool's members streamed unchanged, json rewritten
    DIR/{j:08d}.parquet    per-sample metadata: the pool's metadata and features under the new key,
                           recipe_score and copy (docs/schemas.md)
    DIR/manifest.json      recipe, hashes, code, N, seed, every shard's sha256, the funnel
    DIR/lineage.parquet    uid -> source URL, pool shard/key, download, hashes, every step's score and
                           decision, subset shard/key (schema.LINEAGE)

While it runs, DIR/_work holds the plan, per-pool-shard indexes and per-output-shard completion
markers; a re-run resumes from them, and they are removed once the manifest is written.

With `--uids-only FILE.npy` nothing is resharded: the same selection (the same cut, so with `--size N`
the same N samples a resharded subset holds; without it every sample the recipe keeps) is written as
DataComp's uid file, a sorted `u8,u8` array that DataComp's resharder takes, with FILE.npy.json beside
it (recipe, decisions, pool, size, seed, the file's sha256).

The stage's parts: selection.py (which samples: the recipe's decisions, exclusions, the exact-N cut),
reshard.py (the index and shard-writing passes, the shuffle), uids.py (`--uids-only`); this module holds
the config, the entry points (run, build) and the subset's manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from thresher.core import runtime, schema
from thresher.core.config import check_name, opt, to_dict
from thresher.core.errors import InputError, StageError
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.exec.stage import run_stage
from thresher.stages.subset.reshard import IndexStage, Shuffle, WriteStage
from thresher.stages.subset.selection import (
    Cut,
    Exclusion,
    Rule,
    _count,
    _cut,
    decisions_for,
    find_cut,
    read_exclusion,
    rule_for,
)
from thresher.stages.subset.uids import write_uid_file

# the stage's names other modules use, defined here or in its parts
__all__ = [
    "Cut",
    "Exclusion",
    "Rule",
    "Shuffle",
    "SubsetConfig",
    "build",
    "decisions_for",
    "find_cut",
    "plan_hash",
    "read_exclusion",
    "read_lineage",
    "read_manifest",
    "rule_for",
    "run",
    "target_dir",
    "write_uid_file",
]


@dataclass
class SubsetConfig:
    size: int = opt(help="samples in each subset (exactly)")
    seed: int = opt(0, "seed of the uniform draw and of the shuffle across shards")
    samples_per_shard: int = opt(10000, "samples per output shard (the last may hold fewer)")
    allow_repeat: bool = opt(False, "when a recipe keeps fewer than size samples, repeat them instead of failing")
    draws: int = opt(
        1,
        "independent draws per recipe, each its own seed (seed, seed+1, ...) and its own "
        "directory OUT[/RECIPE]/draw-K: replicates for an A/B comparison",
    )


# ---------------------------------------------------------------------------------------------------
# The stage


def plan_hash(plan: dict) -> str:
    keep = {
        k: plan[k]
        for k in (
            "pool",
            "recipe",
            "decisions_sha256",
            "size",
            "seed",
            "samples_per_shard",
            "allow_repeat",
            "exclusion_sha256",
        )
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def run(
    pool: str,
    recipes: list[str],
    cfg: SubsetConfig,
    out: str,
    variables: dict | None = None,
    ray_address: str | None = None,
    log=print,
) -> dict[str, dict]:
    """Equal-sized subsets of every recipe: `out` itself for one recipe, `out/NAME` for several, each
    with /draw-K under it for several draws (target_dir). Every recipe's count is checked before any
    shard is written. Results are keyed by recipe, or RECIPE/draw-K."""
    if cfg.size < 1 or cfg.samples_per_shard < 1 or cfg.draws < 1:
        raise InputError(
            f"--size, --samples-per-shard and --draws must be positive (got {cfg.size}, "
            f"{cfg.samples_per_shard}, {cfg.draws})"
        )
    if not runtime.exists(Pool(pool).manifest):
        raise InputError(f"{pool} is not a pool (no manifest.json); run `thresher download` first")
    Pool(pool).require_images("a resharded subset (--out); a uid file (--uids-only FILE.npy) does not, and")
    execute.start(ray_address)
    manifests = [decisions_for(pool, r, variables, log) for r in recipes]
    names = [check_name(m["recipe"], "recipe", f"{pool}/decisions") for m in manifests]
    if len(set(names)) != len(names):
        raise InputError(f"recipes given twice: {names}")
    shards = Pool(pool).shards()
    counted, short = [], []
    for m in manifests:
        rule = rule_for(m, cfg.seed)
        hist = _count(pool, m["recipe"], rule, Exclusion(), shards)
        counted.append((m, rule, hist))
        kept = int(hist.sum())
        if (kept < cfg.size and not cfg.allow_repeat) or kept == 0:
            short.append((m["recipe"], kept, m["samples"]))
    if short:
        listing = "; ".join(f"recipe {r} keeps {k} samples of {n}" for r, k, n in short)
        raise InputError(
            f"{pool}: {listing}, fewer than --size {cfg.size}; ask for at most "
            f"{min(k for _, k, _ in short)}, or pass --allow-repeat to upsample (a recipe that "
            f"keeps nothing cannot be)"
        )
    results = {}
    for m, rule, hist in counted:
        target = target_dir(out, m["recipe"], len(recipes))
        if cfg.draws == 1:
            results[m["recipe"]] = build(pool, m, rule, cfg, target, hist=hist, exclude=Exclusion(), log=log)
            continue
        if rule.mode != "uniform" or int(hist.sum()) <= cfg.size:
            log(
                f"[subset:{m['recipe']}] warning: its {cfg.draws} draws hold the same samples ("
                + ("its last step ranks by score" if rule.mode != "uniform" else "it keeps no more than --size")
                + "): they replicate the shuffle only, not the data"
            )
        for k in range(cfg.draws):
            ck = replace(cfg, seed=cfg.seed + k)
            results[f"{m['recipe']}/draw-{k}"] = build(
                pool,
                m,
                rule_for(m, ck.seed),
                ck,
                target_dir(out, m["recipe"], len(recipes), k, cfg.draws),
                hist=hist if k == 0 else None,
                exclude=Exclusion(),
                draw=k,
                log=log,
            )
    return results


def target_dir(out: str, recipe: str, recipes: int = 1, draw: int = 0, draws: int = 1) -> str:
    """Where `thresher subset` writes a recipe's subset: OUT (one recipe) or OUT/RECIPE, then /draw-K when
    there are several draws."""
    base = out if recipes == 1 else runtime.join(out, recipe)
    return base if draws == 1 else runtime.join(base, f"draw-{draw}")


@runtime.holds(lambda pool, decisions, rule, cfg, out, *a, **k: runtime.join(out, "_work"), "this subset")
def build(
    pool: str,
    decisions: dict,
    rule: Rule,
    cfg: SubsetConfig,
    out: str,
    *,
    hist=None,
    exclude: Exclusion | None = None,
    previous: dict | None = None,
    draw: int = 0,
    log=print,
) -> dict:
    """Select and reshard one recipe's subset into `out`; resumes a run with the same plan."""
    t0 = time.time()
    exclude = exclude or Exclusion()
    name = decisions["recipe"]
    shards = Pool(pool).shards()
    work = runtime.join(out, "_work")
    dec_sha = runtime.file_sha256(Pool(pool).decisions_manifest(name))
    ex_sha = (
        hashlib.sha256(json.dumps([sorted(exclude.urls), sorted(exclude.domains)]).encode()).hexdigest()
        if exclude
        else None
    )
    plan = {
        "pool": str(pool),
        "recipe": name,
        "decisions_sha256": dec_sha,
        "size": cfg.size,
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "allow_repeat": cfg.allow_repeat,
        "exclusion_sha256": ex_sha,
        "out": str(out),
        "draw": draw,
    }
    phash = plan_hash(plan)
    if runtime.exists(runtime.join(out, "manifest.json")):
        m = runtime.read_json(runtime.join(out, "manifest.json"))
        if m.get("plan_sha256") == phash:
            log(f"[subset:{name}] {out} is complete already")
            return m
        raise InputError(f"{out} already holds a subset made with other settings; choose another --out")
    if runtime.exists(runtime.join(work, "plan.json")):
        if runtime.read_json(runtime.join(work, "plan.json"))["plan_sha256"] != phash:
            raise InputError(
                f"{out} holds an unfinished subset made with other settings; delete {out} or choose another --out"
            )
    elif runtime.exists(out) and [p for p in runtime.glob(runtime.join(out, "*")) if not p.endswith("/_work")]:
        raise InputError(f"{out} exists and is not empty; choose another --out")
    runtime.makedirs(work)

    ex_ref = execute.current().share(exclude)
    if hist is None:
        hist = _count(pool, name, rule, ex_ref, shards)
    kept = int(hist.sum())
    repeat = None
    if kept < cfg.size:
        if not cfg.allow_repeat or kept == 0:
            raise InputError(
                f"recipe {name} keeps {kept} samples (after exclusions) in {pool}, fewer than "
                f"--size {cfg.size}; ask for at most {kept}, or pass --allow-repeat to upsample"
            )
        repeat = {"each": cfg.size // kept, "plus_one": cfg.size % kept}
        cut = _cut(pool, name, rule, ex_ref, shards, hist, repeat["plus_one"])
        log(
            f"[subset:{name}] {kept} kept < {cfg.size}: each sample {repeat['each']}x, the top "
            f"{repeat['plus_one']} once more"
        )
    else:
        cut = _cut(pool, name, rule, ex_ref, shards, hist, cfg.size)

    # pass 1: per pool shard, the index of what it gives
    index_dir = runtime.join(work, "index")
    runtime.makedirs(index_dir)
    if not runtime.exists(runtime.join(work, "plan.json")):
        runtime.write_json(runtime.join(work, "plan.json"), {**plan, "plan_sha256": phash})
    run_stage(
        IndexStage(pool, name, rule, exclude, cut, repeat, index_dir),
        shards,
        label=f"subset:{name} index",
        max_inflight=2 * execute.current().cpus(),
        retries=2,
        log=log,
    ).raise_if_failed(f"subset {name} (index)")
    counts = [
        runtime.read_parquet(runtime.join(index_dir, f"{s:08d}.parquet"), columns=["uid"]).num_rows for s in shards
    ]
    if sum(counts) != cfg.size:
        raise StageError(
            f"subset {name}: selected {sum(counts)} samples, not {cfg.size}; the decisions changed "
            f"while it ran? delete {work} and run again"
        )
    sources = [s for s, c in zip(shards, counts) if c]
    offsets = np.concatenate([[0], np.cumsum([c for c in counts if c])[:-1]]).astype(np.int64).tolist()

    # pass 2: per output shard, stream the members
    steps = decisions["recipe_resolved"]["steps"]
    wplan = {
        **plan,
        "sources": sources,
        "offsets": offsets,
        "step_names": [s["name"] for s in steps],
        "step_filters": [s["filter"] for s in steps],
    }
    n_out = math.ceil(cfg.size / cfg.samples_per_shard)
    done_dir = runtime.join(work, "done")
    runtime.makedirs(done_dir)
    runtime.makedirs(runtime.join(work, "lineage"))
    run_stage(
        WriteStage(wplan, work),
        range(n_out),
        label=f"subset:{name} write",
        max_inflight=2 * execute.current().cpus(),
        retries=2,
        log=log,
    ).raise_if_failed(f"subset {name} (write)")
    shard_stats = [runtime.read_json(runtime.join(done_dir, f"{j:08d}.json")) for j in range(n_out)]

    # lineage: the per-shard parts, streamed into one file
    import pyarrow.parquet as pq

    fs, lpath = runtime.fs_path(runtime.join(out, "lineage.parquet"))
    with fs.open(lpath, "wb") as f, pq.ParquetWriter(f, schema.LINEAGE) as writer:
        for j in range(n_out):
            writer.write_table(
                runtime.read_parquet(runtime.join(work, "lineage", f"{j:08d}.parquet")).cast(schema.LINEAGE)
            )
    manifest = _manifest(
        pool, decisions, rule, cfg, out, plan, phash, kept, repeat, cut, exclude, shard_stats, previous
    )
    runtime.write_json(runtime.join(out, "manifest.json"), manifest)
    runtime.remove(work, recursive=True)
    mb = sum(s["bytes"] for s in shard_stats) / 1e6
    log(f"[subset:{name}] {cfg.size} samples in {n_out} shard(s), {mb:.1f} MB -> {out} ({time.time() - t0:.1f}s)")
    return manifest


def _manifest(pool, decisions, rule, cfg, out, plan, phash, kept, repeat, cut, exclude, shard_stats, previous):
    """Everything in it is a function of the inputs (no times, no output path): the same inputs and
    seed give a byte-identical manifest."""
    pool_manifest = runtime.read_json(Pool(pool).manifest)
    counts = pool_manifest["counts"]
    funnel = [{"stage": "download", "in": counts["rows"], "out": counts["status"].get("success", 0)}]
    funnel += [
        {"stage": f"filter:{f['step']}", "filter": f["filter"], "in": f["in"], "out": f["out"]}
        for f in decisions["funnel"]
    ]
    if exclude:
        funnel.append({"stage": "exclude", "in": decisions["kept"], "out": kept})
    funnel.append({"stage": "select", "in": kept, "out": cfg.size})
    return {
        "kind": "thresher.subset",
        "format": 1,
        "recipe": decisions["recipe"],
        "recipe_resolved": decisions["recipe_resolved"],
        "recipe_sha256": decisions["recipe_sha256"],
        "decisions_manifest_sha256": plan["decisions_sha256"],
        "thresholds": decisions["thresholds"],
        "inputs": decisions.get("inputs", {}),
        "pool": {
            "path": str(pool),
            "manifest_sha256": runtime.file_sha256(Pool(pool).manifest),
            "input_sha256": pool_manifest["input"]["sha256"],
            "rows": counts["rows"],
        },
        "size": cfg.size,
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "draw": {"index": plan.get("draw", 0), "of": cfg.draws, "distinct": rule.mode == "uniform" and kept > cfg.size},
        "selection": {
            **rule.describe(),
            "kept_by_recipe": kept,
            "cut_key": cut.key,
            "cut_uid": cut.uid,
            "allow_repeat": cfg.allow_repeat,
            "repeat": repeat,
        },
        "exclusion": ({**exclude.describe(), "sha256": plan["exclusion_sha256"]} if exclude else None),
        "shards": shard_stats,
        "lineage": {"file": "lineage.parquet", "sha256": runtime.file_sha256(runtime.join(out, "lineage.parquet"))},
        "funnel": funnel,
        "previous": previous,
        "plan_sha256": phash,
        "code": runtime.code_version(),
        "packages": runtime.package_versions(),
        "config": to_dict(cfg),
    }


def read_lineage(subset: str, columns: list[str] | None = None) -> pa.Table:
    return runtime.read_parquet(runtime.join(subset, "lineage.parquet"), columns=columns)


def read_manifest(subset: str) -> dict:
    path = runtime.join(subset, "manifest.json")
    if not runtime.exists(path):
        raise InputError(f"{subset} is not a subset (no manifest.json); make one with `thresher subset`")
    m = runtime.read_json(path)
    if m.get("kind") != "thresher.subset":
        raise InputError(f"{path} is not a subset manifest (kind {m.get('kind')!r})")
    return m
