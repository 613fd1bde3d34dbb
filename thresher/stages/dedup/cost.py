"""`thresher dedup`'s `--plan` cost model: in one process (exact and PDQ on two cores, SemDeDup on the
cores or a GPU) or partitioned as Ray tasks (`partitions: N`: exact, PDQ's pairwise buckets with a warning
past a thousand core-hours, SemDeDup with its k-means as tasks). `cfg` is the resolved DedupConfig, which
the command (thresher/app/commands/pool.py) reads from `--config` and its flags.
"""

from __future__ import annotations

from thresher.algo.cost import kmeans_estimate
from thresher.core.cost import Cluster, Estimate, Sizes, rate


def plan_dedup(cfg, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n = sizes.downloaded
    return _dedup_partitioned(cfg, n, t) if cfg.partitions else _dedup_in_process(cfg, n, t, cluster)


PDQ_CORE_SECONDS_WARN = 3600 * 1000  # a thousand core-hours


def _dedup_partitioned(cfg, n: float, t: dict) -> Estimate:
    """Ray tasks over partitions: spread over the cluster, ~100 B a row staged for exact."""
    e = Estimate(
        what=f"{n:,.0f} samples: exact",
        cpu_s=n / rate(t, "scale.dedup_exact"),
        inputs=["scale.dedup_exact"],
        disk_bytes=n * 80 + n * 100,
    )
    e.cores = cfg.partitions  # each round has a task per partition (or shard group) at most
    if cfg.perceptual:  # a bucket per (byte, value): 1/256 of the hashes each, searched pairwise
        comparisons = n * n / 16
        e.cpu_s += comparisons / rate(t, "dedup.pdq_partitioned_comparisons")
        e.inputs.append("dedup.pdq_partitioned_comparisons")
        e.disk_bytes += n * 32 * 41  # each hash staged once per byte, with its code
        e.what += f", PDQ ({comparisons:.2g} comparisons)"
        if comparisons / rate(t, "dedup.pdq_partitioned_comparisons") > PDQ_CORE_SECONDS_WARN:
            e.warnings.append(
                f"partitioned PDQ dedup grows with the square of the pool ({comparisons:.2g} code comparisons): "
                "past ~1e8 hashes it costs thousands of core-hours; run it on a sample, or with --no-perceptual"
            )
    if cfg.semantic:  # the shuffle stages each embedding once, as float16
        k = cfg.clusters or max(1, int(n // 1000))
        flops = n * (n / k) * 512 * 2
        e.cpu_s += flops / rate(t, "dedup.semantic_flops")
        e.inputs.append("dedup.semantic_flops")
        e.disk_bytes += n * 512 * 2
        e.what += f", SemDeDup ({flops:.2g} flops within clusters;"
        # its k-means as tasks (thresher/algo/kmeans.py) on up to 256 rows a centroid, every row assigned once
        kmeans_estimate(e, t, k, 512, n, 256 * k, n, cfg.kmeans_iters, cfg.kmeans_flat_max)
        e.what += ")"
    e.what += f" over {cfg.partitions} partitions (Ray tasks)"
    return e


def _dedup_in_process(cfg, n: float, t: dict, cluster: Cluster) -> Estimate:
    # in one process: the figure was measured on 2 cores, and that is all it gets on a cluster too; it
    # holds the base columns (uid, key, sha256, PDQ: ~250 B a row) and, for SemDeDup, the embeddings
    e = Estimate(
        what=f"{n:,.0f} samples: exact, PDQ (in one process)",
        cpu_s=n / rate(t, "stages.dedup_exact_pdq"),
        inputs=["stages.dedup_exact_pdq"],
        cores=2,
        driver_bytes=n * 250,
    )
    if cfg.semantic:
        k = cfg.clusters or max(1, int(n // 1000))
        flops = n * (n / k) * cfg.probes * 512 * 2
        if cluster.gpus:
            e.gpu_s = flops / (rate(t, "dedup.semantic_flops") * 16 * rate(t, "dedup.semantic_gpu_speedup"))
            e.inputs += ["dedup.semantic_flops", "dedup.semantic_gpu_speedup"]
        else:
            e.cpu_s += flops / rate(t, "dedup.semantic_flops")
            e.inputs.append("dedup.semantic_flops")
        e.object_store_bytes = n * 512 * 4
        e.driver_bytes += n * 512 * 4
        e.what += f", SemDeDup ({k:,} clusters, {flops:.2g} flops)"
    e.disk_bytes = n * 80
    return e
