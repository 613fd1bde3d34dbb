"""k-means' share of a `--plan` estimate: `kmeans_estimate` adds `kmeans.cost`'s count (training, then
assigning rows) to a step's `Estimate` (thresher/core/cost.py). The dedup stage's SemDeDup
(thresher/stages/dedup/cost.py) and the filter's `image_clusters` (thresher/stages/filter/cost.py) use it.
"""

from __future__ import annotations

from thresher.core.cost import Estimate, rate


def kmeans_estimate(e: Estimate, t: dict, k: int, d: int, rows, train, assign, iters: int, flat_max: int) -> None:
    """k-means as tasks (`kmeans.cost`: training, then `assign` rows to their nearest centroid) added to a
    step's estimate; its training rows are staged on storage as float16."""
    from thresher.algo import kmeans

    c = kmeans.cost(k, d, rows, train, assign, iters, flat_max)
    e.cpu_s += c.flops / rate(t, "kmeans.flops")
    e.inputs.append("kmeans.flops")
    e.disk_bytes += min(rows, train) * d * 2  # staged while it runs (removed after)
    e.driver_bytes = max(e.driver_bytes, c.driver_bytes)
    e.what += f" {c.describe(k)}"
