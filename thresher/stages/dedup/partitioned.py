"""Dedup stage, partitioned (`thresher dedup --partitions N`): every step as rounds of Ray tasks.

Partitioned (`partitions: N`), for pools no process can hold: evaluation-set copies and exact
duplicates first (exact.py), then PDQ near-duplicates (perceptual.py) and SemDeDup (semantic.py) on
what they keep. Rows go to a partition by their sha256 (so every copy of an image meets in one task),
in three rounds of Ray tasks:
  map     a task per group of shards: eval-set copies found against the (small) eval index; every
          other row with a sha256 written to WORK/map/{g}.npz, one member per partition;
  reduce  a task per partition: its rows from every map file, grouped by sha256, one winner per group
          by `keep`; the verdicts written to WORK/reduce/{p}.npz, one member per shard group;
  write   a task per shard group: its verdicts from every reduce file into POOL/dedup/{shard}.parquet.
The same verdicts as the in-process path (tests/test_dedup.py), except keep=random, which draws per
group from a seed and the group's sha256 (exact) or smallest key (perceptual), or per partition
(semantic), instead of from one stream.

Work files go under POOL/dedup/_work/ (removed at the end); `_run_partitioned` runs the rounds and
writes the manifest.
"""

from __future__ import annotations

import numpy as np

from thresher.core import runtime
from thresher.core.config import to_dict
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.stages.dedup.config import DedupConfig
from thresher.stages.dedup.contamination import eval_index
from thresher.stages.dedup.exact import _map_exact, _reduce_exact, _write_exact
from thresher.stages.dedup.perceptual import _perceptual_partitioned
from thresher.stages.dedup.semantic import _semantic_partitioned
from thresher.stages.dedup.verdicts import _write_manifest


def _run_partitioned(pool: str, cfg: DedupConfig, shards: list[int], ray_address, log, t0: float) -> dict:
    ex = execute.start(ray_address)
    work = Pool(pool).path("dedup", "_work")
    runtime.remove(work, recursive=True)
    for d in ("map", "reduce"):
        runtime.makedirs(runtime.join(work, d))
    eval_codes, eval_names = eval_index(cfg.eval_sets) if cfg.contamination and cfg.eval_sets else (None, [])
    groups = [g.tolist() for g in np.array_split(np.array(shards), min(len(shards), cfg.partitions))]
    group_of = np.zeros(max(shards) + 1, np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    cfg_d = to_dict(cfg)
    g_all = range(len(groups))
    rows = execute.map(_map_exact, g_all, groups, pool, cfg_d, eval_codes, work, label="dedup:exact map")
    log(f"[dedup] {len(groups)} shard groups mapped to {cfg.partitions} sha256 partitions ({sum(rows)} rows)")
    group_ref = ex.share(group_of)
    exact = sum(
        execute.map(
            _reduce_exact, range(cfg.partitions), work, len(groups), cfg_d, group_ref, label="dedup:exact reduce"
        )
    )
    stats = execute.map(_write_exact, g_all, groups, pool, work, cfg.partitions, eval_names, label="dedup:exact write")
    counts = {"contamination": sum(st["contamination"] for st in stats)} if eval_codes is not None else {}
    if cfg.exact:
        counts["exact"] = exact
    kept = sum(st["kept"] for st in stats)
    if cfg.perceptual:
        counts["perceptual"] = _perceptual_partitioned(pool, cfg, groups, group_of, work, log)
        kept -= counts["perceptual"]
    if cfg.semantic:
        counts["semantic"] = _semantic_partitioned(pool, cfg, groups, group_ref, work, kept, log)
        kept -= counts["semantic"]
    runtime.remove(work, recursive=True)
    return _write_manifest(pool, cfg, sum(st["samples"] for st in stats), kept, counts, t0, log)
