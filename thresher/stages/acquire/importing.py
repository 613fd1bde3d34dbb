"""Pools from what users already hold, without a download.

`thresher import-metadata METADATA... --out POOL [--npz-dir DIR]`: DataComp-format metadata Parquet
(uid, url, text, original_width, original_height, clip_b32_similarity_score,
clip_l14_similarity_score, face_bboxes, sha256) becomes a pool without images. Each row is a sample
(status success); the base features that need no pixels (language, caption length, sizes, sha256) are
computed, and the precomputed scores become scorers (`clip_b32`, `clip_l14` by default, as the presets
expect), with the image and text embeddings of DataComp's `.npz` files (`DIR/STEM.npz` for
`STEM.parquet`, row-aligned with it; keys `b32_img`, `l14_img`, ...). Each array's shape and dtype are
read from its .npy header before it is loaded: floats, one row per metadata row, as wide as the first
file's and at most MAX_EMBEDDING_WIDTH (a 1.5 MB file could hold 1.5 GB of zeros). Every filter that
needs no pixels runs on it; what needs them (PDQ, new scorers, a resharded subset) fails before any work and says so.

`thresher import-pool DIR --out POOL`: img2dataset's shards, adopted in place (adopt.py).

Both read their Parquet through ingest (one Ray task per file, the same checks as download: URLs, UTF-8,
uids unique across the pool), then write the pool one task per file (import-metadata) or shard
(import-pool). A shard is done when POOL/shards/{i:08d}_stats.json is there, so a re-run resumes.

    POOL/manifest.json                  kind thresher.pool; source; layout.tar (null: no images)
    POOL/shards/{i:08d}.parquet         schema.POOL (+ the carried columns)
    POOL/shards/{i:08d}_stats.json      marks shard i imported
    POOL/features/base|SCORER/...       import-metadata only: base features and the imported scorers
    POOL/_work/inputs/                  the checked inputs (ingest), and _SUCCESS.json
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.core import runtime, schema
from thresher.core.errors import InputError, cause
from thresher.core.pool import Pool, npy_header, shard_name
from thresher.exec import execute
from thresher.exec.stage import Stage, run_stage
from thresher.stages.acquire import ingest
from thresher.stages.features import features

# DataComp's score columns, the scorer each becomes, and the prefix of its .npz arrays
DATACOMP_SCORERS = {
    "clip_b32": ("clip_b32_similarity_score", "b32"),
    "clip_l14": ("clip_l14_similarity_score", "l14"),
}
DATACOMP_WEIGHTS = {"clip_b32": "OpenAI CLIP ViT-B/32", "clip_l14": "OpenAI CLIP ViT-L/14"}
# an imported scorer's embeddings are at most this wide (DataComp's are 512 and 768, the widest CLIP
# towers 1280), and as wide in every file as in the first: a 2,000,000-wide array is refused from its header
MAX_EMBEDDING_WIDTH = 4096
# DataComp's columns the pool keeps (score columns ride along too, as download's extra columns would)
DATACOMP_CARRIED = ["original_width", "original_height", "sha256", "face_bboxes"]


@dataclass(frozen=True)
class ScorerSource:
    scorer_id: str
    column: str
    npz_prefix: str | None  # arrays PREFIX_img, PREFIX_txt of the .npz files
    width: int | None = None  # of its embeddings, read from the first .npz's header (_with_embeddings)

    @staticmethod
    def parse(spec: str) -> ScorerSource:
        """ID=COLUMN[:NPZ_PREFIX], e.g. clip_l14=clip_l14_similarity_score:l14."""
        scorer_id, sep, rest = spec.partition("=")
        column, _, prefix = rest.partition(":")
        if not sep or not scorer_id or not column:
            raise InputError(
                f"--scorer takes ID=COLUMN[:NPZ_PREFIX], e.g. clip_l14=clip_l14_similarity_score:l14; got {spec!r}"
            )
        return ScorerSource(scorer_id, column, prefix or None)


def default_scorers() -> list[ScorerSource]:
    return [ScorerSource(s, c, p) for s, (c, p) in DATACOMP_SCORERS.items()]


# ---------------------------------------------------------------------------------------------------
# Shared: the inputs, checked once by ingest


def _inputs(sources: list[str], pool: str, *, caption_col, uid_col, extra, per_shard, ray_address, log) -> dict:
    """ingest's shard inputs in POOL/_work/inputs, made once; a re-run must name the same files (by name
    and size: DataComp's metadata is terabytes)."""
    work = Pool(pool).work()
    state_path = runtime.join(work, "inputs", "_SUCCESS.json")
    files = [f for spec in sources for f in ingest.list_inputs(spec)]
    listing = [[f, runtime.fs_path(f)[0].size(runtime.fs_path(f)[1])] for f in files]
    if runtime.exists(state_path):
        state = runtime.read_json(state_path)
        if state["listing"] != listing:
            raise InputError(f"{pool} was imported from other files; use a new --out for these")
        return state
    log(f"[import] reading {len(files)} file(s)")
    inputs = ingest.ingest(
        files,
        work,
        caption_col=caption_col,
        uid_col=uid_col,
        extra_columns=tuple(extra),
        per_shard=per_shard,
        ray_address=ray_address,
    )
    state = {
        "listing": listing,
        **inputs.record(),
        "per_shard": per_shard,
        "extra": list(extra),
    }
    runtime.write_json(state_path, state)
    return state


def _first_shards(state: dict) -> list[int]:
    return np.concatenate([[0], np.cumsum([f["shards"] for f in state["files"]])]).astype(int).tolist()


def _footer(path: str):
    """A Parquet file's footer (schema, row count); a file that is not Parquet is named."""
    fs, p = runtime.fs_path(path)
    try:
        with fs.open(p, "rb") as fh:
            return pq.ParquetFile(fh).metadata
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read {path} as Parquet: {' '.join(str(err).split())[:300]}") from None


def _common_columns(files: list[str]) -> list[str]:
    """Columns every Parquet file has (read from the footers only)."""
    names = None
    for f in files:
        cols = _footer(f).schema.to_arrow_schema().names
        names = cols if names is None else [c for c in names if c in cols]
    return names or []


def _rows(path: str) -> int:
    return max(1, _footer(path).num_rows)


def _pool_table(rows: dict[str, pa.Array], n: int, extras: dict[str, pa.Array]) -> pa.Table:
    """schema.POOL from the columns given (the rest null), then the carried columns."""
    cols = {f.name: pc.cast(rows[f.name], f.type) if f.name in rows else pa.nulls(n, f.type) for f in schema.POOL}
    fields = list(schema.POOL) + [pa.field(c, a.type) for c, a in extras.items()]
    return pa.table({**cols, **extras}, schema=pa.schema(fields))


def _shard_stats(shard: int, table: pa.Table, started: float | None = None, **more) -> dict:
    """A pool shard's marker stats; with `started`, its times too (where no executor adds them)."""
    statuses = Counter(table.column("status").to_pylist())
    failures = Counter(f for f in table.column("failure").to_pylist() if f is not None)
    times = {"start_time": started, "end_time": time.time()} if started is not None else {}
    return {
        "shard": shard,
        "count": table.num_rows,
        "successes": statuses.get("success", 0),
        "status": dict(statuses),
        "failures": dict(failures),
        **times,
        **more,
    }


def _write_manifest(pool: str, sources: list[str], state: dict, config: dict, source: dict, tar, failed) -> dict:
    status: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    shards = Pool(pool).shards()
    for s in shards:
        stats = runtime.read_json(Pool(pool).shard_stats(s))
        status.update(stats["status"])
        failures.update(stats["failures"])
    manifest = {
        "kind": "thresher.pool",
        **runtime.provenance(),
        "source": source,
        "input": {
            "path": " ".join(sources),
            "sha256": state["input_sha256"],
            "rows": state["rows"],
            "files": len(state["files"]),
        },
        "config": config,
        "shards": {
            "total": len(state["files"]) if source["kind"] == "img2dataset" else state["shards"],
            "complete": len(shards),
            "failed": {f"{s:08d}": why for s, why in sorted(failed.items())},
        },
        "counts": {
            "rows": sum(status.values()),
            "status": dict(sorted(status.items())),
            "failure": dict(sorted(failures.items())),
        },
        "layout": {"tar": tar, "metadata": "shards/{shard:08d}.parquet", "stats": "shards/{shard:08d}_stats.json"},
    }
    runtime.write_json(Pool(pool).manifest, manifest)
    return manifest


def _failures(outcome: execute.Outcome) -> dict:
    """{item: reason}; bad input in any file is raised as itself (the same file fails the same way again)."""
    # unwrapped from execute's no-retry marker and Ray's task error (each hid the InputError before)
    bad = [cause(getattr(e, "err", e)) for e in outcome.errors.values()]
    bad = [e for e in bad if isinstance(e, InputError)]
    if bad:
        raise InputError(str(bad[0])) from None
    return outcome.failures


def _check_target(pool: str, kind: str) -> None:
    """An existing pool at --out must be one this importer made (never a download's, or the other kind)."""
    if runtime.exists(Pool(pool).manifest):
        had = (runtime.read_json(Pool(pool).manifest).get("source") or {}).get("kind", "download")
        if had != kind:
            raise InputError(f"{pool} is a pool made by {had}, not {kind}; choose another --out")


# ---------------------------------------------------------------------------------------------------
# import-metadata


@dataclass
class MetadataFileStage(Stage):
    """Every pool shard cut from one input file: metadata, base features, scorers. One item per file, so
    each .npz is read once; the item's markers are its shards' (base, each scorer's, then the pool's)."""

    pool: str
    state: dict
    scorers: list[ScorerSource]
    npz_dir: str | None

    name: ClassVar[str] = "import-metadata"
    unit: ClassVar[str] = "rows"
    timed: ClassVar[bool] = False  # each shard's stats carry their own times

    def _shards(self, index: int) -> range:
        first = _first_shards(self.state)[index]
        return range(first, first + self.state["files"][index]["shards"])

    def done(self, index: int) -> bool:
        return all(runtime.exists(Pool(self.pool).shard_stats(s)) for s in self._shards(index))

    def weight(self, index: int) -> int:
        return self.state["files"][index]["rows"]

    def process(self, index: int) -> dict:
        pool, per, info = self.pool, self.state["per_shard"], self.state["files"][index]
        todo = [s for s in self._shards(index) if not runtime.exists(Pool(pool).shard_stats(s))]
        arrays = _npz_arrays(info, self.scorers, self.npz_dir) if self.npz_dir and todo else {}
        digits = max(1, math.ceil(math.log10(max(per, 2))))
        runtime.makedirs(Pool(pool).shards_dir)
        done = {}
        for shard in todo:
            started = time.time()
            inp = ingest.read_shard_input(Pool(pool).work("inputs", f"{shard_name(shard)}.arrow"))
            n = inp.num_rows
            rows = {c: inp.column(c) for c in inp.column_names if c in schema.POOL.names}
            rows["key"] = pa.array([f"{shard_name(shard)}{i:0{digits}d}" for i in range(n)])
            rows["status"] = pa.array(["success"] * n)
            table = _pool_table(rows, n, {c: inp.column(c) for c in inp.column_names if c not in schema.POOL.names})
            marks = {}
            base = features.write_base(pool, shard, features.base_table(table, None))
            marks[Pool(pool).feature_stats("base", shard)] = {**base, "start_time": started, "end_time": time.time()}
            lo = (shard - self._shards(index)[0]) * per
            for src in self.scorers:
                emb = {
                    w: arrays[(src.scorer_id, w)][lo : lo + n] for w in ("img", "txt") if (src.scorer_id, w) in arrays
                }
                marks[Pool(pool).feature_stats(src.scorer_id, shard)] = features.write_scorer_shard(
                    pool, src.scorer_id, shard, table, table.column(src.column), emb.get("img"), emb.get("txt")
                )
            runtime.write_parquet(table, Pool(pool).metadata(shard))
            marks[Pool(pool).shard_stats(shard)] = _shard_stats(shard, table, started, source=info["path"])
            done[shard] = marks
        return {"count": len(todo), "file": info["path"], "markers": done}

    def markers(self, index: int, stats: dict) -> dict[str, dict]:
        return {path: one for marks in stats["markers"].values() for path, one in marks.items()}


def _npz_path(parquet: str, npz_dir: str) -> str:
    return runtime.join(npz_dir, os.path.splitext(os.path.basename(parquet))[0] + ".npz")


def _with_embeddings(scorers: list[ScorerSource], first: str, npz_dir: str, log) -> list[ScorerSource]:
    """The scorers whose image embeddings the first file's .npz holds keep their prefix (every file must
    then hold them); the others are imported without embeddings. Reads the .npz's directory only."""
    path = _npz_path(first, npz_dir)
    if not runtime.exists(path):
        raise InputError(f"{first}: no embeddings file {path} (DataComp keeps STEM.npz beside STEM.parquet)")
    with _npz(path, whole=False) as npz:
        names = set(npz.files)
        out = []
        for s in scorers:
            if s.npz_prefix and f"{s.npz_prefix}_img" not in names:
                log(f"[import-metadata] {path} has no {s.npz_prefix}_img: scorer {s.scorer_id} without embeddings")
                s = replace(s, npz_prefix=None)
            elif s.npz_prefix:  # every file's arrays must have the first's width (checked from the headers)
                shape, _ = _npy_header(npz, f"{s.npz_prefix}_img", path)
                s = replace(s, width=_width(path, f"{s.npz_prefix}_img", shape, s))
            out.append(s)
    if not any(s.npz_prefix for s in out):
        raise InputError(
            f"--npz-dir: {path} holds none of the scorers' arrays ({', '.join(sorted(names))}); "
            "name them with --scorer ID=COLUMN:NPZ_PREFIX"
        )
    return out


def _npz_arrays(info: dict, scorers: list[ScorerSource], npz_dir: str) -> dict:
    """(scorer, "img"|"txt") -> the file's embeddings, from NPZ_DIR/STEM.npz (row-aligned with STEM.parquet)."""
    path = _npz_path(info["path"], npz_dir)
    if not runtime.exists(path):
        raise InputError(f"{info['path']}: no embeddings file {path} (DataComp keeps STEM.npz beside STEM.parquet)")
    out = {}
    with _npz(path, whole=True) as npz:
        for src in (s for s in scorers if s.npz_prefix):
            for which in ("img", "txt"):
                key = f"{src.npz_prefix}_{which}"
                if key not in npz.files:
                    if which == "txt":
                        continue  # image embeddings are what filters use; text ones are optional
                    raise InputError(
                        f"{path} has no array {key!r} for scorer {src.scorer_id}; it has {sorted(npz.files)}"
                    )
                # shape and type from the array's header, before a byte of it is decompressed: the
                # header bounds what loading it costs (rows x width x 8 bytes at most)
                shape, _ = _npy_header(npz, key, path)
                if len(shape) != 2 or shape[0] != info["rows"]:
                    raise InputError(
                        f"{path}: {key} has shape {shape}; {info['path']} has {info['rows']} rows (one embedding a row)"
                    )
                _width(path, key, shape, src)
                out[(src.scorer_id, which)] = npz[key]
    return out


@contextlib.contextmanager
def _npz(path: str, whole: bool):
    """An .npz file, opened lazily (an array is decompressed only when read; `whole`: the file is read in
    one request first, for object stores). Never unpickles; what is not a zip of arrays is named."""
    fs, p = runtime.fs_path(path)
    with fs.open(p, "rb") as f:
        try:
            npz = np.load(io.BytesIO(f.read()) if whole else f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(
                f"{path}: not an .npz of arrays ({' '.join(str(err).split())[:200]}); DataComp's STEM.npz is a "
                "zip of .npy arrays (np.savez)"
            ) from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: one .npy array, not an .npz of named arrays (np.savez writes those)")
        with npz:
            yield npz


def _npy_header(npz, key: str, path: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of array `key` of an open .npz, read from its .npy header alone; floats only (an
    object array would need unpickling, a string one is no embedding)."""
    member = f"{key}.npy" if f"{key}.npy" in npz.zip.namelist() else key
    try:
        with npz.zip.open(member) as f:
            shape, dtype = npy_header(f)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as err:
        raise InputError(f"{path}: array {key} is not a readable .npy array ({err})") from None
    if dtype.kind != "f":
        raise InputError(f"{path}: array {key} holds {dtype}, not floating-point embeddings")
    return shape, dtype


def _width(path: str, key: str, shape: tuple, src: ScorerSource) -> int:
    """The embedding width of array `key` (shape rows x width), checked against the scorer's: at most
    MAX_EMBEDDING_WIDTH, and the width of its first file's image embeddings (`src.width`, once known)."""
    width = int(shape[1]) if len(shape) == 2 else 0
    if src.width and width != src.width:
        raise InputError(
            f"{path}: {key} is {width} wide; scorer {src.scorer_id}'s embeddings are {src.width} wide "
            "(its first file's): one model's embeddings, one row per metadata row"
        )
    if not 1 <= width <= MAX_EMBEDDING_WIDTH:
        raise InputError(f"{path}: {key} has shape {shape}: not rows x width with width 1..{MAX_EMBEDDING_WIDTH}")
    return width


@runtime.holds(lambda sources, pool, *a, **k: Pool(pool).work(), "this pool's import")
def import_metadata(
    sources: list[str],
    pool: str,
    npz_dir: str | None = None,
    scorers: list[ScorerSource] | None = None,
    samples_per_shard: int = 10000,
    ray_address: str | None = None,
    log=print,
) -> dict:
    """A pool without images from DataComp-format metadata (module docstring)."""
    scorers = default_scorers() if scorers is None else scorers
    _check_target(pool, "metadata")
    files = [f for spec in sources for f in ingest.list_inputs(spec)]
    present = _common_columns(files)
    missing = [c for c in ("uid", "url", "text") if c not in present]
    if missing:
        raise InputError(
            f"{files[0]}: not DataComp metadata: no column(s) {', '.join(missing)}; it has {', '.join(present)}"
        )
    absent = [s for s in scorers if s.column not in present]
    for s in absent:
        log(f"[import-metadata] no column {s.column}: no scorer {s.scorer_id}")
    scorers = [s for s in scorers if s.column in present]
    if npz_dir:
        scorers = _with_embeddings(scorers, files[0], npz_dir, log)
    carried = [c for c in DATACOMP_CARRIED if c in present] + [s.column for s in scorers]
    execute.start(ray_address)
    state = _inputs(
        sources,
        pool,
        caption_col="text",
        uid_col="uid",
        extra=carried,
        per_shard=samples_per_shard,
        ray_address=ray_address,
        log=log,
    )
    if state["extra"] != carried:
        raise InputError(f"{pool} was imported with other columns ({state['extra']}); use a new --out")
    firsts = _first_shards(state)
    stage = MetadataFileStage(pool, state, scorers, npz_dir)
    outcome = run_stage(stage, range(len(state["files"])), retries=2, log=log)
    failed = _failures(outcome)
    failed_shards = {s: why for i, why in failed.items() for s in range(firsts[i], firsts[i + 1])}
    for src in scorers:
        features.write_precomputed_manifest(
            pool,
            src.scorer_id,
            f"precomputed: metadata column {src.column}"
            + (f"; embeddings {src.npz_prefix}_img/_txt from {npz_dir}" if npz_dir and src.npz_prefix else ""),
            {"note": DATACOMP_WEIGHTS[src.scorer_id]} if src.scorer_id in DATACOMP_WEIGHTS else None,
        )
    config = {"samples_per_shard": samples_per_shard, "npz_dir": npz_dir, "scorers": [vars(s) for s in scorers]}
    source = {"kind": "metadata", "images": False}
    manifest = _write_manifest(pool, sources, state, config, source, None, failed_shards)
    execute.raise_failures("import-metadata", failed_shards)
    return manifest


# ---------------------------------------------------------------------------------------------------
# import-pool
