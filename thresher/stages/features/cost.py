"""`--plan` cost models of the features stage: `thresher features` (`plan_features`: base features, each
model's embeddings on GPUs or cores, imported scores) and `thresher embed-images` (`plan_embed_images`).
A model without a measured rate is scaled from thresher-tiny's by the ratio of forward GFLOPs. Each takes
the command's args (thresher/app/commands/pool.py, experiments.py), the job's `Sizes`, the throughputs and
the `Cluster` (thresher/core/cost.py).
"""

from __future__ import annotations

from thresher.core.cost import Cluster, Estimate, Sizes, embed_dim, gflops, rate, with_ratio


def plan_features(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n, e, parts = sizes.downloaded, Estimate(), []
    if not args.no_base:
        e.cpu_s += n / rate(t, "stages.features_base")
        e.inputs.append("stages.features_base")
        e.disk_bytes += n * 200
        parts.append("base")
    for m in args.model:
        e.disk_bytes += n * (2 * embed_dim(m) * rate(t, "features.embedding_bytes") + 60)
        if cluster.gpus and f"features.gpu_{m}" in t:
            e.gpu_s += n / rate(t, f"features.gpu_{m}")
            e.cpu_s += n / rate(t, "features.decode_224")
            e.inputs += [f"features.gpu_{m}", "features.decode_224"]
            e.object_store_bytes = max(e.object_store_bytes, cluster.gpus * 4 * 512 * 150_000)
        else:
            key = f"features.cpu_{m}" if f"features.cpu_{m}" in t else "features.cpu_thresher-tiny"
            scale = 1.0 if key.endswith(m) else gflops(m) / gflops("thresher-tiny")
            e.cpu_s += n * scale / rate(t, key)
            e.inputs.append(with_ratio(key, scale))
        parts.append(m)
    for spec in args.precomputed:
        e.cpu_s += n / rate(t, "filter.stage")
        e.inputs.append("filter.stage")
        parts.append(f"imported {spec.split('=')[0]}")
    e.what = f"{n:,.0f} samples: " + ", ".join(parts)
    return e


def plan_embed_images(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n, model = float(sizes.target_images), args.model
    gpu = cluster.gpus and f"features.gpu_{model}" in t
    key = f"features.gpu_{model}" if gpu else "features.cpu_thresher-tiny"
    scale = 1.0 if gpu else gflops(model) / gflops("thresher-tiny")
    e = Estimate(
        what=f"{n:,.0f} target images, {model}", inputs=[with_ratio(key, scale)], disk_bytes=n * 2 * embed_dim(model)
    )
    if gpu:
        e.gpu_s = n / rate(t, key)
    else:
        e.cpu_s = n * scale / rate(t, key)
    return e
