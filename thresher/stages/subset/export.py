"""`thresher export-metadata POOL --out FILE.parquet`: a pool's metadata under DataComp's column names,
so that DataComp's own tools (baselines, resharder) run on our pools.

One row per successfully downloaded sample. CLIP scores come from the scorers named `clip_b32` and
`clip_l14` when the pool has them (computed or imported), else they are null.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool, completed
from thresher.stages.features import features

DATACOMP_COLUMNS = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("url", pa.string()),
        pa.field("text", pa.string()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("clip_b32_similarity_score", pa.float32()),
        pa.field("clip_l14_similarity_score", pa.float32()),
        pa.field("sha256", pa.string()),
    ]
)
SCORERS = {"clip_b32_similarity_score": "clip_b32", "clip_l14_similarity_score": "clip_l14"}


def export_metadata(pool: str, out: str) -> pa.Table:
    meta = Pool(pool).read_metadata()
    meta = meta.filter(pc.equal(meta.column("status"), "success"))
    columns = {
        "uid": meta.column("uid"),
        "url": meta.column("url"),
        "text": meta.column("caption"),
        "original_width": meta.column("original_width"),
        "original_height": meta.column("original_height"),
    }
    uids = meta.column("uid").to_pylist()
    for column, scorer in SCORERS.items():
        scores: dict[str, float] = {}
        if completed(Pool(pool).features_dir(scorer)):
            t = features.read_scorer(pool, scorer)
            scores = dict(zip(t.column("uid").to_pylist(), t.column("clip_score").to_pylist()))
        columns[column] = pa.array([scores.get(u) for u in uids], pa.float32())
    columns["sha256"] = meta.column("sha256")
    table = pa.table(columns).cast(DATACOMP_COLUMNS)
    if table.num_rows == 0:
        raise InputError(f"{pool} has no successfully downloaded samples to export")
    runtime.write_parquet(table, out)
    return table
