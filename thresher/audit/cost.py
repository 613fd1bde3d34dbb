"""`--plan` cost models of `thresher audit`'s actions: verify and remove re-hash the subset, report reads
it, recheck re-downloads a sample of its URLs, trace and explain cost nothing measurable. Each takes the
action's args (thresher/app/commands/audit.py), the job's `Sizes`, the throughputs and the `Cluster`
(thresher/core/cost.py).
"""

from __future__ import annotations

from thresher.core.cost import Cluster, Estimate, Sizes, rate


def _audited(sizes: Sizes, path: str) -> int:
    """Samples in the subset a step audits: the one a subset step of the job made, else the largest."""
    return sizes.subsets.get(path, max(sizes.subsets.values(), default=0))


def _rehash(action: str, subset: str, sizes: Sizes, t: dict) -> Estimate:
    size = _audited(sizes, subset)
    return Estimate(
        what=f"{action} on {size:,} samples",
        inputs=["subset.reshard_bytes"],
        cpu_s=size * sizes.bytes / rate(t, "subset.reshard_bytes"),
    )


def plan_verify(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return _rehash("verify", args.subset, sizes, t)


def plan_trace(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(what=f"trace on {_audited(sizes, args.subset):,} samples")


def plan_explain(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(what=f"explain on {_audited(sizes, args.pool):,} samples")


def plan_report(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    size = _audited(sizes, args.subset)
    return Estimate(
        what=f"report on {size:,} samples", inputs=["stages.audit_report"], cpu_s=size / rate(t, "stages.audit_report")
    )


def plan_remove(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return _rehash("remove", args.subset, sizes, t)


def plan_recheck(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(
        what=f"recheck of {args.sample:,} URLs",
        inputs=["stages.download"],
        cpu_s=args.sample / rate(t, "stages.download"),
    )
