"""Dedup stage's exact step (`thresher dedup`, `exact: true`): copies with the same sha256 of the
downloaded bytes.

In process, `exact_pairs` over the rows still alive. Partitioned (`partitions: N`, partitioned.py), the
first rounds of tasks, which also drop evaluation-set copies: `_map_exact` (a task per shard group:
WORK/map/{g}.npz), `_reduce_exact` (a task per sha256 partition: WORK/reduce/{p}.npz) and `_write_exact`
(a task per shard group: POOL/dedup/{shard}.parquet, the first verdicts of every row).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from thresher.algo import hashes
from thresher.core import runtime, schema
from thresher.core.config import from_dict
from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.stages.dedup.config import DedupConfig
from thresher.stages.dedup.verdicts import _int_keys, _read_verdicts, _write_verdicts


def exact_pairs(sha256: list[str | None]) -> np.ndarray:
    first: dict[str, int] = {}
    pairs = []
    for i, h in enumerate(sha256):
        if h is None:
            continue
        if h in first:
            pairs.append((first[h], i))
        else:
            first[h] = i
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


_MAP_FIELDS = ("sha", "uid", "shard", "row", "key", "score")


def _map_exact(g: int, groups: list[list[int]], pool: str, cfg_dict: dict, eval_codes, work: str) -> int:
    shards, cfg = groups[g], from_dict(DedupConfig, cfg_dict)
    cols: dict[str, list] = {k: [] for k in _MAP_FIELDS}
    contaminated = {"c_shard": [], "c_row": [], "c_eval": []}
    for s in shards:
        base = runtime.read_parquet(
            Pool(pool).features("base", s), columns=["uid", "key", "sha256", "pdq", "pdq_quality"]
        )
        uids, n = base.column("uid").to_pylist(), base.num_rows
        alive = np.ones(n, bool)
        if eval_codes is not None:
            codes, have = hashes.pdq_codes(
                base.column("pdq").to_pylist(), base.column("pdq_quality").to_pylist(), cfg.pdq_min_quality
            )
            hits = (
                hashes.hamming_pairs(eval_codes, cfg.pdq_radius, queries=codes) if len(codes) else np.zeros((0, 2), int)
            )
            for q, e in hits:
                if alive[have[q]]:
                    alive[have[q]] = False
                    for k, v in zip(contaminated, (s, have[q], e)):
                        contaminated[k].append(int(v))
        scores = np.full(n, np.nan)
        if cfg.keep == "clip_score":
            t = runtime.read_parquet(Pool(pool).features(cfg.scorer, s), columns=["uid", "clip_score"])
            if t.column("uid").to_pylist() != uids:
                raise InputError(
                    f"{pool}: scorer {cfg.scorer} shard {s:08d} is not row-aligned with the base features; recompute it"
                )
            scores = np.array(t.column("clip_score").to_pylist(), dtype=np.float64)
        sha = base.column("sha256").to_pylist()
        rows = np.flatnonzero(alive & np.array([h is not None for h in sha])) if cfg.exact else np.zeros(0, int)
        for k, v in zip(
            _MAP_FIELDS,
            (
                np.array([bytes.fromhex(sha[r]) for r in rows], dtype="S32"),
                np.array(uids, dtype=str)[rows],
                np.full(len(rows), s),
                rows,
                _int_keys(base.column("key"))[rows],
                scores[rows],
            ),
        ):
            cols[k].append(v)
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    arrays["sha"] = arrays["sha"].astype("S32")
    part = np.frombuffer(arrays["sha"].tobytes(), dtype=">u8").reshape(-1, 4)[:, 0] % cfg.partitions
    members = {f"{k}{p}": a[part == p] for p in range(cfg.partitions) for k, a in arrays.items()}
    members.update({k: np.array(v, np.int64) for k, v in contaminated.items()})
    runtime.write_npz(runtime.join(work, "map", f"{g:06d}.npz"), members)
    return len(arrays["sha"])


def _reduce_exact(p: int, work: str, maps: int, cfg_dict: dict, group_of: np.ndarray) -> int:
    cfg = from_dict(DedupConfig, cfg_dict)
    parts = [
        runtime.read_npz(runtime.join(work, "map", f"{g:06d}.npz"), [f"{k}{p}" for k in _MAP_FIELDS])
        for g in range(maps)
    ]
    sha, uid, shard, row, key, score = (np.concatenate([x[i] for x in parts]) for i in range(len(_MAP_FIELDS)))
    s = np.nan_to_num(score, nan=-np.inf)
    # each sha256 group's rows with its winner first: highest score then first seen, or first seen
    order = np.lexsort((key, -s, sha)) if cfg.keep == "clip_score" else np.lexsort((key, sha))
    sha, uid, shard, row, key = sha[order], uid[order], shard[order], row[order], key[order]
    start = np.ones(len(sha), bool)
    start[1:] = sha[1:] != sha[:-1]
    size = np.diff(np.r_[np.flatnonzero(start), len(sha)])
    gid = np.cumsum(start) - 1
    in_group = size[gid] > 1
    winner = np.flatnonzero(start)[gid]
    if cfg.keep == "random":
        firsts = np.flatnonzero(start)
        for f, n in zip(firsts, size):
            if n > 1:
                seed = int.from_bytes(sha[f][:8], "big")
                winner[f : f + n] = f + np.random.default_rng([cfg.seed, seed]).integers(n)
    keep = np.arange(len(sha)) == winner
    dup = np.flatnonzero(in_group)
    _write_verdicts(
        runtime.join(work, "reduce", f"{p:06d}.npz"), group_of, shard[dup], row[dup], keep[dup], uid[winner[dup]]
    )
    return int((~keep[dup]).sum())


def _write_exact(g: int, groups: list[list[int]], pool: str, work: str, partitions: int, eval_names: list[str]) -> dict:
    shards = groups[g]
    c_shard, c_row, c_eval = runtime.read_npz(runtime.join(work, "map", f"{g:06d}.npz"), ["c_shard", "c_row", "c_eval"])
    v_shard, v_row, v_keep, v_group = _read_verdicts(work, "reduce", partitions, g)
    samples = kept = 0
    for s in shards:
        base = runtime.read_parquet(Pool(pool).features("base", s), columns=["uid", "key"])
        n = base.num_rows
        keep = np.ones(n, bool)
        reason: list[str | None] = [None] * n
        group: list[str | None] = [None] * n
        for r, e in zip(c_row[c_shard == s], c_eval[c_shard == s]):
            keep[r], reason[r], group[r] = False, "contamination", f"eval:{eval_names[e]}"
        mine = v_shard == s
        for r, k, grp in zip(v_row[mine], v_keep[mine], v_group[mine]):
            group[r] = str(grp)
            if not k:
                keep[r], reason[r] = False, "exact"
        table = pa.table(
            {
                "uid": base.column("uid"),
                "key": base.column("key"),
                "duplicate_group": group,
                "keep": keep,
                "reason": reason,
            },
            schema=schema.DEDUP,
        )
        runtime.write_parquet(table, Pool(pool).dedup(s))
        samples, kept = samples + n, kept + int(keep.sum())
    return {"samples": samples, "kept": kept, "contamination": len(c_row)}
