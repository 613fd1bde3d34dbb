"""GPU checks and figures for the training and dedup stages (run where there is a CUDA GPU).

    python benchmarks/gpu.py [--work DIR] [--small-samples 65536] [--workers 14] [--json OUT.json]

Generates the synthetic world's trusted set (2,000 clean pairs) and evaluation sets (or takes them from
`--src`), then on CUDA:
- trains tiny scales (a CLIP and a CoCa) with `train_scale` and evaluates them with `evaluate_run`,
  the very functions a grid's Ray task runs; prints wall time, samples/s and the metrics;
- runs DataComp's small recipe (ViT-B-32, batch 4096, amp, 224 px) for `--small-samples` samples seen
  instead of 12.8M, printing the steady samples/s that open_clip_train logs (data loading included) and
  what 12.8M samples would take at that rate: the figure `thresher run --plan` uses for a GPU grid;
- checks SemDeDup's within-cluster products on CUDA against numpy: the same pairs, and both timings.
The reference for each GPU figure is the same step on this machine's CPU where that is practical
(dedup), or the CPU figure from benchmarks/train.py (tiny scales).
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not benchmarks/ (select.py)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def steady_rate(run_dir: Path) -> float | None:
    """Median of the samples/s open_clip_train logs per step, past the first logged step."""
    rates = [float(m) for m in re.findall(r", ([0-9.]+)/s, ", (run_dir / "run" / "out.log").read_text())]
    rates = sorted(rates[1:] or rates)
    return rates[len(rates) // 2] if rates else None


def train_and_eval(data: str, scale, out: Path, eval_sets: list[str]) -> dict:
    from thresher.experiments import train
    from thresher.experiments.evaluate import evaluate_run

    t0 = time.perf_counter()
    m = train.train_scale(data, scale, str(out), log=lambda *_: None)
    t1 = time.perf_counter()
    ev = evaluate_run(str(out), eval_sets, log=lambda *_: None) if eval_sets else None
    t2 = time.perf_counter()
    return {
        "scale": scale.name,
        "model": scale.model,
        "precision": m["precision"],
        "samples_seen": m["samples_seen"],
        "train_wall_s": round(t1 - t0, 1),
        "train_s": m["seconds"],
        "samples_per_s": m["samples_per_second"],
        "steady_samples_per_s": steady_rate(out),
        "eval_s": round(t2 - t1, 1),
        "metrics": ev["checkpoints"][-1]["metrics"] if ev else None,
    }


def dedup_check(n: int = 200_000, d: int = 512, groups: int = 100, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from thresher.stages.dedup.semantic import _within

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[1::50] = x[0::50][: len(x[1::50])] + 0.1 * rng.standard_normal((len(x[1::50]), d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    members = np.array_split(rng.permutation(n), groups)
    t0 = time.perf_counter()
    cpu = _within(x, members, 0.9, 4096)
    t1 = time.perf_counter()
    _within(x, members[:2], 0.9, 4096, "cuda")  # warm-up: CUDA context and kernels
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    gpu = _within(x, members, 0.9, 4096, "cuda")
    t3 = time.perf_counter()
    same = {tuple(p) for p in cpu.tolist()} == {tuple(p) for p in gpu.tolist()}
    return {
        "n": n,
        "dim": d,
        "groups": groups,
        "pairs_cpu": len(cpu),
        "pairs_gpu": len(gpu),
        "same_pairs": same,
        "cpu_s": round(t1 - t0, 2),
        "gpu_s": round(t3 - t2, 2),
        "speedup": round((t1 - t0) / (t3 - t2), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--small-samples", type=int, default=65536, help="samples seen by the small-recipe probe")
    ap.add_argument("--workers", type=int, default=14, help="data-loading processes for the small recipe")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--parts", default="tiny,small,dedup", help="which checks to run (comma-separated)")
    ap.add_argument(
        "--src",
        default=None,
        help="an existing `thresher synth` output to use instead of generating one (its trusted/ and eval/ sets)",
    )
    args = ap.parse_args()
    import torch

    from thresher.experiments import train
    from thresher.synthetic.synth import SynthConfig, generate

    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA GPU visible to torch")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(f"device: {report['device']}, torch {report['torch']}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        src = Path(args.src) if args.src else Path(tmp) / "src"
        if not args.src:
            generate(
                src,
                SynthConfig(samples=100, trusted=2000, eval_classification=500, eval_retrieval=300),
                log=lambda *_: None,
            )
        data = str(src / "trusted")
        eval_sets = sorted(str(p.parent) for p in (src / "eval").glob("*/dataset_type.txt"))
        runs, parts = [], args.parts.split(",")
        for spec in ("tiny/w32-8k", "tiny/w128-8k", "tiny-coca/coca-w32-2k") if "tiny" in parts else ():
            (sc,) = train.load_scales(spec)
            runs.append(train_and_eval(data, sc, Path(tmp) / "runs" / sc.name, eval_sets))
            print(json.dumps(runs[-1]), flush=True)
        if "small" in parts:
            (small,) = train.load_scales("small")
            probe = dataclasses.replace(
                small, name="small-probe", samples_seen=args.small_samples, workers=args.workers
            )
            r = train_and_eval(data, probe, Path(tmp) / "runs" / "small-probe", [])
            rate = r["steady_samples_per_s"] or r["samples_per_s"]
            r["small_12.8M_hours_at_steady_rate"] = round(small.samples_seen / rate / 3600, 2)
            runs.append(r)
            print(json.dumps(r), flush=True)
        report["runs"] = runs
    if "dedup" in parts:
        report["dedup_within_cluster"] = dedup_check()
        print(json.dumps(report["dedup_within_cluster"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
