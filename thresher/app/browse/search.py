"""Nearest-neighbour search over a pool's stored image embeddings, for `thresher browse`.

One FAISS index per scorer, built once from `POOL/features/SCORER/{i:08d}.img.npy` (L2-normalised, so
inner product is cosine) and kept in the browser's cache folder, beside the catalog (the pool is read
only):

    CACHE/features/SCORER/image-<fingerprint>.faiss   the index
    CACHE/features/SCORER/image-<fingerprint>.rows.npy the catalog row of each vector

Up to FLAT_MAX vectors the index is exact (IndexFlatIP). Past it a flat index of float32 would not fit a
laptop's memory (1M x 768 is 3 GB) and a query would scan it all, so the index is IVF with 8-bit scalar
quantization (`IVF{nlist},SQ8`: a quarter of the memory; a query scans `nprobe` of the lists):
benchmarks/browse.py measures its recall against the exact search.

A text query is embedded by the scorer's own model (its manifest's model and weights, loaded once), so
it lands in the space its image embeddings are in; "more like this" takes a sample's stored embedding.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import numpy as np

from thresher.core import models, runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool, npy_header, read_npy, shard_name

FLAT_MAX = 200_000
NPROBE = 32


def index_kind(n: int) -> str:
    if n <= FLAT_MAX:
        return "Flat"
    return f"IVF{int(min(65536, max(256, 4 * np.sqrt(n))))},SQ8"


class Index:
    """One scorer's image index: `search(vector, k)` -> (catalog rows, cosine similarities)."""

    def __init__(self, pool: Pool, scorer: str, cache: str, shard_rows: dict[int, np.ndarray], log=print):
        self.pool, self.scorer, self.log = pool, scorer, log
        self.shard_rows = shard_rows  # shard -> catalog rows of its successful samples, in key order
        manifest = runtime.read_bytes(pool.features_manifest(scorer))
        fp = hashlib.sha256(manifest + json.dumps(sorted(shard_rows)).encode()).hexdigest()[:16]
        self.dir = os.path.join(cache, "features", scorer)
        self.file = os.path.join(self.dir, f"image-{fp}.faiss")
        self.index, self.rows, self.lock = None, None, threading.Lock()

    def load_or_build(self):
        import faiss

        with self.lock:
            if self.index is not None:
                return self.index
            if os.path.exists(self.file):
                self.index, self.rows = faiss.read_index(self.file), np.load(self.rows_file)
            else:
                self._build(faiss)
            if hasattr(self.index, "nprobe"):
                self.index.nprobe = NPROBE
            return self.index

    @property
    def rows_file(self) -> str:
        return self.file[: -len(".faiss")] + ".rows.npy"

    def _vectors(self):
        for shard, rows in sorted(self.shard_rows.items()):
            path = self.pool.embeddings(self.scorer, shard)
            emb = read_npy(path)
            if len(emb) != len(rows):
                raise InputError(f"{path}: {len(emb)} embeddings, shard {shard_name(shard)} has {len(rows)} samples")
            yield rows, emb.astype(np.float32)

    def _build(self, faiss):
        started = time.monotonic()
        n = sum(len(r) for r in self.shard_rows.values())
        if not n:
            raise InputError(f"scorer {self.scorer}: no embeddings to search")
        fs, first = runtime.fs_path(self.pool.embeddings(self.scorer, min(self.shard_rows)))
        with fs.open(first, "rb") as f:
            dim = npy_header(f)[0][1]
        kind = index_kind(n)
        index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:  # IVF: its lists from a sample of the pool, a shard at a time
            want = min(n, 64 * index.nlist)
            sample = np.concatenate([v[:: max(1, n // want)] for _, v in self._vectors()])[:want]
            index.train(sample)
        rows = []
        for r, v in self._vectors():
            index.add(v)
            rows.append(r)
        self.rows = np.concatenate(rows)
        os.makedirs(self.dir, exist_ok=True)
        tmp = f"{self.file}.tmp{os.getpid()}"
        faiss.write_index(index, tmp)
        np.save(self.rows_file, self.rows)
        os.replace(tmp, self.file)
        self.index = index
        self.log(f"[browse] {self.scorer}: {kind} index of {n:,} vectors in {time.monotonic() - started:.1f} s")

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.load_or_build()
        sims, ids = index.search(np.ascontiguousarray(vector, np.float32).reshape(1, -1), k)
        ok = ids[0] >= 0
        return self.rows[ids[0][ok]], sims[0][ok]

    def vector_of(self, row: int) -> np.ndarray:
        """The stored embedding of catalog row `row` (a downloaded sample of this scorer): one ranged read
        of its shard's .npy, not the file (100,000 x 512 float16 is 100 MB)."""
        for shard, rows in self.shard_rows.items():
            i = int(np.searchsorted(rows, row))
            if i < len(rows) and rows[i] == row:
                return npy_row(self.pool.embeddings(self.scorer, shard), i).astype(np.float32)
        raise InputError(f"row {row} has no {self.scorer} embedding (not downloaded)")


def npy_row(url: str, i: int) -> np.ndarray:
    """Row `i` of the 2-d .npy array at `url`, read from its header's offset."""
    fs, path = runtime.fs_path(url)
    with fs.open(path, "rb") as f:
        shape, dtype = npy_header(f)
        if len(shape) != 2 or not 0 <= i < shape[0]:
            raise InputError(f"{url}: no row {i} in an array of shape {shape}")
        width = shape[1] * dtype.itemsize
        f.seek(f.tell() + i * width)
        return np.frombuffer(f.read(width), dtype=dtype)


class TextEncoder:
    """A scorer's own text tower, loaded on first use: a query in the space of its image embeddings."""

    def __init__(self, pool: Pool, scorer: str):
        self.pool, self.scorer, self.model, self.lock = pool, scorer, None, threading.Lock()

    def _load(self):
        m = runtime.read_json(self.pool.features_manifest(self.scorer))
        cfg, weights = m.get("scorer") or {}, m.get("weights") or {}
        if m.get("source") == "imported" or not cfg.get("model"):
            raise InputError(
                f"scorer {self.scorer} was imported with its embeddings ({weights or 'no weights named'}); text "
                "search needs its model's weights on this machine: search by image (more like this) instead"
            )
        pretrained = cfg.get("pretrained")
        if weights.get("kind") == "checkpoint":
            if not os.path.exists(pretrained or ""):
                raise InputError(f"scorer {self.scorer}: its checkpoint {pretrained} is not on this machine")
            if weights.get("sha256") and runtime.file_sha256(pretrained) != weights["sha256"]:
                raise InputError(f"scorer {self.scorer}: {pretrained} changed since it scored the pool")
        with models.torch_threads(2):
            return models.load(cfg["model"], pretrained, device="cpu")

    def encode(self, text: str) -> np.ndarray:
        import torch

        with self.lock:
            if self.model is None:
                self.model = self._load()
            net, tokenizer = self.model
            with torch.inference_mode():
                tokens = torch.from_numpy(models.tokenize(tokenizer, [text]))
                emb = torch.nn.functional.normalize(net.encode_text(tokens).float(), dim=-1)
        return emb[0].numpy()
