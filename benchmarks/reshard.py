"""Resharding throughput: `thresher subset` against a plain streaming tar copy of the same members.

    python benchmarks/reshard.py [--shards 8] [--per-shard 1500] [--image-kb 40] [--fraction 0.6]

Writes a throwaway pool of `--shards` WebDataset tars (jpg of `--image-kb` random bytes, txt, json per
sample, as img2dataset writes them) with its Parquet metadata, stats and keep/drop decisions keeping
about `--fraction` of it, then times:

- ours: `pipeline.subset.build` end to end (selection passes, per-shard index, streaming the members
  into new shards with their Parquet metadata, sha256 of every shard and image, lineage, manifest),
  as Ray tasks on a local Ray with one worker per core;
- reference: one Python process that reads each source tar with `tarfile` in streaming mode and copies
  the selected samples' members into output tars of the same size (no metadata, no hashes).

Both read from the page cache (the tars are read once before timing). Prints MB/s of selected member
bytes for both and the ratio ours/reference. Target on the same cores: ratio >= 0.8.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

# sys.path[0] is this directory, which holds select.py: replace it with the repository root so that
# the file cannot shadow the standard library's select module
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from thresher.core import runtime, schema
from thresher.exec import execute
from thresher.stages.subset import subset  # noqa: E402


def make_pool(root: Path, shards: int, per: int, image_kb: int, fraction: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    (root / "decisions" / "bench").mkdir(parents=True)
    total = 0
    for s in range(shards):
        rows = []
        with tarfile.open(root / "shards" / f"{s:08d}.tar", "w") as tar:
            for i in range(per):
                key = f"{s:05d}{i:04d}"
                uid = f"{rng.integers(0, 2**62):032x}"
                img = rng.integers(0, 256, image_kb * 1024 + int(rng.integers(-2048, 2048)), dtype=np.uint8).tobytes()
                url = f"http://example.org/{key}.jpg"
                meta = {"uid": uid, "key": key, "url": url, "caption": f"caption {key}", "status": "success"}
                for ext, data in (("jpg", img), ("txt", meta["caption"].encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append(
                    {
                        **meta,
                        "failure": None,
                        "error_message": None,
                        "width": 512,
                        "height": 512,
                        "original_width": 512,
                        "original_height": 512,
                        "sha256": "0" * 64,
                    }
                )
        runtime.write_parquet(pa.Table.from_pylist(rows, schema=schema.POOL), str(root / "shards" / f"{s:08d}.parquet"))
        runtime.write_json(str(root / "shards" / f"{s:08d}_stats.json"), {"count": per, "end_time": time.time()})
        keep = rng.random(per) < fraction
        runtime.write_parquet(
            pa.table(
                {
                    "uid": pa.array([r["uid"] for r in rows]),
                    "keep": pa.array(keep),
                    "score": pa.array(np.full(per, np.nan, np.float32), from_pandas=True),
                    "dropped_by": pa.array(np.where(keep, None, "coin"), pa.string()),
                    "step_scores": pa.array([[] for _ in range(per)], pa.list_(pa.float32())),
                },
                schema=schema.DECISIONS,
            ),
            str(root / "decisions" / "bench" / f"{s:08d}.parquet"),
        )
        total += int(keep.sum())
    runtime.write_json(
        str(root / "manifest.json"),
        {"counts": {"rows": shards * per, "status": {"success": shards * per}}, "input": {"sha256": "bench"}},
    )
    runtime.write_json(
        str(root / "decisions" / "bench" / "manifest.json"),
        {
            "recipe": "bench",
            "recipe_resolved": {"steps": []},
            "recipe_sha256": "bench",
            "thresholds": {},
            "funnel": [],
            "kept": total,
            "samples": shards * per,
            "inputs": {},
        },
    )
    return total


def reference_copy(pool: Path, keep_keys: set, out: Path, per_out: int) -> int:
    """Single process: stream every source tar, copy the selected samples' members into new tars."""
    out.mkdir()
    written, samples, j, dst = 0, 0, 0, None
    last_key = None
    for src in sorted((pool / "shards").glob("*.tar")):
        with tarfile.open(src, "r|") as tar:
            for m in tar:
                key = m.name.split(".")[0]
                if key not in keep_keys:
                    continue
                if key != last_key:
                    if dst is None or samples == per_out:
                        if dst is not None:
                            dst.close()
                        dst = tarfile.open(out / f"{j:08d}.tar", "w")
                        j, samples = j + 1, 0
                    samples += 1
                    last_key = key
                dst.addfile(m, tar.extractfile(m))
                written += m.size
    if dst is not None:
        dst.close()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=1500)
    ap.add_argument("--image-kb", type=int, default=40)
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--samples-per-shard", type=int, default=1000, help="output shard size")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    execute.init_ray(num_cpus=cores)
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pool = root / "pool"
        kept = make_pool(pool, args.shards, args.per_shard, args.image_kb, args.fraction)
        for p in (pool / "shards").glob("*.tar"):  # into the page cache
            p.read_bytes()
        decisions = runtime.read_json(str(pool / "decisions" / "bench" / "manifest.json"))
        cfg = subset.SubsetConfig(size=kept, seed=0, samples_per_shard=args.samples_per_shard)
        rule = subset.rule_for(decisions, 0)
        # warm-up on a small subset so that worker start-up is not timed
        subset.build(
            str(pool), decisions, rule, subset.SubsetConfig(size=10, seed=0), str(root / "warm"), log=lambda *_: None
        )
        t0 = time.perf_counter()
        m = subset.build(str(pool), decisions, rule, cfg, str(root / "ours"), log=lambda *_: None)
        t_ours = time.perf_counter() - t0
        lin = pq.read_table(root / "ours" / "lineage.parquet", columns=["pool_key"])
        keep_keys = set(lin.column("pool_key").to_pylist())
        t0 = time.perf_counter()
        written = reference_copy(pool, keep_keys, root / "ref", args.samples_per_shard)
        t_ref = time.perf_counter() - t0
        ours_bytes = sum(s["bytes"] for s in m["shards"])
    mb = written / 1e6
    print(
        f"pool {args.shards} shards x {args.per_shard} samples (~{args.image_kb} KB images); selected {kept:,} "
        f"samples, {mb:.0f} MB of members; {len(m['shards'])} output shards ({ours_bytes / 1e6:.0f} MB with tar headers)"
    )
    print(
        f"ours (thresher subset, {cores} Ray workers, with metadata, hashes, lineage): {t_ours:6.2f} s "
        f"{mb / t_ours:8.1f} MB/s"
    )
    print(
        f"reference (tarfile streaming copy, 1 process)                       : {t_ref:6.2f} s {mb / t_ref:8.1f} MB/s"
    )
    ratio = t_ref / t_ours
    print(f"ratio ours/reference: {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
