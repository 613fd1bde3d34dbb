"""Hashes shared by every stage, so that a blocklist written by one and read by another agree.

- uid: 32 hex chars, the first 128 bits of sha256(url + "\\x00" + text). NUL never occurs in a URL,
  so the pair is unambiguous. Rows that bring their own uid keep it.
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


def uid_array(uids) -> np.ndarray:
    """Sorted `u8,u8` rows of 32-hex-digit uids, duplicates dropped, as DataComp writes them."""
    bad = next((u for u in uids if not (isinstance(u, str) and len(u) == 32 and _is_hex(u))), None)
    if bad is not None:
        raise ValueError(f"uid {bad!r} is not 32 hex digits: DataComp's uid files hold 128-bit uids")
    arr = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], dtype=UID_DTYPE)
    return np.unique(arr)  # sorts by the high, then the low 64 bits


def uids_of(arr: np.ndarray) -> list[str]:
    return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in zip(arr["f0"], arr["f1"])]


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def check_uid_array(arr: np.ndarray, where: str) -> np.ndarray:
    """`arr` if it is a DataComp uid array (dtype u8,u8, sorted); else ValueError naming `where`."""
    if arr.dtype != UID_DTYPE:
        raise ValueError(f"{where}: dtype {arr.dtype}, not DataComp's u8,u8 (high and low 64 bits of each uid)")
    hi, lo = arr["f0"], arr["f1"]
    if len(arr) > 1 and not np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))):
        raise ValueError(f"{where}: uids are not sorted (DataComp's files are; np.sort the array first)")
    return arr
