"""`thresher subset`'s `--plan` cost model: selecting and resharding each recipe's N samples, or writing
the selection as a uid file (`--uids-only`); it records each subset's size for the audit steps after it.
Takes the command's args (thresher/app/commands/selection.py), the job's `Sizes`, the throughputs and the
`Cluster` (thresher/core/cost.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from thresher.core.cost import Cluster, Estimate, Sizes, rate


def plan_subset(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    if args.uids_only:
        return Estimate(
            what=f"{args.recipe[0]} as a uid file",
            inputs=["scale.subset_uids"],
            cpu_s=sizes.downloaded / rate(t, "scale.subset_uids"),
        )
    recipes, size, out = args.recipe, args.size, args.out
    for r in recipes:  # what the audit steps after it read
        sizes.subsets[out if len(recipes) == 1 else os.path.join(out, Path(r).stem)] = size
    cpu_s = len(recipes) * (
        sizes.downloaded / rate(t, "subset.select") + size * sizes.bytes / rate(t, "subset.reshard_bytes")
    )
    return Estimate(
        what=f"{len(recipes)} x {size:,} samples resharded",
        inputs=["subset.select", "subset.reshard_bytes"],
        cpu_s=cpu_s,
        disk_bytes=len(recipes) * size * (sizes.bytes + 300),
    )
