"""Selecting the top N of 10M scores with the distributed-threshold code path: samples/s per core.

    python benchmarks/select.py [--rows 10000000] [--shards 10] [--size 1400000]

Writes `--rows` synthetic decisions (schema.DECISIONS: uid, keep, score, dropped_by, step_scores) in
`--shards` Parquet files of a throwaway pool, with a recipe whose last step ranks, and then runs, as Ray
tasks on a local Ray with one worker per core, exactly what `thresher subset` runs to select:

1. per shard: keys from the ranking step's scores, a 65,536-bin histogram (selection._histogram_task);
2. the driver merges them and finds the bin holding rank N; per shard, only that bin's keys and uids
   come back (selection._bin_task); the driver reads the exact cut, ties broken by uid (selection.find_cut);
3. per shard: the selection mask (selection.Cut.inside), counted.

It checks the count is exactly N and that the selection equals a global sort (numpy lexsort over all
scores and uids on one node, the reference, also timed). Prints samples/s per core for the whole
selection, with and without reading the Parquet decisions. Target: >= 2M samples/s per core.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

# sys.path[0] is this directory, which holds select.py: replace it with the repository root so that
# the file cannot shadow the standard library's select module
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from thresher.algo import topk  # noqa: E402
from thresher.core import runtime, schema
from thresher.exec import execute
from thresher.stages.subset import selection


def make_pool(root: Path, rows: int, shards: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    per = rows // shards
    out = []
    (root / "decisions" / "bench").mkdir(parents=True)
    for s in range(shards):
        # scores quantised to 1e-4 so that ties (and the uid tie-break) really occur
        scores = np.round(rng.normal(0.3, 0.05, per), 4).astype(np.float32)
        keep = rng.random(per) < 0.9
        uids = np.char.mod("%032x", rng.integers(0, 2**62, per, dtype=np.int64))  # fixed-width str
        table = pa.table(
            {
                "uid": pa.array(uids, pa.string()),
                "keep": pa.array(keep),
                "score": pa.array(scores),
                "dropped_by": pa.array(np.where(keep, None, "quality"), pa.string()),
                "step_scores": pa.FixedSizeListArray.from_arrays(pa.array(scores), 1).cast(pa.list_(pa.float32())),
            },
            schema=schema.DECISIONS,
        )
        runtime.write_parquet(table, str(root / "decisions" / "bench" / f"{s:08d}.parquet"))
        out.append((scores, keep, uids))
    return out


def select(pool: str, shards: list[int], size: int, rule) -> int:
    import ray

    hist = selection._count(pool, "bench", rule, selection.Exclusion(), shards)
    cut = selection._cut(pool, "bench", rule, selection.Exclusion(), shards, hist, size)

    def count(pool, shard, cut):
        dec, mask, keys = selection._candidates(pool, "bench", shard, rule, selection.Exclusion(), selection.RANKING)
        return int((mask & cut.inside(keys, dec.column("uid"))).sum())

    task = ray.remote(count).options(num_cpus=1)
    return sum(ray.get([task.remote(pool, s, cut) for s in shards])), cut


def select_in_memory(parts, size: int):
    """The same code path on arrays already in the object store (no Parquet reading)."""
    import ray

    @ray.remote(num_cpus=1)
    def hist(p):
        scores, keep, _ = p
        return topk.histogram(topk.order_key(scores)[keep])

    @ray.remote(num_cpus=1)
    def in_bin(p, b):
        scores, keep, uids = p
        keys = topk.order_key(scores)
        sel = keep & (topk.bin_of(keys) == b)
        return keys[sel], uids[sel]

    @ray.remote(num_cpus=1)
    def count(p, cut):
        scores, keep, uids = p
        return int((keep & cut.inside(topk.order_key(scores), uids)).sum())

    h = np.sum(ray.get([hist.remote(p) for p in parts]), axis=0)

    def gather(b):
        got = ray.get([in_bin.remote(p, b) for p in parts])
        return np.concatenate([k for k, _ in got]), np.concatenate([u for _, u in got])

    cut = selection.find_cut(h, size, gather)
    return sum(ray.get([count.remote(p, cut) for p in parts])), cut


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--size", type=int, default=1_400_000)
    args = ap.parse_args()
    import ray

    cores = os.cpu_count() or 1
    execute.init_ray(num_cpus=cores)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"writing {args.rows:,} decisions in {args.shards} shards ...", flush=True)
        arrays = make_pool(root, args.rows, args.shards)
        shards = list(range(args.shards))
        rule = selection.Rule("top_score", 0, "quality")
        select(str(root), shards[:1], 10, rule)  # warm the workers
        t0 = time.perf_counter()
        n, cut = select(str(root), shards, args.size, rule)
        t_disk = time.perf_counter() - t0

        parts = [ray.put(p) for p in arrays]
        select_in_memory(parts, 10)
        t0 = time.perf_counter()
        n_mem, cut_mem = select_in_memory(parts, args.size)
        t_mem = time.perf_counter() - t0

        # reference: one global sort on one node (descending score, ascending uid)
        t0 = time.perf_counter()
        scores = np.concatenate([s[k] for s, k, _ in arrays])
        uids = np.concatenate([u[k] for _, k, u in arrays])
        order = np.lexsort((uids, -scores.astype(np.float64)))[: args.size]
        t_ref = time.perf_counter() - t0
        truth = set(uids[order].tolist())
    assert n == n_mem == args.size, (n, n_mem)
    last = order[-1]
    assert (cut.uid, np.float32(scores[last])) == (cut_mem.uid, np.float32(scores[last])) and cut.uid == uids[last], (
        "the cut differs from the global sort"
    )
    print(f"selected exactly {n:,} of {args.rows:,} ({len(truth):,} in the global sort's top N; same cut)")
    rate = lambda t: args.rows / t / cores  # noqa: E731
    print(
        f"distributed threshold, reading Parquet decisions : {t_disk:6.2f} s  {rate(t_disk) / 1e6:5.2f} M samples/s/core"
    )
    print(
        f"distributed threshold, arrays in the object store: {t_mem:6.2f} s  {rate(t_mem) / 1e6:5.2f} M samples/s/core"
    )
    print(
        f"reference: global lexsort on one node            : {t_ref:6.2f} s  ({args.rows / t_ref / 1e6:5.2f} M samples/s, 1 core)"
    )
    print(
        f"target >= 2M samples/s/core: {'met' if rate(t_disk) >= 2e6 else 'NOT met'} reading Parquet, "
        f"{'met' if rate(t_mem) >= 2e6 else 'NOT met'} in memory ({cores} cores)"
    )


if __name__ == "__main__":
    main()
