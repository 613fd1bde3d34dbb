"""The catalog `thresher browse` queries: one Parquet table, a row per metadata row of the pool.

A pool's facts about a sample are spread over many files (metadata, base features, each scorer, dedup,
each recipe's decisions, the subsets' lineage), row-aligned per shard. The browser filters across all of
them at once, so they are joined once, shard by shard (never the whole pool in memory), into

    CACHE/catalog-<fingerprint>.parquet     a row per metadata row, sorted by (shard, key); row groups of ROW_GROUP rows

whose columns are listed by `Columns`. Every query is then a scan of that one file with its filter pushed
down (pyarrow.dataset: only the columns a filter reads are decoded, row groups skipped by their
statistics), and a page of results is read back by row number (`Dataset.take`). The fingerprint covers
every input manifest and completion marker, so a pool changed by a later stage gets a new catalog; the
pool itself is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool, completed, shard_name

# rows per row group: a page of results is read back by row number, and each row read decodes its whole
# row group (all shown columns), so they are small; scans still skip them by their statistics. With one
# row group per 10,000-row shard, 12 rows of a 1M-row catalog took 0.33 s; with 2,048, see docs/browse.md
ROW_GROUP = 2048
META = ["uid", "key", "url", "caption", "status", "failure", "error_message", "width", "height"]
SHOWN = ["row", "shard", "key", "uid", "url", "caption", "status", "failure", "lang", "dedup_reason"]


def default_cache(pool_root: str) -> str:
    """~/.cache/thresher/browse/<hash of the pool's path>: the browser's own folder, never inside the pool."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    where = pool_root if "://" in pool_root else os.path.abspath(pool_root)
    return os.path.join(base, "thresher", "browse", hashlib.sha256(where.encode()).hexdigest()[:16])


@dataclass
class Subset:
    name: str
    path: str


@dataclass
class Recipe:
    name: str
    steps: list[dict]  # the resolved recipe's steps, in order ({name, filter, params, ...})
    thresholds: dict  # step -> {threshold, fraction, of, ranked} for top_fraction steps
    funnel: list[dict]


@dataclass
class Columns:
    """What the catalog holds, from the pool's manifests: the columns are named after their source."""

    scorers: list[str]
    has_base: bool
    has_dedup: bool
    recipes: list[Recipe]
    subsets: list[Subset]
    extra: list[str] = field(default_factory=list)

    def schema(self) -> pa.Schema:
        fields = [pa.field("row", pa.int64()), pa.field("shard", pa.int32())]
        fields += [pa.field(c, pa.int32() if c in ("width", "height") else pa.string()) for c in META]
        if self.has_base:
            fields += [pa.field("lang", pa.string())]
        fields += [pa.field(f"score:{s}", pa.float32()) for s in self.scorers]
        if self.has_dedup:
            fields += [pa.field(c, t) for c, t in (("dedup_keep", pa.bool_()), ("dedup_reason", pa.string()))]
            fields += [pa.field("dedup_group", pa.string())]
        for r in self.recipes:
            fields += [pa.field(f"keep:{r.name}", pa.bool_()), pa.field(f"dropped_by:{r.name}", pa.string())]
            fields += [pa.field(f"step:{r.name}:{s['name']}", pa.float32()) for s in r.steps]
        fields += [pa.field(f"in:{s.name}", pa.bool_()) for s in self.subsets]
        return pa.schema(fields)


def read_columns(pool: Pool, subsets: list[str]) -> Columns:
    shards = set(pool.shards())
    complete = lambda kind: bool(shards) and shards <= pool.completed(kind)  # noqa: E731
    scorers = [s for s in pool.scorers() if s != "base" and complete(s)]
    recipes = []
    for path in sorted(runtime.glob(pool.decisions_manifest("*"))):
        m = runtime.read_json(path)
        if "recipe_resolved" not in m:
            continue
        name = path.rstrip("/").split("/")[-2]
        recipes.append(Recipe(name, m["recipe_resolved"]["steps"], m.get("thresholds") or {}, m.get("funnel") or []))
    named = []
    for path in subsets:
        if not runtime.exists(runtime.join(path, "lineage.parquet")):
            raise InputError(f"--subset {path}: not a subset (no lineage.parquet); make one with `thresher subset`")
        base = path.rstrip("/").rsplit("/", 1)[-1] or "subset"
        name, i = base, 2
        while name in {s.name for s in named}:
            name, i = f"{base}-{i}", i + 1
        named.append(Subset(name, path))
    return Columns(scorers, complete("base"), runtime.exists(pool.dedup_manifest), recipes, named)


def fingerprint(pool: Pool, cols: Columns) -> str:
    """What the catalog is made from: every manifest it reads (by content) and every completion marker."""
    parts = {"root": pool.root, "schema": str(cols.schema()), "row_group": ROW_GROUP}
    manifests = [pool.manifest, pool.dedup_manifest] + [pool.features_manifest(k) for k in ["base", *cols.scorers]]
    manifests += [pool.decisions_manifest(r.name) for r in cols.recipes]
    manifests += [runtime.join(s.path, "manifest.json") for s in cols.subsets]
    for m in manifests:
        parts[m] = hashlib.sha256(runtime.read_bytes(m)).hexdigest() if runtime.exists(m) else None
    for kind in ["base", *cols.scorers]:
        parts[f"markers:{kind}"] = sorted(pool.completed(kind))
    parts["markers:shards"] = sorted(completed(pool.shards_dir))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _spread(column: pa.Array, positions: pa.Array) -> pa.Array:
    """A column of the shard's successful rows, spread over all its rows (null where not downloaded)."""
    return column.take(positions)


def _aligned(pool: Pool, table: pa.Table, uids: pa.Array, what: str, shard: int) -> pa.Table:
    if not table.column("uid").combine_chunks().equals(uids):
        raise InputError(f"{pool.root}: {what} of shard {shard_name(shard)} is not row-aligned with its metadata")
    return table


def shard_rows(
    pool: Pool, shard: int, cols: Columns, members: dict[str, dict[int, pa.Array]], first_row: int
) -> pa.Table:
    """Shard `shard`'s catalog rows (schema cols.schema()), starting at row number `first_row`."""
    present = set(runtime.parquet_columns(pool.metadata(shard)))
    meta = runtime.read_parquet(pool.metadata(shard), columns=[c for c in META if c in present])
    meta = meta.take(pc.sort_indices(meta, sort_keys=[("key", "ascending")]))
    n = meta.num_rows
    ok = pc.equal(meta.column("status"), "success").to_numpy(zero_copy_only=False)
    pos = np.full(n, -1, np.int64)
    pos[ok] = np.arange(int(ok.sum()))
    positions = pa.array(pos, mask=~ok)
    uids = meta.column("uid").combine_chunks().filter(pa.array(ok))
    schema = cols.schema()
    out = {"row": pa.array(np.arange(first_row, first_row + n)), "shard": pa.array(np.full(n, shard, np.int32))}
    for c in META:
        out[c] = meta.column(c) if c in present else pa.nulls(n, schema.field(c).type)
    if cols.has_base:
        base = _aligned(
            pool, runtime.read_parquet(pool.features("base", shard), ["uid", "caption_lang"]), uids, "base", shard
        )
        out["lang"] = _spread(base.column("caption_lang"), positions)
    for s in cols.scorers:
        t = _aligned(pool, runtime.read_parquet(pool.features(s, shard), ["uid", "clip_score"]), uids, s, shard)
        out[f"score:{s}"] = _spread(t.column("clip_score"), positions)
    if cols.has_dedup:
        d = _aligned(pool, runtime.read_parquet(pool.dedup(shard)), uids, "dedup", shard)
        for c, src in (("dedup_keep", "keep"), ("dedup_reason", "reason"), ("dedup_group", "duplicate_group")):
            out[c] = _spread(d.column(src), positions)
    for r in cols.recipes:
        d = _aligned(pool, runtime.read_parquet(pool.decisions(r.name, shard)), uids, f"decisions {r.name}", shard)
        out[f"keep:{r.name}"] = _spread(d.column("keep"), positions)
        out[f"dropped_by:{r.name}"] = _spread(d.column("dropped_by"), positions)
        scores = d.column("step_scores").combine_chunks()
        for i, s in enumerate(r.steps):
            out[f"step:{r.name}:{s['name']}"] = _spread(pc.list_element(scores, i), positions)
    for s in cols.subsets:
        keys = members.get(s.name, {}).get(shard)
        held = pc.is_in(meta.column("key"), value_set=keys) if keys is not None else pa.array(np.zeros(n, bool))
        out[f"in:{s.name}"] = held
    return pa.Table.from_arrays([out[f.name].cast(f.type) for f in schema], schema=schema)


def subset_members(cols: Columns) -> dict[str, dict[int, pa.Array]]:
    """subset -> pool shard -> the pool keys it holds (from its lineage)."""
    out = {}
    for s in cols.subsets:
        lin = runtime.read_parquet(runtime.join(s.path, "lineage.parquet"), columns=["pool_shard", "pool_key"])
        shards = lin.column("pool_shard").to_numpy()
        keys = lin.column("pool_key").combine_chunks()
        out[s.name] = {int(i): pc.unique(keys.filter(pa.array(shards == i))) for i in np.unique(shards)}
    return out


def build(pool: Pool, cache: str, subsets: list[str], log=print) -> tuple[str, Columns]:
    """The catalog of `pool` in `cache` (made once per fingerprint), and what it holds."""
    pool.require()
    cols = read_columns(pool, subsets)
    fp = fingerprint(pool, cols)
    path = os.path.join(cache, f"catalog-{fp[:16]}.parquet")
    if os.path.exists(path):
        return path, cols
    os.makedirs(cache, exist_ok=True)
    started, rows = time.monotonic(), 0
    members = subset_members(cols)
    tmp = f"{path}.tmp{os.getpid()}"
    shards = pool.shards()
    with pq.ParquetWriter(tmp, cols.schema(), compression="zstd") as writer:
        for n, shard in enumerate(shards):
            table = shard_rows(pool, shard, cols, members, rows)
            writer.write_table(table, row_group_size=ROW_GROUP)
            rows += table.num_rows
            if n % 20 == 19:
                log(f"[browse] catalog: {n + 1}/{len(shards)} shards, {rows:,} rows")
    os.replace(tmp, path)
    for old in os.listdir(cache):  # catalogs of earlier states of the pool (not another server's .tmp)
        if old.startswith("catalog-") and old.endswith(".parquet") and old != os.path.basename(path):
            os.remove(os.path.join(cache, old))
    log(f"[browse] catalog of {rows:,} rows in {time.monotonic() - started:.1f} s: {path}")
    return path, cols
