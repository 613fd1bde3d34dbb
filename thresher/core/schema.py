"""Arrow schemas of everything stages hand to each other. One definition each; docs/schemas.md mirrors them."""

from __future__ import annotations

import pyarrow as pa

# A URL list after ingest: what the download stage shards and fetches. DataComp's metadata Parquet
# (uid, url, text, ...) is read as is; other columns ride along as extras.
URLS = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("text", pa.string()),
    ]
)

# Per-shard pool metadata, written beside each downloaded tar. Every input row appears once.
# `status` is img2dataset's (success | failed_to_download | failed_to_resize | refused);
# `failure` is our normalised reason, null on success (see thresher/stages/acquire/download.py: FAILURES).
POOL = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("failure", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()),  # of the bytes as served, before any resizing
        pa.field("md5", pa.string()),  # of the same bytes as served, before resizing (Re-LAION MD5 lists)
    ]
)

# The synthetic pool's answer key. Never read by the pipeline; tests score stages against it.
GROUND_TRUTH = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("source_uid", pa.string()),  # duplicates: the uid they copy; contamination: eval image id
        pa.field("kind", pa.string()),  # the object kind actually drawn
        pa.field("color", pa.string()),
        pa.field("count", pa.int32()),
        pa.field("lang", pa.string()),  # language the caption was written in
        pa.field("format", pa.string()),  # jpg | png | webp as served
        pa.field("width", pa.int32()),  # served image size
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),  # of the served bytes (null when nothing is served)
        pa.field("blocklist", pa.string()),  # which list names this sample, e.g. "url_md5"
        pa.field("variant", pa.string()),  # how a near-copy was made: reencode, resize, recolor, watermark
    ]
)

# Scorer-independent features, per successful sample (POOL/features/base/{shard}.parquet).
BASE_FEATURES = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption_lang", pa.string()),  # fastText lid.176 top-1 code, e.g. "en"
        pa.field("caption_lang_score", pa.float32()),  # its probability
        pa.field("caption_chars", pa.int32()),
        pa.field("caption_words", pa.int32()),  # whitespace-separated words
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("aspect_ratio", pa.float32()),  # max(w, h) / min(w, h) of the original
        pa.field("sha256", pa.string()),  # of the downloaded bytes
        pa.field("pdq", pa.string()),  # PDQ hash, 64 hex chars (thresher/algo/hashes.py)
        pa.field("pdq_quality", pa.int32()),
        pa.field("error", pa.string()),  # why the image could not be hashed, else null
    ]
)

# One CLIP scorer's outputs (POOL/features/<scorer>/{shard}.parquet), row-aligned with its .npy files.
CLIP_FEATURES = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("clip_score", pa.float32()),  # cosine of the L2-normalised embeddings (not x100)
        pa.field("error", pa.string()),
    ]
)

# Dedup decisions (POOL/dedup/{shard}.parquet), a row per successful sample.
DEDUP = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("duplicate_group", pa.string()),  # uid of the sample its group keeps; "eval:SET/KEY" for contamination
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # the step that dropped it: exact, perceptual, semantic, contamination
    ]
)

# A recipe's decisions (POOL/decisions/<recipe>/{shard}.parquet), a row per successful sample, sorted by key.
DECISIONS = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("score", pa.float32()),  # the last scoring step's score among those the sample reached
        pa.field("dropped_by", pa.string()),  # name of the first step that dropped it; null if kept
        pa.field("step_scores", pa.list_(pa.float32())),  # every step's score, in the manifest's step order
        # (null where a step does not score)
    ]
)

# A subset's lineage (SUBSET/lineage.parquet): a row per sample in the subset (per copy when upsampled).
LINEAGE = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("pool_shard", pa.int32(), nullable=False),  # the pool shard and key it was downloaded into
        pa.field("pool_key", pa.string(), nullable=False),
        pa.field("status", pa.string()),  # download status (img2dataset's)
        pa.field("downloaded_at", pa.timestamp("ms", tz="UTC")),  # when its pool shard finished downloading
        pa.field("source_sha256", pa.string()),  # of the bytes as served (img2dataset's hash)
        pa.field("image_sha256", pa.string()),  # of the image bytes in the subset shard
        pa.field(
            "steps",
            pa.list_(
                pa.struct(
                    [  # every recipe step, in order
                        pa.field("step", pa.string()),
                        pa.field("filter", pa.string()),
                        pa.field("score", pa.float32()),
                        pa.field("decision", pa.string()),
                    ]
                )
            ),
        ),
        pa.field("rank_key", pa.int64()),  # its selection key (score order key, or seeded uid hash)
        pa.field("subset_shard", pa.int32(), nullable=False),
        pa.field("subset_key", pa.string(), nullable=False),
        pa.field("copy", pa.int32(), nullable=False),  # 0, or the repeat number when upsampled
    ]
)
