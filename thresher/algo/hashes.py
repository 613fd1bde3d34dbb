"""Hashes shared by every stage, so that a blocklist written by one and read by another agree.

- uid: 32 hex chars, the first 128 bits of sha256(url + "\\x00" + text). NUL never occurs in a URL,
  so the pair is unambiguous. Rows that bring their own uid keep it, read by the one uid rule
  (`canonical_uids`: exactly 32 hex digits, upper case read as lower case).
- URL hashes for blocklists are taken over `normalize_url(url)`.
- Perceptual hash: PDQ (Meta's 256-bit hash), because it is what industry safety hash lists
  (ThreatExchange, StopNCII) exchange, so users can bring real lists unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from thresher.core.errors import InputError


def make_uid(url: str, text: str | None) -> str:
    return hashlib.sha256(f"{url}\x00{text or ''}".encode()).hexdigest()[:32]


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment and a default port; keep path and query as is."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username:
        host = f"{parts.username}{':' + parts.password if parts.password else ''}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def url_hash(url: str, algo: str = "sha256") -> str:
    return hashlib.new(algo, normalize_url(url).encode("utf-8")).hexdigest()


def pdq_hash(image) -> tuple[str, int]:
    """PDQ hash of a PIL image or encoded bytes: (64 hex chars, quality 0-100)."""
    import pdqhash
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    arr = np.asarray(image.convert("RGB"))
    bits, quality = pdqhash.compute(arr)
    return bits_to_hex(bits), int(quality)


def bits_to_hex(bits) -> str:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def hamming_hex(a: str, b: str) -> int:
    return int(
        np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)).sum()
    )


def pdq_codes(
    hexes: list[str | None], quality: list[int | None] | None = None, min_quality: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 32] codes, indices of rows that have a hash of at least `min_quality`)."""
    quality = quality or [100] * len(hexes)
    have = np.array(
        [i for i, (h, q) in enumerate(zip(hexes, quality)) if h and (q or 0) >= min_quality], dtype=np.int64
    )
    codes = np.frombuffer(b"".join(bytes.fromhex(hexes[i]) for i in have), dtype=np.uint8).reshape(-1, 32)
    return codes, have


def hamming_pairs(codes: np.ndarray, radius: int, queries: np.ndarray | None = None) -> np.ndarray:
    """Pairs (query row, index row) within `radius` bits, by FAISS binary range search."""
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    q = codes if queries is None else queries
    pairs = []
    for start in range(0, len(q), 65536):
        lims, _, ids = index.range_search(q[start : start + 65536], radius + 1)  # FAISS keeps distance < radius
        for row in range(len(lims) - 1):
            for j in ids[lims[row] : lims[row + 1]]:
                if queries is not None or j != start + row:
                    pairs.append((start + row, int(j)))
    out = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    if queries is None and len(out):
        out = np.sort(out, axis=1)
        out = np.unique(out, axis=0)
    return out


# Multi-index hashing (pigeonhole): two 256-bit codes within 31 bits differ in at most 31 of their 32
# bytes, so they agree exactly on at least one. Searching every (byte index, byte value) bucket therefore
# finds every pair within 31 bits; keeping a pair only in the bucket of the first byte the two share
# finds each pair exactly once. The partitioned PDQ step of dedup is built on it.

CODE_BYTES = 32  # a PDQ code; also the largest radius + 1 the byte buckets can serve (31)


@contextlib.contextmanager
def faiss_threads(n: int):
    """FAISS's OpenMP threads limited to n inside the block. A one-CPU task running thousands of small
    searches is faster alone than with a thread team waiting for busy cores (measured, 8,192 buckets of
    3,000 codes on 2 shared cores: 0.25-0.3 s with one thread, 0.3-32 s with the default team)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def first_shared_byte_pairs(codes: np.ndarray, byte: int, radius: int, budget: int = 1 << 22, threads: int = 1):
    """Yield (i, j) index arrays, i < j, of the pairs of `codes` (uint8 [n, 32], all with the same value
    at `byte`) within `radius` bits whose first equal byte is `byte`, one block of queries at a time
    (FAISS binary range search, as `hamming_pairs`, on `threads` threads; at most about `budget` hits a
    block)."""
    import faiss

    n = len(codes)
    if n < 2:
        return
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    block = max(1, min(n, budget // n))
    for start in range(0, n, block):
        with faiss_threads(threads):  # distance < radius + 1
            lims, _, ids = index.range_search(codes[start : start + block], radius + 1)
        q = start + np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        j = ids.astype(np.int64)
        later = q < j
        q, j = q[later], j[later]
        mine = ~(codes[q, :byte] == codes[j, :byte]).any(axis=1)  # no equal byte before `byte`
        if mine.any():
            yield q[mine], j[mine]


# ---------------------------------------------------------------------------------------------------
# DataComp's uid files: what its resharder takes and what its participants exchange. A `.npy` of a
# sorted structured array of dtype `u8,u8`: each uid's high and low 64 bits (the uid is 32 hex digits).

UID_DTYPE = np.dtype("u8,u8")

# The one rule for a uid written as text, wherever one enters (a URL list's or img2dataset's uid column,
# DataComp's metadata, a `.npz`'s metadata, probe labels, `audit trace`/`explain`'s argument, a pool's
# column on its way into a uid file): exactly 32 hex digits. Upper-case digits are read as lower case
# (the same 128-bit number; `make_uid` and `uids_of` spell uids in lower case), so string comparisons
# and a uid file's numbers agree. A `0x` prefix, a sign, spaces, underscores or another length are
# refused, never read: `int(u, 16)` accepted them and made another uid, or matched another sample.
UID_PATTERN = "^[0-9a-fA-F]{32}$"
UID_RULE = "32 hex digits (0-9, a-f; A-F is read as a-f; no 0x, spaces or underscores)"


class UidError(InputError, ValueError):
    """Text that is not a uid: the user's input (InputError), and a ValueError as `int(u, 16)` raised."""


def canonical_uids(values, where: str, first_row: int | None = 1):
    """`values` (an Arrow string column, or a sequence of str) as uids by the one rule above, lower-cased,
    checked as a whole column; UidError naming `where`, the first bad row (counted from `first_row`;
    None: a single value, no row) and its value, and how many rows are bad."""
    import pyarrow.compute as pc

    text = _uid_text(values, where)
    ok = pc.fill_null(pc.match_substring_regex(text, UID_PATTERN), False)
    if not pc.all(ok, min_count=0).as_py():
        i = pc.index(ok, False).as_py()
        value = text[i].as_py()
        shown = repr(value if value is None or len(value) <= 80 else value[:80] + "...")
        row = "" if first_row is None else f": row {first_row + i}"
        more = "" if first_row is None else f" ({len(ok) - pc.sum(ok).as_py()} such rows)"
        raise UidError(f"{where}{row}: uid {shown} is not {UID_RULE}{more}")
    return pc.ascii_lower(text)


def parse_uid(value, where: str) -> str:
    """One uid by the rule above (a command-line argument): its canonical lower-case text, or UidError."""
    return canonical_uids([value], where, first_row=None)[0].as_py()


def _uid_text(values, where: str):
    """An Arrow string column of `values`; UidError if they are not text (an int or binary uid column)."""
    import pyarrow as pa

    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = list(values)
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            raise UidError(f"{where}: uid {bad[0]!r} is not {UID_RULE}")
        return pa.array(values, pa.string())
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise UidError(f"{where}: uids are {values.type}, not text of {UID_RULE}")
    return values


def uid_array(uids, where: str = "uids") -> np.ndarray:
    """Sorted `u8,u8` rows of uids (`canonical_uids`' rule, named by `where` when one breaks it),
    duplicates dropped, as DataComp writes them."""
    canon = canonical_uids(uids, where).to_pylist()
    halves = np.frombuffer(bytes.fromhex("".join(canon)), dtype=">u8").reshape(-1, 2)
    arr = np.empty(len(canon), UID_DTYPE)
    arr["f0"], arr["f1"] = halves[:, 0], halves[:, 1]
    return np.unique(arr)  # sorts by the high, then the low 64 bits


def uids_of(arr: np.ndarray) -> list[str]:
    """The uids of a `u8,u8` array as text, in the canonical lower case."""
    return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in zip(arr["f0"], arr["f1"])]


def check_uid_array(arr: np.ndarray, where: str) -> np.ndarray:
    """`arr` if it is a DataComp uid array (dtype u8,u8, one dimension, sorted); else ValueError naming `where`."""
    if arr.dtype != UID_DTYPE:
        raise ValueError(f"{where}: dtype {arr.dtype}, not DataComp's u8,u8 (high and low 64 bits of each uid)")
    if arr.ndim != 1:
        raise ValueError(f"{where}: shape {arr.shape}, not one row per uid (DataComp's uid files are 1-D)")
    hi, lo = arr["f0"], arr["f1"]
    if len(arr) > 1 and not np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))):
        raise ValueError(f"{where}: uids are not sorted (DataComp's files are; np.sort the array first)")
    return arr


def read_uid_file(f, where: str) -> np.ndarray:
    """The DataComp uid file open as `f` (binary), checked from its `.npy` header before a row is read:
    dtype u8,u8, one dimension, exactly the bytes its shape says, then sorted (`check_uid_array`).
    ValueError naming `where` otherwise: a zero-dimensional, 2-D or absurdly shaped file is one line, not
    an attempt to allocate what its header claims (np.load asked for 14.6 TiB), nor a pickle loaded."""
    from thresher.core.pool import npy_header

    try:
        shape, dtype = npy_header(f)
    except ValueError as err:
        raise ValueError(f"{where}: not a .npy file NumPy writes ({err})") from None
    if dtype != UID_DTYPE:
        raise ValueError(f"{where}: dtype {dtype}, not DataComp's u8,u8 (high and low 64 bits of each uid)")
    if len(shape) != 1:
        raise ValueError(f"{where}: shape {shape}, not one row per uid (DataComp's uid files are 1-D)")
    start = f.tell()
    size = f.seek(0, 2) - start
    if size != shape[0] * UID_DTYPE.itemsize:
        raise ValueError(
            f"{where}: its header says {shape[0]} uids ({shape[0] * UID_DTYPE.itemsize} bytes), the file holds "
            f"{size} bytes after it: truncated, or not written by np.save"
        )
    f.seek(start)
    return check_uid_array(np.frombuffer(f.read(size), UID_DTYPE), where)
