"""Ingest: read a URL list (Parquet, CSV or JSONL), check it, give every row a uid, and cut it into
per-shard input files for the download stage.

- Column names are mapped by option (`url_col`, `caption_col`, `uid_col`); a DataComp metadata
  Parquet (uid, url, text, ...) works with the defaults.
- Rows without a uid get `hashes.make_uid(url, text)`: the first 128 bits of sha256(url NUL text).
  A given uid must be 32 hex digits; upper case is read as lower case (`hashes.canonical_uids`).
- Malformed input raises InputError naming the file, row (1-based, counting data rows only) and field.
  Shard inputs are written to a temporary directory and renamed into place only when the whole
  list has been read, so a bad row late in the file leaves nothing behind.
- The file is read in record batches, so a large list never sits in memory at once (img2dataset #338).

Also here: the fetch-safety check that refuses loopback, private, link-local and cloud-metadata hosts.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from thresher.algo.hashes import canonical_uids, make_uid
from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.netsafety import allowed, host_refusal
from thresher.exec import execute

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
MAX_EXAMPLES = 5


@dataclass
class ShardInputs:
    """What ingest produced: `shards` Arrow IPC files of at most `per_shard` rows under `directory`."""

    directory: str
    rows: int
    shards: int
    input_sha256: str
    files: list[dict] = field(default_factory=list)  # per input file: path, rows, shards, sha256, size

    def record(self) -> dict:
        """What a pool's state file keeps of it (shards are cut per file: every file's counts)."""
        return {"input_sha256": self.input_sha256, "rows": self.rows, "shards": self.shards, "files": self.files}


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in set(FORMATS.values()):
            raise InputError(f"unknown input format {fmt!r}; use one of parquet, csv, jsonl")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise InputError(
            f"{path}: cannot tell the format from the extension {ext!r}; pass --input-format parquet|csv|jsonl"
        )
    return FORMATS[ext]


def _read_batches(path: str, fmt: str, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    fs, p = runtime.fs_path(path)
    try:
        if fmt == "parquet":
            with fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                _check_columns(path, pf.schema_arrow.names, columns)
                yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
        elif fmt == "csv":
            with fs.open(p, "rb") as f:
                reader = pacsv.open_csv(
                    f,
                    read_options=pacsv.ReadOptions(block_size=1 << 24),
                    convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}),
                )
                _check_columns(path, reader.schema.names, columns)
                for batch in reader:
                    yield batch.select(columns)
        else:
            with fs.open(p, "rb") as f:
                table = pajson.read_json(f)
            _check_columns(path, table.schema.names, columns)
            yield from table.select(columns).to_batches(max_chunksize=batch_rows)
    except InputError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read {path} as {fmt}: {err}") from err


def _check_columns(path: str, present: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"the file has: {', '.join(present)}. Map columns with --url-col / --caption-col / "
            f"--uid-col, or list extra columns that exist"
        )


def _bad_rows(mask: pa.ChunkedArray | pa.Array, offset: int) -> tuple[int, list[int]]:
    idx = np.flatnonzero(np.asarray(pc.fill_null(mask, True)))
    return len(idx), [offset + int(i) + 1 for i in idx[:MAX_EXAMPLES]]


def _validate(path: str, batch: pa.RecordBatch, offset: int, url_col: str, uid_col: str | None):
    """Check a block's URLs and uids; returns its uids by the one uid rule (lower case), or None."""
    url = batch.column(url_col)
    if url.type != pa.string():
        raise InputError(f"{path}: field '{url_col}' must hold strings, found {url.type}")
    empty = pc.or_(pc.is_null(url), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(url)), 0))
    n, rows = _bad_rows(empty, offset)
    if n:
        raise InputError(
            f"{path}: row {rows[0]}, field '{url_col}': empty URL ({n} such rows in this block; rows {rows})"
        )
    ok = pc.match_substring_regex(url, r"^[hH][tT][tT][pP][sS]?://[^/\s?#]+")
    n, rows = _bad_rows(pc.invert(ok), offset)
    if n:
        first = url[rows[0] - offset - 1].as_py()
        raise InputError(
            f"{path}: row {rows[0]}, field '{url_col}': not an http(s) URL: {first[:200]!r} "
            f"({n} such rows in this block; rows {rows})"
        )
    if uid_col is None:
        return None
    # 32 hex digits, upper case read as lower (hashes.canonical_uids): a uid a uid file can hold unchanged
    return canonical_uids(batch.column(uid_col), f"{path}, field '{uid_col}'", first_row=offset + 1)


def uid_hashes(uids: list[str]) -> np.ndarray:
    """A 64-bit hash of each uid, the same in every process (Python's hash() is salted per process)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little", signed=True) for u in uids),
        dtype=np.int64,
        count=len(uids),
    )


def _bucket_of(h: np.ndarray, buckets: int) -> np.ndarray:
    return (h.view(np.uint64) % np.uint64(buckets)).astype(np.int64)


def list_inputs(spec: str, fmt: str | None = None) -> list[str]:
    """The URL-list files `spec` names: one file, a directory of them (as img2dataset's url_list), or a glob.
    DataComp's 12.8B-row metadata is thousands of Parquet files: each becomes its own ingest task."""
    if any(ch in spec for ch in "*?["):
        files = runtime.glob(spec)
    elif runtime.exists(spec) and runtime.fs_path(spec)[0].isdir(runtime.fs_path(spec)[1]):
        files = [
            f
            for f in runtime.glob(runtime.join(spec.rstrip("/"), "*"))
            if os.path.splitext(f)[1].lower() in FORMATS or fmt
        ]
    elif runtime.exists(spec):
        return [spec]
    else:
        raise InputError(f"URL list {spec} does not exist")
    files = [f for f in files if not os.path.basename(f).startswith(("_", "."))]
    if not files:
        raise InputError(f"{spec}: no URL-list files there (looked for {', '.join(sorted(FORMATS))})")
    return files


@dataclass
class _Read:
    """How to read each URL-list file: what an ingest task needs besides the file."""

    url_col: str
    caption_col: str | None
    uid_col: str | None
    extra_columns: tuple[str, ...]
    input_format: str | None
    per_shard: int
    batch_rows: int
    buckets: int


def _utf8(path: str, batch: pa.RecordBatch, offset: int) -> None:
    """Text columns must be valid UTF-8 (a JSONL or Parquet file can carry other bytes, which fail later,
    far from their row): the first bad value is named by file, column and row."""
    for name, col in zip(batch.schema.names, batch.columns):
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            bad = next(i for i in range(len(col)) if not _valid_utf8(col, i))
            raise InputError(f"{path}: column {name!r}, row {offset + bad + 1}: not valid UTF-8 text") from None


def _check_caption(path: str, batch: pa.RecordBatch, caption_col: str | None) -> None:
    """A caption column must hold text: a binary one used to end in an unexpected error far from its file."""
    if caption_col is None:
        return
    kind = batch.column(caption_col).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise InputError(
            f"{path}: field '{caption_col}' must hold text (UTF-8 strings), found {kind}; write the captions as strings"
        )


def _valid_utf8(col: pa.Array, i: int) -> bool:
    try:
        col[i].as_py()
        return True
    except UnicodeDecodeError:
        return False


def _ingest_file(path: str, index: int, out: str, hashes_dir: str, spec: _Read, local: bool) -> dict:
    """Check one URL-list file and cut it into shard inputs: `out/{shard:08d}.arrow`, numbered from 0 within
    this file (`local`: it is the only file, so these are the final names). Its uid hashes go to
    `hashes_dir/{index:06d}.npz`, grouped by bucket, for the pool-wide uniqueness check."""
    fmt = detect_format(path, spec.input_format)
    present = _columns_of(path, fmt)  # uid is used only when the file has it; the header is cheap
    use_uid = spec.uid_col if spec.uid_col and spec.uid_col in present else None
    columns = [spec.url_col] + ([spec.caption_col] if spec.caption_col else []) + ([use_uid] if use_uid else [])
    columns += [c for c in spec.extra_columns if c not in columns]
    rows = shards = 0
    hashes: list[np.ndarray] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    for batch in _read_batches(path, fmt, columns, spec.batch_rows):
        _utf8(path, batch, rows)
        _check_caption(path, batch, spec.caption_col)
        given = _validate(path, batch, rows, spec.url_col, use_uid)
        urls = batch.column(spec.url_col).to_pylist()
        texts = batch.column(spec.caption_col).to_pylist() if spec.caption_col else [None] * len(urls)
        if use_uid:
            uids = given.to_pylist()
        else:
            uids = [make_uid(u, t) for u, t in zip(urls, texts)]
        hashes.append(uid_hashes(uids))
        cols = {
            "uid": pa.array(uids, pa.string()),
            "url": batch.column(spec.url_col),
            "caption": pa.array(texts, pa.string()),
        }
        for c in spec.extra_columns:
            cols[c] = batch.column(c)
        pending.append(pa.table(cols))
        pending_rows += batch.num_rows
        rows += batch.num_rows
        while pending_rows >= spec.per_shard:
            table = pa.concat_tables(pending)
            _write_shard_input(out, shards, table.slice(0, spec.per_shard))
            shards += 1
            rest = table.slice(spec.per_shard)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        _write_shard_input(out, shards, pa.concat_tables(pending))
        shards += 1
    if rows == 0:
        raise InputError(f"{path}: the URL list has no rows")
    h = np.concatenate(hashes)
    bucket = _bucket_of(h, spec.buckets)
    rows_of = [np.flatnonzero(bucket == b) for b in range(spec.buckets)]
    # one zip member per bucket, so a bucket's task reads only its slice of each file's hashes
    runtime.write_npz(
        runtime.join(hashes_dir, f"{index:06d}.npz"),
        {**{f"h{b}": h[r] for b, r in enumerate(rows_of)}, **{f"r{b}": r for b, r in enumerate(rows_of)}},
    )
    fs, p = runtime.fs_path(path)
    return {
        "path": path,
        "rows": rows,
        "shards": shards,
        "sha256": runtime.file_sha256(path),
        "size": fs.size(p),
        "local": local,
    }


def _bucket_duplicates(hashes_dir: str, files: int, bucket: int) -> list[tuple[int, int, int]]:
    """(hash, file, row) of every row whose uid hash repeats within this bucket: the candidates. Holds
    24 bytes a row of one bucket; the uids themselves are read back only for candidates."""
    hs, fs_, rs = [], [], []
    for i in range(files):
        h, r = runtime.read_npz(runtime.join(hashes_dir, f"{i:06d}.npz"), [f"h{bucket}", f"r{bucket}"])
        hs.append(h)
        rs.append(r)
        fs_.append(np.full(len(hs[-1]), i, dtype=np.int64))
    h, f, r = np.concatenate(hs), np.concatenate(fs_), np.concatenate(rs)
    order = np.argsort(h, kind="stable")
    h, f, r = h[order], f[order], r[order]
    dup = np.zeros(len(h), dtype=bool)
    same = h[1:] == h[:-1]
    dup[1:] |= same
    dup[:-1] |= same
    return list(zip(h[dup].tolist(), f[dup].tolist(), r[dup].tolist()))


def _uids_at(shard_dir: str, per_shard: int, rows: list[int]) -> dict[int, str]:
    """The uids at these 0-based rows of one file's shard inputs (rows are cut in order, per_shard a shard)."""
    out, by_shard = {}, {}
    for row in rows:
        by_shard.setdefault(row // per_shard, []).append(row)
    for shard, wanted in by_shard.items():
        uids = read_shard_input(runtime.join(shard_dir, f"{shard:08d}.arrow")).column("uid")
        out.update({row: uids[row - shard * per_shard].as_py() for row in wanted})
    return out


def _check_unique(staging: str, hashes_dir: str, files: list[dict], spec: _Read, run) -> None:
    """Two rows with one uid would be one sample twice in every later table: refuse the list, naming both."""
    candidates = [
        c for part in run(_bucket_duplicates, [(hashes_dir, len(files), b) for b in range(spec.buckets)]) for c in part
    ]
    if not candidates:
        return
    by_file: dict[int, list[int]] = {}
    for _, f, r in candidates:
        by_file.setdefault(f, []).append(r)
    dirs = [staging if f["local"] else runtime.join(staging, "parts", f"{i:06d}") for i, f in enumerate(files)]
    uids = dict(zip(by_file, run(_uids_at, [(dirs[f], spec.per_shard, rows) for f, rows in by_file.items()])))
    seen: dict[str, tuple[int, int]] = {}
    for _, f, r in sorted(candidates, key=lambda c: (c[1], c[2])):  # equal hashes with unequal uids pass
        uid = uids[f][r]
        if uid in seen:
            (f0, r0) = seen[uid]
            where = (
                f"rows {r0 + 1} and {r + 1}"
                if f0 == f
                else f"row {r0 + 1} of {files[f0]['path']} and row {r + 1} of {files[f]['path']}"
            )
            raise InputError(
                f"{files[f]['path']}: {where} have the same uid {uid}. A uid derived from (url, text) "
                f"repeats when a row repeats: drop repeated rows first"
            )
        seen[uid] = (f, r)


def _place(src: str, dst: str, first: int, shards: int) -> None:
    """Rename one file's shard inputs to their pool-wide numbers (a rename on a file system; a server-side
    copy on object storage)."""
    for local in range(shards):
        runtime.move(runtime.join(src, f"{local:08d}.arrow"), runtime.join(dst, f"{first + local:08d}.arrow"))


def _runner(parallel: bool, ray_address: str | None):
    """Call a function over argument tuples: in this process for one file, else one task each (an
    InputError from a task reaches the user as raised, naming the file and row)."""
    ex = execute.start(ray_address) if parallel else execute.LocalExecutor()
    return lambda fn, calls: execute.map(_call, calls, fn, executor=ex, retries=2 if parallel else 0, label="ingest")


def _call(args: tuple, fn):
    return fn(*args)


def ingest(
    path: str | list[str],
    work_dir: str,
    *,
    url_col: str = "url",
    caption_col: str | None = "text",
    uid_col: str | None = "uid",
    extra_columns: tuple[str, ...] = (),
    input_format: str | None = None,
    per_shard: int = 10000,
    batch_rows: int = 100_000,
    ray_address: str | None = None,
) -> ShardInputs:
    """Read and check the URL list `path` (a file, a directory of files, or a glob), then write
    `work_dir/inputs/{shard:08d}.arrow` with columns uid, url, caption and the extras. Several files are
    read as one Ray task each, their shards numbered in file order. Writes nothing if any row is malformed
    or any uid repeats."""
    files = [f for spec in ([path] if isinstance(path, str) else path) for f in list_inputs(spec, input_format)]
    buckets = 1 if len(files) == 1 else min(256, len(files))  # a bucket's hashes: ~rows/buckets x 16 bytes
    spec = _Read(url_col, caption_col, uid_col, tuple(extra_columns), input_format, per_shard, batch_rows, buckets)
    run = _runner(len(files) > 1, ray_address)
    final = runtime.join(work_dir, "inputs")
    staging = runtime.join(work_dir, f"inputs.tmp-{uuid.uuid4().hex[:8]}")
    hashes_dir = runtime.join(staging, "_uid_hashes")
    runtime.makedirs(hashes_dir)
    try:
        local = len(files) == 1
        for i in range(len(files)):
            runtime.makedirs(staging if local else runtime.join(staging, "parts", f"{i:06d}"))
        done = run(
            _ingest_file,
            [
                (f, i, staging if local else runtime.join(staging, "parts", f"{i:06d}"), hashes_dir, spec, local)
                for i, f in enumerate(files)
            ],
        )
        _check_unique(staging, hashes_dir, done, spec, run)
        firsts = np.concatenate([[0], np.cumsum([d["shards"] for d in done])]).tolist()
        if not local:
            run(
                _place,
                [
                    (runtime.join(staging, "parts", f"{i:06d}"), staging, firsts[i], d["shards"])
                    for i, d in enumerate(done)
                ],
            )
            runtime.remove(runtime.join(staging, "parts"), recursive=True)
        runtime.remove(hashes_dir, recursive=True)
    except BaseException:
        runtime.remove(staging, recursive=True)
        raise
    runtime.remove(final, recursive=True)
    runtime.move(staging, final)
    listing = [{k: d[k] for k in ("path", "rows", "shards", "sha256", "size")} for d in done]
    # one file: its own sha256 (what `sha256sum` prints); several: the sha256 of their "sha256  name" lines
    sha = (
        done[0]["sha256"]
        if local
        else hashlib.sha256(
            "".join(f"{d['sha256']}  {os.path.basename(d['path'])}\n" for d in done).encode()
        ).hexdigest()
    )
    return ShardInputs(
        directory=final, rows=sum(d["rows"] for d in done), shards=firsts[-1], input_sha256=sha, files=listing
    )


def _columns_of(path: str, fmt: str) -> list[str]:
    fs, p = runtime.fs_path(path)
    try:
        with fs.open(p, "rb") as f:
            if fmt == "parquet":
                return pq.ParquetFile(f).schema_arrow.names
            if fmt == "csv":
                return pacsv.open_csv(f).schema.names
            first = f.readline()
            return list(pajson.read_json(pa.BufferReader(first)).schema.names) if first.strip() else []
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read {path} as {fmt}: {err}") from err


def _write_shard_input(directory: str, shard: int, table: pa.Table) -> None:
    fs, p = runtime.fs_path(runtime.join(directory, f"{shard:08d}.arrow"))
    with fs.open(p, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)


def read_shard_input(path: str) -> pa.Table:
    fs, p = runtime.fs_path(path)
    with fs.open(p, "rb") as f:
        return pa.ipc.open_file(f).read_all()


# ---------------------------------------------------------------------------------------------------
# Fetch safety: a URL list must not be able to make a cluster fetch from its own internal services.
# Here each URL's host as written (thresher/core/netsafety.py normalises it as the HTTP client will); the
# download then checks every resolved and connected address, and every redirect (netsafety.safe_opener).


def refusals(urls: pa.Array | pa.ChunkedArray, allow_hosts=()) -> list[str | None]:
    """Per-URL refusal reason (or None), checking each distinct host (and port) once; `allow_hosts`
    ("host" or "host:port") may be fetched although private."""
    parts = pc.extract_regex(
        urls,
        r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"
        r"(?::(?P<port>[0-9]*))?",
    )
    hosts = pc.utf8_lower(pc.struct_field(parts, [0])).to_pylist()
    ports = pc.struct_field(parts, [1]).to_pylist()
    allow = set(allow_hosts or ())

    def verdict(host, port):
        return None if allowed(host, port, allow) else host_refusal(host)

    memo: dict = {}
    for key in zip(hosts, ports):
        if key not in memo:
            memo[key] = verdict(*key)
    return [memo[key] for key in zip(hosts, ports)]
