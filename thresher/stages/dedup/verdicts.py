"""Dedup stage's verdicts (`thresher dedup`): one survivor per group of duplicates, and the files that
record it.

In process: `UnionFind`, `_choose` and `_apply` turn one step's pairs into groups and keep one sample of
each by `keep` (the highest CLIP score, the first seen, or a seeded random one). `_write_manifest` writes
POOL/dedup/manifest.json for both paths. For the partitioned path (partitioned.py), the verdict files a
reduce task writes and a write task reads (WORK/{reduce,pverdict,sreduce}/{p}.npz: `_write_verdicts`,
`_read_verdicts`) and `_write_back`, which folds a later step's verdicts into POOL/dedup/{shard}.parquet.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from thresher.core import runtime, schema
from thresher.core.config import config_hash, to_dict
from thresher.core.pool import Pool
from thresher.stages.dedup.config import DedupConfig


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union_pairs(self, pairs: np.ndarray) -> None:
        for a, b in pairs:
            ra, rb = self.find(int(a)), self.find(int(b))
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def _choose(
    group_rows: np.ndarray, cfg: DedupConfig, scores: np.ndarray, order_key: np.ndarray, rng: np.random.Generator
) -> int:
    if cfg.keep == "first":
        return int(group_rows[np.argmin(order_key[group_rows])])
    if cfg.keep == "random":
        return int(rng.choice(group_rows))
    s = np.nan_to_num(scores[group_rows], nan=-np.inf)
    best = np.flatnonzero(s == s.max())
    return int(group_rows[best[np.argmin(order_key[group_rows[best]])]])  # ties: first seen


def _apply(pairs: np.ndarray, alive: np.ndarray, step: str, cfg, scores, order_key, rng, group, reason, keep, uids):
    """Drop all but one of each group formed by `pairs` (indices into `alive`); a group is named by the
    uid of the sample it keeps."""
    if not len(pairs):
        return 0
    uf = UnionFind(len(alive))
    uf.union_pairs(pairs)
    labels = uf.labels()
    dropped = 0
    touched = np.unique(pairs)
    roots = labels[touched]
    order = np.argsort(roots, kind="stable")  # one pass over groups, not one scan per group
    bounds = np.flatnonzero(np.diff(roots[order])) + 1
    for group_rows in np.split(touched[order], bounds):
        members = alive[group_rows]
        winner = _choose(members, cfg, scores, order_key, rng)
        for m in members:
            group[m] = group[m] or uids[winner]
            if m != winner:
                keep[m], reason[m] = False, step
                dropped += 1
    return dropped


def _write_manifest(pool: str, cfg: DedupConfig, n: int, kept: int, counts: dict, t0: float, log) -> dict:
    scorer_manifest = Pool(pool).features_manifest(cfg.scorer)
    manifest = {
        "kind": "thresher.dedup",
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "samples": n,
        "kept": kept,
        "removed": counts,
        "seconds": round(time.time() - t0, 2),
        "scorer_manifest": runtime.read_json(scorer_manifest) if (cfg.semantic or cfg.keep == "clip_score") else None,
        **runtime.provenance(),
    }
    runtime.write_json(Pool(pool).dedup_manifest, manifest)
    log(f"[dedup] {n} samples, kept {kept}; removed " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return manifest


VERDICT_FIELDS = ("shard", "row", "keep", "group")


def _int_keys(keys) -> np.ndarray:
    """Sample keys (zero-padded digits, one width per pool) as integers: the same order as the strings."""
    return np.array(keys.to_pylist() if hasattr(keys, "to_pylist") else keys, dtype=np.int64)


def _write_verdicts(url: str, group_of: np.ndarray, shard, row, keep, group) -> None:
    """A reduce task's verdicts (every member of a duplicate group: its shard and row, whether it survives,
    the group's name), one npz member per shard group, for that group's write task."""
    target = group_of[shard]
    columns = {
        "shard": np.asarray(shard, np.int64),
        "row": np.asarray(row, np.int64),
        "keep": np.asarray(keep, bool),
        "group": np.asarray(group, dtype=str),
    }
    runtime.write_npz(
        url, {f"{k}{g}": v[target == g] for g in range(int(group_of.max()) + 1) for k, v in columns.items()}
    )


def _read_verdicts(work: str, sub: str, partitions: int, g: int) -> list[np.ndarray]:
    """Shard group g's verdicts from every reduce file: shard, row, keep, group."""
    parts = [
        runtime.read_npz(runtime.join(work, sub, f"{p:06d}.npz"), [f"{k}{g}" for k in VERDICT_FIELDS])
        for p in range(partitions)
    ]
    return [np.concatenate([x[i] for x in parts]) for i in range(len(VERDICT_FIELDS))]


def _write_back(g: int, groups: list[list[int]], pool: str, work: str, sub: str, files: int, step: str) -> None:
    """A later step's verdicts (WORK/sub/*.npz) into POOL/dedup/: a dropped row gets reason `step`; a row
    already in a group (a survivor of an earlier step's) keeps that group's name."""
    v_shard, v_row, v_keep, v_group = _read_verdicts(work, sub, files, g)
    for s in groups[g]:
        mine = v_shard == s
        if not mine.any():
            continue
        path = Pool(pool).dedup(s)
        table = runtime.read_parquet(path)
        keep, reason, group = (
            np.array(table.column("keep")),
            table.column("reason").to_pylist(),
            table.column("duplicate_group").to_pylist(),
        )
        for r, k, grp in zip(v_row[mine], v_keep[mine], v_group[mine]):
            group[r] = group[r] or str(grp)
            if not k:
                keep[r], reason[r] = False, step
        columns = {"uid": table.column("uid"), "key": table.column("key"), "duplicate_group": group}
        runtime.write_parquet(pa.table({**columns, "keep": keep, "reason": reason}, schema=schema.DEDUP), path)
