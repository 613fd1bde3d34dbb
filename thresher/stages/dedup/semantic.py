"""Dedup stage's semantic step (`thresher dedup --scorer S`, `semantic: true`): SemDeDup on the scorer's
image embeddings (POOL/features/S/), in process (`semantic_pairs`: FAISS k-means, then cosine within
each cluster, on the GPU where there is one) or partitioned (`partitions: N`: k-means as tasks,
thresher/algo/kmeans.py, then WORK/{smap,sreduce}/ into POOL/dedup/, reason "semantic").
"""

from __future__ import annotations

import functools

import numpy as np

from thresher.algo import kmeans
from thresher.core import runtime
from thresher.core.config import from_dict, to_dict
from thresher.core.errors import InputError
from thresher.core.pool import Pool, read_npy
from thresher.exec import execute
from thresher.stages.dedup.config import DedupConfig
from thresher.stages.dedup.verdicts import _apply, _int_keys, _write_back, _write_verdicts


def faiss_gpus(allowed: bool = True) -> int:
    """GPUs the installed FAISS build can use (0 with faiss-cpu, or when not allowed)."""
    import faiss

    return faiss.get_num_gpus() if allowed and hasattr(faiss, "get_num_gpus") else 0


def _within_chunk(
    groups: list[np.ndarray], x: np.ndarray, threshold: float, block: int, torch_device: str | None = None
) -> np.ndarray:
    """One task's share of the clusters (the item comes first: the executor's calling rule)."""
    return _within(x, groups, threshold, block, torch_device)


def _within(
    x: np.ndarray, groups: list[np.ndarray], threshold: float, block: int, torch_device: str | None = None
) -> np.ndarray:
    """Pairs (a < b) at cosine >= threshold within each group of row indices into x; the products in
    numpy, or in torch on `torch_device` (the GPU path)."""
    pairs = []
    if torch_device:
        import torch
    for members in groups:
        sub = x[members]
        if torch_device:
            t = torch.from_numpy(sub).to(torch_device)
        for start in range(0, len(members), block):
            if torch_device:
                a, b = (t[start : start + block] @ t.T >= threshold).nonzero(as_tuple=True)
                a, b = a.cpu().numpy(), b.cpu().numpy()
            else:
                a, b = np.nonzero(sub[start : start + block] @ sub.T >= threshold)
            keep = members[start + a] < members[b]
            if keep.any():
                pairs.append(np.stack([members[start + a[keep]], members[b[keep]]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def semantic_pairs(
    emb: np.ndarray,
    threshold: float,
    clusters: int = 0,
    probes: int = 2,
    iters: int = 20,
    seed: int = 0,
    block: int = 4096,
    gpu: bool = True,
    ray_tasks: int = 0,
) -> np.ndarray:
    """SemDeDup: spherical k-means, then exact cosine within clusters. Rows must be L2-normalised.

    k-means runs on a GPU when the FAISS build has one (`gpu`), and so does the within-cluster product
    (torch). Clusters are independent, so with `ray_tasks` > 0 the within-cluster work is cut into that
    many Ray tasks of about equal cost (sum of cluster size squared); the embeddings travel once, through
    Ray's object store."""
    import faiss

    n, d = emb.shape
    if n < 2:
        return np.zeros((0, 2), np.int64)
    x = np.ascontiguousarray(emb, dtype=np.float32)
    k = clusters or max(1, n // 1000)
    k = min(k, n)
    probes = min(probes, k)
    on_gpu = faiss_gpus(gpu) > 0
    km = faiss.Kmeans(
        d, k, niter=iters, seed=seed, spherical=True, verbose=False, max_points_per_centroid=256, gpu=on_gpu
    )
    km.train(x)
    _, assign = km.index.search(x, probes)  # each sample visits its `probes` nearest clusters
    order = np.argsort(assign.ravel(), kind="stable")
    members_all = order // probes
    bounds = np.flatnonzero(np.diff(assign.ravel()[order])) + 1
    groups = [m for m in np.split(members_all, bounds) if len(m) > 1]
    if ray_tasks > 0 and len(groups) > 1:
        cost = np.array([len(g) ** 2 for g in groups], dtype=np.float64)
        chunk_of = np.minimum((np.cumsum(cost) - cost) * ray_tasks // cost.sum(), ray_tasks - 1).astype(int)
        chunks = [[g for g, c in zip(groups, chunk_of) if c == t] for t in range(ray_tasks) if (chunk_of == t).any()]
        parts = execute.map(
            _within_chunk,
            chunks,
            execute.current().share(x),
            threshold,
            block,
            "cuda" if on_gpu else None,
            label="dedup:semantic",
            resources=execute.Resources(cpus=1, gpus=1 if on_gpu else 0),
        )
    else:
        parts = [_within(x, groups, threshold, block, "cuda" if on_gpu else None)]
    pairs = np.concatenate(parts)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


# Partitioned SemDeDup: spherical k-means as tasks (thresher/algo/kmeans.py: a training sample staged by a
# task per shard group, Lloyd steps whose tasks return per-cluster sums; the driver holds centroids, never
# rows; hierarchical past `kmeans_flat_max` clusters, ~11.5M at 12.8B); every surviving row routed to its
# nearest centroid (a hierarchy's coarse one) and sent to a partition by route (with its embedding: the
# shuffle); per partition, each route's rows labelled within it (a hierarchy's fine centroids of that coarse
# cluster, one set at a time), cosine pairs within each cluster and one survivor per connected group;
# verdicts written back into POOL/dedup/. One cluster per sample, so every group lies within one partition.


def _semantic_rows(pool: str, s: int, cfg: DedupConfig):
    """One shard's rows that semantic dedup looks at (kept so far, with an embedding, and a score where the
    survivor is chosen by score), with their embeddings, scores, keys and uids."""
    verdict = runtime.read_parquet(Pool(pool).dedup(s), columns=["uid", "key", "keep"])
    layout = Pool(pool)
    table = runtime.read_parquet(layout.features(cfg.scorer, s), columns=["uid", "clip_score"])
    if table.column("uid").to_pylist() != verdict.column("uid").to_pylist():
        raise InputError(
            f"{layout.features_dir(cfg.scorer)}: shard {s:08d} is not row-aligned with the base features; recompute it"
        )
    emb = read_npy(layout.embeddings(cfg.scorer, s)).astype(np.float32)
    score = np.array(table.column("clip_score").to_pylist(), dtype=np.float64)
    ok = np.asarray(verdict.column("keep")) & (np.linalg.norm(emb, axis=1) > 0.5)  # zeros: undecodable
    if cfg.keep == "clip_score":
        ok &= np.isfinite(score)
    rows = np.flatnonzero(ok)
    keys = _int_keys(verdict.column("key"))
    return rows, emb[rows], score[rows], keys[rows], np.array(verdict.column("uid").to_pylist(), dtype=str)[rows]


def _semantic_embeddings(g: int, groups: list[list[int]], pool: str, cfg_dict: dict) -> np.ndarray:
    """k-means' reader: shard group g's embeddings that semantic dedup looks at (float16, as stored)."""
    cfg = from_dict(DedupConfig, cfg_dict)
    parts = [_semantic_rows(pool, s, cfg)[1].astype(np.float16) for s in groups[g]]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)


def _map_semantic(g: int, groups: list[list[int]], pool: str, cfg_dict: dict, routes: np.ndarray, work: str) -> int:
    shards, cfg = groups[g], from_dict(DedupConfig, cfg_dict)
    index = kmeans.centroid_index(routes)
    cols: dict[str, list] = {k: [] for k in ("emb", "route", "shard", "row", "key", "score", "uid")}
    for s in shards:
        rows, emb, score, keys, uids = _semantic_rows(pool, s, cfg)
        route = kmeans.nearest(emb, index)[0]
        for k, v in zip(cols, (emb.astype(np.float16), route, np.full(len(rows), s), rows, keys, score, uids)):
            cols[k].append(v)
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    part = arrays["route"] % cfg.partitions
    runtime.write_npz(
        runtime.join(work, "smap", f"{g:06d}.npz"),
        {f"{k}{p}": a[part == p] for p in range(cfg.partitions) for k, a in arrays.items()},
    )
    return len(part)


def _reduce_semantic(p: int, work: str, maps: int, cfg_dict: dict, group_of: np.ndarray, clusters) -> int:
    cfg = from_dict(DedupConfig, cfg_dict)
    names = ["emb", "route", "shard", "row", "key", "score", "uid"]
    parts = [
        runtime.read_npz(runtime.join(work, "smap", f"{g:06d}.npz"), [f"{k}{p}" for k in names]) for g in range(maps)
    ]
    emb, route, shard, row, key, score, uid = (np.concatenate([x[i] for x in parts]) for i in range(len(names)))
    x = emb.astype(np.float32)
    cluster = route.copy()  # flat: the route is the cluster
    for j in np.unique(route) if isinstance(clusters, kmeans.Hierarchy) else []:
        at = np.flatnonzero(route == j)
        cluster[at] = clusters.within(x[at], int(j))
    order = np.argsort(cluster, kind="stable")
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    groups = [m for m in np.split(order, bounds) if len(m) > 1]
    pairs = _within(x, groups, cfg.threshold, 4096, None) if groups else np.zeros((0, 2), np.int64)
    # the in-process step's grouping and choice, on this partition's rows (random: a stream per partition)
    n = len(x)
    keep, reason, group = np.ones(n, bool), [None] * n, [None] * n
    dropped = _apply(
        pairs, np.arange(n), "semantic", cfg, score, key, np.random.default_rng([cfg.seed, p]), group, reason, keep, uid
    )
    members = np.array([i for i in range(n) if group[i] is not None], np.int64)
    _write_verdicts(
        runtime.join(work, "sreduce", f"{p:06d}.npz"),
        group_of,
        shard[members],
        row[members],
        keep[members],
        [group[i] for i in members],
    )
    return dropped


def _semantic_partitioned(
    pool: str, cfg: DedupConfig, groups: list[list[int]], group_ref, work: str, alive: int, log
) -> int:
    for d in ("smap", "sreduce"):
        runtime.makedirs(runtime.join(work, d))
    k = min(cfg.clusters or max(1, alive // 1000), max(1, alive))
    cfg_d = to_dict(cfg)
    g_all = range(len(groups))
    # k-means as tasks, on up to 256 rows a centroid (FAISS's cap, as before), staged under work/kmeans
    km = kmeans.fit_clusters(
        list(g_all),
        functools.partial(_semantic_embeddings, groups=groups, pool=pool, cfg_dict=cfg_d),
        k,
        work=runtime.join(work, "kmeans"),
        flat_max=cfg.kmeans_flat_max,
        iters=cfg.kmeans_iters,
        seed=cfg.seed,
        rows=alive,
        gpu=cfg.gpu,
        label="dedup:k-means",
    )
    if km is None:
        return 0
    hierarchical = isinstance(km, kmeans.Hierarchy)
    log(
        f"[dedup] SemDeDup: {'hierarchical ' if hierarchical else ''}k-means with {km.k} clusters over "
        f"{km.train_rows} of {km.rows} rows, {km.iterations} iterations, mean cosine {km.objective:.4f}"
    )
    ex = execute.current()
    routes = ex.share(km.routes())
    execute.map(_map_semantic, g_all, groups, pool, cfg_d, routes, work, label="dedup:semantic map")
    within = ex.share(km if hierarchical else None)  # coarse centroids and the fine files' names
    dropped = sum(
        execute.map(
            _reduce_semantic,
            range(cfg.partitions),
            work,
            len(groups),
            cfg_d,
            group_ref,
            within,
            label="dedup:semantic reduce",
        )
    )
    execute.map(
        _write_back, g_all, groups, pool, work, "sreduce", cfg.partitions, "semantic", label="dedup:semantic write"
    )
    return dropped
