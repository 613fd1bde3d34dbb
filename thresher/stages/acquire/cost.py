"""`--plan` cost models of getting a pool: `thresher download` (`plan_download`: the local benchmark's
rate, and on a cluster img2dataset's per-node rate for internet downloads) and `thresher import-metadata`
(`plan_import`). Each takes the command's args (thresher/app/commands/pool.py), the job's `Sizes`, the
throughputs and the `Cluster` (thresher/core/cost.py).
"""

from __future__ import annotations

from thresher.core.cost import Cluster, Estimate, Sizes, rate


def plan_download(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n = sizes.downloaded
    e = Estimate(
        what=f"{sizes.pool:,.0f} URLs, {n:,.0f} arrive",
        inputs=["stages.download"],
        cpu_s=sizes.pool / rate(t, "stages.download"),
        disk_bytes=n * sizes.bytes,
    )
    if cluster.name != "local":  # internet downloads: img2dataset's per-node rate bounds us
        e.inputs.append("download.img2dataset_node")
        e.cpu_s = max(e.cpu_s, sizes.pool / (rate(t, "download.img2dataset_node") / 16))
    return e


def plan_import(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(
        what=f"{sizes.pool:,.0f} rows imported",
        inputs=["scale.import_metadata"],
        cpu_s=sizes.pool / rate(t, "scale.import_metadata"),
    )
