"""Random access into a pool's shard tars: a member-offset index per shard, and thumbnails.

A shard tar is read from its start by every stage that streams it (features, subset). Showing one image
of it (`thresher browse`, the audit report's galleries) instead looks the image up in the shard's
member-offset index, `key -> (offset, size)` of its image's bytes, and reads just those bytes (one ranged
read, also on `s3://`). The index is made by reading the tar's headers once, seeking over the members'
data (`_headers`; tarfile for what it does not read); `thresher browse` keeps it in its cache folder,
never in the pool:

    CACHE/tars/{i:08d}.parquet      key, ext, offset, size; the tar's size and modification time (or, for a
                                    tar import-pool adopted, its recorded sha256, checked when it is built)

A cached index is used only while the tar has the size and modification time it was made from.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.core import decode, runtime
from thresher.core.errors import InputError, StageError
from thresher.core.pool import IMAGE_EXTS, HashingReader, Pool, member_key, shard_name

INDEX = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("ext", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),  # of the member's data, from the tar's start
        pa.field("size", pa.int64(), nullable=False),
    ]
)


def _stamp(url: str) -> dict:
    """What says a tar is still the one an index was made from: its size and modification time."""
    fs, path = runtime.fs_path(url)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    return {"size": int(info["size"]), "mtime": str(mtime)}


class Unusual(ValueError):
    """A header `_headers` does not read (base-256 sizes, a bad checksum, sparse files): tarfile reads it."""


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        raise Unusual("a base-256 number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax(data: bytes) -> dict[bytes, bytes]:
    """A pax header's records ("LEN KEY=VALUE\n" each)."""
    out, i = {}, 0
    while i < len(data) and data[i : i + 1] not in (b"", b"\0"):
        length = int(data[i : data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1 : i + length - 1].partition(b"=")
        out[key] = value
        i += length
    return out


def _headers(f):
    """(name, offset of its data, size, is a regular file) of each member of the tar open as `f`: its
    headers read 512 bytes at a time, seeking over the data. Tarfile does the same, ten times slower (a
    10,000-image shard took 1.5 s), so this reads the forms tar writers use (ustar, GNU long names, pax
    path and size) and raises Unusual for anything else; `scan` then reads the tar with tarfile."""
    pos, long_name, pax = 0, None, {}
    while True:
        f.seek(pos)
        h = f.read(512)
        if len(h) < 512 or h.count(0) == 512:
            return
        if _number(h[148:156]) != sum(h[:148]) + 256 + sum(h[156:]):
            raise Unusual(f"a header checksum at byte {pos}")
        size, kind, data = _number(h[124:136]), h[156:157], pos + 512
        if kind in (b"L", b"x", b"g"):
            f.seek(data)
            body = f.read(size)
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0]
            elif kind == b"x":
                pax = _pax(body)
        elif kind in (b"S", b"K"):
            raise Unusual(f"member type {kind!r}")
        else:
            name = h[:100].split(b"\0", 1)[0]
            prefix = h[345:500].split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
            name = pax.get(b"path") or long_name or (prefix + b"/" + name if prefix else name)
            size = int(pax.get(b"size", size))
            yield name.decode("utf-8", "surrogateescape"), data, size, kind in (b"0", b"\0", b"7")
            long_name, pax = None, {}
        pos = data + (size + 511) // 512 * 512


def _members(f) -> list[tuple[str, int, int, bool]]:
    try:
        return list(_headers(f))
    except Unusual:
        f.seek(0)
        with tarfile.open(fileobj=f, mode="r:") as tar:
            return [(m.name, m.offset_data, m.size, m.isfile()) for m in tar]


def scan(url: str, want_sha256: str | None = None) -> pa.Table:
    """The member-offset index of the tar at `url` (schema INDEX, one row per image member, by the pool's
    key rule). With `want_sha256` (an adopted tar's recorded fingerprint) the tar is read whole and
    hashed, and a tar that changed since import is refused (one pass reads, hashes and indexes it)."""
    fs, path = runtime.fs_path(url)
    rows: dict[str, list] = {"key": [], "ext": [], "offset": [], "size": []}
    try:
        with fs.open(path, "rb") as raw:
            members = None
            if want_sha256:
                hashing = HashingReader(raw)
                try:
                    members = list(_headers(hashing))
                    seen = hashing.finish()
                except Unusual:  # read again by tarfile below, hashed apart
                    seen = runtime.file_sha256(url)
                if seen != want_sha256:
                    raise InputError(
                        f"{url}: changed since import-pool adopted it (sha256 {seen[:12]}…, recorded "
                        f"{want_sha256[:12]}…); restore it, or import the folder again"
                    )
            if members is None:
                raw.seek(0)
                members = _members(raw)
            for name, offset, size, is_file in members:
                key, ext = member_key(name)
                if is_file and ext in IMAGE_EXTS:
                    for col, v in zip(rows, (key, ext, offset, size)):
                        rows[col].append(v)
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise StageError(f"{url}: unreadable tar: {err}") from err
    return pa.table(rows, schema=INDEX)


def read_member(url: str, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of the file at `url`: one ranged read."""
    fs, path = runtime.fs_path(url)
    return fs.cat_file(path, start=offset, end=offset + size)


@dataclass
class ShardIndex:
    tar: str
    members: dict[str, tuple[int, int]]  # key -> (offset, size) of its image

    def read(self, key: str) -> bytes | None:
        where = self.members.get(key)
        return read_member(self.tar, *where) if where else None


def shard_index(pool: Pool, shard: int, cache: str | None = None) -> ShardIndex:
    """Shard `shard`'s member-offset index: from `cache` (a folder of the caller's, never the pool) while
    it matches the tar, else scanned (and kept there when `cache` is given)."""
    tar = pool.tar(shard)
    if not runtime.exists(tar):
        raise InputError(f"{pool.root}: shard {shard_name(shard)} has no tar at {tar}")
    stamp = _stamp(tar)
    kept = runtime.join(cache, "tars", f"{shard_name(shard)}.parquet") if cache else None
    table = None
    if kept and runtime.exists(kept):
        t = runtime.read_parquet(kept)
        if json.loads((t.schema.metadata or {}).get(b"tar", b"{}")) == {**stamp, "url": tar}:
            table = t
    if table is None:
        table = scan(tar, pool.tar_sha256(shard))
        if kept:
            runtime.makedirs(runtime.join(cache, "tars"))
            with runtime.atomic_writer(kept) as f:  # a reader in another thread sees it whole or not at all
                pq.write_table(table.replace_schema_metadata({"tar": json.dumps({**stamp, "url": tar})}), f)
    return _index(tar, table)


def tar_index(url: str) -> ShardIndex:
    """The member-offset index of a tar outside any pool (a subset's shard): scanned now, not cached."""
    return _index(url, scan(url))


def _index(tar: str, table: pa.Table) -> ShardIndex:
    keys, offsets, sizes = (table.column(c).to_pylist() for c in ("key", "offset", "size"))
    return ShardIndex(tar, dict(zip(keys, zip(offsets, sizes))))


def thumbnail(data: bytes, side: int, max_pixels: int = decode.MAX_PIXELS, quality: int = 85) -> bytes:
    """A JPEG of at most `side` x `side` pixels of encoded image bytes, past the one pixel-limit check
    (decode.TooLarge before anything is decoded); JPEGs are decoded at a reduced scale (PIL's draft)."""
    image = decode.open_image(data, max_pixels)
    image.draft("RGB", (side, side))
    image = image.convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
