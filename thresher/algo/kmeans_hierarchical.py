"""Hierarchical spherical k-means as tasks (`fit_hierarchical`, `Hierarchy`), for k past one flat
k-means: `thresher dedup --partitions N` and the `image_clusters` filter at DataComp's 100,000 clusters,
through thresher/algo/kmeans.py's `fit_clusters`. It stages rows and runs the coarse Lloyd rounds with
kmeans_flat.py's tasks; the fine centroids go to `out/{j:06d}.npy`.

`fit_hierarchical` is for k too large for one flat k-means (millions of clusters): a flat coarse
k-means with k1 = ceil(sqrt(k)) clusters on the staged rows, a partition pass that writes each task's
training rows grouped by coarse cluster (`work/part/{chunk}.npz`, one member per coarse cluster), then a
task per coarse cluster that reads its members from every partition file and clusters them into its share
of k (proportional to its rows, largest remainder) with FAISS's spherical k-means, writing its centroids
to `fine/{j}.npy`. The driver holds the k1 coarse centroids and k1 counts, never all k centroids; the
result names the files. Assigning rows to the fine centroids (nearest coarse cluster, then nearest fine
centroid within it: `Hierarchy.nearest`) needs the fine centroids of the coarse clusters a task meets.
The training rows of each coarse cluster are clustered in key order, so a hierarchy too is the same
however the rows were split into items.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.algo.kmeans_flat import (
    INIT_POINTS_PER_CENTROID,
    POINTS_PER_CENTROID,
    KMeans,
    _chunks,
    _faiss_gpus,
    _gpu_resources,
    _key_file,
    _lloyd_rounds,
    _read_npy,
    _stage_all,
    _train_file,
    _unit,
    _write_npy,
    default_tasks,
    nearest,
)
from thresher.core import runtime
from thresher.exec import execute


@dataclass
class Hierarchy:
    """What `fit_hierarchical` found. The driver holds the coarse centroids and, per coarse cluster, its
    training rows and fine clusters; fine centroids of coarse cluster j are in `fine_files[j]` (None
    where j got no rows), global ids `offsets[j]` to `offsets[j + 1]`."""

    coarse: KMeans
    fine_files: list[str | None]
    offsets: np.ndarray  # [k1 + 1]
    rows_per_coarse: np.ndarray  # [k1] training rows
    objective: float  # mean cosine of the training rows to their fine centroid
    train_rows: int
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def k(self) -> int:
        return int(self.offsets[-1])

    @property
    def rows(self) -> int:
        return self.coarse.rows

    @property
    def iterations(self) -> int:
        return self.coarse.iterations

    def fine(self, j: int, cache: bool = True) -> np.ndarray:
        if j in self._cache:
            return self._cache[j]
        f = self.fine_files[j]
        c = _read_npy(f) if f else np.zeros((0, self.coarse.centroids.shape[1]), np.float32)
        if cache:
            self._cache[j] = c
        return c

    def load(self) -> None:
        """Every fine centroid set into memory (the object then carries them when pickled to tasks, and
        needs the files no more)."""
        for j in range(len(self.fine_files)):
            self.fine(j)

    def routes(self) -> np.ndarray:
        """The coarse centroids: a row's route is its nearest coarse cluster."""
        return self.coarse.centroids

    def within(self, x: np.ndarray, j: int) -> np.ndarray:
        """Global fine labels of rows routed to coarse cluster j (its fine centroids read, not kept)."""
        return nearest(x, self.fine(j, cache=False))[0] + self.offsets[j] if len(x) else np.zeros(0, np.int64)

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global fine label and cosine of each row: its nearest coarse cluster, then the nearest fine
        centroid within it (loads the fine centroids of the coarse clusters the rows fall in)."""
        coarse, _ = nearest(x, self.coarse.centroids)
        labels, cos = np.zeros(len(x), np.int64), np.zeros(len(x), np.float32)
        for j in np.unique(coarse):
            rows = np.flatnonzero(coarse == j)
            lab, c = nearest(x[rows], self.fine(int(j)))
            labels[rows], cos[rows] = lab + self.offsets[j], c
        return labels, cos

    def centroids(self) -> np.ndarray:
        """All k fine centroids in one array (k x d float32: only where that fits)."""
        return np.concatenate([self.fine(j) for j in range(len(self.fine_files))])


def _partition(c: int, chunks: list[list[int]], work: str, coarse: np.ndarray) -> np.ndarray:
    """Chunk c's training rows grouped by nearest coarse centroid into work/part/{c}.npz (members x{j}
    and their keys k{j}); returns the rows per coarse cluster [k1]."""
    k1 = len(coarse)
    x = np.concatenate([_read_npy(_train_file(work, i)) for i in chunks[c]])
    keys = np.concatenate([_read_npy(_key_file(work, i)) for i in chunks[c]])
    labels, _ = nearest(x, coarse)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k1)
    bounds = np.r_[0, np.cumsum(counts)]
    part = {}
    for j in np.flatnonzero(counts):
        part[f"x{j}"], part[f"k{j}"] = x[order[bounds[j] : bounds[j + 1]]], keys[order[bounds[j] : bounds[j + 1]]]
    runtime.write_npz(runtime.join(work, "part", f"{c:06d}.npz"), part)
    return counts


def _fine_item(
    item: tuple[int, list[int], int], work: str, iters: int, seed: int, out: str, gpu: bool = False
) -> tuple[int, float]:
    return _fine(*item[:1], work, item[1], item[2], iters, seed, out, gpu)


def _fine(
    j: int, work: str, parts: list[int], kj: int, iters: int, seed: int, out: str, gpu: bool = False
) -> tuple[int, float]:
    """Coarse cluster j's training rows (from every partition file that has some) into kj clusters with
    FAISS's spherical k-means, in key order (FAISS seeds on row positions: the same rows in the same order
    whatever the chunks were); the centroids to out/{j}.npy. Returns (rows, summed cosine)."""
    import faiss

    got = [runtime.read_npz(runtime.join(work, "part", f"{c:06d}.npz"), [f"x{j}", f"k{j}"]) for c in parts]
    x, keys = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    x = _unit(x[np.argsort(keys, kind="stable")])
    kj = min(kj, len(x))
    if kj == 1:
        c = _unit(x.sum(axis=0, keepdims=True))
    else:
        km = faiss.Kmeans(
            x.shape[1], kj, niter=iters, seed=seed + j, spherical=True, verbose=False,
            max_points_per_centroid=max(1, math.ceil(len(x) / kj)), min_points_per_centroid=1,
            gpu=bool(_faiss_gpus(gpu)),
        )  # fmt: skip
        km.train(x)
        c = km.centroids.copy()
    _write_npy(runtime.join(out, f"{j:06d}.npy"), c)
    return len(x), float(nearest(x, c)[1].sum(dtype=np.float64))


def shares(rows: np.ndarray, k: int) -> np.ndarray:
    """k split over groups in proportion to their rows (largest remainder): at least 1 for a group with
    rows (when k allows: else 1 each for the k largest), never more than its rows, k in all (or every
    row, when k is more)."""
    rows = np.asarray(rows, np.int64)
    k = min(int(k), int(rows.sum()))
    if k < int((rows > 0).sum()):
        out = np.zeros(len(rows), np.int64)
        out[np.argsort(-rows, kind="stable")[:k]] = 1
        return out
    want = rows * k / max(1, rows.sum())
    out = np.where(rows > 0, np.clip(np.floor(want), 1, rows), 0).astype(np.int64)
    while (s := int(out.sum())) != k:
        room = out < rows if s < k else out > 1
        gap = np.where(room, (want - out) if s < k else (out - want), -np.inf)
        pick = np.argsort(-gap, kind="stable")[: min(abs(k - s), int(room.sum()))]
        out[pick] += 1 if s < k else -1
    return out


def fit_hierarchical(
    items: list,
    reader: Callable[[Any], np.ndarray],
    k: int,
    *,
    work: str,
    out: str,
    iters: int = 20,
    seed: int = 0,
    tol: float = 1e-5,
    rows: int | None = None,
    train_rows: int | None = None,
    points_per_centroid: int = POINTS_PER_CENTROID,
    init_points_per_centroid: int = INIT_POINTS_PER_CENTROID,
    coarse_k: int | None = None,
    tasks: int | None = None,
    gpu: bool = False,
    label: str = "k-means (hierarchical)",
) -> Hierarchy | None:
    """k-means with k split over ceil(sqrt(k)) coarse clusters (module docstring). The fine centroids
    are written to `out/{j:06d}.npy` (kept: the result names them); `work` is removed at the end."""
    if train_rows is None and points_per_centroid:
        train_rows = points_per_centroid * k
    work = runtime.join(work, uuid.uuid4().hex[:12])
    try:
        st = _stage_all(list(items), reader, work, rows, train_rows, seed, label)
        if not st.sizes:
            return None
        n_train = sum(st.sizes.values())
        k = min(k, n_train)
        k1 = min(coarse_k or math.ceil(math.sqrt(k)), k)
        coarse = _lloyd_rounds(st, k1, iters, seed, tol, init_points_per_centroid, tasks, gpu, f"{label}: coarse")
        ex = execute.current()
        on_gpu, res = _gpu_resources(gpu, ex)
        chunks = _chunks(st.sizes, tasks or default_tasks(n_train, ex))
        runtime.makedirs(runtime.join(work, "part"))
        runtime.makedirs(out)
        ref = ex.share(coarse.centroids)
        per_chunk = np.stack(
            execute.map(_partition, range(len(chunks)), chunks, work, ref, label=f"{label}: partition")
        )  # [chunks, k1] rows: the driver's only view of the partition files
        rows_per = per_chunk.sum(axis=0)
        kj = shares(rows_per, k)
        todo = [(j, np.flatnonzero(per_chunk[:, j]).tolist(), int(kj[j])) for j in range(k1) if kj[j]]
        fine = execute.map(_fine_item, todo, work, iters, seed, out, on_gpu, label=f"{label}: fine", resources=res)
        offsets = np.r_[0, np.cumsum(kj)].astype(np.int64)
        cos = math.fsum(c for _, c in fine)
        return Hierarchy(
            coarse=coarse,
            fine_files=[runtime.join(out, f"{j:06d}.npy") if kj[j] else None for j in range(k1)],
            offsets=offsets,
            rows_per_coarse=rows_per,
            objective=cos / max(1, sum(n for n, _ in fine)),
            train_rows=n_train,
        )
    finally:
        runtime.remove(work, recursive=True)
