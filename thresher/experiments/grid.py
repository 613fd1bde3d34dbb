"""`thresher grid --subset A --subset B --scale S1 --scale S2 ... --eval-set E ... --out GRID`.

Every (subset, scale, seed) is one run of the scale's fixed recipe (thresher/experiments/train.py) followed by
zero-shot evaluation of its checkpoints (thresher/experiments/evaluate.py), as one task (`RunStage`): one GPU per task
where the cluster has GPUs, else `cpus_per_run` CPUs. Seeds are replicates: a scale file's `seeds:`
trains each scale once per seed, and several draws of one recipe (`thresher subset --draws K`) are
replicates of the subset; `--replicates paired` trains draw k with the k-th seed only (each replicate its
own draw and seed), `crossed` (the default) every draw with every seed. Scales with `shard_image_size`
share one cache of resized shards, GRID/_shards. Subsets of one recipe at several sizes (a quarter-size
draw, say) are runs of their own, so the same samples seen means more repetitions of a smaller subset:
`thresher compare` fits that (thresher/experiments/joint.py). Runs live in GRID/runs/RECIPE/SCALE/dDRAW-sSEED
(nSIZE-dDRAW-sSEED for a recipe at several sizes); a
finished run (train_manifest.json, and eval.json covering every evaluation set) is not redone, so a
grid resumes. Each run fixes torch's threads (`cpus_per_run`) and its seeds, so the same grid from
scratch on the same machine gives the same results.csv (tests/test_compare.py).

GRID/results.csv has a row per data point: subset, recipe, draw, seed, model, scale, family,
samples_seen, gflops_per_sample, gflops_total, lr_scheduler, epoch, total_epochs, subset_size,
data_epochs (samples seen / subset size: how often the subset was repeated), then every metric as SET/METRIC.
Under a `const` schedule every checkpoint past warm-up is a data point (at the samples seen so far);
otherwise only the last checkpoint is.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import ClassVar

from thresher.core import models, runtime
from thresher.core.config import check_name, to_dict
from thresher.core.errors import InputError, StageError
from thresher.exec import execute
from thresher.exec.stage import Stage, run_stage
from thresher.experiments import train
from thresher.experiments.evaluate import evaluate_run
from thresher.stages.subset import subset as subsets


@dataclass
class RunStage(Stage):
    """One (subset, scale, run directory) trained, then its checkpoints evaluated. A run's completion is
    its own files, not an executor's marker: train_manifest.json, and eval.json covering every asked
    evaluation set (a set added later re-evaluates finished runs, without retraining)."""

    eval_sets: list[str]
    threads: int | None
    cache: str
    gpus: int

    name: ClassVar[str] = "grid"
    unit: ClassVar[str] = "runs"
    timed: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.resources = execute.Resources(cpus=1, gpus=1) if self.gpus else execute.Resources(cpus=self.threads)

    def done(self, job: tuple[str, dict, str]) -> bool:
        run_dir = job[2]
        ev = os.path.join(run_dir, "eval.json")
        manifest = os.path.join(run_dir, "train_manifest.json")
        return os.path.exists(manifest) and os.path.exists(ev) and _covers(ev, self.eval_sets)

    def process(self, job: tuple[str, dict, str]) -> dict:
        subset_dir, scale, run_dir = job
        with models.torch_threads(self.threads):  # as they were afterwards (the local executor's process)
            sc = train.Scale(**scale)
            manifest = train.train_scale(subset_dir, sc, run_dir, log=lambda *_: None, cache=self.cache)
            evals = evaluate_run(run_dir, self.eval_sets, log=lambda *_: None)
        return {
            "run": run_dir,
            "seconds": manifest["seconds"],
            "samples_seen": manifest["samples_seen"],
            "checkpoints": len(evals["checkpoints"]),
        }


def rows_for(run_dir: str, subset_dir: str, recipe: str, draw: int = 0, size: int | None = None) -> list[dict]:
    m = runtime.read_json(os.path.join(run_dir, "train_manifest.json"))
    ev = runtime.read_json(os.path.join(run_dir, "eval.json"))
    scale = m["scale"]
    by_sha = {c["sha256"]: c for c in m["checkpoints"]}
    out = []
    for e in ev["checkpoints"]:
        ck = by_sha.get(e["checkpoint_sha256"])
        if ck is None:
            continue
        last = ck["epoch"] == scale["checkpoints"]
        if scale["schedule"] == "const" and ck["in_warmup"] or scale["schedule"] != "const" and not last:
            continue
        row = {
            "subset": subset_dir,
            "recipe": recipe,
            "draw": draw,
            "seed": scale["seed"],
            "model": scale["model"],
            "scale": scale["name"],
            "family": scale["family"],
            "samples_seen": ck["samples_seen"],
            "gflops_per_sample": m["gflops_per_sample"],
            "gflops_total": m["gflops_per_sample"] * ck["samples_seen"],
            "lr_scheduler": scale["schedule"],
            "epoch": ck["epoch"],
            "total_epochs": scale["checkpoints"],
            "subset_size": size,
            "data_epochs": ck["samples_seen"] / size if size else None,
        }
        for set_name, metrics in e["metrics"].items():
            for k, v in metrics.items():
                row[f"{set_name}/{k}"] = v
        out.append(row)
    return out


REPLICATES = ("crossed", "paired")


def draw_of(manifest: dict) -> int:
    return int((manifest.get("draw") or {}).get("index", 0))


@runtime.holds(lambda subset_dirs, scale_specs, eval_sets, out, *a, **k: out, "this grid")
def run_grid(
    subset_dirs: list[str],
    scale_specs: list[str],
    eval_sets: list[str],
    out: str,
    cpus_per_run: int | None = None,
    ray_address: str | None = None,
    replicates: str = "crossed",
    log=print,
) -> dict:
    if not eval_sets:
        raise InputError("give at least one --eval-set")
    if replicates not in REPLICATES:
        raise InputError(f"--replicates {replicates!r}: give one of {', '.join(REPLICATES)}")
    manifests = {d: subsets.read_manifest(d) for d in subset_dirs}
    recipes = {d: check_name(m["recipe"], "recipe", f"{d}/manifest.json") for d, m in manifests.items()}
    draws = {d: draw_of(m) for d, m in manifests.items()}
    sizes = {d: int(m["size"]) for d, m in manifests.items()}
    if len({(recipes[d], sizes[d], draws[d]) for d in subset_dirs}) != len(subset_dirs):
        raise InputError(
            f"two subsets are the same draw of one recipe at one size: "
            f"{ {d: f'{recipes[d]} draw {draws[d]} of {sizes[d]}' for d in subset_dirs} }"
        )
    several = {r for r in recipes.values() if len({sizes[d] for d in subset_dirs if recipes[d] == r}) > 1}
    if len(set(sizes.values())) != 1:
        log(
            f"[grid] subsets differ in size {sizes}: results.csv's subset_size lets `thresher compare` fit "
            f"repetition (epochs = samples seen / subset size); compare recipes at one size"
        )
    scales = [sc for spec in scale_specs for sc in train.load_scales(spec)]
    if len({(s.name, s.seed) for s in scales}) != len(scales):
        raise InputError(f"scale names repeat: {[s.name for s in scales]}")
    pairs = _pairs(subset_dirs, scales, draws, replicates)
    ex = execute.start(ray_address)
    gpus = ex.gpus()
    cpus = cpus_per_run or ex.cpus()
    stage = RunStage(
        [os.path.abspath(e) for e in eval_sets],
        1 if gpus else cpus,
        os.path.abspath(os.path.join(out, "_shards")),
        gpus,
    )
    jobs, done = [], []
    for d, sc in pairs:
        # a recipe drawn at several sizes names the size too (one size keeps the earlier names, so grids resume)
        size = f"n{sizes[d]}-" if recipes[d] in several else ""
        run_dir = os.path.join(out, "runs", recipes[d], sc.name, f"{size}d{draws[d]}-s{sc.seed}")
        job = (d, to_dict(sc), run_dir)
        if stage.done(job):
            done.append((d, run_dir))
        else:
            jobs.append(job)
    log(
        f"[grid] {len(done) + len(jobs)} runs ({len(subset_dirs)} subsets x {len({s.name for s in scales})} "
        f"scales x {len({s.seed for s in scales})} seed(s), {replicates}); {len(done)} done already, "
        f"{len(jobs)} to run ({'1 GPU' if gpus else f'{cpus} CPU(s)'} each)"
    )

    def finished(job, r):
        log(
            f"[grid] {os.path.relpath(job[2], out)}: {r['samples_seen']} samples in {r['seconds']:.0f}s, "
            f"{r['checkpoints']} checkpoint(s) evaluated"
        )
        done.append((job[0], job[2]))

    # no stall limit here: each training run has its own watchdog (train.train_scale); a failed run is
    # reported and the others go on
    outcome = run_stage(stage, jobs, stall_s=None, on_result=finished, quiet=True, log=log)
    failed = {job[2]: why for job, why in ((outcome.items[i], w) for i, w in outcome.failed.items())}
    for run_dir, why in failed.items():
        log(f"[grid] {run_dir} failed: {why}")
    rows = [
        r
        for d, run_dir in sorted(done, key=lambda x: x[1])
        for r in rows_for(run_dir, d, recipes[d], draws[d], sizes[d])
    ]
    write_results(rows, os.path.join(out, "results.csv"))
    if failed:
        raise StageError(
            f"grid: {len(failed)} run(s) failed ({'; '.join(f'{k}: {v}' for k, v in failed.items())}); "
            f"the rest are in {out}/results.csv; run the same command again to retry them"
        )
    log(f"[grid] {len(rows)} data points -> {out}/results.csv")
    return {"results": os.path.join(out, "results.csv"), "rows": len(rows), "runs": len(done)}


def _pairs(subset_dirs, scales, draws, replicates):
    """(subset, scale) to train: every pair (crossed), or draw k with the k-th seed of each scale (paired)."""
    if replicates == "crossed":
        return [(d, sc) for d in subset_dirs for sc in scales]
    out = []
    for name in dict.fromkeys(s.name for s in scales):
        seeds = [s for s in scales if s.name == name]
        for d in subset_dirs:
            if draws[d] >= len(seeds):
                raise InputError(
                    f"--replicates paired: draw {draws[d]} of {d} has no seed of its own in scale "
                    f"{name} (seeds {[s.seed for s in seeds]}); give as many seeds as draws"
                )
            out.append((d, seeds[draws[d]]))
    return out


def _covers(eval_json: str, eval_sets: list[str]) -> bool:
    names = {os.path.basename(os.path.normpath(e)) for e in eval_sets}
    ev = runtime.read_json(eval_json)
    return bool(ev["checkpoints"]) and all(names <= set(c["metrics"]) for c in ev["checkpoints"])


FIRST = [
    "subset",
    "recipe",
    "draw",
    "seed",
    "model",
    "scale",
    "family",
    "samples_seen",
    "gflops_per_sample",
    "gflops_total",
    "lr_scheduler",
    "epoch",
    "total_epochs",
    "subset_size",
    "data_epochs",
]


def write_results(rows: list[dict], path: str) -> None:
    metrics = sorted({k for r in rows for k in r} - set(FIRST))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIRST + metrics)
        w.writeheader()
        w.writerows(rows)
