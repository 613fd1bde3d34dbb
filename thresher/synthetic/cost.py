"""`thresher synth`'s `--plan` cost model: the synthetic pool's samples, its seconds and bytes; it sets the
pool and trusted-set sizes the steps after it read. `cfg` is the resolved SynthConfig (thresher/synthetic/
synth.py), which the command (thresher/app/commands/pool.py) reads from `--config` and its flags.
"""

from __future__ import annotations

from thresher.core.cost import Cluster, Estimate, Sizes, rate


def plan_synth(cfg, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    sizes.pool, sizes.trusted = cfg.samples, cfg.trusted  # what the steps after it read
    return Estimate(
        what=f"{sizes.pool:,} synthetic samples",
        inputs=["stages.synth"],
        cpu_s=sizes.pool / rate(t, "stages.synth"),
        disk_bytes=sizes.pool * sizes.bytes * 1.05,
    )
