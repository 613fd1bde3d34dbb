"""Exact dedup as Ray tasks over sha256 partitions (`thresher dedup --partitions N`) against the same step
in one process, on a base-features-only pool of N rows with planted exact copies.

    python benchmarks/dedup_partitioned.py [--rows 2000000] [--shards 200] [--partitions 16] [--dir DIR]

The pool holds what exact dedup reads: shard completion markers and `features/base` Parquet (uid, key,
sha256, PDQ), 10% of rows copies of others. Both paths run on it with keep=first (no scorer needed); the
script checks they give the same verdicts, and prints the wall time of each, their ratio, and the
partitioned path's rate per core (what benchmarks/throughputs.yaml's `stages.dedup_partitioned` holds).
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

from pipeline import dedup, runtime, schema


def make_pool(root: Path, rows: int, shards: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    digests = rng.integers(0, 256, size=(rows, 32), dtype=np.uint8)
    copies = rng.choice(rows, rows // 10, replace=False)
    digests[copies] = digests[rng.integers(0, rows, len(copies))]  # 10% of rows repeat another's bytes
    per = -(-rows // shards)
    for s in range(shards):
        lo, hi = s * per, min(rows, (s + 1) * per)
        if lo >= hi:
            break
        n = hi - lo
        keys = [f"{s:08d}{i:05d}" for i in range(n)]
        table = pa.table({
            "uid": [f"{lo + i:032x}" for i in range(n)], "key": keys, "caption_lang": ["en"] * n,
            "caption_lang_score": pa.array(np.ones(n), pa.float32()), "caption_chars": pa.array(np.full(n, 20), pa.int32()),
            "caption_words": pa.array(np.full(n, 4), pa.int32()), "original_width": pa.array(np.full(n, 512), pa.int32()),
            "original_height": pa.array(np.full(n, 512), pa.int32()), "aspect_ratio": pa.array(np.ones(n), pa.float32()),
            "sha256": [d.tobytes().hex() for d in digests[lo:hi]], "pdq": [None] * n,
            "pdq_quality": pa.array([None] * n, pa.int32()), "error": [None] * n}, schema=schema.BASE_FEATURES)
        (root / "features" / "base").mkdir(parents=True, exist_ok=True)
        (root / "shards").mkdir(exist_ok=True)
        runtime.write_parquet(table, str(root / "features" / "base" / f"{s:08d}.parquet"))
        for d in ("features/base", "shards"):
            (root / d / f"{s:08d}_stats.json").write_text(f'{{"count": {n}}}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where to build the pool (default: a temporary directory)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="dedup-partitioned-"))
    t0 = time.time()
    if not (root / "shards").exists():
        make_pool(root, args.rows, args.shards)
    print(f"pool: {args.rows:,} rows in {args.shards} shards at {root} ({time.time() - t0:.0f} s to build)")
    runtime.init_ray(num_cpus=os.cpu_count())  # both paths pay Ray's start outside their timing
    common = dict(perceptual=False, semantic=False, contamination=False, keep="first")
    t0 = time.time()
    ref = dedup.run(str(root), dedup.DedupConfig(**common), log=lambda *_: None)
    t_ref = time.time() - t0
    expected = dedup.read(str(root)).to_pylist()
    t0 = time.time()
    ours = dedup.run(str(root), dedup.DedupConfig(**common, partitions=args.partitions), log=lambda *_: None)
    t_ours = time.time() - t0
    same = dedup.read(str(root)).to_pylist() == expected and ours["removed"] == ref["removed"]
    cores = os.cpu_count()
    print(f"in one process (reference): {t_ref:.1f} s; removed {ref['removed']}")
    print(f"partitioned ({args.partitions} partitions, {cores} cores): {t_ours:.1f} s; removed {ours['removed']}")
    print(f"same verdicts: {same}")
    print(f"partitioned / in-process time: {t_ours / t_ref:.2f}")
    print(f"partitioned rate: {args.rows / t_ours / cores:,.0f} rows/s per core ({args.rows / t_ours:,.0f} rows/s)")
    if not same:
        raise SystemExit("the partitioned verdicts differ from the in-process ones")


if __name__ == "__main__":
    main()
