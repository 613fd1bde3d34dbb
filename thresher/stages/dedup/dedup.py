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
rounds of Ray tasks over partitions instead, with the same verdicts (see the partitioned sections below).

Output, one file per pool shard, a row for every successfully downloaded sample:
    POOL/dedup/{i:08d}.parquet   uid, key, duplicate_group, keep, reason   (schema.DEDUP)
    POOL/dedup/manifest.json     config and hash, counts removed by each step, inputs used
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from thresher.algo import hashes, kmeans
from thresher.core import runtime, schema
from thresher.core.config import config_hash, from_dict, opt, to_dict
from thresher.core.errors import InputError
from thresher.core.pool import Pool, completed, read_npy
from thresher.exec import execute
from thresher.stages.features import features


@dataclass
class DedupConfig:
    exact: bool = opt(True, "drop copies with the same sha256")
    perceptual: bool = opt(True, "drop copies whose PDQ hashes are within pdq_radius")
    pdq_radius: int = opt(31, "PDQ Hamming radius (31 is the usual match threshold)")
    pdq_min_quality: int = opt(50, "ignore PDQ hashes of lower quality (PDQ's authors advise 50: too little detail)")
    semantic: bool = opt(True, "SemDeDup on image embeddings of `scorer`")
    scorer: str = opt("clip_tiny", "the scorer whose image embeddings (and CLIP scores) are used")
    threshold: float = opt(0.95, "cosine at or above which two images are semantic duplicates (1 - eps)")
    clusters: int = opt(0, "k-means clusters; 0 = about one per 1,000 samples")
    probes: int = opt(2, "nearest clusters each sample is compared within")
    kmeans_iters: int = opt(20, "k-means iterations")
    kmeans_flat_max: int = opt(
        16_384,
        "with partitions: past this many clusters k-means is hierarchical (sqrt(k) coarse clusters, each split "
        "into its share; rows go to partitions by coarse cluster)",
    )
    gpu: bool = opt(True, "use GPU FAISS (k-means) and torch (within-cluster cosine) when a GPU is usable")
    ray_tasks: int = opt(0, "spread the within-cluster work over this many Ray tasks; 0 = in this process")
    partitions: int = opt(
        0,
        "run every step as Ray tasks over this many partitions (by sha256, by PDQ byte, by "
        "cluster), so no process holds the pool; needs pdq_radius <= 31 and probes 1; 0 = in this process",
    )
    contamination: bool = opt(True, "drop near-copies of evaluation images (needs eval_sets)")
    eval_sets: list[str] = opt(help="evaluation sets (CLIP_benchmark WebDataset dirs) to check against", factory=list)
    keep: str = opt("clip_score", "which sample of a group survives: clip_score, first or random")
    seed: int = opt(0, "seed for k-means and keep=random")

    def validate(self) -> None:
        if self.keep not in ("clip_score", "first", "random"):
            raise InputError(f"keep must be clip_score, first or random, not {self.keep!r}")
        if not 0 < self.threshold <= 1:
            raise InputError("threshold must be in (0, 1]")
        if self.partitions and self.perceptual and self.pdq_radius >= hashes.CODE_BYTES:
            raise InputError(
                f"partitioned PDQ dedup finds pairs that share one of the code's {hashes.CODE_BYTES} bytes, "
                f"which every pair within {hashes.CODE_BYTES - 1} bits does: set pdq_radius <= "
                f"{hashes.CODE_BYTES - 1} (or perceptual: false)"
            )
        if self.partitions and self.semantic and self.probes != 1:
            raise InputError(
                "partitioned SemDeDup puts each sample in its one nearest cluster, as SemDeDup's "
                "paper does: set probes: 1"
            )


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


# ---------------------------------------------------------------------------------------------------
# Pair finders: each takes the rows still alive and returns index pairs (into those rows)


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


# ---------------------------------------------------------------------------------------------------


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


def eval_pdq(eval_dir: str) -> list[tuple[str, str]]:
    """PDQ hashes of every image of an evaluation set in CLIP_benchmark's WebDataset layout."""
    import tarfile

    from thresher.algo.hashes import pdq_hash
    from thresher.core import decode

    out = []
    for tar_path in runtime.glob(runtime.join(eval_dir, "*", "*.tar")):
        fs, p = runtime.fs_path(tar_path)
        with fs.open(p, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp"):
                    name = member.name.rsplit(".", 1)[0]
                    try:  # the one pixel-limit check (decode.py): an evaluation set is the user's data too
                        image = decode.open_image(tar.extractfile(member).read())
                    except decode.TooLarge as err:
                        raise InputError(f"{tar_path}: {member.name}: {err}") from None
                    out.append((name, pdq_hash(image)[0]))
    if not out:
        raise InputError(f"no images found in evaluation set {eval_dir} (expected */N.tar)")
    return out


def eval_index(eval_sets: list[str]) -> tuple[np.ndarray, list[str]]:
    """PDQ codes of every image of the evaluation sets, and their names (SET/NAME)."""
    eval_hashes, eval_names = [], []
    for d in eval_sets:
        for name, h in eval_pdq(d):
            eval_hashes.append(h)
            eval_names.append(f"{d.rstrip('/').rsplit('/', 1)[-1]}/{name}")
    return hashes.pdq_codes(eval_hashes)[0], eval_names


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
    base = features.read_base(pool)
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

    shard_of = np.array([int(k[:8]) for k in keys])
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


# ---------------------------------------------------------------------------------------------------
# Partitioned (`partitions: N`), for pools no process can hold: evaluation-set copies and exact
# duplicates here, then PDQ near-duplicates and SemDeDup (below) on what they keep. Rows go to a
# partition by their sha256 (so every copy of an image meets in one task), in three rounds of Ray tasks:
#   map     a task per group of shards: eval-set copies found against the (small) eval index; every
#           other row with a sha256 written to WORK/map/{g}.npz, one member per partition;
#   reduce  a task per partition: its rows from every map file, grouped by sha256, one winner per group
#           by `keep`; the verdicts written to WORK/reduce/{p}.npz, one member per shard group;
#   write   a task per shard group: its verdicts from every reduce file into POOL/dedup/{shard}.parquet.
# The same verdicts as the in-process path (tests/test_dedup.py), except keep=random, which draws per
# group from a seed and the group's sha256 (exact) or smallest key (perceptual), or per partition
# (semantic), instead of from one stream.

_MAP_FIELDS = ("sha", "uid", "shard", "row", "key", "score")
VERDICT_FIELDS = ("shard", "row", "keep", "group")


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


def read(pool: str) -> pa.Table:
    shards = Pool(pool).shards()
    return pa.concat_tables([runtime.read_parquet(Pool(pool).dedup(s)) for s in shards])
