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
            key, scale = _cpu_key(sc.model, t)
            per_run = sc.samples_seen * scale / rate(t, key)
            if "grid.cpu_eval_seconds" in t:  # evaluating each checkpoint, and the run's start
                per_run += sc.checkpoints * rate(t, "grid.cpu_eval_seconds")
                if "grid.cpu_eval_seconds" not in e.inputs:
                    e.inputs.append("grid.cpu_eval_seconds")
            e.cpu_s += share * len(subsets) * per_run * 2  # the rates are per 2-core run
        if with_ratio(key, scale) not in e.inputs:
            e.inputs.append(with_ratio(key, scale))
        e.disk_bytes += share * len(subsets) * sc.checkpoints * param_count(sc.model) * 4 * 3  # weights + Adam moments
    return e


def _cpu_key(model: str, t: dict) -> tuple[str, float]:
    """A grid run's CPU rate: measured in a grid for the model (grid.cpu_*: runs in one process, shards
    resized), else the model's whole-command rate, else thresher-tiny's scaled by forward GFLOPs."""
    for key in (f"grid.cpu_{model}", f"train.cpu_{model}"):
        if key in t:
            return key, 1.0
    base = "grid.cpu_thresher-tiny" if "grid.cpu_thresher-tiny" in t else "train.cpu_thresher-tiny"
    return base, gflops(model) / gflops("thresher-tiny")


def plan_fits(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    """fit and compare: seconds in one process (the fits are small: the job's measured figure)."""
    key = "fit.compare_seconds"
    return Estimate(
        what=f"scaling-law fits with {args.options.bootstrap} bootstraps",
        inputs=[key],
        cpu_s=rate(t, key),
        cores=1,
    )


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
