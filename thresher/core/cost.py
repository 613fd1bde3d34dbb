"""What a `--plan` cost model is written in: `Sizes`, `Cluster`, `Estimate`, `rate` and the model sizes.

`thresher run JOB --plan` (thresher/app/plan.py) costs each step with its command's cost model, which
lives beside the stage it costs (`cost.py` in thresher/synthetic, thresher/stages/{acquire,features,
dedup,filter,subset}, thresher/audit and thresher/experiments; k-means' in thresher/algo/cost.py). This
module is what they share, low enough for every layer to import: the sizes that flow between a job's
steps (`Sizes`), the cluster a job runs on (`Cluster`), one step's estimate (`Estimate`), a measured
throughput of configs/throughputs.yaml (`rate`), and a model's embedding width, forward GFLOPs and
parameter count (`embed_dim`, `gflops`, `param_count`; `scorer_dim` for a scorer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from thresher.core.errors import InputError

SYNTH_BYTES_PER_SAMPLE = 35_000  # the synthetic pool at DataComp's 512 px: 664 MB of shards / 18,940 samples
SYNTH_SUCCESS = 0.947  # its share of URLs that download (planted failures: 404, timeouts, opt-outs)


@dataclass
class Cluster:
    name: str
    nodes: int
    cpus: int
    gpus: int
    memory_gb: float
    object_store_gb: float
    disk_gb: float | None
    source: str
    head_memory_gb: float = 0.0  # the driver's node: what a step that runs in one process can hold


@dataclass
class Estimate:
    step: int = 0  # set by estimate_step: a command's plan does not know its place in the job
    command: str = ""
    what: str = ""
    cpu_s: float = 0.0  # core-seconds of work
    gpu_s: float = 0.0  # GPU-seconds of work
    disk_bytes: float = 0.0  # what the step leaves on disk
    object_store_bytes: float = 0.0  # peak in flight through Ray's object store
    inputs: list[str] = field(default_factory=list)  # throughputs.yaml keys used
    cores: int | None = None  # how many cores the step can use at most (in one process), when not the cluster's
    driver_bytes: float = 0.0  # what it holds in one process on the head node
    warnings: list[str] = field(default_factory=list)

    def wall_s(self, c: Cluster) -> float:
        cores = min(c.cpus, self.cores) if self.cores else c.cpus
        return max(self.cpu_s / max(1, cores), self.gpu_s / c.gpus if c.gpus else 0.0)


class Sizes:
    """What flows between steps: samples in the pool, downloaded, and per subset."""

    def __init__(self, plan: dict):
        self.pool = plan.get("pool_samples")
        self.success = float(plan.get("download_success", SYNTH_SUCCESS))
        self.bytes = float(plan.get("bytes_per_sample", SYNTH_BYTES_PER_SAMPLE))
        self.subsets: dict[str, int] = {}  # subset dir -> samples
        self.trusted = int(plan.get("trusted_samples", 2000))
        self.target_images = int(plan.get("target_images", 1000))  # embed-images: ImageNet-1k train is 1,281,167

    @property
    def downloaded(self) -> float:
        if self.pool is None:
            raise InputError("the plan needs the pool's size: a synth step, or plan.pool_samples in the job")
        return self.pool * self.success


def rate(t: dict, key: str) -> float:
    """One measured throughput of configs/throughputs.yaml."""
    return float(t[key]["rate"])


def with_ratio(key: str, scale: float) -> str:
    """A throughputs.yaml key as an estimate's input, with the GFLOPs ratio it was scaled by (if any)."""
    return key + ("" if scale == 1.0 else f" x{scale:.3g} (GFLOPs ratio)")


# the scorers DataComp's metadata brings (import-metadata's defaults) and the models behind them
DATACOMP_SCORER_MODELS = {"clip_b32": "ViT-B-32", "clip_l14": "ViT-L-14"}


def scorer_dim(scorer: str) -> int:
    """A scorer's embedding width for an estimate: DataComp's two by their models, else 768 (L/14's, the
    widest in common use: an estimate errs high)."""
    return embed_dim(DATACOMP_SCORER_MODELS[scorer]) if scorer in DATACOMP_SCORER_MODELS else 768


@lru_cache(maxsize=None)  # a grid names the same models many times; each builds a model
def embed_dim(model: str) -> int:
    from thresher.core import models

    models.register_project_models()
    import open_clip

    cfg = open_clip.get_model_config(model)
    return int(cfg["embed_dim"]) if cfg else 512


@lru_cache(maxsize=None)  # a grid names the same models many times; each builds a model
def gflops(model: str) -> float:
    from thresher.core.models import gflops_per_sample

    return gflops_per_sample(model)


@lru_cache(maxsize=None)  # a grid names the same models many times; each builds a model
def param_count(model: str) -> float:
    import open_clip

    from thresher.core import models

    models.register_project_models()
    net = open_clip.create_model(model)
    return float(sum(p.numel() for p in net.parameters()))
