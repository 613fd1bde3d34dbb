"""Dedup stage: `thresher dedup POOL [--config FILE] [--scorer clip_b32] [--eval-set DIR ...]`.

Steps run in order, each on the samples the earlier ones kept (datatrove's way: small steps, one
interface), and each can be switched off:

1. contamination  samples whose PDQ hash is within `pdq_radius` of an evaluation image's (first, so
               that a near-copy of an evaluation image is recorded as that, not as a duplicate);
2. exact       same sha256 of the downloaded bytes;
3. perceptual  PDQ hashes within `pdq_radius` bits, found with a FAISS binary index;
4. semantic    SemDeDup: spherical k-means over image embeddings, then, within each cluster (each sample
               also visits its `probes` nearest clusters), pairs with cosine >= `threshold`.

Within a group of duplicates one sample is kept by `keep`: the highest CLIP score (`clip_score`), the
first seen (`first`: lowest shard and key), or a seeded random one (`random`).

By default the steps run in this process over the whole pool. With `partitions: N` every step runs as
rounds of Ray tasks over partitions instead, with the same verdicts (partitioned.py).

Output, one file per pool shard, a row for every successfully downloaded sample:
    POOL/dedup/{i:08d}.parquet   uid, key, duplicate_group, keep, reason   (schema.DEDUP)
    POOL/dedup/manifest.json     config and hash, counts removed by each step, inputs used

This module holds the stage's entry (`run`, `read`); the steps are beside it: config.py (`DedupConfig`),
contamination.py, exact.py, perceptual.py, semantic.py, verdicts.py (one survivor per group, the output
files) and partitioned.py (the map/reduce path).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from thresher.algo import hashes
from thresher.core import runtime, schema
from thresher.core.errors import InputError
from thresher.core.pool import Pool, completed
from thresher.exec import execute
from thresher.stages.dedup.config import DedupConfig
from thresher.stages.dedup.contamination import eval_index
from thresher.stages.dedup.exact import exact_pairs
from thresher.stages.dedup.partitioned import _run_partitioned
from thresher.stages.dedup.semantic import semantic_pairs
from thresher.stages.dedup.verdicts import _apply, _write_manifest
from thresher.stages.features import features


@runtime.holds(lambda pool, *a, **k: runtime.join(Pool(pool).require().root, "dedup"), "this pool's dedup")
def run(pool: str, cfg: DedupConfig, ray_address: str | None = None, log=print) -> dict:
    cfg.validate()
    if cfg.perceptual or (cfg.contamination and cfg.eval_sets):
        Pool(pool).require_images("dedup's PDQ steps (set perceptual: false and contamination: false)")
    t0 = time.time()
    base_dir = Pool(pool).features_dir("base")
    shards = Pool(pool).shards()
    missing = [s for s in shards if s not in completed(base_dir)]
    if missing:
        raise InputError(
            f"{pool}: base features missing for {len(missing)} shard(s) (first {missing[0]:08d}); "
            f"run `thresher features {pool}` first"
        )
    scorer_dir = Pool(pool).features_dir(cfg.scorer)
    if (cfg.semantic or cfg.keep == "clip_score") and set(completed(scorer_dir)) != set(shards):
        raise InputError(
            f"{pool}: scorer {cfg.scorer!r} is missing or incomplete; run `thresher features` "
            f"with --scorer-id {cfg.scorer}, or choose --scorer, or --keep first"
        )
    if cfg.partitions:
        return _run_partitioned(pool, cfg, shards, ray_address, log, t0)
    parts = [runtime.read_parquet(Pool(pool).features("base", s)) for s in shards]
    base = pa.concat_tables(parts)
    # each row's shard, from where it was read: a key's first 8 digits are the shard only in pools this
    # project downloaded (img2dataset's keys, in an adopted pool, start with a 5-digit shard)
    shard_of = np.repeat(np.array(shards, dtype=np.int64), [t.num_rows for t in parts])
    n = base.num_rows
    uids = base.column("uid").to_pylist()
    keys = base.column("key").to_pylist()
    order_key = np.argsort(np.argsort(np.array(keys)))  # rank by key = first seen
    scores = np.full(n, np.nan)
    emb = None
    if cfg.semantic or cfg.keep == "clip_score":
        table, img, _ = features.read_scorer(pool, cfg.scorer, with_embeddings=True, text=False)
        if table.column("uid").to_pylist() != uids:
            raise InputError(f"{scorer_dir} is not row-aligned with the base features; recompute it")
        scores = np.array(table.column("clip_score").to_pylist(), dtype=np.float64)
        emb = img.astype(np.float32)
    pdq, quality = base.column("pdq").to_pylist(), base.column("pdq_quality").to_pylist()
    rng = np.random.default_rng(cfg.seed)
    keep = np.ones(n, bool)
    reason: list[str | None] = [None] * n
    group: list[str | None] = [None] * n
    counts: dict[str, int] = {}

    if cfg.contamination and cfg.eval_sets:  # first: a near-copy of an eval image is that, whatever else it is
        alive = np.flatnonzero(keep)
        codes, have = hashes.pdq_codes([pdq[i] for i in alive], [quality[i] for i in alive], cfg.pdq_min_quality)
        eval_codes, eval_names = eval_index(cfg.eval_sets)
        hits = hashes.hamming_pairs(eval_codes, cfg.pdq_radius, queries=codes) if len(codes) else np.zeros((0, 2), int)
        dropped = 0
        for q, e in hits:
            i = alive[have[q]]
            if keep[i]:
                keep[i], reason[i], group[i] = False, "contamination", f"eval:{eval_names[int(e)]}"
                dropped += 1
        counts["contamination"] = dropped

    def apply(pairs, alive, step):  # one step's pairs into the shared verdicts (keep, reason, group)
        return _apply(pairs, alive, step, cfg, scores, order_key, rng, group, reason, keep, uids)

    if cfg.exact:
        alive = np.flatnonzero(keep)
        sha = base.column("sha256").to_pylist()
        counts["exact"] = apply(exact_pairs([sha[i] for i in alive]), alive, "exact")
    if cfg.perceptual:
        alive = np.flatnonzero(keep)
        codes, have = hashes.pdq_codes([pdq[i] for i in alive], [quality[i] for i in alive], cfg.pdq_min_quality)
        pairs = hashes.hamming_pairs(codes, cfg.pdq_radius)
        counts["perceptual"] = apply(have[pairs] if len(pairs) else pairs, alive, "perceptual")
    if cfg.semantic:
        alive = np.flatnonzero(keep)
        ok = alive[np.isfinite(scores[alive])] if cfg.keep == "clip_score" else alive
        ok = ok[np.linalg.norm(emb[ok], axis=1) > 0.5]  # rows with no embedding (decode errors) are zeros
        if cfg.ray_tasks:
            execute.start(ray_address)
        pairs = semantic_pairs(
            emb[ok],
            cfg.threshold,
            cfg.clusters,
            cfg.probes,
            cfg.kmeans_iters,
            cfg.seed,
            gpu=cfg.gpu,
            ray_tasks=cfg.ray_tasks,
        )
        # map back to indices into `alive`
        pos = np.searchsorted(alive, ok)
        counts["semantic"] = apply(pos[pairs] if len(pairs) else pairs, alive, "semantic")

    out_dir = Pool(pool).dedup_dir
    runtime.makedirs(out_dir)
    for s in shards:
        rows = np.flatnonzero(shard_of == s)
        table = pa.table(
            {
                "uid": [uids[i] for i in rows],
                "key": [keys[i] for i in rows],
                "duplicate_group": [group[i] for i in rows],
                "keep": keep[rows],
                "reason": [reason[i] for i in rows],
            },
            schema=schema.DEDUP,
        )
        runtime.write_parquet(table, Pool(pool).dedup(s))
    return _write_manifest(pool, cfg, n, int(keep.sum()), counts, t0, log)


def read(pool: str) -> pa.Table:
    shards = Pool(pool).shards()
    return pa.concat_tables([runtime.read_parquet(Pool(pool).dedup(s)) for s in shards])
