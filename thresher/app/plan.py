"""`thresher run JOB.yaml --plan`: wall time, storage, CPU-hours and GPU-hours of a job before it runs.

Each step of the job is costed by its command's `plan` function: the cost model beside the step's
stage (its `cost.py`, e.g. thresher/stages/dedup/cost.py; the registry, thresher/app/commands/, names
it), written in thresher/core/cost.py's Sizes, Cluster, Estimate and rate. This module holds the rest:
the throughputs, the cluster, the job's totals and the rendering. Each cost model starts from a measured
throughput in configs/throughputs.yaml (the figure,
its unit, the benchmark that measured it, machine and date), applied to the job's sizes (the pool's
samples, the subset's, the grid's samples seen) on the cluster the job names under `plan.cluster`: a
Ray cluster-launcher YAML in configs/cluster/ (its node types' CPU, GPU, memory and max_workers), or
`local`, this machine. The model is deliberately simple and says so: work divides evenly over the
cluster's cores or GPUs, stages run one after another, and start-up costs are ignored (they dominate
only small jobs). The job's `plan:` block gives what cannot be read from the steps: pool_samples for
a URL list we cannot count ahead, download_success (share of URLs that arrive) and bytes_per_sample.
"""

from __future__ import annotations

import os
from pathlib import Path

from thresher.core.config import CONFIG_DIR, read_yaml
from thresher.core.cost import Cluster, Estimate, Sizes
from thresher.core.errors import InputError

THROUGHPUTS = CONFIG_DIR / "throughputs.yaml"  # the rates benchmarks/stages.py measures
CLUSTER_DIR = CONFIG_DIR / "cluster"


def load_throughputs(path: Path = THROUGHPUTS) -> dict:
    import yaml

    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads 9.7e9 (no sign in the exponent) as a string: every rate is a number here
    return {f"{group}.{k}": {**v, "rate": float(v["rate"])} for group, items in data.items() for k, v in items.items()}


def load_cluster(spec: str | None) -> Cluster:
    """`local` (this machine), a name in configs/cluster/, or a Ray cluster-launcher YAML file."""
    if spec in (None, "local"):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        gpus = _local_gpus()
        disk = _disk_free_gb(".")
        return Cluster("local", 1, os.cpu_count() or 1, gpus, mem, 0.3 * mem, disk, "this machine", mem)
    path = Path(spec) if Path(spec).exists() else CLUSTER_DIR / f"{spec}.yaml"
    if not path.exists():
        names = ", ".join(["local"] + sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml")))
        raise InputError(f"no cluster {spec!r}: give a Ray cluster YAML or one of {names}")
    cfg = read_yaml(path, "cluster file")  # the bounded reader of every YAML a user hands us
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: a Ray cluster-launcher YAML is a mapping, not a {type(cfg).__name__}")
    types = cfg.get("available_node_types") or {}
    if not types:
        raise InputError(f"{path}: no available_node_types (a Ray cluster-launcher YAML is expected)")
    nodes = cpus = gpus = 0
    mem = store = disk = head_mem = 0.0
    for name, t in types.items():
        res = t.get("resources") or {}
        if "CPU" not in res:
            raise InputError(f"{path}: node type {name} has no resources.CPU (the plan needs it)")
        count = int(t.get("max_workers", 0)) + (1 if name == cfg.get("head_node_type") else 0)
        nodes += count
        cpus += count * int(res["CPU"])
        gpus += count * int(res.get("GPU", 0))
        node_mem = float(res.get("memory", 0)) / 1e9
        mem += count * node_mem
        head_mem = node_mem if name == cfg.get("head_node_type") else head_mem
        store += count * float(res.get("object_store_memory", 0.3 * node_mem * 1e9)) / 1e9
        vols = (t.get("node_config") or {}).get("BlockDeviceMappings") or []
        disk += count * sum(float(v.get("Ebs", {}).get("VolumeSize", 0)) for v in vols)
    return Cluster(cfg.get("cluster_name", path.stem), nodes, cpus, gpus, mem, store, disk or None, str(path), head_mem)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        return 0


def _disk_free_gb(path: str) -> float:
    import shutil

    return shutil.disk_usage(path).free / 1e9


def estimate_step(i: int, call, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    """Step i's estimate: its command's `plan` (thresher/app/commands/) on its arguments; a command
    without one (demo, serve, eval, ...) costs nothing here."""
    estimate = call.command.plan
    e = estimate(call.args, sizes, t, cluster) if estimate else Estimate()
    e.step, e.command = i, call.name
    return e


def plan_job(job, cluster: str | None = None) -> dict:
    t = load_throughputs()
    c = load_cluster(cluster or job.plan.get("cluster"))
    sizes = Sizes(job.plan)
    steps = [estimate_step(s.index, s.call, sizes, t, c) for s in job.steps]
    used = sorted({k.split(" ")[0] for e in steps for k in e.inputs})
    return {
        "job": job.name,
        "path": job.path,
        "out": job.out,
        "cluster": c,
        "steps": steps,
        "wall_s": sum(e.wall_s(c) for e in steps),
        "cpu_hours": sum(e.cpu_s for e in steps) / 3600,
        "gpu_hours": sum(e.gpu_s for e in steps) / 3600,
        "disk_bytes": sum(e.disk_bytes for e in steps),
        "object_store_bytes": max((e.object_store_bytes for e in steps), default=0.0),
        "throughputs": {k: t[k] for k in used},
    }


def _human_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 172800 else f"{s / 86400:.1f} days"


def _human_bytes(b: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b / 1e3:.3g} KB"


def render(p: dict) -> str:
    c: Cluster = p["cluster"]
    lines = [
        f"plan for job {p['job']} ({p['path']})",
        f"cluster: {c.name}: {c.nodes} node(s), {c.cpus} CPUs, {c.gpus} GPUs, {c.memory_gb:,.0f} GB memory, "
        f"{c.object_store_gb:,.0f} GB object store"
        + (f", {c.disk_gb:,.0f} GB disk" if c.disk_gb else "")
        + f" ({c.source})",
        "",
        f"{'step':4s} {'command':10s} {'wall':>9s} {'CPU-h':>9s} {'GPU-h':>8s} {'disk':>9s}  what",
    ]
    for e in p["steps"]:
        lines.append(
            f"{e.step:<4d} {e.command:10s} {_human_time(e.wall_s(c)):>9s} {e.cpu_s / 3600:9.3g} "
            f"{e.gpu_s / 3600:8.3g} {_human_bytes(e.disk_bytes):>9s}  {e.what}"
        )
    lines += [
        "",
        f"total: wall {_human_time(p['wall_s'])}, {p['cpu_hours']:,.3g} CPU-hours, "
        f"{p['gpu_hours']:,.3g} GPU-hours, {_human_bytes(p['disk_bytes'])} on disk, peak object store "
        f"{_human_bytes(p['object_store_bytes'])}",
    ]
    if "://" in p["out"]:
        lines.append(f"storage: {_human_bytes(p['disk_bytes'])} on {p['out'].split('://')[0]}:// (the job's out)")
    elif c.disk_gb and p["disk_bytes"] > c.disk_gb * 1e9:
        lines.append(
            f"warning: the job writes {_human_bytes(p['disk_bytes'])}, more than the cluster's "
            f"{c.disk_gb:,.0f} GB of disk: put `out` on object storage (s3://...) or add disk"
        )
    for e in p["steps"]:
        lines += [f"warning: step {e.step} ({e.command}): {w}" for w in e.warnings]
        if c.head_memory_gb and e.driver_bytes > c.head_memory_gb * 1e9:
            lines.append(
                f"warning: step {e.step} ({e.command}) holds {_human_bytes(e.driver_bytes)} in one process, "
                f"more than the head node's {c.head_memory_gb:,.0f} GB"
                + (
                    "; `thresher dedup --partitions N` runs exact, perceptual and semantic dedup as Ray tasks"
                    if e.command == "dedup"
                    else ""
                )
            )
    if p["object_store_bytes"] > c.object_store_gb * 1e9:
        lines.append(
            f"warning: peak object store {_human_bytes(p['object_store_bytes'])} exceeds "
            f"{c.object_store_gb:,.0f} GB: Ray will spill to local disk"
        )
    lines += [
        "",
        "assumes work divides evenly over the cluster and stages run one after another; start-up costs are left out",
        "",
        "throughputs used (configs/throughputs.yaml):",
    ]
    for k, v in p["throughputs"].items():
        lines.append(f"  {k}: {v['rate']:,.4g} {v['unit']}  [{v['source']}; {v['measured']}]")
    return "\n".join(lines)
