"""Dedup stage's settings: `DedupConfig`, what `thresher dedup POOL [--config FILE]` reads from a YAML
file or a preset in configs/dedup/ (every field is also a flag). `validate` refuses the combinations the
partitioned path (`partitions: N`, partitioned.py) cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass

from thresher.algo import hashes
from thresher.core.config import opt
from thresher.core.errors import InputError


@dataclass
class DedupConfig:
    exact: bool = opt(True, "drop copies with the same sha256")
    perceptual: bool = opt(True, "drop copies whose PDQ hashes are within pdq_radius")
    pdq_radius: int = opt(31, "PDQ Hamming radius (31 is the usual match threshold)")
    pdq_min_quality: int = opt(50, "ignore PDQ hashes of lower quality (PDQ's authors advise 50: too little detail)")
    semantic: bool = opt(True, "SemDeDup on image embeddings of `scorer`")
    scorer: str = opt("clip_tiny", "the scorer whose image embeddings (and CLIP scores) are used")
    threshold: float = opt(0.95, "cosine at or above which two images are semantic duplicates (1 - eps)")
    clusters: int = opt(0, "k-means clusters; 0 = about one per 1,000 samples")
    probes: int = opt(2, "nearest clusters each sample is compared within")
    kmeans_iters: int = opt(20, "k-means iterations")
    kmeans_flat_max: int = opt(
        16_384,
        "with partitions: past this many clusters k-means is hierarchical (sqrt(k) coarse clusters, each split "
        "into its share; rows go to partitions by coarse cluster)",
    )
    gpu: bool = opt(True, "use GPU FAISS (k-means) and torch (within-cluster cosine) when a GPU is usable")
    ray_tasks: int = opt(0, "spread the within-cluster work over this many Ray tasks; 0 = in this process")
    partitions: int = opt(
        0,
        "run every step as Ray tasks over this many partitions (by sha256, by PDQ byte, by "
        "cluster), so no process holds the pool; needs pdq_radius <= 31 and probes 1; 0 = in this process",
    )
    contamination: bool = opt(True, "drop near-copies of evaluation images (needs eval_sets)")
    eval_sets: list[str] = opt(help="evaluation sets (CLIP_benchmark WebDataset dirs) to check against", factory=list)
    keep: str = opt("clip_score", "which sample of a group survives: clip_score, first or random")
    seed: int = opt(0, "seed for k-means and keep=random")

    def validate(self) -> None:
        if self.keep not in ("clip_score", "first", "random"):
            raise InputError(f"keep must be clip_score, first or random, not {self.keep!r}")
        if not 0 < self.threshold <= 1:
            raise InputError("threshold must be in (0, 1]")
        if self.partitions and self.perceptual and self.pdq_radius >= hashes.CODE_BYTES:
            raise InputError(
                f"partitioned PDQ dedup finds pairs that share one of the code's {hashes.CODE_BYTES} bytes, "
                f"which every pair within {hashes.CODE_BYTES - 1} bits does: set pdq_radius <= "
                f"{hashes.CODE_BYTES - 1} (or perceptual: false)"
            )
        if self.partitions and self.semantic and self.probes != 1:
            raise InputError(
                "partitioned SemDeDup puts each sample in its one nearest cluster, as SemDeDup's "
                "paper does: set probes: 1"
            )
