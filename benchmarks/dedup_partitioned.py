"""Dedup as Ray tasks over partitions (`thresher dedup --partitions N`) against the same steps in one
process, on a generated pool of N rows with planted copies.

    python benchmarks/dedup_partitioned.py [--rows 2000000] [--shards 200] [--partitions 16] [--dir DIR]
    python benchmarks/dedup_partitioned.py --semantic --rows 200000 --dim 512   # exact + SemDeDup

The pool holds what dedup reads: shard completion markers and `features/base` Parquet (uid, key, sha256,
PDQ) with 10% of rows exact copies of others; with --semantic also a scorer's image embeddings (loose
clusters, cosine ~0.8 between unrelated rows of a cluster) with another 10% near-copies (cosine ~0.999)
and scores.
Exact only: keep=first, and the verdicts must be the same. With --semantic: keep=clip_score and one
probe; the two paths' k-means differ (a sample against every row), so the script reports how many
verdicts agree. It prints the wall time of each path, their ratio, and the partitioned rate per core
(configs/throughputs.yaml's `dedup.exact_partitioned`).
The in-process path is the reference: on one machine it is expected to win (Ray's start and the
staging files cost more than they save); the partitioned path exists for pools no process can hold.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not this folder (select.py)

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from thresher.core import runtime, schema
from thresher.exec import execute
from thresher.stages.dedup import dedup


def make_pool(root: Path, rows: int, shards: int, dim: int = 0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    digests = rng.integers(0, 256, size=(rows, 32), dtype=np.uint8)
    copies = rng.choice(rows, rows // 10, replace=False)
    digests[copies] = digests[rng.integers(0, rows, len(copies))]  # 10% of rows repeat another's bytes
    if dim:
        centers = rng.normal(size=(max(1, rows // 500), dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        # rows of a cluster at cosine ~0.8 from each other: clusters k-means can find, far below the threshold
        emb = centers[rng.integers(0, len(centers), rows)] + rng.normal(size=(rows, dim)).astype(np.float32) * (
            0.5 / dim**0.5
        )
        near = rng.choice(rows, rows // 10, replace=False)
        emb[near] = emb[rng.integers(0, rows, len(near))] + (0.05 / dim**0.5) * rng.normal(size=(len(near), dim))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        scores = rng.uniform(0.2, 0.4, rows)
        scorer = root / "features" / "bench"
        scorer.mkdir(parents=True, exist_ok=True)
        (scorer / "manifest.json").write_text('{"scorer": {"model": "planted"}}')
    per = -(-rows // shards)
    for s in range(shards):
        lo, hi = s * per, min(rows, (s + 1) * per)
        if lo >= hi:
            break
        n = hi - lo
        keys = [f"{s:08d}{i:05d}" for i in range(n)]
        table = pa.table(
            {
                "uid": [f"{lo + i:032x}" for i in range(n)],
                "key": keys,
                "caption_lang": ["en"] * n,
                "caption_lang_score": pa.array(np.ones(n), pa.float32()),
                "caption_chars": pa.array(np.full(n, 20), pa.int32()),
                "caption_words": pa.array(np.full(n, 4), pa.int32()),
                "original_width": pa.array(np.full(n, 512), pa.int32()),
                "original_height": pa.array(np.full(n, 512), pa.int32()),
                "aspect_ratio": pa.array(np.ones(n), pa.float32()),
                "sha256": [d.tobytes().hex() for d in digests[lo:hi]],
                "pdq": [None] * n,
                "pdq_quality": pa.array([None] * n, pa.int32()),
                "error": [None] * n,
            },
            schema=schema.BASE_FEATURES,
        )
        (root / "features" / "base").mkdir(parents=True, exist_ok=True)
        (root / "shards").mkdir(exist_ok=True)
        runtime.write_parquet(table, str(root / "features" / "base" / f"{s:08d}.parquet"))
        dirs = ["features/base", "shards"]
        if dim:
            runtime.write_parquet(
                pa.table(
                    {
                        "uid": table.column("uid"),
                        "key": table.column("key"),
                        "clip_score": pa.array(scores[lo:hi], pa.float32()),
                        "error": pa.array([None] * n, pa.string()),
                    },
                    schema=schema.CLIP_FEATURES,
                ),
                str(scorer / f"{s:08d}.parquet"),
            )
            np.save(scorer / f"{s:08d}.img.npy", emb[lo:hi].astype(np.float16))
            dirs.append("features/bench")
        for d in dirs:
            (root / d / f"{s:08d}_stats.json").write_text(f'{{"count": {n}}}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where to build the pool (default: a temporary directory)")
    ap.add_argument("--semantic", action="store_true", help="SemDeDup too, on planted embeddings")
    ap.add_argument("--dim", type=int, default=512, help="with --semantic: embedding width")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="dedup-partitioned-"))
    t0 = time.time()
    if not (root / "shards").exists():
        make_pool(root, args.rows, args.shards, args.dim if args.semantic else 0)
    print(f"pool: {args.rows:,} rows in {args.shards} shards at {root} ({time.time() - t0:.0f} s to build)")
    execute.init_ray(num_cpus=os.cpu_count())  # both paths pay Ray's start outside their timing
    common = dict(perceptual=False, semantic=False, contamination=False, keep="first")
    if args.semantic:
        common.update(semantic=True, keep="clip_score", scorer="bench", probes=1, threshold=0.95)
    t0 = time.time()
    ref = dedup.run(str(root), dedup.DedupConfig(**common), log=lambda *_: None)
    t_ref = time.time() - t0
    expected = dedup.read(str(root)).to_pylist()
    t0 = time.time()
    ours = dedup.run(str(root), dedup.DedupConfig(**common, partitions=args.partitions), log=lambda *_: None)
    t_ours = time.time() - t0
    got = dedup.read(str(root)).to_pylist()
    same = got == expected and ours["removed"] == ref["removed"]
    agree = sum(a["keep"] == b["keep"] for a, b in zip(got, expected)) / len(got)
    cores = os.cpu_count()
    print(f"in one process (reference): {t_ref:.1f} s; removed {ref['removed']}")
    print(f"partitioned ({args.partitions} partitions, {cores} cores): {t_ours:.1f} s; removed {ours['removed']}")
    print(f"same verdicts: {same} ({agree:.4%} of rows keep the same keep/drop verdict)")
    print(f"partitioned / in-process time: {t_ours / t_ref:.2f}")
    print(f"partitioned rate: {args.rows / t_ours / cores:,.0f} rows/s per core ({args.rows / t_ours:,.0f} rows/s)")
    if not same and not args.semantic:
        raise SystemExit("the partitioned verdicts differ from the in-process ones")


if __name__ == "__main__":
    main()
