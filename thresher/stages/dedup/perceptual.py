"""Dedup stage's perceptual step, partitioned (`thresher dedup --partitions N`, `perceptual: true`): PDQ
near-duplicates over Ray tasks, WORK/{pmap,preduce,pverdict}/ into POOL/dedup/ (reason "perceptual").
In process, dedup.py's `run` finds the pairs with `hashes.hamming_pairs` over the whole pool.
"""

from __future__ import annotations

import numpy as np

from thresher.algo import hashes
from thresher.core import runtime
from thresher.core.config import from_dict, to_dict
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.stages.dedup.config import DedupConfig
from thresher.stages.dedup.verdicts import _int_keys, _write_back, _write_verdicts

# Partitioned PDQ near-duplicates, on what exact dedup kept, by multi-index hashing (hashes.py: two codes
# within 31 bits share at least one of their 32 bytes exactly). Rows are named by one int64, shard << 32
# | row. Rounds:
#   map     a task per shard group: every row kept so far whose PDQ hash is trusted (pdq_min_quality) goes
#           32 times, once per byte c, to the partition of its bucket (c, byte value), with its full code:
#           WORK/pmap/{g}-{b}.npz, one member per partition, a file per ~_PDQ_MAP_BYTES of copies;
#   reduce  a task per partition: within each bucket, rows of one code searched once, FAISS binary range
#           search at pdq_radius, a pair kept only in the bucket of the first byte its codes share (so
#           every pair of the pool is found in one bucket); the pairs joined into a spanning forest of
#           the partition's groups, WORK/preduce/{p}.npz (edges: a row and its group's smallest row);
#   join    the driver: connected components over every partition's forest (O(rows with a near-copy),
#           never a per-sample array of the pool); a task per shard group returns the key, score and uid
#           of its rows in a group; each group's survivor picked by `keep` as the in-process step does;
#           the verdicts into WORK/pverdict/000000.npz, one member per shard group;
#   write   a task per shard group: those verdicts into POOL/dedup/ (reason "perceptual").
# keep=random draws per group from the seed and the group's smallest key, not from one stream.

_PDQ_MAP_BYTES = 128 << 20  # copies a map task holds before it writes a file (41 bytes a copy)
_PDQ_LINKS = 1 << 23  # pairs a reduce task holds before it folds them into its forest


def _pdq_bucket_partition(partitions: int) -> np.ndarray:
    """The partition of each of the 32 x 256 (byte index, byte value) buckets, by a mixing hash (so that
    one common byte value does not land every byte index in one partition)."""
    k = np.arange(hashes.CODE_BYTES * 256, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    k ^= k >> np.uint64(29)
    k *= np.uint64(0xBF58476D1CE4E5B9)
    k ^= k >> np.uint64(32)
    return (k % np.uint64(partitions)).astype(np.int64)


def _pdq_route(codes: np.ndarray, ids: np.ndarray, partitions: int) -> list[tuple[np.ndarray, ...]]:
    """Each row's 32 copies (full code, byte index, id), split by the partition of their bucket."""
    table = _pdq_bucket_partition(partitions)
    chunk = np.tile(np.arange(hashes.CODE_BYTES, dtype=np.uint8), len(codes))
    part = table[chunk.astype(np.int64) * 256 + codes.ravel()]
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    out = []
    for p in range(partitions):
        sel = order[bounds[p] : bounds[p + 1]]
        row = sel // hashes.CODE_BYTES
        out.append((codes[row], chunk[sel], ids[row]))
    return out


def _pdq_links(codes: np.ndarray, chunk: np.ndarray, ids: np.ndarray, radius: int, expand: bool = False):
    """Yield (a, b) id arrays for one partition's copies: with `expand`, every pair of rows within
    `radius` bits found in its buckets (each pair of the pool in exactly one bucket, over all partitions);
    without, links with the same connected components: rows of one code are linked to its smallest id
    once (in their byte-0 bucket) and searched as that one row, which keeps a bucket of thousands of
    copies of one image (placeholders of several sizes) linear instead of quadratic."""
    key = chunk.astype(np.int64) * 256 + codes[np.arange(len(codes)), chunk]
    order = np.lexsort((ids, key))
    key = key[order]
    bounds = np.flatnonzero(np.diff(key)) + 1
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        c = int(chunk[members[0]])
        bucket, bucket_ids = codes[members], ids[members]  # ids ascending
        _, first, inv = np.unique(
            np.ascontiguousarray(bucket).view(np.dtype((np.void, bucket.shape[1]))).ravel(),
            return_index=True,
            return_inverse=True,
        )
        inv = inv.ravel()
        reps = bucket_ids[first]  # the smallest id of each distinct code
        if len(first) < len(members) and c == 0:  # identical codes first agree on byte 0
            same = bucket_ids != reps[inv]
            if expand:
                for u in np.flatnonzero(np.bincount(inv) > 1):
                    m = bucket_ids[inv == u]
                    a, b = np.triu_indices(len(m), 1)
                    yield m[a], m[b]
            else:
                yield reps[inv[same]], bucket_ids[same]
        for q, j in hashes.first_shared_byte_pairs(bucket[first], c, radius):  # one thread: a 1-CPU task
            if not expand:
                yield reps[q], reps[j]
                continue
            for u, v in zip(q, j):
                a, b = np.meshgrid(bucket_ids[inv == u], bucket_ids[inv == v], indexing="ij")
                yield np.minimum(a, b).ravel(), np.maximum(a, b).ravel()


def _pdq_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows that appear in links (sorted) and the smallest row of each one's connected group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    inv = inv.ravel()
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int32), (inv[: len(a)], inv[len(a) :])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return nodes, nodes[smallest[labels]]


def _pdq_forest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Links with the same groups, at most one per row: each row to its group's smallest row."""
    if not len(a):
        return a, b
    nodes, root = _pdq_components(a, b)
    edge = nodes != root
    return nodes[edge], root[edge]


def _map_pdq(g: int, groups: list[list[int]], pool: str, cfg_dict: dict, work: str) -> list[str]:
    shards, cfg = groups[g], from_dict(DedupConfig, cfg_dict)
    files: list[str] = []
    batch: list[tuple[np.ndarray, np.ndarray]] = []

    def flush():
        if batch:
            codes, ids = np.concatenate([c for c, _ in batch]), np.concatenate([i for _, i in batch])
            members = {}
            for p, (code, chunk, ident) in enumerate(_pdq_route(codes, ids, cfg.partitions)):
                members.update({f"code{p}": code, f"chunk{p}": chunk, f"id{p}": ident})
            name = f"{g:06d}-{len(files):04d}.npz"
            runtime.write_npz(runtime.join(work, "pmap", name), members)
            files.append(name)
            batch.clear()

    for s in shards:
        alive = np.flatnonzero(np.asarray(runtime.read_parquet(Pool(pool).dedup(s), columns=["keep"]).column("keep")))
        base = runtime.read_parquet(Pool(pool).features("base", s), columns=["pdq", "pdq_quality"])
        pdq, quality = base.column("pdq").to_pylist(), base.column("pdq_quality").to_pylist()
        codes, have = hashes.pdq_codes([pdq[i] for i in alive], [quality[i] for i in alive], cfg.pdq_min_quality)
        batch.append((codes, (np.int64(s) << 32) + alive[have].astype(np.int64)))
        if sum(len(i) for _, i in batch) * hashes.CODE_BYTES * 41 >= _PDQ_MAP_BYTES:
            flush()
    flush()
    return files


def _reduce_pdq(p: int, work: str, files: list[str], cfg_dict: dict) -> int:
    cfg = from_dict(DedupConfig, cfg_dict)
    parts = [runtime.read_npz(runtime.join(work, "pmap", f), [f"code{p}", f"chunk{p}", f"id{p}"]) for f in files]
    codes, chunk, ids = (np.concatenate([x[i] for x in parts]) for i in range(3))
    del parts
    a, b, held = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    for x, y in _pdq_links(codes, chunk, ids, cfg.pdq_radius):
        a.append(x)
        b.append(y)
        held += len(x)
        if held > _PDQ_LINKS:  # fold into the forest: at most one link per row of the partition
            fa, fb = _pdq_forest(np.concatenate(a), np.concatenate(b))
            a, b, held = [fa], [fb], len(fa)
    fa, fb = _pdq_forest(np.concatenate(a), np.concatenate(b))
    runtime.write_npz(runtime.join(work, "preduce", f"{p:06d}.npz"), {"a": fa, "b": fb})
    return len(fa)


def _pdq_attributes(g: int, groups: list[list[int]], pool: str, cfg_dict: dict, nodes: np.ndarray):
    """Key, score (NaN unless keep=clip_score) and uid of the rows of shard group g among `nodes`."""
    shards, cfg = groups[g], from_dict(DedupConfig, cfg_dict)
    mine = nodes[np.isin(nodes >> 32, shards)]  # sorted, as `nodes` is
    key, score, uid = [], [], []
    for s in shards:
        lo, hi = np.searchsorted(mine, [np.int64(s) << 32, np.int64(s + 1) << 32])
        rows = mine[lo:hi] & 0xFFFFFFFF
        if not len(rows):
            continue
        base = runtime.read_parquet(Pool(pool).features("base", s), columns=["uid", "key"])
        key.append(_int_keys(base.column("key"))[rows])
        uid.append(np.array(base.column("uid").to_pylist(), dtype=str)[rows])
        if cfg.keep == "clip_score":
            t = runtime.read_parquet(Pool(pool).features(cfg.scorer, s), columns=["clip_score"])
            score.append(np.array(t.column("clip_score").to_pylist(), dtype=np.float64)[rows])
        else:
            score.append(np.full(len(rows), np.nan))
    if not key:
        return mine, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, dtype=str)
    return mine, np.concatenate(key), np.concatenate(score), np.concatenate(uid)


def _pdq_winners(root: np.ndarray, key: np.ndarray, score: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Whether each row survives its group (rows named by `root`, their group's smallest row): `_choose`'s
    rule, highest score then first seen (clip_score) or first seen, or a draw seeded by the group."""
    s = np.nan_to_num(score, nan=-np.inf)
    order = np.lexsort((key, -s, root)) if cfg.keep == "clip_score" else np.lexsort((key, root))
    start = np.ones(len(order), bool)
    start[1:] = root[order][1:] != root[order][:-1]
    winner = np.zeros(len(order), bool)
    if cfg.keep == "random":
        firsts = np.flatnonzero(start)
        sizes = np.diff(np.r_[firsts, len(order)])
        for f, n in zip(firsts, sizes):
            members = order[f : f + n][np.argsort(key[order[f : f + n]], kind="stable")]
            winner[members[np.random.default_rng([cfg.seed, int(key[members[0]])]).integers(n)]] = True
    else:
        winner[order[start]] = True
    return winner


def _perceptual_partitioned(pool: str, cfg: DedupConfig, groups: list[list[int]], group_of, work: str, log) -> int:
    ex = execute.current()
    for d in ("pmap", "preduce", "pverdict"):
        runtime.makedirs(runtime.join(work, d))
    cfg_d = to_dict(cfg)
    g_all = range(len(groups))
    files = [f for fs in execute.map(_map_pdq, g_all, groups, pool, cfg_d, work, label="dedup:pdq map") for f in fs]
    if not files:
        return 0
    links = execute.map(_reduce_pdq, range(cfg.partitions), work, files, cfg_d, label="dedup:pdq reduce")
    ab = [runtime.read_npz(runtime.join(work, "preduce", f"{p:06d}.npz"), ["a", "b"]) for p in range(cfg.partitions)]
    a, b = np.concatenate([x[0] for x in ab]), np.concatenate([x[1] for x in ab])
    del ab
    log(f"[dedup] PDQ: {len(files)} map files, {sum(links)} forest links over {cfg.partitions} partitions")
    if not len(a):
        return 0
    nodes, root = _pdq_components(a, b)
    del a, b
    nodes_ref = ex.share(nodes)
    attrs = execute.map(_pdq_attributes, g_all, groups, pool, cfg_d, nodes_ref, label="dedup:pdq attributes")
    got = np.concatenate([x[0] for x in attrs])
    if not np.array_equal(got, nodes):  # shard groups are ascending runs of shards
        raise RuntimeError("dedup: PDQ group attributes came back out of order")
    key, score, uid = (np.concatenate([x[i] for x in attrs]) for i in (1, 2, 3))
    winner = _pdq_winners(root, key, score, cfg)
    win = np.flatnonzero(winner)
    win = win[np.argsort(root[win])]
    name = uid[win[np.searchsorted(root[win], root)]]  # a group is named by the uid of the row it keeps
    _write_verdicts(
        runtime.join(work, "pverdict", f"{0:06d}.npz"), group_of, nodes >> 32, nodes & 0xFFFFFFFF, winner, name
    )
    execute.map(_write_back, g_all, groups, pool, work, "pverdict", 1, "perceptual", label="dedup:pdq write")
    return int((~winner).sum())
