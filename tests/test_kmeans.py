"""k-means as tasks (thresher/algo/kmeans.py): as good as FAISS's spherical k-means on data that fits in
memory, and the driver never receives anything per sample."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.algo import kmeans, kmeans_flat
from thresher.core.errors import InputError
from thresher.exec import execute

N, D, K, ITERS = 20_000, 32, 100, 20


def clustered(n=N, d=D, c=K, seed=0) -> np.ndarray:
    """Unit vectors around c random directions (mean cosine ~0.68 to the true centre)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, c, n)] + 1.05 * rng.normal(size=(n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def files(tmp_path, x: np.ndarray, parts: int = 8) -> list[str]:
    out = []
    for i, part in enumerate(np.array_split(x, parts)):
        np.save(tmp_path / f"{i}.npy", part)
        out.append(str(tmp_path / f"{i}.npy"))
    return out


def mean_cos(x: np.ndarray, centroids: np.ndarray) -> float:
    return float((x @ centroids.T).max(axis=1).mean())


def ssd(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances to the nearest centroid: 2 (1 - cos) a unit row."""
    return 2 * len(x) * (1 - mean_cos(x, centroids))


def faiss_kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False, max_points_per_centroid=10**9
    )
    km.train(x)
    return km.centroids


class Recording(execute.LocalExecutor):
    """The local executor, recording the bytes of numpy arrays in every result the driver receives."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    def start(self, fn, args, res, name=None):
        handle = super().start(fn, args, res, name)
        handle.fn = fn.__name__
        return handle

    def result(self, handle):
        value = super().result(handle)
        self.sizes.append((handle.fn, _nbytes(value)))
        return value


def _nbytes(v) -> int:
    if isinstance(v, np.ndarray):
        return v.nbytes
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_nbytes(x) for x in v)
    return 0


SEEDS = range(5)


def test_flat_kmeans_is_within_1_percent_of_faiss_on_clustered_vectors(tmp_path):
    """Sum of squared distances over all 20k rows, both trained on every row with the same k and
    iterations, averaged over 5 seeds (one seed's optimum moves by about 1% either way, FAISS's too):
    ours at most 1.01 x FAISS's (measured 1.000). It can fail: k random rows as centroids are 60% worse."""
    x = clustered()
    ref = np.mean([ssd(x, faiss_kmeans(x, K, ITERS, seed)) for seed in SEEDS])
    fs = files(tmp_path, x)
    ours = []
    with execute.using(execute.LocalExecutor()):
        for seed in SEEDS:
            km = kmeans.fit(
                fs, np.load, K, work=str(tmp_path / "work"), iters=ITERS, seed=seed, tol=0, points_per_centroid=0
            )
            ours.append(ssd(x, km.centroids))
            assert km.centroids.shape == (K, D) and km.centroids.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1, atol=1e-5)
            assert km.train_rows == N and km.iterations == ITERS
            # the reported objective is the last assignment's mean cosine (before the last update, as FAISS's)
            assert abs(km.objective - mean_cos(x, km.centroids)) < 2e-3
            assert km.history == sorted(km.history)  # Lloyd never makes it worse
    ratio = np.mean(ours) / ref
    print(f"SSD ours / FAISS = {ratio:.4f} (per seed {np.round(np.array(ours) / ref, 4)})")
    assert ratio <= 1.01
    random_rows = x[np.random.default_rng(0).choice(N, K, replace=False)]
    assert ssd(x, random_rows) / ref > 1.5
    assert not any((tmp_path / "work").iterdir())  # staging removed


def test_flat_kmeans_is_within_1_percent_of_faiss_on_the_pools_clip_tiny_embeddings(featured_pool, tmp_path):
    """The test pool's clip_tiny image embeddings (random weights: every cosine above 0.99, so the optima
    are shallow), every row, k = 30, over Ray, averaged over 5 seeds: SSD at most 1.01 x FAISS's
    (measured 0.993). Seed 0 run twice gives the same bits, whatever order the tasks finish in."""
    from thresher.core.pool import Pool, read_npy

    pool = str(featured_pool)
    shards = Pool(pool).shards()
    reader = kmeans.PoolEmbeddings(pool, "clip_tiny")
    x = kmeans_flat._unit(np.concatenate([reader(s) for s in shards]))
    assert len(x) > 2000 and read_npy(Pool(pool).embeddings("clip_tiny", shards[0])).dtype == np.float16
    k = 30
    ref = np.mean([ssd(x, faiss_kmeans(x, k, ITERS, seed)) for seed in SEEDS])
    runs = [
        kmeans.fit(shards, reader, k, work=str(tmp_path), iters=ITERS, seed=seed, tol=0, points_per_centroid=0, tasks=4)
        for seed in [*SEEDS, 0]
    ]
    ratio = np.mean([ssd(x, r.centroids) for r in runs[:-1]]) / ref
    print(f"SSD ours / FAISS = {ratio:.4f}, mean cosine {mean_cos(x, runs[0].centroids):.5f}")
    assert ratio <= 1.01
    assert runs[0].train_rows == len(x)
    np.testing.assert_array_equal(runs[0].centroids, runs[-1].centroids)
    random_rows = x[np.random.default_rng(0).choice(len(x), k, replace=False)]
    assert ssd(x, random_rows) / ref > 1.5  # measured 2.9


def test_the_driver_receives_centroids_and_counts_never_rows(tmp_path):
    """Every task result's arrays, recorded where the driver takes them: bounded by k x d (int64 sums
    and a count per cluster), never by the rows (20k x 32 float32 = 2.5 MB)."""
    x = clustered()
    k = 20
    ex = Recording()
    with execute.using(ex):
        km = kmeans.fit(
            files(tmp_path, x), np.load, k, work=str(tmp_path / "work"), iters=5, tol=0, points_per_centroid=0
        )
        got = kmeans.assign(files(tmp_path, x), np.load, km.centroids)
    bound = k * D * 8 + k * 8 + 1024
    assert {fn for fn, _ in ex.sizes} == {"_count", "_stage", "_init", "_lloyd", "_assign"}
    assert max(size for _, size in ex.sizes) <= bound < x.nbytes / 100, ex.sizes
    assert got.rows == N and got.counts.sum() == N
    assert abs(got.objective - mean_cos(x, km.centroids)) < 1e-5


def test_assign_writes_each_rows_nearest_centroid(tmp_path):
    x = clustered(n=3000)
    c = kmeans_flat._unit(x[:7])
    with execute.using(execute.LocalExecutor()):
        got = kmeans.assign(files(tmp_path, x, 3), np.load, c, out=str(tmp_path / "labels"))
    labels = np.concatenate([np.load(f) for f in got.labels])
    np.testing.assert_array_equal(labels, (x @ c.T).argmax(axis=1))
    np.testing.assert_array_equal(got.counts, np.bincount(labels, minlength=7))


def test_training_rows_are_a_bounded_sample_when_capped(tmp_path):
    x = clustered()
    with execute.using(execute.LocalExecutor()):
        km = kmeans.fit(files(tmp_path, x), np.load, 10, work=str(tmp_path / "work"), iters=3, rows=N)
    assert km.rows == N
    # 256 a centroid: rows with a key below 2560 / 20000 of the range, binomial (sd 47)
    assert abs(km.train_rows - 2560) <= 4 * 47
    assert km.init_rows == 160  # 16 a centroid: exactly the 160 smallest keys


def test_the_same_rows_cut_into_other_items_give_the_same_bits(tmp_path):
    """A row's training key depends on the row alone and sums are fixed point, so 3 items or 11, in
    another order, with other chunks, give the same centroids to the bit (a metadata-only pool and the
    downloaded pool of the same rows are sharded differently). The capped sample and the uncapped run
    both; another seed gives other centroids."""
    x = clustered(n=6000)
    perm = np.random.default_rng(1).permutation(len(x))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a_items, b_items = files(tmp_path / "a", x, 3), files(tmp_path / "b", x[perm], 11)
    with execute.using(execute.LocalExecutor()):
        for cap in (1000, 0):
            kw = dict(iters=6, tol=0, points_per_centroid=0, train_rows=cap or None)
            a = kmeans.fit(a_items, np.load, 12, work=str(tmp_path / "w"), tasks=2, **kw)
            b = kmeans.fit(b_items, np.load, 12, work=str(tmp_path / "w"), tasks=5, **kw)
            np.testing.assert_array_equal(a.centroids, b.centroids)
            assert a.history == b.history and a.train_rows == b.train_rows and np.array_equal(a.counts, b.counts)
        c = kmeans.fit(a_items, np.load, 12, work=str(tmp_path / "w"), seed=1, iters=6, tol=0, points_per_centroid=0)
    assert not np.array_equal(a.centroids, c.centroids)


def test_empty_clusters_are_reseeded_by_splitting_the_largest():
    rng = np.random.default_rng(0)
    old = kmeans_flat._unit(rng.normal(size=(4, 8)))
    sums = np.zeros((4, 8))
    sums[0] = old[0] * 90  # cluster 0 the largest; 2 and 3 empty
    sums[1] = old[1] * 10
    counts = np.array([90, 10, 0, 0])
    new, empty = kmeans_flat._update(sums, counts, old, rng)
    assert empty == 2
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1, atol=1e-6)
    assert len({tuple(np.round(c, 6)) for c in new}) == 4  # all distinct
    # the largest was split into 0 and 2, then the larger half (0) again into 0 and 3
    assert (new[[0, 2, 3]] @ old[0] > 0.999).all()
    np.testing.assert_allclose(new[1], old[1], atol=1e-6)


def test_stops_when_the_objective_stops_improving(tmp_path):
    x = clustered(n=4000, c=5)
    with execute.using(execute.LocalExecutor()):
        km = kmeans.fit(files(tmp_path, x), np.load, 5, work=str(tmp_path / "work"), iters=50, tol=1e-4)
    assert km.iterations < 50


def test_no_rows_gives_none(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    with execute.using(execute.LocalExecutor()):
        assert kmeans.fit([str(tmp_path / "empty.npy")], np.load, 3, work=str(tmp_path / "w")) is None


@pytest.mark.parametrize(
    "rows,k", [([5, 0, 1, 100, 30], 20), ([1, 1, 1], 3), ([10, 10], 25), ([1000, 1, 1, 1], 4), ([7, 3], 1)]
)
def test_shares_split_k_in_proportion(rows, k):
    got = kmeans.shares(np.array(rows), k)
    assert got.sum() == min(k, sum(rows))
    assert ((got >= 1) == (np.array(rows) > 0)).all() or (k < sum(r > 0 for r in rows) and (got <= 1).all())
    assert (got <= np.array(rows)).all()


def faiss_two_level(x: np.ndarray, k: int, k1: int, iters: int, seed: int) -> float:
    """The same hierarchy in memory with FAISS: coarse k1, each coarse cluster into its share of k. Mean cosine."""
    coarse = faiss_kmeans(x, k1, iters, seed)
    labels = (x @ coarse.T).argmax(axis=1)
    kj = kmeans.shares(np.bincount(labels, minlength=k1), k)
    total = 0.0
    for j in range(k1):
        xj = x[labels == j]
        cj = (
            faiss_kmeans(xj, int(kj[j]), iters, seed + j)
            if kj[j] > 1
            else kmeans_flat._unit(xj.sum(axis=0, keepdims=True))
        )
        total += float((xj @ cj.T).max(axis=1).sum())
    return total / len(x)


def test_hierarchical_kmeans_on_clustered_vectors(tmp_path):
    """k = 100 as 10 coarse clusters, each split into its share of 100 by a task. A hierarchy is
    approximate (a row's fine centroid is sought in its coarse cluster only; on these 100 isotropic
    clusters FAISS's own two-level clustering loses 9% mean cosine against flat), so it is held to the
    same hierarchy done in memory with FAISS: SSD within 5% (measured 0.986). The driver
    receives k1-sized arrays."""
    x = clustered()
    ref = 2 * N * (1 - faiss_two_level(x, K, 10, ITERS, seed=0))
    ex = Recording()
    with execute.using(ex):
        h = kmeans.fit_hierarchical(
            files(tmp_path, x), np.load, K, work=str(tmp_path / "work"), out=str(tmp_path / "fine"), iters=ITERS, tol=0,
            points_per_centroid=0,
        )  # fmt: skip
    assert h.k == K and len(h.coarse.centroids) == 10 and h.rows_per_coarse.sum() == N
    labels, cos = h.nearest(x)
    assert labels.min() >= 0 and labels.max() < K
    ratio = 2 * N * (1 - cos.mean()) / ref
    flat = ssd(x, faiss_kmeans(x, K, ITERS, seed=0))
    print(f"hierarchical SSD / FAISS two-level = {ratio:.4f}, / flat FAISS = {2 * N * (1 - cos.mean()) / flat:.4f}")
    assert ratio <= 1.05
    assert abs(h.objective - cos.mean()) < 1e-3
    assert ssd(x, h.centroids()) <= 2 * N * (1 - cos.mean()) + 1e-3  # the true nearest is at least as near
    by_fn = {}
    for fn, size in ex.sizes:
        by_fn[fn] = max(by_fn.get(fn, 0), size)
    assert by_fn["_partition"] <= 10 * 8 and by_fn["_fine_item"] == 0 and by_fn["_lloyd"] <= 10 * D * 8 + 10 * 8


def test_fit_clusters_is_flat_up_to_flat_max_and_hierarchical_past_it(tmp_path):
    """The callers' one entry: a row's label is its route (nearest of `routes()`) refined `within` that
    route, for both kinds, which is how partitioned SemDeDup labels rows (map by route, reduce within)."""
    x = clustered(n=4000)
    fs = files(tmp_path, x, 4)
    with execute.using(execute.LocalExecutor()):
        flat = kmeans.fit_clusters(fs, np.load, 20, work=str(tmp_path / "w"), flat_max=20, iters=5)
        hier = kmeans.fit_clusters(fs, np.load, 20, work=str(tmp_path / "w"), flat_max=19, iters=5)
    assert isinstance(flat, kmeans.KMeans) and isinstance(hier, kmeans.Hierarchy)
    assert hier.k == 20 and len(hier.routes()) == 5 and len(flat.routes()) == 20
    for km in (flat, hier):
        route = kmeans.nearest(x, km.routes())[0]
        got = np.full(len(x), -1)
        for j in np.unique(route):
            got[route == j] = km.within(x[route == j], int(j))
        assert km is flat or km._cache == {}  # `within` reads a fine set and keeps none
        np.testing.assert_array_equal(got, km.nearest(x)[0])
    hier.load()
    assert len(hier._cache) == 5


def test_npy_rows_reads_a_slice_and_chosen_clusters_equals_the_whole_array(tmp_path):
    x = clustered(n=2500)
    np.save(tmp_path / "t.npy", x.astype(np.float16))
    np.testing.assert_array_equal(kmeans.npy_rows(str(tmp_path / "t.npy"), 700, 1300), x[700:1300].astype(np.float16))
    assert kmeans.npy_rows(str(tmp_path / "t.npy"), 2400, 9999).shape == (100, D)
    with execute.using(execute.LocalExecutor()):
        km = kmeans.fit(files(tmp_path, x, 2), np.load, 40, work=str(tmp_path / "w"), iters=3)
        got = kmeans.chosen_clusters(str(tmp_path / "t.npy"), km, rows_per_task=300)
    np.testing.assert_array_equal(got, np.unique(km.nearest(x.astype(np.float16).astype(np.float32))[0]))
    (tmp_path / "bad.npy").write_text("not an array")
    with pytest.raises(InputError, match="bad.npy: not a .npy file"):
        kmeans.npy_shape(str(tmp_path / "bad.npy"))
