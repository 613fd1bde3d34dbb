"""Flat spherical k-means as tasks (`fit`), for `thresher dedup --partitions N` (SemDeDup) and the
`image_clusters` filter (`thresher filter`), through thresher/algo/kmeans.py's `fit_clusters`; and the
nearest-centroid routine every k-means pass uses (`nearest`, `centroid_index`).

`fit` runs in rounds of tasks (`execute.map`), over staging files in `work` (a folder every task can
open; removed at the end):

1. **stage**    a task per item reads its rows, gives each a seeded pseudo-random key computed from its
                values alone (`row_keys`), and writes those whose key is below a threshold, in key
                order, to `work/train/{i}.npy` (keys beside): the training rows, about `train_rows` in
                all (by default `points_per_centroid` = 256 a centroid, FAISS's own cap). A task returns
                three integers. Since a row's key depends on nothing but the row, the training rows and
                their order are the same however the rows are split into items (a pool imported from
                DataComp metadata clusters exactly as the downloaded pool of the same rows).
2. **init**     one task takes the training rows of smallest key (a prefix of every file: a random
                sample): `init_points_per_centroid` = 16 rows a centroid, but no more than an eighth of
                the training rows and no fewer than k, and seeds k centroids on them by greedy k-means++
                (scikit-learn's: D^2 sampling with 2 - 2 cos as the squared distance, the best of
                2 + ln k draws each time). It costs (2 + ln k) x k x (its rows) x d, about one Lloyd step
                at most. Past KMEANSPP_MAX = 4,096 clusters (k sequential steps get slow) it takes k
                random rows instead, FAISS's own initialisation.
3. **Lloyd**    `iters` times: the training files cut into chunks of about equal rows (`tasks` of them:
                `default_tasks`, twice the cores but at most sqrt(rows / 200)); a task per chunk assigns
                each row to its nearest centroid (FAISS `IndexFlatIP`, 16,384 rows at a time) and
                returns per-cluster sums, counts [k] and its sum of cosines, all in 2^-b fixed point
                (int64 [k, d]): integer sums are exact, so neither the chunks nor the order tasks finish
                in can change a bit of the result. The driver adds them as they arrive (`execute.fold`,
                which keeps no list of results), renormalises, and re-seeds empty clusters by splitting
                the largest: the empty centroid and the largest one become that centroid moved either
                way along a random direction orthogonal to it, so the next assignment cuts the large
                cluster by a random hyperplane (FAISS splits too, picking the cluster at random by size).
                It stops early when the objective (mean cosine of the training rows to their centroid)
                improves by less than `tol`.

Memory: a stage task holds one item's rows; the init task every training key (8 bytes a row) and its
sample (at most 16 x k x d float32); a Lloyd task the centroids (k x d float32), its int64 sums (k x d)
and 16,384 rows at a time; the driver the centroids, one running sum (k x d int64), the counts and the
result being added. No task returns anything per sample (the tests check the size of every result). Flat k-means is meant for k up
to about 65,536: past that every Lloyd task's sums are 400 MB at d = 768.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.exec import execute

POINTS_PER_CENTROID = 256  # training rows a centroid, at most (FAISS's max_points_per_centroid)
INIT_POINTS_PER_CENTROID = 16  # rows a centroid of the initialisation sample
KMEANSPP_MAX = 4096  # k-means++ up to this many clusters (k sequential passes over the sample), random rows past it
BLOCK = 16_384  # rows assigned at a time in a task
SPLIT_STEP = 0.01  # how far a split moves the two copies of a centroid, either way


@dataclass
class KMeans:
    """What `fit` found: unit-norm centroids (float32 [k, d]) and the objective, the mean cosine of the
    training rows to their nearest centroid at the last assignment (before the last update, as FAISS
    reports it)."""

    centroids: np.ndarray
    objective: float
    history: list[float]  # the objective of each iteration
    counts: np.ndarray  # training rows in each cluster at the last assignment
    rows: int  # rows the items hold (read by the stage pass)
    train_rows: int  # rows Lloyd ran over
    init_rows: int
    iterations: int
    reseeded: int  # empty clusters split from the largest, over all iterations

    @property
    def k(self) -> int:
        return len(self.centroids)

    # the interface `Hierarchy` shares: route rows by one small centroid set, then label them within a route
    def routes(self) -> np.ndarray:
        return self.centroids

    def within(self, x: np.ndarray, j: int) -> np.ndarray:
        return np.full(len(x), j, np.int64)

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return nearest(x, self.centroids)

    def load(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# nearest centroid


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _faiss_gpus(allowed: bool) -> int:
    import faiss

    return faiss.get_num_gpus() if allowed and hasattr(faiss, "get_num_gpus") else 0


def centroid_index(centroids: np.ndarray, gpu: bool = False):
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return faiss.index_cpu_to_all_gpus(index) if _faiss_gpus(gpu) else index


def nearest(x: np.ndarray, centroids, gpu: bool = False, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid (int64) and its cosine (float32), `block` rows at a time. `centroids`
    is an array, or an index from `centroid_index`."""
    index = centroids if hasattr(centroids, "search") else centroid_index(centroids, gpu)
    labels, cos = np.zeros(len(x), np.int64), np.zeros(len(x), np.float32)
    for start in range(0, len(x), block):
        sim, lab = index.search(_unit(x[start : start + block]), 1)
        labels[start : start + block], cos[start : start + block] = lab[:, 0], sim[:, 0]
    return labels, cos


def _accumulate(sums: np.ndarray, counts: np.ndarray, x: np.ndarray, labels: np.ndarray, scale: float) -> None:
    """sums[j] += the rows labelled j in fixed point (int64, x rounded to multiples of 1 / scale), counts[j] +=
    their number. Integer sums are exact, so how rows are cut into items, chunks and blocks changes no bit."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if len(labels) else []
    if len(starts):
        q = np.rint(x[order] * scale).astype(np.int64)
        sums[sorted_labels[starts]] += np.add.reduceat(q, starts, axis=0)
    counts += np.bincount(labels, minlength=len(counts))


def row_keys(x: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 key for each row, a function of the row's values (as float16) alone:
    the training sample (rows below a key threshold) and its order (by key) are then the same however the
    rows are split into items, so a pool imported from metadata and the downloaded pool of the same rows
    cluster alike. A linear hash of the 16-bit words, then splitmix64's finaliser."""
    words = np.ascontiguousarray(np.asarray(x, np.float16)).view(np.uint16)
    mult = np.random.default_rng([seed, 3]).integers(1, 2**63, size=words.shape[1], dtype=np.uint64) * np.uint64(2)
    mult += np.uint64(1)  # odd multipliers
    h = np.zeros(len(words), np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(words), 4096):
            w = words[start : start + 4096].astype(np.uint64)
            h[start : start + 4096] = (w * mult).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


# ---------------------------------------------------------------------------------------------------
# tasks (the item comes first: the executor's calling rule)


def _write_npy(url: str, a: np.ndarray) -> None:
    fs, path = runtime.fs_path(url)
    with fs.open(path, "wb") as f:
        np.save(f, a)


def _read_npy(url: str) -> np.ndarray:
    from thresher.core.pool import read_npy

    return read_npy(url)


def _train_file(work: str, i: int) -> str:
    return runtime.join(work, "train", f"{i:06d}.npy")


def _key_file(work: str, i: int) -> str:
    return runtime.join(work, "train", f"{i:06d}.keys.npy")


def _count(i: int, items: list, reader: Callable) -> int:
    return len(reader(items[i]))


def _threshold(fraction: float) -> int:
    """Keys below this are a `fraction` of uniform uint64 keys (2^64: all of them)."""
    return 2**64 if fraction >= 1 else int(fraction * 2**64)


def _stage(i: int, items: list, reader: Callable, work: str, fraction: float, seed: int) -> tuple[int, int, int]:
    """Item i's training rows, those whose key is below the fraction's threshold, in key order, to
    work/train/{i}.npy (their keys beside): (rows, staged, d)."""
    x = np.asarray(reader(items[i]))
    n = len(x)
    if n == 0:
        return 0, 0, 0
    if x.ndim != 2:
        raise InputError(f"k-means: item {items[i]!r} gave an array of shape {x.shape}, not [n, d]")
    keys = row_keys(x, seed)
    pick = np.flatnonzero(keys < np.uint64(min(_threshold(fraction), 2**64 - 1))) if fraction < 1 else np.arange(n)
    pick = pick[np.argsort(keys[pick], kind="stable")]
    if len(pick):
        _write_npy(_train_file(work, i), x[pick] if x.dtype == np.float16 else np.asarray(x[pick], np.float32))
        _write_npy(_key_file(work, i), keys[pick])
    return n, len(pick), x.shape[1]


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding on unit rows (scikit-learn's default): each next centroid is the best of
    2 + ln(k) rows drawn with probability proportional to their squared distance (2 - 2 cos) to the
    nearest centroid so far, best meaning the smallest sum of squared distances once it is added."""
    n, trials = len(x), 2 + int(math.log(k))
    picks = [int(rng.integers(n))]
    d2 = np.maximum(2 - 2 * (x @ x[picks[0]]), 0).astype(np.float64)
    for _ in range(1, k):
        total = d2.sum()
        cand = rng.choice(n, trials, p=d2 / total) if total > 0 else rng.integers(n, size=trials)  # all equal: any
        new = np.minimum(d2, np.maximum(2 - 2 * (x[cand] @ x.T), 0))  # [trials, n]
        best = int(np.argmin(new.sum(axis=1)))
        picks.append(int(cand[best]))
        d2 = new[best]
    return x[picks].copy()


def _init_sample(files: list[int], work: str, m: int, fraction: float) -> np.ndarray:
    """The m training rows with the smallest keys, in key order: a prefix of each training file. Keys
    are uniform below the staging threshold, so a threshold m / rows of the way up finds about m; it
    doubles until there are m (reading only keys until then)."""
    keys = {i: _read_npy(_key_file(work, i)) for i in files}
    total = sum(len(v) for v in keys.values())
    top = _threshold(fraction)
    cut = top * min(1.0, 1.25 * m / max(1, total) + 64 / max(1, total))
    while True:
        below = {i: int(np.searchsorted(v, np.uint64(min(int(cut), 2**64 - 1)), side="left")) for i, v in keys.items()}
        if sum(below.values()) >= m or cut >= top:
            break
        cut *= 2
    cand = np.concatenate([keys[i][:b] for i, b in below.items()]) if below else np.zeros(0, np.uint64)
    src = np.concatenate([np.full(b, i) for i, b in below.items()]) if below else np.zeros(0, np.int64)
    take = np.argsort(cand, kind="stable")[:m]
    per_file = np.bincount(src[take], minlength=max(files) + 1) if len(take) else np.zeros(1, np.int64)
    rows = {i: _read_npy(_train_file(work, i))[: per_file[i]] for i in files if i < len(per_file) and per_file[i]}
    x = np.concatenate([rows[i] for i in sorted(rows)])
    k_all = np.concatenate([keys[i][: len(rows[i])] for i in sorted(rows)])
    return _unit(x[np.argsort(k_all, kind="stable")])


def _init(_item: int, files: list[int], work: str, k: int, m: int, fraction: float, seed: int) -> tuple:
    """k-means++ on the m training rows of smallest key (a random sample, the same however the rows are
    split into items), or k of them at random (FAISS's own initialisation) past KMEANSPP_MAX clusters.
    Returns (centroids, rows used)."""
    x = _init_sample(files, work, m, fraction)
    rng = np.random.default_rng([seed, 2])
    if k > KMEANSPP_MAX:
        return x[rng.choice(len(x), k, replace=False)].copy(), len(x)
    return _kmeanspp(x, k, rng), len(x)


def _lloyd(chunk: list[int], work: str, centroids: np.ndarray, gpu: bool, scale: float) -> dict:
    """One chunk of training files against the centroids: per-cluster sums (int64 fixed point), counts,
    summed cosines (fixed point too)."""
    k, d = centroids.shape
    index = centroid_index(centroids, gpu)
    sums, counts, cos, rows = np.zeros((k, d), np.int64), np.zeros(k, np.int64), 0, 0
    for i in chunk:
        x = _read_npy(_train_file(work, i))
        for start in range(0, len(x), BLOCK):
            xb = _unit(x[start : start + BLOCK])
            sim, lab = index.search(xb, 1)
            _accumulate(sums, counts, xb, lab[:, 0], scale)
            cos += int(np.rint(sim[:, 0].astype(np.float64) * scale).astype(np.int64).sum())
            rows += len(xb)
    return {"sums": sums, "counts": counts, "cos": cos, "rows": rows}


# ---------------------------------------------------------------------------------------------------
# the driver's side


def _chunks(sizes: dict[int, int], tasks: int) -> list[list[int]]:
    """Training files in `tasks` chunks of about equal rows (largest first to the lightest chunk)."""
    bins: list[list[int]] = [[] for _ in range(max(1, min(tasks, len(sizes))))]
    load = [0] * len(bins)
    for i in sorted(sizes, key=lambda i: (-sizes[i], i)):
        j = load.index(min(load))
        bins[j].append(i)
        load[j] += sizes[i]
    return [sorted(b) for b in bins if b]


def default_tasks(n_train: int, ex) -> int:
    """Lloyd tasks a step: twice the cores, but at most sqrt(rows / 200). Every task returns k x d
    float64 sums whatever its rows, so the driver takes in tasks x k x d x 8 bytes a step while each
    task computes rows / tasks x k x d x 2 flops: at ~1 GB/s into the driver and ~5e10 flops/s a
    task the two take about as long at tasks = sqrt(rows / 200) (100 tasks for 2M rows)."""
    return max(1, min(2 * ex.cpus(), math.ceil(math.sqrt(n_train / 200))))


def _update(sums: np.ndarray, counts: np.ndarray, old: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """New centroids: normalised sums; every empty cluster re-seeded by splitting the largest."""
    norms = np.linalg.norm(sums, axis=1)
    ok = (counts > 0) & (norms > 0)
    c = old.astype(np.float64)
    c[ok] = sums[ok] / norms[ok, None]
    sizes = np.where(ok, counts, 0).astype(np.float64)
    empty = np.flatnonzero(~ok)
    for e in empty:
        j = int(np.argmax(sizes))
        if sizes[j] < 2:  # nothing left to split
            break
        step = rng.normal(size=c.shape[1])
        step -= (step @ c[j]) * c[j]  # orthogonal to the centroid: the two copies stay equally far from it
        step *= SPLIT_STEP / max(np.linalg.norm(step), 1e-12)
        c[e], c[j] = c[j] + step, c[j] - step
        c[[e, j]] /= np.linalg.norm(c[[e, j]], axis=1, keepdims=True)
        sizes[e] = sizes[j] / 2
        sizes[j] -= sizes[e]
    return c.astype(np.float32), len(empty)


def _gpu_resources(gpu: bool, ex) -> tuple[bool, execute.Resources]:
    on_gpu = bool(gpu) and ex.gpus() > 0 and _faiss_gpus(True) > 0
    return on_gpu, execute.Resources(cpus=1, gpus=1 if on_gpu else 0)


@dataclass
class _Staged:
    work: str
    sizes: dict[int, int]  # training file -> rows
    rows: int
    d: int
    fraction: float  # of the rows staged (by key)


def _stage_all(items, reader, work, rows, train_rows, seed, label) -> _Staged:
    runtime.makedirs(runtime.join(work, "train"))
    idx = list(range(len(items)))
    if rows is None:
        rows = sum(execute.map(_count, idx, items, reader, label=f"{label}: count"))
    fraction = 1.0 if train_rows is None or train_rows >= rows else train_rows / max(1, rows)
    staged = execute.map(_stage, idx, items, reader, work, fraction, seed, label=f"{label}: stage")
    dims = {d for _, t, d in staged if t}
    if len(dims) > 1:
        raise InputError(f"k-means: the items' rows have different widths {sorted(dims)}")
    sizes = {i: t for i, (_, t, _) in enumerate(staged) if t}
    return _Staged(work, sizes, sum(n for n, _, _ in staged), dims.pop() if dims else 0, fraction)


def _lloyd_rounds(
    st: _Staged, k: int, iters: int, seed: int, tol: float, init_ppc: int, tasks: int | None, gpu: bool, label: str
) -> KMeans:
    ex = execute.current()
    on_gpu, res = _gpu_resources(gpu, ex)
    n_train = sum(st.sizes.values())
    k = min(k, n_train)
    # greedy k-means++ costs (2 + ln k) x k x (init rows) x d: about one Lloyd step's n x k x d at most
    m_init = min(n_train, init_ppc * k, max(k, n_train // 8)) if k <= KMEANSPP_MAX else k
    files = sorted(st.sizes)
    ((centroids, init_rows),) = execute.map(
        _init, [0], files, st.work, k, m_init, st.fraction, seed, label=f"{label}: init"
    )
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    chunks = _chunks(st.sizes, tasks or default_tasks(n_train, ex))
    bits = 62 - max(1, n_train).bit_length()  # fixed point: no cluster's sum can overflow int64
    scale = float(2 ** min(40, bits))
    rng = np.random.default_rng([seed, 1])
    history: list[float] = []
    reseeded, counts = 0, np.zeros(k, np.int64)

    def add(acc: dict, r: dict) -> dict:  # as each result arrives: the driver keeps the running total only
        acc["sums"] += r["sums"]
        acc["counts"] += r["counts"]
        acc["cos"] += r["cos"]
        acc["rows"] += r["rows"]
        return acc

    for it in range(iters):
        acc = execute.fold(
            _lloyd,
            chunks,
            st.work,
            ex.share(centroids),
            on_gpu,
            scale,
            add=add,
            start={"sums": np.zeros((k, st.d), np.int64), "counts": np.zeros(k, np.int64), "cos": 0, "rows": 0},
            label=f"{label}: iteration {it + 1}",
            resources=res,
        )
        history.append(acc["cos"] / scale / max(1, acc["rows"]))
        counts = acc["counts"]
        centroids, empty = _update(acc["sums"] / scale, counts, centroids, rng)
        reseeded += empty
        if tol and it > 0 and not empty and history[-1] - history[-2] < tol:
            break
    return KMeans(
        centroids=centroids,
        objective=history[-1] if history else float("nan"),
        history=history,
        counts=counts,
        rows=st.rows,
        train_rows=n_train,
        init_rows=init_rows,
        iterations=len(history),
        reseeded=reseeded,
    )


def fit(
    items: list,
    reader: Callable[[Any], np.ndarray],
    k: int,
    *,
    work: str,
    iters: int = 20,
    seed: int = 0,
    tol: float = 1e-5,
    rows: int | None = None,
    train_rows: int | None = None,
    points_per_centroid: int = POINTS_PER_CENTROID,
    init_points_per_centroid: int = INIT_POINTS_PER_CENTROID,
    tasks: int | None = None,
    gpu: bool = False,
    label: str = "k-means",
) -> KMeans | None:
    """Spherical k-means over `reader(item)` for every item, as tasks (module docstring). `rows` is
    the items' total (or an estimate; a counting pass reads them when None); `train_rows` caps the
    training rows (default `points_per_centroid` x k; 0 or None with points_per_centroid=0: every row).
    Returns None when the items hold no rows. `work` is removed at the end."""
    if k < 1:
        raise InputError(f"k-means: k must be at least 1, not {k}")
    if train_rows is None and points_per_centroid:
        train_rows = points_per_centroid * k
    work = runtime.join(work, uuid.uuid4().hex[:12])  # two fits never share staging files
    try:
        st = _stage_all(list(items), reader, work, rows, train_rows, seed, label)
        if not st.sizes:
            return None
        return _lloyd_rounds(st, k, iters, seed, tol, init_points_per_centroid, tasks, gpu, label)
    finally:
        runtime.remove(work, recursive=True)
