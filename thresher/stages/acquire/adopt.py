"""`thresher import-pool DIR --out POOL`: the shards img2dataset wrote (`DIR/{i:05d}.tar`, `.parquet`,
`_stats.json`) become a pool without copying or re-downloading an image: the pool's metadata is written
in schema.POOL (status, error, sizes, sha256/md5, key from img2dataset's Parquet; failures normalised as
download does) and its manifest's layout points at the tars where they are. Each tar is read once here:
its keys by the pool's one key rule (`pool.member_key`; a member in a folder, or a second image of a key,
is refused), and its sha256, kept in the shard's stats (`tar_sha256`) and checked by every later reader
(`Pool.check_tar`: features, subset, audit verify), since the tar stays where anyone may change it. A
Parquet with a null status or a repeated key is refused, naming the file and row.

Its Parquet goes through ingest as import-metadata's does (importing.py: the shared helpers), then one task
per shard writes the pool's metadata; a shard is done when POOL/shards/{i:08d}_stats.json is there.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import runtime, schema
from thresher.core.errors import InputError
from thresher.core.pool import IMAGE_EXTS, HashingReader, Pool, member_key, shard_name
from thresher.exec import execute
from thresher.exec.stage import Stage, run_stage
from thresher.stages.acquire import ingest
from thresher.stages.acquire.download import classify
from thresher.stages.acquire.importing import (
    _check_target,
    _common_columns,
    _failures,
    _inputs,
    _pool_table,
    _rows,
    _shard_stats,
    _write_manifest,
)

# img2dataset's hash columns (named by the hash, compute_hash)
I2D_HASHES = ["sha256", "md5"]


def _img2dataset_shards(directory: str) -> tuple[list[int], int]:
    """The complete shards of an img2dataset output folder (a `_stats.json` marks one, as img2dataset's
    own resume rule), and the digits of their names."""
    names = sorted(
        p.rsplit("/", 1)[-1][: -len("_stats.json")] for p in runtime.glob(runtime.join(directory, "*_stats.json"))
    )
    names = [n for n in names if n.isdigit()]
    if not names:
        raise InputError(f"{directory}: no img2dataset shards (expected {{i:05d}}.tar, .parquet and _stats.json)")
    widths = {len(n) for n in names}
    if len(widths) != 1:
        raise InputError(
            f"{directory}: shard names of several widths ({sorted(widths)}); one img2dataset output per folder"
        )
    for n in names:
        for ext in (".tar", ".parquet"):
            if not runtime.exists(runtime.join(directory, n + ext)):
                raise InputError(f"{directory}: shard {n} has a _stats.json but no {n}{ext}; re-run img2dataset for it")
    return [int(n) for n in names], widths.pop()


def _tar_index(path: str) -> tuple[set[str], str, int]:
    """The sample keys with an image in a tar (by the pool's one key rule, `pool.member_key`), and the
    tar's sha256 and size, in one pass: the fingerprint later readers check it against. A member no later
    stage could read as its sample's (in a folder, or a second image of one key) is refused, named."""
    fs, p = runtime.fs_path(path)
    keys = set()
    try:
        with fs.open(p, "rb") as raw:
            f = HashingReader(raw)
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for m in tar:
                    key, ext = member_key(m.name)
                    if not m.isfile() or ext not in IMAGE_EXTS:
                        continue
                    if "/" in key:
                        raise InputError(
                            f"{path}: member {m.name!r} is in a folder; img2dataset writes KEY.EXT at the top of "
                            "its tars: repack it without folders (tar -C DIR -cf SHARD.tar KEY.jpg ...)"
                        )
                    if key in keys:
                        raise InputError(f"{path}: key {key} has two images (second: {m.name!r}); keep one")
                    keys.add(key)
            sha = f.finish()
    except (tarfile.TarError, EOFError) as err:
        raise InputError(f"{path}: not a readable tar ({err}); re-run img2dataset for this shard") from err
    return keys, sha, f.size


def _i2d_table_checks(parquet: str, inp: pa.Table) -> None:
    """What img2dataset's Parquet must hold for a pool: a status on every row, and each key once (two rows
    of one key would be two samples, two captions, sharing one image)."""
    status = inp.column("status")
    if status.null_count:
        row = int(np.flatnonzero(np.asarray(pc.is_null(status)))[0]) + 1
        raise InputError(
            f"{parquet}: row {row}, field 'status': null ({status.null_count} such rows); img2dataset writes "
            "success, failed_to_download or failed_to_resize"
        )
    if not pa.types.is_string(status.type):
        raise InputError(f"{parquet}: field 'status' must hold strings, found {status.type}")
    keys = inp.column("key")
    if keys.null_count:
        row = int(np.flatnonzero(np.asarray(pc.is_null(keys)))[0]) + 1
        raise InputError(f"{parquet}: row {row}, field 'key': null ({keys.null_count} such rows)")
    if pc.count_distinct(keys).as_py() != len(keys):
        first: dict[str, int] = {}
        for row, k in enumerate(pc.cast(keys, pa.string()).to_pylist(), 1):
            if k in first:
                raise InputError(
                    f"{parquet}: rows {first[k]} and {row} have the same key {k}; img2dataset writes each key "
                    "once (one image a key): drop the repeated rows, or re-run img2dataset for this shard"
                )
            first[k] = row


def _i2d_stats(path: str) -> dict:
    """img2dataset's `_stats.json` of a shard, which the pool keeps: a JSON object, or the shard is refused."""
    try:
        stats = runtime.read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not img2dataset's stats JSON ({err}); re-run img2dataset for this shard") from None
    if not isinstance(stats, dict):
        raise InputError(f"{path}: not img2dataset's stats JSON (a {type(stats).__name__}, not an object)")
    return stats


@dataclass
class AdoptStage(Stage):
    """One img2dataset shard adopted: the pool's metadata from its Parquet and its tar's headers; item `i`
    is input shard i, pool shard numbers[i] (img2dataset's number)."""

    pool: str
    numbers: list[int]
    directory: str
    width: int

    name: ClassVar[str] = "import-pool"
    unit: ClassVar[str] = "shards"

    def process(self, index: int) -> dict:
        return _adopt_shard(index, self.pool, self.numbers, self.directory, self.width)

    def marker(self, index: int) -> str:
        return Pool(self.pool).shard_stats(self.numbers[index])


def _adopt_shard(index: int, pool: str, numbers: list[int], directory: str, width: int) -> dict:
    """Pool shard numbers[index] (img2dataset's number) from img2dataset's Parquet (via ingest's checked
    copy, input shard `index`) and its tar's headers; returns the stats of its marker."""
    shard = numbers[index]
    tar = runtime.join(directory, f"{shard:0{width}d}.tar")
    stats_path = runtime.join(directory, f"{shard:0{width}d}_stats.json")
    inp = ingest.read_shard_input(Pool(pool).work("inputs", f"{shard_name(index)}.arrow"))
    _i2d_table_checks(runtime.join(directory, f"{shard:0{width}d}.parquet"), inp)
    i2d = _i2d_stats(stats_path)
    rows = {c: inp.column(c) for c in inp.column_names if c in schema.POOL.names}
    status = inp.column("status").to_pylist()
    errors = inp.column("error_message").to_pylist() if "error_message" in inp.column_names else [None] * len(status)
    rows["failure"] = pa.array([classify(s, e) for s, e in zip(status, errors)], pa.string())
    extras = {c: inp.column(c) for c in inp.column_names if c not in schema.POOL.names}
    table = _pool_table(rows, inp.num_rows, extras)
    table = table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")]))
    success = table.filter(pc.equal(table.column("status"), "success")).column("key").to_pylist()
    have, tar_sha, tar_bytes = _tar_index(tar)
    lost = [k for k in success if k not in have]
    if lost:
        raise InputError(
            f"{tar}: {len(lost)} successful sample(s) of its Parquet have no image in it (first {lost[0]}); re-run img2dataset for this shard"
        )
    runtime.makedirs(Pool(pool).shards_dir)
    runtime.write_parquet(table, Pool(pool).metadata(shard))
    # the tar stays in the user's folder: its fingerprint, which every later reader checks (Pool.check_tar)
    return _shard_stats(shard, table, img2dataset=i2d, tar=tar, tar_sha256=tar_sha, tar_bytes=tar_bytes)


@runtime.holds(lambda directory, pool, *a, **k: Pool(pool).work(), "this pool's import")
def import_pool(directory: str, pool: str, uid_col: str = "uid", ray_address: str | None = None, log=print) -> dict:
    """Adopt the shards img2dataset wrote into DIR as a pool (module docstring); the tars stay in DIR."""
    if "://" not in directory:
        directory = os.path.abspath(directory)
    _check_target(pool, "img2dataset")
    numbers, width = _img2dataset_shards(directory)
    parquets = [runtime.join(directory, f"{n:0{width}d}.parquet") for n in numbers]
    present = _common_columns(parquets)
    missing = [c for c in ("url", "key", "status") if c not in present]
    if missing:
        raise InputError(f"{parquets[0]}: not img2dataset's shard metadata: no column(s) {', '.join(missing)}")
    hashes = [h for h in I2D_HASHES if h in present]
    if not hashes:
        log(
            f"[import-pool] {directory}: no sha256 or md5 column (img2dataset's compute_hash was off): hash blocklists and exact dedup cannot run"
        )
    use_uid = uid_col if uid_col in present else None
    caption = "caption" if "caption" in present else None
    extra = [c for c in present if c not in {"url", "caption", use_uid}]
    rows_max = max(_rows(p) for p in parquets)
    execute.start(ray_address)
    # one input shard per img2dataset file: per_shard covers the largest
    state = _inputs(
        parquets,
        pool,
        caption_col=caption,
        uid_col=use_uid,
        extra=extra,
        per_shard=rows_max,
        ray_address=ray_address,
        log=log,
    )
    stage = AdoptStage(pool, numbers, directory, width)
    outcome = run_stage(stage, range(len(numbers)), retries=2, log=log)
    failed = _failures(outcome)
    config = {"uid_col": use_uid, "hashes": hashes}
    source = {"kind": "img2dataset", "images": True, "directory": directory}
    tar = runtime.join(directory, f"{{shard:0{width}d}}.tar")
    manifest = _write_manifest(
        pool, [directory], state, config, source, tar, {numbers[i]: w for i, w in failed.items()}
    )
    execute.raise_failures("import-pool", {numbers[i]: w for i, w in failed.items()})
    return manifest
