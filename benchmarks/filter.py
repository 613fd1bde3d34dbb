"""Metadata-only recipes over DataComp-style metadata: samples/s per core.

    python benchmarks/filter.py [--rows 10000000] [--shard-rows 1000000]

Makes `--rows` rows of synthetic metadata with the columns the recipes read (language already computed,
as it is in a DataComp pool after `thresher features`), in Arrow tables of `--shard-rows` (a shard each),
and times, on one core, our per-shard evaluation (`pipeline.filter.evaluate`, the code every shard task
runs) of datacomp-basic, a CLIP-score threshold and laion2b. The reference, measured in the same run,
is the same rule written directly as one pyarrow.compute expression: the least work the rule needs.
Prints samples/s per core for each and the ratio ours/reference. Target: >= 1M samples/s per core for
threshold filters. With --stage-rows N it also runs the whole stage (`pipeline.filter.run`: Ray tasks per
shard reading metadata, base features and scores from Parquet, writing decisions) on an N-row pool
written to disk, and prints samples/s per core of that. Then the fastText lid.176 throughput on its own (captions/s on one core), the part
of `thresher features` that computes the language these recipes read.
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
import time
from pathlib import Path

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from thresher.stages.filter import filter as flt  # noqa: E402

RECIPES = {
    "datacomp-basic": "datacomp-basic",
    "clip-b32 >= 0.3": "datacomp-clip-b32-threshold",
    "laion2b": "laion2b",
}


def make_shard(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    langs = np.array(["en", "de", "fr", "es", "ja", "ru"])
    return pa.table(
        {
            "uid": pa.array(np.char.add("u", np.arange(n).astype(str)).astype(object)),
            "caption_lang": pa.array(langs[rng.choice(6, n, p=[0.6, 0.1, 0.1, 0.1, 0.05, 0.05])]),
            "caption_lang_score": pa.array(rng.uniform(0.2, 1.0, n).astype(np.float32)),
            "caption_words": pa.array(rng.integers(0, 30, n).astype(np.int32)),
            "caption_chars": pa.array(rng.integers(0, 200, n).astype(np.int32)),
            "original_width": pa.array(rng.integers(50, 2000, n).astype(np.int32)),
            "original_height": pa.array(rng.integers(50, 2000, n).astype(np.int32)),
            "clip_b32_score": pa.array(rng.normal(0.28, 0.05, n).astype(np.float32)),
        }
    )


def reference(name: str, t: pa.Table) -> np.ndarray:
    """The rule as one pyarrow.compute expression."""
    en = pc.equal(t["caption_lang"], "en")
    if name == "datacomp-basic":
        side = pc.min_element_wise(t["original_width"], t["original_height"])
        big = pc.max_element_wise(t["original_width"], t["original_height"])
        keep = pc.and_(
            pc.and_(en, pc.and_(pc.greater(t["caption_words"], 2), pc.greater(t["caption_chars"], 5))),
            pc.and_(
                pc.greater_equal(side, 200),
                pc.less_equal(pc.divide(pc.cast(big, pa.float64()), pc.cast(side, pa.float64())), 3.0),
            ),
        )
    elif name == "clip-b32 >= 0.3":
        keep = pc.greater_equal(t["clip_b32_score"], 0.3)
    else:
        keep = pc.and_(en, pc.greater_equal(t["clip_b32_score"], 0.28))
    return keep.to_numpy(zero_copy_only=False)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def write_pool(root: Path, rows: int, shard_rows: int) -> None:
    from thresher.core import runtime, schema

    for i, start in enumerate(range(0, rows, shard_rows)):
        t = make_shard(min(shard_rows, rows - start), 100 + i)
        n, name = t.num_rows, f"{i:08d}"
        keys = pa.array(np.char.add(name, np.char.zfill(np.arange(n).astype(str), 7)).astype(object))
        uids = pa.array(np.char.add(f"s{i}_", np.arange(n).astype(str)).astype(object))
        none_s, none_i = pa.nulls(n, pa.string()), pa.nulls(n, pa.int32())
        meta = pa.table(
            [
                uids,
                keys,
                pa.array(["http://x.invalid/a.jpg"] * n),
                pa.array(["a caption"] * n),
                pa.array(["success"] * n),
                none_s,
                none_s,
                t["original_width"],
                t["original_height"],
                t["original_width"],
                t["original_height"],
                none_s,
                none_s,
            ],
            schema=schema.POOL,
        )
        base = pa.table(
            [
                uids,
                keys,
                t["caption_lang"],
                t["caption_lang_score"],
                t["caption_chars"],
                t["caption_words"],
                t["original_width"],
                t["original_height"],
                pa.nulls(n, pa.float32()),
                none_s,
                none_s,
                none_i,
                none_s,
            ],
            schema=schema.BASE_FEATURES,
        )
        scores = pa.table([uids, keys, t["clip_b32_score"], none_s], schema=schema.CLIP_FEATURES)
        for sub, table in (("shards", meta), ("features/base", base), ("features/clip_b32", scores)):
            runtime.makedirs(str(root / sub))
            runtime.write_parquet(table, str(root / sub / f"{name}.parquet"))
            runtime.write_json(str(root / sub / f"{name}_stats.json"), {"count": n})
    runtime.write_json(str(root / "features" / "clip_b32" / "manifest.json"), {"scorer": {}})


def stage(rows: int, shard_rows: int) -> None:
    import tempfile

    from thresher.exec import execute

    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        t0 = time.perf_counter()
        write_pool(pool, rows, shard_rows)
        print(f"stage: {rows:,}-row pool written in {time.perf_counter() - t0:.1f}s", flush=True)
        execute.init_ray()
        cores = execute.current().cpus()
        for label, recipe in RECIPES.items():
            flt.run(str(pool), recipe, log=lambda *_: None)  # warm the workers
            t = best_of(lambda: flt.run(str(pool), recipe, log=lambda *_: None), 2)
            print(
                f"stage {label:18s} {rows / t / 1e6:6.2f}M samples/s on {cores} cores = "
                f"{rows / t / cores / 1e6:.2f}M per core (Parquet in, decisions out, Ray tasks)",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shard-rows", type=int, default=1_000_000)
    ap.add_argument("--lid-captions", type=int, default=20_000)
    ap.add_argument("--stage-rows", type=int, default=0, help="also time the whole stage on a pool this big")
    args = ap.parse_args()
    if args.stage_rows:
        stage(args.stage_rows, args.shard_rows)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly
    except (AttributeError, OSError):
        pass
    t0 = time.perf_counter()
    shards = [
        make_shard(min(args.shard_rows, args.rows - s), i) for i, s in enumerate(range(0, args.rows, args.shard_rows))
    ]
    print(f"{args.rows:,} rows in {len(shards)} shards made in {time.perf_counter() - t0:.1f}s", flush=True)
    for label, recipe in RECIPES.items():
        _, steps, _ = flt.load_recipe(recipe)
        kept = {}

        def ours():
            kept["ours"] = sum(int(flt.evaluate(t, steps, {})[0].sum()) for t in shards)

        def ref():
            kept["ref"] = sum(int(reference(label, t).sum()) for t in shards)

        t_ours, t_ref = best_of(ours), best_of(ref)
        assert kept["ours"] == kept["ref"], (label, kept)
        print(
            f"{label:18s} ours {args.rows / t_ours / 1e6:6.2f}M samples/s per core, pyarrow.compute expression "
            f"{args.rows / t_ref / 1e6:6.2f}M/s, ratio {t_ref / t_ours:.2f}; kept {kept['ours']:,} "
            f"({'meets' if args.rows / t_ours >= 1e6 else 'BELOW'} the 1M/s target)",
            flush=True,
        )

    from thresher.stages.features import features
    from thresher.synthetic.world import english_caption, foreign_caption, random_scene

    rng = np.random.default_rng(0)
    captions = [
        english_caption(random_scene(rng), rng) if i % 3 else foreign_caption(random_scene(rng), rng)[0]
        for i in range(args.lid_captions)
    ]
    features.detect_language(captions[:10])  # load the model outside the timing
    t = best_of(lambda: features.detect_language(captions), 2)
    print(f"fastText lid.176 alone: {len(captions) / t:,.0f} captions/s on one core")


if __name__ == "__main__":
    main()
