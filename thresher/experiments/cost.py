"""`--plan` cost models of the experiments: `thresher grid` (`plan_grid`: every run's samples seen on
GPUs or cores, scaled by forward GFLOPs where a model has no measured rate, and its checkpoints),
`thresher train` (`plan_train`, from the TrainConfig) and `thresher fit` / `thresher compare`
(`plan_fits`). Each takes the command's args (thresher/app/commands/experiments.py), the job's `Sizes`,
the throughputs and the `Cluster` (thresher/core/cost.py).
"""

from __future__ import annotations

from thresher.core.config import load
from thresher.core.cost import Cluster, Estimate, Sizes, gflops, param_count, rate, with_ratio


def plan_grid(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    from thresher.experiments import train

    subsets = args.subset
    scales = [s for spec in args.scale for s in train.load_scales(spec)]
    names, seeds = len({s.name for s in scales}), len({s.seed for s in scales})
    paired = args.replicates == "paired"
    per_subset = names if paired else len(scales)  # paired: each draw trains with one seed of each scale
    e = Estimate(
        what=f"{len(subsets)} subsets x {names} scales"
        + (f" x {seeds} seeds" if seeds > 1 else "")
        + (" (paired with draws)" if paired else "")
        + f" = {len(subsets) * per_subset} runs"
    )
    share = per_subset / len(scales)
    for sc in scales:
        gpu_key = f"train.gpu_{sc.model}"
        if cluster.gpus and (gpu_key in t or "train.gpu_ViT-B-32" in t):
            key = gpu_key if gpu_key in t else "train.gpu_ViT-B-32"
            scale = 1.0 if key == gpu_key else gflops(sc.model) / gflops("ViT-B-32")
            e.gpu_s += (
                share
                * len(subsets)
                * (sc.samples_seen * scale / rate(t, key) + sc.checkpoints * rate(t, "train.gpu_eval_seconds"))
            )
        else:
            key = f"train.cpu_{sc.model}" if f"train.cpu_{sc.model}" in t else "train.cpu_thresher-tiny"
            scale = 1.0 if key == f"train.cpu_{sc.model}" else gflops(sc.model) / gflops("thresher-tiny")
            e.cpu_s += share * len(subsets) * sc.samples_seen * scale / rate(t, key) * 2  # per 2-core run
        if with_ratio(key, scale) not in e.inputs:
            e.inputs.append(with_ratio(key, scale))
        e.disk_bytes += share * len(subsets) * sc.checkpoints * param_count(sc.model) * 4 * 3  # weights + Adam moments
    return e


def plan_fits(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    """fit and compare: seconds on one core, whatever the cluster (not measured: a fixed 10 s)."""
    return Estimate(what=f"scaling-law fits with {args.options.bootstrap} bootstraps", cpu_s=10.0)


def plan_train(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    from thresher.experiments.train import TrainConfig

    # costed from the TrainConfig (a --scale run is costed the same way; grid costs scales properly)
    cfg = load(TrainConfig, None, args.overrides)
    key = f"train.cpu_{cfg.model}" if f"train.cpu_{cfg.model}" in t else "train.cpu_thresher-tiny"
    return Estimate(
        what=f"{cfg.model}, {cfg.epochs} epochs of {sizes.trusted:,} pairs",
        inputs=[key],
        cpu_s=sizes.trusted * cfg.epochs / rate(t, key) * 2,
    )  # the figure is per 2-core run
