"""Feature stage: `thresher features POOL [--model M --pretrained P --scorer-id ID ...]`.

Two kinds of features, both keyed by uid, one file set per pool shard, rows in the order of the
shard's successful samples (sorted by key), so every features file of a shard is row-aligned:

    POOL/features/base/{i:08d}.parquet        schema.BASE_FEATURES: caption language (fastText lid.176),
                                              caption length, original size and aspect, sha256, PDQ hash
    POOL/features/<scorer>/{i:08d}.parquet    schema.CLIP_FEATURES: uid, key, clip_score, error
    POOL/features/<scorer>/{i:08d}.img.npy    float16 [n, d], L2-normalised image embeddings
    POOL/features/<scorer>/{i:08d}.txt.npy    float16 [n, d], L2-normalised text embeddings
    POOL/features/<kind>/{i:08d}_stats.json   completion marker: a shard with one is never redone
    POOL/features/<scorer>/manifest.json      model, weights (tag, checkpoint hash or random-init), device

Base features (thresher/stages/features/base.py) run as one Ray task per shard (execute.run). CLIP
scoring (thresher/stages/features/clip.py, with ScorerConfig) runs as the execution layer's model pipeline
(`execute.embed`: Ray tasks and actors on Ray): CPU tasks decode shards, model actors hold the model. This module is the stage's entry as other modules import it (run_base,
run_scorer, embed_images and the readers, from here), a scorer whose scores come from elsewhere
(`thresher features --precomputed`: DataComp's precomputed CLIP scores and .npz embeddings), and reading a scorer
back.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import runtime, schema
from thresher.core.errors import InputError
from thresher.core.pool import Pool, completed, read_npy

# the stage's names as other modules, tests and benchmarks reach them (features.run_base, features.ScorerConfig)
from thresher.stages.features.base import (  # noqa: F401
    base_features_shard,
    base_table,
    detect_language,
    read_base,
    run_base,
    write_base,
)
from thresher.stages.features.clip import (  # noqa: F401
    ClipEmbedder,
    ScorerConfig,
    _decode_shards,
    _write_npy,
    embed_images,
    run_scorer,
)


def import_precomputed(
    pool: str,
    scorer_id: str,
    score_column: str,
    npz_dir: str | None = None,
    npz_img_key: str = "l14_img",
    npz_txt_key: str = "l14_txt",
    log=print,
) -> dict:
    """Use scores (and embeddings) a pool's input metadata already has, instead of recomputing them.

    DataComp's metadata carries `clip_b32_similarity_score` and `clip_l14_similarity_score`; download
    with `--extra-columns clip_l14_similarity_score` and they ride along into the pool metadata, from
    where this writes them as scorer `scorer_id`. DataComp's `.npz` feature files (beside each metadata
    Parquet of the same name, row-aligned with it; keys such as `l14_img`) give the embeddings.
    """
    shards = Pool(pool).shards()
    scorer_dir = Pool(pool).features_dir(scorer_id)
    runtime.makedirs(scorer_dir)
    index: dict[str, tuple[str, int]] = {}
    if npz_dir:
        for meta_path in runtime.glob(runtime.join(npz_dir, "*.parquet")):
            for i, u in enumerate(runtime.read_parquet(meta_path, columns=["uid"]).column("uid").to_pylist()):
                index[u] = (meta_path[: -len(".parquet")] + ".npz", i)
    npz_cache: dict[str, dict] = {}
    for shard in shards:
        rows = Pool(pool).successful_rows(shard)
        if score_column not in rows.column_names:
            raise InputError(
                f"pool shard {shard:08d} has no column {score_column!r}; download with "
                f"--extra-columns {score_column} to carry it from the input metadata"
            )
        name = f"{shard:08d}"
        img = txt = None
        if npz_dir:
            img, txt = [], []
            for u in rows.column("uid").to_pylist():
                if u not in index:
                    raise InputError(f"uid {u} (pool shard {name}) is in no metadata Parquet under {npz_dir}")
                path, i = index[u]
                if path not in npz_cache:  # one file at a time: pool shards follow the metadata's order
                    fs, p = runtime.fs_path(path)
                    with fs.open(p, "rb") as f:
                        npz_cache = {path: dict(np.load(io.BytesIO(f.read())))}
                arrays = npz_cache[path]
                for key in (npz_img_key, npz_txt_key):
                    if key not in arrays:
                        raise InputError(f"{path} has no array {key!r}; it has {sorted(arrays)}")
                img.append(arrays[npz_img_key][i])
                txt.append(arrays[npz_txt_key][i])
        stats = write_scorer_shard(pool, scorer_id, shard, rows, rows.column(score_column), img, txt)
        # a loop in the driver, not a stage on the executor: one shard's npz rows follow the last's
        runtime.write_json(Pool(pool).feature_stats(scorer_id, shard), stats)
    source = f"precomputed: input metadata column {score_column}" + (
        f"; embeddings from {npz_dir} ({npz_img_key}, {npz_txt_key})" if npz_dir else ""
    )
    manifest = write_precomputed_manifest(pool, scorer_id, source)
    log(f"[features:{scorer_id}] imported {score_column} for {len(shards)} shards")
    return manifest


def write_scorer_shard(pool: str, scorer_id: str, shard: int, rows: pa.Table, scores, img=None, txt=None) -> dict:
    """One shard of a scorer whose scores (and embeddings) come from elsewhere: its Parquet (uid, key of
    `rows`), row-aligned .img.npy/.txt.npy (float16) when given. Returns the stats of its completion
    marker (`Pool.feature_stats`), which the caller writes once the shard is whole."""
    scorer_dir = Pool(pool).features_dir(scorer_id)
    runtime.makedirs(scorer_dir)
    table = pa.table(
        {
            "uid": rows.column("uid"),
            "key": rows.column("key"),
            "clip_score": pc.cast(scores, pa.float32()),
            "error": pa.nulls(rows.num_rows, pa.string()),
        }
    ).cast(schema.CLIP_FEATURES)
    dim = None
    for which, emb in (("img", img), ("txt", txt)):
        if emb is not None:
            emb = np.asarray(emb, np.float16)
            if emb.ndim != 2:  # a list of rows, or none
                emb = emb.reshape(rows.num_rows, -1) if emb.size else np.zeros((rows.num_rows, 0), np.float16)
            dim = int(emb.shape[1])
            _write_npy(emb, Pool(pool).embeddings(scorer_id, shard, which))
    runtime.write_parquet(table, Pool(pool).features(scorer_id, shard))
    return {"shard": shard, "count": table.num_rows, "errors": 0, "dim": dim}


def write_precomputed_manifest(pool: str, scorer_id: str, source: str, weights: dict | None = None) -> dict:
    """The manifest of a scorer imported rather than computed (`source` says from where)."""
    shards = Pool(pool).shards()
    scorer_dir = Pool(pool).features_dir(scorer_id)
    runtime.makedirs(scorer_dir)
    missing = sorted(set(shards) - completed(scorer_dir))
    manifest = {
        "kind": "thresher.features",
        "source": source,
        "scorer": {"scorer_id": scorer_id, "model": None, "pretrained": None},
        "weights": {"kind": "precomputed", **(weights or {})},
        **runtime.provenance(),
        "shards": {"total": len(shards), "complete": len(shards) - len(missing), "failed": {}},
    }
    runtime.write_json(Pool(pool).features_manifest(scorer_id), manifest)
    return manifest


def read_scorer(pool: str, scorer_id: str, with_embeddings: bool = False, text: bool = True):
    """A scorer's table for the whole pool (and its image/text embeddings when asked; `text=False` skips
    reading the text embeddings and returns None for them)."""
    p = Pool(pool)
    shards = sorted(p.completed(scorer_id))
    table = pa.concat_tables([runtime.read_parquet(p.features(scorer_id, s)) for s in shards])
    if not with_embeddings:
        return table
    img = np.concatenate([read_npy(p.embeddings(scorer_id, s)) for s in shards])
    txt = np.concatenate([read_npy(p.embeddings(scorer_id, s, "txt")) for s in shards]) if text else None
    return table, img, txt
