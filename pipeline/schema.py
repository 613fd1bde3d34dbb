"""Arrow schemas of everything stages hand to each other. One definition each; docs/schemas.md mirrors them."""

from __future__ import annotations

import pyarrow as pa

# A URL list after ingest: what the download stage shards and fetches. DataComp's metadata Parquet
# (uid, url, text, ...) is read as is; other columns ride along as extras.
URLS = pa.schema([
    pa.field("uid", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("text", pa.string()),
])

# Per-shard pool metadata, written beside each downloaded tar. Every input row appears once.
# `status` is img2dataset's (success | failed_to_download | failed_to_resize | refused);
# `failure` is our normalised reason, null on success (see pipeline/download.py: FAILURES).
POOL = pa.schema([
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
    pa.field("sha256", pa.string()),
])

# The synthetic pool's answer key. Never read by the pipeline; tests score stages against it.
GROUND_TRUTH = pa.schema([
    pa.field("uid", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("source_uid", pa.string()),       # duplicates: the uid they copy; contamination: eval image id
    pa.field("kind", pa.string()),             # the object kind actually drawn
    pa.field("color", pa.string()),
    pa.field("count", pa.int32()),
    pa.field("lang", pa.string()),             # language the caption was written in
    pa.field("format", pa.string()),           # jpg | png | webp as served
    pa.field("width", pa.int32()),             # served image size
    pa.field("height", pa.int32()),
    pa.field("sha256", pa.string()),           # of the served bytes (null when nothing is served)
    pa.field("blocklist", pa.string()),        # which list names this sample, e.g. "url_md5"
])
