"""k-means as Ray tasks (`thresher/algo/kmeans.py`, flat and hierarchical) against FAISS's spherical k-means
in one process on the same rows, on generated clustered vectors.

    python benchmarks/kmeans.py [--rows 400000] [--dim 256] [--k 1000] [--iters 10] [--items 40]

The rows (unit vectors around k/2 random directions, float16 as a pool stores them) are written in
`--items` files; every run trains on all of them (no sample cap) for `--iters` Lloyd steps.
The reference is FAISS's `Kmeans(spherical=True)` on the whole array in this process, with every core.
For each path the script prints wall time, the ratio to FAISS, the objective (mean cosine of every row to
its nearest centroid) and the throughput in flops/s per core by `kmeans.cost`'s count, the figure
`--plan` divides k-means' flops by (configs/throughputs.yaml's `kmeans.flops`). One JSON line a path.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not this folder

import argparse
import json
import os
import tempfile
import time

import numpy as np

from thresher.algo import kmeans
from thresher.exec import execute


def make_rows(rows: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, rows)] + rng.normal(size=(rows, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def objective(x: np.ndarray, clusters) -> float:
    return float(clusters.nearest(x)[1].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    x = make_rows(a.rows, a.dim, max(1, a.k // 2))
    x32 = x.astype(np.float32)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        items = []
        for i, part in enumerate(np.array_split(x, a.items)):
            items.append(f"{tmp}/{i:04d}.npy")
            np.save(items[-1], part)
        import faiss

        t0 = time.perf_counter()
        ref = faiss.Kmeans(a.dim, a.k, niter=a.iters, seed=0, spherical=True, max_points_per_centroid=10**9)
        ref.train(x32)
        t_ref = time.perf_counter() - t0
        ref_obj = float(ref.index.search(x32, 1)[0].mean())
        flat_cost = kmeans.cost(a.k, a.dim, a.rows, a.rows, 0, a.iters, flat_max=a.k)
        print(
            json.dumps(
                {"path": "faiss in one process (reference)", "seconds": round(t_ref, 2), "objective": round(ref_obj, 5)}
            )
        )
        execute.init_ray(num_cpus=cores)  # Ray's start is outside every timing
        with execute.using(execute.start(None)):
            for name, flat_max in (("flat, Ray tasks", a.k), ("hierarchical, Ray tasks", a.k - 1)):
                c = kmeans.cost(a.k, a.dim, a.rows, a.rows, 0, a.iters, flat_max=flat_max)
                t0 = time.perf_counter()
                km = kmeans.fit_clusters(
                    items, np.load, a.k, work=f"{tmp}/work", flat_max=flat_max, iters=a.iters, tol=0,
                    points_per_centroid=0, rows=a.rows,
                )  # fmt: skip
                km.load()
                t = time.perf_counter() - t0
                line = {
                    "path": name,
                    "seconds": round(t, 2),
                    "vs_faiss": round(t / t_ref, 2),
                    "objective": round(objective(x32, km), 5),
                    "objective_vs_faiss": round(objective(x32, km) / ref_obj, 4),
                    "flops": f"{c.flops:.3g}",
                    "flops_per_s_per_core": f"{c.flops / t / cores:.3g}",
                }
                print(json.dumps(line))
        print(
            json.dumps(
                {
                    "path": "faiss, by the same count",
                    "flops_per_s_per_core": f"{flat_cost.flops / t_ref / cores:.3g}",
                    "cores": cores,
                }
            )
        )


if __name__ == "__main__":
    main()
