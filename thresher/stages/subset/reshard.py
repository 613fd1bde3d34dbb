"""Resharding of `thresher subset POOL --recipe NAME --size N --out DIR --seed S`: the two passes build runs
over the selected samples, and the files they write.

- Pass 1, per pool shard (IndexStage): DIR/_work/index/{shard}.parquet, the shard's selected samples
  with where their tar members are (_member_index reads only the tar's headers) and their metadata.
- Pass 2, per output shard (WriteStage): DIR/{j:08d}.tar (the pool's members streamed unchanged,
  json rewritten), DIR/{j:08d}.parquet (subset_metadata), DIR/_work/lineage/{j}.parquet (lineage_rows)
  and the completion marker DIR/_work/done/{j}.json (written by the executor: thresher/exec/stage.py).
- Shuffle: the output order, a seeded permutation (a Feistel network over the samples' global index),
  so every output shard computes which samples it holds without any node holding the list.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from thresher.core import runtime, schema
from thresher.core.errors import InputError, StageError
from thresher.core.pool import IMAGE_EXTS, Pool, member_key
from thresher.exec.stage import Stage
from thresher.stages.subset.selection import _candidates, _chosen

MTIME = 0  # tar member times are fixed so the same selection gives byte-identical shards


# ---------------------------------------------------------------------------------------------------
# The shuffle: a seeded bijection of [0, n) that any task can evaluate or invert for its own slice


def _round(x: np.ndarray, key: int, mask: int) -> np.ndarray:
    z = (x ^ np.uint64(key)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) & np.uint64(mask)


class Shuffle:
    """Feistel network (6 rounds) on the smallest even-bit domain holding n, cycle-walked into [0, n)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.half = max(1, math.ceil(max(1, (n - 1).bit_length()) / 2))
        self.mask = (1 << self.half) - 1
        self.keys = [int(k) for k in np.random.default_rng([seed, 0x5EED]).integers(0, 2**63, 6)]

    def _enc(self, x):
        h, m = np.uint64(self.half), self.mask
        left, right = x >> h, x & np.uint64(m)
        for k in self.keys:
            left, right = right, left ^ _round(right, k, m)
        return (left << h) | right

    def _dec(self, y):
        h, m = np.uint64(self.half), self.mask
        left, right = y >> h, y & np.uint64(m)
        for k in reversed(self.keys):
            left, right = right ^ _round(left, k, m), left
        return (left << h) | right

    def _walk(self, x, step):
        x = np.asarray(x, dtype=np.uint64)
        with np.errstate(over="ignore"):
            y = step(x)
            while (out := y >= np.uint64(self.n)).any():
                y[out] = step(y[out])
        return y.astype(np.int64)

    def forward(self, x):
        return self._walk(x, self._enc)

    def inverse(self, y):
        return self._walk(y, self._dec)


# ---------------------------------------------------------------------------------------------------
# Per pool shard: the index of selected samples (where their members are, their metadata)


def _member_index(pool: str, shard: int) -> dict[str, list[tuple[str, int, int]]]:
    """key -> [(extension, data offset, size)] of a pool tar, reading only its headers (an adopted tar is
    hashed whole first: one that changed since import-pool is refused, not shipped)."""
    Pool(pool).check_tar(shard)
    fs, path = runtime.fs_path(Pool(pool).tar(shard))
    out: dict[str, list] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    key, ext = member_key(m.name)
                    out.setdefault(key, []).append((ext, m.offset_data, m.size))
    except (tarfile.TarError, OSError) as err:
        raise StageError(f"{pool}: shard {shard:08d}.tar is unreadable ({err}); re-download it") from err
    return out


def _feature_columns(pool: str) -> dict[str, str]:
    """Columns a subset carries per sample: metadata, base features and CLIP scores (not embeddings)."""
    return {
        c: src
        for c, src in Pool(pool).available_columns().items()
        if src == "metadata" or src == "base" or src.startswith("score:")
    }


def _index_task(shard, pool, recipe, rule, exclude, cut, repeat, out_dir):
    """Write _work/index/{shard}.parquet: the shard's selected samples (repeated when upsampling), in key
    order, with their tar members and every column the subset's metadata and lineage need."""
    dec, mask, keys = _candidates(pool, recipe, shard, rule, exclude)
    uids = dec.column("uid")
    chosen = _chosen(dec, mask, keys, cut).astype(np.int64)
    copies = np.where(mask, repeat["each"], 0) + chosen if repeat else chosen
    rows = np.repeat(np.arange(len(uids)), copies)
    copy = (np.arange(len(rows)) - np.repeat(np.cumsum(copies) - copies, copies)).astype(np.int32)
    table = Pool(pool).shard_table(shard, _feature_columns(pool))
    if not table.column("uid").equals(dec.column("uid")):
        raise InputError(f"{pool}: decisions of {recipe} shard {shard:08d} are not aligned with its features")
    members = _member_index(pool, shard)
    pool_keys = table.column("key").to_pylist()
    missing = [pool_keys[i] for i in np.flatnonzero(copies) if pool_keys[i] not in members]
    if missing:
        raise StageError(f"{pool}: shard {shard:08d}.tar lacks selected samples {missing[:5]}; re-download it")
    stats = runtime.read_json(Pool(pool).shard_stats(shard))
    idx = pa.array(rows, pa.int64())
    out = table.take(idx)
    out = out.append_column("pool_shard", pa.array(np.full(len(rows), shard, np.int32)))
    out = out.append_column("copy", pa.array(copy))
    out = out.append_column(
        "downloaded_at",
        pa.array(np.full(len(rows), int(stats["end_time"] * 1000), np.int64)).cast(pa.timestamp("ms", tz="UTC")),
    )
    out = out.append_column("recipe_score", dec.column("score").take(idx))
    out = out.append_column("rank_key", pa.array(keys[rows].astype(np.int64)))
    out = out.append_column("step_scores", dec.column("step_scores").take(idx))
    out = out.append_column(
        "members",
        pa.array(
            [[{"ext": e, "offset": o, "size": s} for e, o, s in sorted(members[pool_keys[i]])] for i in rows],
            pa.list_(pa.struct([("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])),
        ),
    )
    runtime.write_parquet(out, runtime.join(out_dir, f"{shard:08d}.parquet"))
    return {"selected": len(rows)}


@dataclass
class IndexStage(Stage):
    """Pass 1 (module docstring): each pool shard's selected samples into _work/index/{shard}.parquet,
    which is the item's marker too (whole or absent: written atomically, read only by pass 2)."""

    pool: str
    recipe: str
    rule: object
    exclude: object  # an Exclusion (run_stage sends the stage to the workers once)
    cut: object
    repeat: dict | None
    index_dir: str

    name: ClassVar[str] = "subset:index"
    unit: ClassVar[str] = "shards"

    def process(self, shard: int) -> dict:
        args = (self.pool, self.recipe, self.rule, self.exclude, self.cut, self.repeat, self.index_dir)
        return _index_task(shard, *args)

    def done(self, shard: int) -> bool:
        return runtime.exists(runtime.join(self.index_dir, f"{shard:08d}.parquet"))

    def deadline_s(self, shard: int) -> float:
        return 3600.0


@dataclass
class WriteStage(Stage):
    """Pass 2: output shard j streamed from the pool's tars; its entry of the manifest is its marker."""

    plan: dict
    work: str

    name: ClassVar[str] = "subset:write"
    unit: ClassVar[str] = "samples"
    timed: ClassVar[bool] = False  # the marker is the manifest's shard entry, copied as it is

    def process(self, j: int) -> dict:
        return _write_shard_task(j, self.plan, self.work)

    def marker(self, j: int) -> str:
        return runtime.join(self.work, "done", f"{j:08d}.json")

    def weight(self, j: int) -> int:
        per, size = self.plan["samples_per_shard"], self.plan["size"]
        return min(per, size - j * per)

    def deadline_s(self, j: int) -> float:
        return 3600.0


# ---------------------------------------------------------------------------------------------------
# Per output shard: stream members into a new tar, write its metadata and lineage part


class _HashingWriter:
    """File wrapper that hashes what goes through it, so a shard's sha256 costs no second read."""

    def __init__(self, f):
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.size += len(b)
        return self.f.write(b)

    def tell(self):
        return self.size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard_task(j, plan, work):
    pool, size, per = plan["pool"], plan["size"], plan["samples_per_shard"]
    offsets = np.asarray(plan["offsets"], np.int64)
    positions = np.arange(j * per, min(size, (j + 1) * per), dtype=np.int64)
    g = Shuffle(size, plan["seed"]).inverse(positions)
    src = np.searchsorted(offsets, g, side="right") - 1
    local = g - offsets[src]
    sources = plan["sources"]
    parts = []
    for s in np.unique(src):
        index = runtime.read_parquet(runtime.join(work, "index", f"{sources[s]:08d}.parquet"))
        where = np.flatnonzero(src == s)
        parts.append((where, index.take(pa.array(local[where]))))
    rows = pa.concat_tables([t for _, t in parts])
    order = np.argsort(np.concatenate([w for w, _ in parts]), kind="stable")
    rows = rows.take(pa.array(order))  # output order
    width = max(4, len(str(per - 1)))
    keys = [f"{j:08d}{i:0{width}d}" for i in range(rows.num_rows)]
    name = f"{j:08d}"
    fs, _ = runtime.fs_path(plan["out"])
    tmp_tar = runtime.join(work, "tmp", f"{name}.tar")
    runtime.makedirs(runtime.join(work, "tmp"))
    image_sha = []
    handles: dict[int, object] = {}
    try:
        with fs.open(runtime.fs_path(tmp_tar)[1], "wb") as raw:
            w = _HashingWriter(raw)
            with tarfile.open(fileobj=w, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                members = rows.column("members").to_pylist()
                pshard = rows.column("pool_shard").to_pylist()
                uids, pool_keys = rows.column("uid").to_pylist(), rows.column("key").to_pylist()
                for key, mem, ps, uid, pkey in zip(keys, members, pshard, uids, pool_keys):
                    if ps not in handles:
                        pfs, ppath = runtime.fs_path(Pool(pool).tar(ps))
                        handles[ps] = pfs.open(ppath, "rb")
                    f = handles[ps]
                    digest = None
                    for m in mem:
                        f.seek(m["offset"])
                        data = f.read(m["size"])
                        if len(data) != m["size"]:
                            raise StageError(f"{pool}: shard {ps:08d}.tar is shorter than its index; re-download it")
                        if m["ext"] == "json":
                            meta = json.loads(data)
                            meta.update(key=key, uid=uid, source_key=pkey, source_shard=ps)
                            data = json.dumps(meta, sort_keys=True).encode()
                        elif m["ext"] in IMAGE_EXTS and digest is None:
                            digest = hashlib.sha256(data).hexdigest()
                        _add(tar, f"{key}.{m['ext']}", data)
                    image_sha.append(digest)
            tar_sha, tar_bytes = w.h.hexdigest(), w.size
    finally:
        for f in handles.values():
            f.close()
    meta = subset_metadata(rows, keys)
    lineage = lineage_rows(rows, keys, image_sha, j, plan["step_names"], plan["step_filters"])
    runtime.write_parquet(meta, runtime.join(work, "tmp", f"{name}.parquet"))
    runtime.write_parquet(lineage, runtime.join(work, "lineage", f"{name}.parquet"))
    runtime.move(runtime.join(work, "tmp", f"{name}.parquet"), runtime.join(plan["out"], f"{name}.parquet"))
    runtime.move(tmp_tar, runtime.join(plan["out"], f"{name}.tar"))
    # WriteStage's executor writes them as the completion marker _work/done/{j}.json
    return {
        "name": f"{name}.tar",
        "samples": rows.num_rows,
        "sha256": tar_sha,
        "bytes": tar_bytes,
        "parquet": f"{name}.parquet",
        "parquet_sha256": runtime.file_sha256(runtime.join(plan["out"], f"{name}.parquet")),
    }


DROP_FROM_METADATA = ("members", "pool_shard", "downloaded_at", "rank_key", "step_scores")


def subset_metadata(rows: pa.Table, keys: list[str]) -> pa.Table:
    """The Parquet beside a subset shard: the sample's metadata and features, under its new key."""
    out = rows.drop_columns([c for c in DROP_FROM_METADATA if c in rows.column_names])
    out = out.set_column(out.column_names.index("key"), "key", pa.array(keys, pa.string()))
    first = ["uid", "key", "url", "caption"]
    return out.select(first + [c for c in out.column_names if c not in first])


def lineage_rows(rows: pa.Table, keys: list[str], image_sha: list, shard: int, step_names, step_filters):
    scores = rows.column("step_scores").to_pylist()
    steps = [
        [{"step": n, "filter": f, "score": s, "decision": "kept"} for n, f, s in zip(step_names, step_filters, sc)]
        for sc in scores
    ]
    return pa.table(
        {
            "uid": rows.column("uid"),
            "url": rows.column("url"),
            "pool_shard": rows.column("pool_shard"),
            "pool_key": rows.column("key"),
            # shard_table keeps only successful downloads, so every selected sample's status is "success"
            "status": pa.array(["success"] * rows.num_rows, pa.string()),
            "downloaded_at": rows.column("downloaded_at"),
            "source_sha256": rows.column("sha256"),
            "image_sha256": pa.array(image_sha, pa.string()),
            "steps": pa.array(steps, schema.LINEAGE.field("steps").type),
            "rank_key": rows.column("rank_key"),
            "subset_shard": pa.array(np.full(rows.num_rows, shard, np.int32)),
            "subset_key": pa.array(keys, pa.string()),
            "copy": rows.column("copy"),
        },
        schema=schema.LINEAGE,
    )
