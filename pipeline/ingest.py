"""Ingest: read a URL list (Parquet, CSV or JSONL), check it, give every row a uid, and cut it into
per-shard input files for the download stage.

- Column names are mapped by option (`url_col`, `caption_col`, `uid_col`); a DataComp metadata
  Parquet (uid, url, text, ...) works with the defaults.
- Rows without a uid get `hashes.make_uid(url, text)`: the first 128 bits of sha256(url NUL text).
- Malformed input raises InputError naming the file, row (1-based, counting data rows only) and field.
  Shard inputs are written to a temporary directory and renamed into place only when the whole
  list has been read, so a bad row late in the file leaves nothing behind.
- The file is read in record batches, so a large list never sits in memory at once (img2dataset #338).

Also here: the fetch-safety check that refuses loopback, private, link-local and cloud-metadata hosts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from . import runtime
from .errors import InputError
from .hashes import make_uid

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl",
           ".ndjson": "jsonl"}
MAX_EXAMPLES = 5


@dataclass
class ShardInputs:
    """What ingest produced: `shards` Arrow IPC files of at most `per_shard` rows under `directory`."""
    directory: str
    rows: int
    shards: int
    input_sha256: str


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in set(FORMATS.values()):
            raise InputError(f"unknown input format {fmt!r}; use one of parquet, csv, jsonl")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise InputError(f"{path}: cannot tell the format from the extension {ext!r}; "
                         f"pass --input-format parquet|csv|jsonl")
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
                    f, read_options=pacsv.ReadOptions(block_size=1 << 24),
                    convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}))
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
        raise InputError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                         f"the file has: {', '.join(present)}. Map columns with --url-col / --caption-col / "
                         f"--uid-col, or list extra columns that exist")


def _bad_rows(mask: pa.ChunkedArray | pa.Array, offset: int) -> tuple[int, list[int]]:
    idx = np.flatnonzero(np.asarray(pc.fill_null(mask, True)))
    return len(idx), [offset + int(i) + 1 for i in idx[:MAX_EXAMPLES]]


def _validate(path: str, batch: pa.RecordBatch, offset: int, url_col: str, uid_col: str | None) -> None:
    url = batch.column(url_col)
    if url.type != pa.string():
        raise InputError(f"{path}: field '{url_col}' must hold strings, found {url.type}")
    empty = pc.or_(pc.is_null(url), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(url)), 0))
    n, rows = _bad_rows(empty, offset)
    if n:
        raise InputError(f"{path}: row {rows[0]}, field '{url_col}': empty URL "
                         f"({n} such rows in this block; rows {rows})")
    ok = pc.match_substring_regex(url, r"^[hH][tT][tT][pP][sS]?://[^/\s?#]+")
    n, rows = _bad_rows(pc.invert(ok), offset)
    if n:
        first = url[rows[0] - offset - 1].as_py()
        raise InputError(f"{path}: row {rows[0]}, field '{url_col}': not an http(s) URL: {first[:200]!r} "
                         f"({n} such rows in this block; rows {rows})")
    if uid_col is not None:
        uid = batch.column(uid_col)
        bad = pc.or_(pc.is_null(uid), pc.equal(pc.utf8_length(pc.cast(uid, pa.string())), 0))
        n, rows = _bad_rows(bad, offset)
        if n:
            raise InputError(f"{path}: row {rows[0]}, field '{uid_col}': empty uid ({n} such rows; rows {rows})")


def _check_unique(path: str, staging: str, shards: int, uid_hashes: np.ndarray) -> None:
    """Two rows with one uid would be one sample twice in every later table: refuse the list.

    Holds 8 bytes a row (a 64-bit hash of each uid); only on a hash match are the uids themselves
    read back, to confirm and to name the rows."""
    order = np.argsort(uid_hashes, kind="stable")
    h = uid_hashes[order]
    candidates = set(h[1:][h[1:] == h[:-1]].tolist())
    if not candidates:
        return
    seen: dict[str, int] = {}
    row = 0
    for shard in range(shards):
        for uid in read_shard_input(runtime.join(staging, f"{shard:08d}.arrow")).column("uid").to_pylist():
            row += 1
            if hash(uid) in candidates:
                if uid in seen:
                    raise InputError(f"{path}: rows {seen[uid]} and {row} have the same uid {uid}. A uid derived "
                                     f"from (url, text) repeats when a row repeats: drop repeated rows first")
                seen[uid] = row


def ingest(path: str, work_dir: str, *, url_col: str = "url", caption_col: str | None = "text",
           uid_col: str | None = "uid", extra_columns: tuple[str, ...] = (), input_format: str | None = None,
           per_shard: int = 10000, batch_rows: int = 100_000) -> ShardInputs:
    """Read and check `path`, then write `work_dir/inputs/{shard:08d}.arrow` with columns
    uid, url, caption and the extras. Writes nothing if any row is malformed."""
    if not runtime.exists(path):
        raise InputError(f"URL list {path} does not exist")
    fmt = detect_format(path, input_format)
    # uid is used only when the file has it; probe the header cheaply first
    present = _columns_of(path, fmt)
    use_uid = uid_col if uid_col and uid_col in present else None
    columns = [url_col] + ([caption_col] if caption_col else []) + ([use_uid] if use_uid else [])
    columns += [c for c in extra_columns if c not in columns]

    input_sha256 = runtime.file_sha256(path)
    final = runtime.join(work_dir, "inputs")
    staging = runtime.join(work_dir, f"inputs.tmp-{uuid.uuid4().hex[:8]}")
    runtime.makedirs(staging)
    rows = shards = 0
    uid_hashes: list[np.ndarray] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    try:
        for batch in _read_batches(path, fmt, columns, batch_rows):
            _validate(path, batch, rows, url_col, use_uid)
            urls = batch.column(url_col).to_pylist()
            texts = batch.column(caption_col).to_pylist() if caption_col else [None] * len(urls)
            if use_uid:
                uids = [str(u) for u in batch.column(use_uid).to_pylist()]
            else:
                uids = [make_uid(u, t) for u, t in zip(urls, texts)]
            uid_hashes.append(np.fromiter((hash(u) for u in uids), dtype=np.int64, count=len(uids)))
            cols = {"uid": pa.array(uids, pa.string()), "url": batch.column(url_col),
                    "caption": pa.array(texts, pa.string())}
            for c in extra_columns:
                cols[c] = batch.column(c)
            pending.append(pa.table(cols))
            pending_rows += batch.num_rows
            rows += batch.num_rows
            while pending_rows >= per_shard:
                table = pa.concat_tables(pending)
                _write_shard_input(staging, shards, table.slice(0, per_shard))
                shards += 1
                rest = table.slice(per_shard)
                pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if pending_rows:
            _write_shard_input(staging, shards, pa.concat_tables(pending))
            shards += 1
        if rows == 0:
            raise InputError(f"{path}: the URL list has no rows")
        _check_unique(path, staging, shards, np.concatenate(uid_hashes))
    except BaseException:
        runtime.remove(staging, recursive=True)
        raise
    runtime.remove(final, recursive=True)
    runtime.move(staging, final)
    return ShardInputs(directory=final, rows=rows, shards=shards, input_sha256=input_sha256)


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
# This looks at the URL's host as written. A DNS name that resolves to a private address is NOT
# caught here (that needs an egress proxy or firewall); docs/download.md says so.

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata",
               "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
METADATA_IPS = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                ipaddress.ip_address("100.100.100.200")}


def _parse_ip(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # inet_aton also takes the forms browsers and urllib accept: 127.1, 0x7f.0.0.1, 2130706433
    if host and all(ch in "0123456789abcdefx." for ch in host) and any(ch.isdigit() for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def host_refusal(host: str | None) -> str | None:
    """Why a host must not be fetched by default, or None when it may be."""
    if not host:
        return "no host"
    h = host.strip("[]").lower().rstrip(".")
    if h in LOCAL_NAMES or h.endswith(".localhost"):
        return f"host {host} is local"
    ip = _parse_ip(h.split("%", 1)[0])
    if ip is None:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_IPS:
        return f"host {host} is a cloud metadata address"
    for attr, what in (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_private", "private"),
                       ("is_multicast", "multicast"), ("is_unspecified", "unspecified"), ("is_reserved", "reserved")):
        if getattr(ip, attr):
            return f"host {host} is a {what} address"
    if not ip.is_global:
        return f"host {host} is not a public address"
    return None


def refusals(urls: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Per-URL refusal reason (or None), checking each distinct host once."""
    hosts = pc.extract_regex(urls, r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)")
    hosts = pc.utf8_lower(pc.struct_field(hosts, [0]))
    verdict = {h: host_refusal(h) for h in pc.unique(hosts).to_pylist()}
    return [verdict[h] for h in hosts.to_pylist()]
