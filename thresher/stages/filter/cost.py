"""`thresher filter`'s `--plan` cost model: each recipe over the pool, and the pool-wide work a step
prepares first (`image_clusters`' k-means, thresher/algo/cost.py). Takes the command's args
(thresher/app/commands/selection.py), the job's `Sizes`, the throughputs and the `Cluster`
(thresher/core/cost.py).
"""

from __future__ import annotations

from thresher.algo.cost import kmeans_estimate
from thresher.core.config import parse_vars
from thresher.core.cost import Cluster, Estimate, Sizes, rate, scorer_dim
from thresher.core.errors import InputError


def plan_filter(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    from thresher.algo import kmeans
    from thresher.filters.builtin import ImageClusters
    from thresher.stages.filter.filter import load_recipe

    n, recipes = sizes.downloaded, len(args.recipe)
    e = Estimate(
        what=f"{recipes} recipe(s) x {n:,.0f} samples",
        inputs=["scale.filter"],
        cpu_s=recipes * n / rate(t, "scale.filter"),
        disk_bytes=recipes * n * 60,
    )
    for recipe in args.recipe:  # pool-wide work a step prepares first: image_clusters' k-means
        try:
            steps = load_recipe(recipe, parse_vars(args.var))[1]
        except InputError:  # a plugin not installed here, a file an earlier step makes: the run will say
            e.what += f"; {recipe}: steps not read (loads at run time)"
            continue
        for step in steps:
            if isinstance(p := step.params, ImageClusters):
                k = max(1, min(p.clusters, int(min(p.sample, n)) // 10))
                train = min(p.sample, kmeans.POINTS_PER_CENTROID * k)
                e.what += f"; {step.name}:"
                kmeans_estimate(e, t, k, scorer_dim(p.scorer), n, train, n, p.iters, p.flat_max)
                e.driver_bytes = max(e.driver_bytes, k * scorer_dim(p.scorer) * 4)  # the fine centroids, loaded
    return e
