"""Spherical (cosine) k-means as tasks of the execution layer: the driver holds centroids, never samples.

SemDeDup's clustering (`dedup`, `partitions: N`) and DataComp's image-based filter (`image_clusters`)
use it. Rows are image embeddings read per item (a shard, or a group of shards) by a `reader`:
`reader(item) -> [n, d]` array of L2-normalised rows, the same rows every time it is called
(`PoolEmbeddings` reads a scorer's `.img.npy` files and drops the zero rows of undecodable images).

`assign` is the per-sample pass as tasks: every row of every item to its nearest centroid, the labels
written to files when asked, counts and the objective returned. `nearest` is the one assignment routine
(the callers' own tasks use it).

`fit_clusters` is what the callers use: flat up to `flat_max` (FLAT_MAX = 16,384) clusters,
hierarchical past it. Both results answer `routes()` (the centroids a row is routed by: all of them, or
the coarse ones), `within(x, j)` (labels of rows routed to j: j itself, or the nearest fine centroid
of coarse cluster j, read and not kept), `nearest(x)` and `load()`. SemDeDup routes rows to partitions
by `routes()` and labels them `within` in its reduce tasks, so no process holds every fine centroid;
`image_clusters` loads the k fine centroids (one set, 307 MB at DataComp's 100k x 768) into the
filter's steps for its per-shard tasks. `cost` is the algorithm's flop count, which `--plan` uses.

The rounds are beside this module: kmeans_flat.py (`fit`: stage, init, Lloyd; `nearest`) and
kmeans_hierarchical.py (`fit_hierarchical`); their names are importable from here.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.algo.kmeans_flat import (
    BLOCK,
    INIT_POINTS_PER_CENTROID,
    KMEANSPP_MAX,
    POINTS_PER_CENTROID,
    SPLIT_STEP,
    KMeans,
    _gpu_resources,
    _write_npy,
    centroid_index,
    default_tasks,
    fit,
    nearest,
    row_keys,
)
from thresher.algo.kmeans_hierarchical import Hierarchy, fit_hierarchical, shares
from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.exec import execute

__all__ = [
    "Assignment",
    "BLOCK",
    "Cost",
    "FLAT_MAX",
    "Hierarchy",
    "INIT_POINTS_PER_CENTROID",
    "KMEANSPP_MAX",
    "KMeans",
    "POINTS_PER_CENTROID",
    "PoolEmbeddings",
    "SPLIT_STEP",
    "assign",
    "centroid_index",
    "chosen_clusters",
    "cost",
    "default_tasks",
    "fit",
    "fit_clusters",
    "fit_hierarchical",
    "nearest",
    "npy_rows",
    "npy_shape",
    "row_keys",
    "shares",
]

# past this many clusters `fit_clusters` is hierarchical: every flat Lloyd task returns k x d int64 sums, so
# the driver takes in tasks x k x d x 8 bytes a step (128 tasks at k = 16,384, d = 768: 13 GB a step)
FLAT_MAX = 16_384


@dataclass
class PoolEmbeddings:
    """A reader: a scorer's image embeddings for an item (a shard, or a list of shards), float16 as
    stored, without the zero rows of undecodable images."""

    pool: str
    scorer: str

    def __call__(self, item) -> np.ndarray:
        from thresher.core.pool import Pool, read_npy

        parts = []
        for s in [item] if isinstance(item, (int, np.integer)) else list(item):
            emb = read_npy(Pool(self.pool).embeddings(self.scorer, int(s)))
            parts.append(emb[np.linalg.norm(emb.astype(np.float32), axis=1) > 0.5])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)


@dataclass
class Assignment:
    counts: np.ndarray  # rows per cluster
    objective: float  # mean cosine of the rows to their nearest centroid
    rows: int
    labels: list[str] | None = None  # per item, the .npy of its rows' labels (int64), when written


def _assign(i: int, items: list, reader: Callable, centroids: np.ndarray, out: str | None, gpu: bool) -> dict:
    x = reader(items[i])
    k = len(centroids)
    if len(x) == 0:
        labels, cos = np.zeros(0, np.int64), np.zeros(0, np.float32)
    else:
        labels, cos = nearest(x, centroids, gpu)
    if out is not None:
        _write_npy(runtime.join(out, f"{i:06d}.npy"), labels)
    return {"counts": np.bincount(labels, minlength=k), "cos": float(cos.sum(dtype=np.float64)), "rows": len(x)}


def assign(
    items: list,
    reader: Callable[[Any], np.ndarray],
    centroids: np.ndarray,
    *,
    out: str | None = None,
    gpu: bool = False,
    label: str = "k-means assign",
) -> Assignment:
    """Every row of every item to its nearest centroid, a task per item; with `out`, each item's labels
    (int64, in the reader's row order) to `out/{i:06d}.npy`. Returns the counts and the objective."""
    ex = execute.current()
    on_gpu, res = _gpu_resources(gpu, ex)
    if out is not None:
        runtime.makedirs(out)

    def add(acc: dict, r: dict) -> dict:
        acc["counts"] += r["counts"]
        acc["cos"].append(r["cos"])
        acc["rows"] += r["rows"]
        return acc

    items = list(items)
    acc = execute.fold(
        _assign,
        range(len(items)),
        items,
        reader,
        ex.share(np.ascontiguousarray(centroids, dtype=np.float32)),
        out,
        on_gpu,
        add=add,
        start={"counts": np.zeros(len(centroids), np.int64), "cos": [], "rows": 0},
        label=label,
        resources=res,
    )
    return Assignment(
        counts=acc["counts"],
        objective=math.fsum(acc["cos"]) / max(1, acc["rows"]),
        rows=acc["rows"],
        labels=[runtime.join(out, f"{i:06d}.npy") for i in range(len(items))] if out is not None else None,
    )


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def npy_shape(url: str) -> tuple[int, ...]:
    """The shape in a .npy file's header, without reading its rows."""
    fs, path = runtime.fs_path(url)
    with fs.open(path, "rb") as f:
        try:
            return tuple(_npy_header(f)[0])
        except ValueError as err:
            raise InputError(f"{url}: not a .npy file ({err})") from None


def npy_rows(url: str, start: int, stop: int) -> np.ndarray:
    """Rows start to stop of a C-ordered .npy file, read by seeking past the others (local or object
    storage), so a task can take its slice of a large array without reading all of it."""
    fs, path = runtime.fs_path(url)
    with fs.open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f)
        if fortran or dtype.hasobject:
            raise InputError(f"{url}: a C-ordered numeric .npy is needed")
        width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        start, stop = max(0, start), min(stop, shape[0] if shape else 0)
        f.seek(f.tell() + start * width * dtype.itemsize)
        data = f.read(max(0, stop - start) * width * dtype.itemsize)
    return np.frombuffer(data, dtype).reshape((max(0, stop - start), *shape[1:]))


def _nearest_labels(span: tuple[int, int], url: str, clusters) -> np.ndarray:
    """The distinct nearest clusters of rows span[0] to span[1] of the .npy at `url`."""
    return np.unique(clusters.nearest(npy_rows(url, *span).astype(np.float32))[0])


def chosen_clusters(url: str, clusters, rows_per_task: int = 100_000) -> np.ndarray:
    """Every cluster that is some row's nearest, for the rows of the .npy at `url` (a target set:
    1.28M ImageNet embeddings are 2 GB at 768-d), a task per `rows_per_task` rows; the driver
    receives cluster ids only."""
    n = npy_shape(url)[0]
    spans = [(a, min(n, a + rows_per_task)) for a in range(0, n, rows_per_task)]
    ref = execute.current().share(clusters)
    parts = execute.map(_nearest_labels, spans, url, ref, label="k-means: target clusters")
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def fit_clusters(
    items: list,
    reader: Callable[[Any], np.ndarray],
    k: int,
    *,
    work: str,
    flat_max: int = FLAT_MAX,
    gpu: bool = False,
    **kw,
) -> KMeans | Hierarchy | None:
    """`fit` up to `flat_max` clusters, `fit_hierarchical` past it (its fine centroids under `work`/fine-*,
    which the caller removes with `work`). Both answer `routes`, `within`, `nearest` and `load`."""
    if k <= flat_max:
        return fit(items, reader, k, work=work, gpu=gpu, **kw)
    out = runtime.join(work, f"fine-{uuid.uuid4().hex[:12]}")
    return fit_hierarchical(items, reader, k, work=work, out=out, gpu=gpu, **kw)


@dataclass
class Cost:
    """What `fit_clusters` and a pass assigning `assign_rows` rows will cost, from the algorithm alone
    (`thresher ... --plan` divides the flops by a measured rate: `kmeans.flops` in configs/throughputs.yaml)."""

    flops: float
    hierarchical: bool
    coarse: int  # k1 (hierarchical), or k
    driver_bytes: float  # the most the driver holds at once: a centroid set and one running sum

    def describe(self, k: int) -> str:
        kind = f"hierarchical ({self.coarse:,} coarse x ~{k / self.coarse:,.0f})" if self.hierarchical else "flat"
        return f"k-means with {k:,} clusters, {kind}, {self.flops:.2g} flops"


def cost(
    k: int, d: int, rows: float, train_rows: float, assign_rows: float, iters: int, flat_max: int = FLAT_MAX
) -> Cost:
    """Multiply-adds x 2 of: initialisation (k-means++ on 16 rows a centroid up to KMEANSPP_MAX), `iters`
    Lloyd steps over the training rows, and assigning `assign_rows` rows; for a hierarchy, the coarse
    k-means, the partition pass and each coarse cluster's fine k-means over its rows (k / k1 centroids
    each), with assignment against k1 + k / k1 centroids a row. `rows` is what the stage pass reads."""
    train = min(rows, train_rows)
    k = int(max(1, min(k, train)))

    def flat(kk: int, n: float) -> float:
        init = (2 + math.log(kk)) * kk * min(INIT_POINTS_PER_CENTROID * kk, n / 8) if kk <= KMEANSPP_MAX else 0
        return 2 * d * (init + iters * n * kk)

    if k <= flat_max:
        return Cost(flat(k, train) + 2 * d * assign_rows * k, False, k, 2 * k * d * 12)
    k1 = math.ceil(math.sqrt(k))
    fine = k / k1
    flops = flat(k1, train) + 2 * d * train * k1 + 2 * d * iters * train * fine + 2 * d * assign_rows * (k1 + fine)
    return Cost(flops, True, k1, 2 * k1 * d * 12)
