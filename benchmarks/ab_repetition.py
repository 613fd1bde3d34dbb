"""Does the verdict see a ranking that crosses once a small subset repeats? `python benchmarks/ab_repetition.py DEMO_DIR`.

The synthetic world's crossing (docs/scaling-laws.md, "The larger check"): dfn-dedup beats datacomp-none
on 2,000-sample subsets up to 4 epochs and loses from 6 on; at thresher-w128 after 16k samples seen
(8 epochs) datacomp-none was measured better (+0.054, 6 runs against 6). This benchmark trains a grid
whose largest run sees 8k samples, with repetition as a scale axis: the demo's 2,000-sample subsets at 3
widths, and a uniform quarter of each (500 samples: 8k samples seen is 16 epochs) at the two small widths,
3 seeds each. Then it asks `thresher compare` for w128 at 16k samples seen on 2,000-sample subsets: the
joint law (repetition fitted per recipe) and the per-replicate estimator (at that compute: it knows no
subset sizes). The answer must be datacomp-none better or undecided, never dfn-dedup better.

The runs the demo's grid already trained (w32 and w64 at 8k, seeds 0-2) are reused (hard links), so it
trains 6 runs of w128 and 12 small quarter-size runs: about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

# the repository root, not benchmarks/: benchmarks/select.py would shadow the standard library's select
sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

from thresher.app import cli  # noqa: E402

RECIPES = ("datacomp-none", "dfn-dedup")
METRIC = "shapes_retrieval/image_retrieval_recall@5"
SCALES = """seeds: [0, 1, 2]
defaults: {batch_size: 128, lr: 1.0e-3, warmup: 10, wd: 0.1, schedule: const, checkpoints: 4, precision: fp32,
           workers: 1, shard_image_size: 80}
scales:
"""
SMALL = "  - {name: w32-const-8k, model: thresher-w32, samples_seen: 8192}\n  - {name: w64-const-8k, model: thresher-tiny, samples_seen: 8192}\n"
LARGE = "  - {name: w128-const-8k, model: thresher-w128, samples_seen: 8192}\n"


def run(args: list[str]) -> None:
    print("$ thresher " + " ".join(args), flush=True)
    if cli.main(args) != 0:
        raise SystemExit(f"thresher {args[0]} failed")


def quarter_subsets(demo: str, bank: str, seed: int) -> list[str]:
    """A uniform quarter of each demo subset, as a uid_list recipe (RECIPE-quarter) on the demo's pool."""
    out = []
    rng = np.random.default_rng(seed)
    for r in RECIPES:
        full = os.path.join(bank, f"{r}-2000.npy")
        run(["subset", os.path.join(demo, "pool"), "--recipe", r, "--size", "2000", "--uids-only", full])
        uids = np.load(full)
        q = np.sort(uids[rng.choice(len(uids), len(uids) // 4, replace=False)])
        path = os.path.join(bank, f"{r}-quarter.npy")
        np.save(path, q)
        recipe = os.path.join(bank, f"{r}-quarter.yaml")
        with open(recipe, "w") as f:
            f.write(
                f"name: {r}-quarter\ndescription: a uniform quarter of the demo's {r} subset\n"
                f"steps:\n  - {{filter: uid_list, params: {{path: {path}}}}}\n"
            )
        dest = os.path.join(bank, "subsets", f"{r}-quarter")
        if not os.path.exists(os.path.join(dest, "manifest.json")):
            run(["subset", os.path.join(demo, "pool"), "--recipe", recipe, "--size", str(len(q)), "--out", dest])
        out.append(dest)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", help="a demo directory (thresher demo --out DIR)")
    ap.add_argument("--out", default=None, help="the bank (default DEMO/ab-repetition)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    demo = os.path.abspath(args.demo)
    bank = os.path.abspath(args.out or os.path.join(demo, "ab-repetition"))
    os.makedirs(bank, exist_ok=True)
    quarters = quarter_subsets(demo, bank, args.seed)
    full = [os.path.join(demo, "subsets", r) for r in RECIPES]
    for name, body in (("full.yaml", SMALL + LARGE), ("quarter.yaml", SMALL)):
        with open(os.path.join(bank, name), "w") as f:
            f.write(SCALES + body)
    # the demo grid's runs at the small widths are the same runs: link them instead of retraining
    for r in RECIPES:
        for sc in ("w32-const-8k", "w64-const-8k"):
            for s in range(3):
                src = os.path.join(demo, "grid", "runs", r, sc, f"d0-s{s}")
                dst = os.path.join(bank, "grid-full", "runs", r, sc, f"d0-s{s}")
                if os.path.isdir(src) and not os.path.exists(dst):
                    shutil.copytree(src, dst, copy_function=os.link)
    evals = [os.path.join(demo, "source", "eval", e) for e in ("shapes_color", "shapes_retrieval")]
    ev = [a for e in evals for a in ("--eval-set", e)]
    run(
        [
            "grid",
            *[a for d in full for a in ("--subset", d)],
            "--scale",
            os.path.join(bank, "full.yaml"),
            *ev,
            "--out",
            os.path.join(bank, "grid-full"),
        ]
    )
    run(
        [
            "grid",
            *[a for d in quarters for a in ("--subset", d)],
            "--scale",
            os.path.join(bank, "quarter.yaml"),
            *ev,
            "--out",
            os.path.join(bank, "grid-quarter"),
        ]
    )
    import pandas as pd

    df = pd.concat([pd.read_csv(os.path.join(bank, g, "results.csv")) for g in ("grid-full", "grid-quarter")])
    df["recipe"] = df["recipe"].str.replace("-quarter", "", regex=False)  # the same recipe at a quarter size
    table = os.path.join(bank, "results.csv")
    df.to_csv(table, index=False)
    target = ["--target-model", "thresher-w128", "--target-samples", "16384", "--target-subset-size", "2000"]
    common = ["--a", "datacomp-none", "--b", "dfn-dedup", "--metric", METRIC]
    run(["compare", table, *common, *target, "--out", os.path.join(bank, "joint")])
    run(
        [
            "compare",
            table,
            *common,
            "--target-compute",
            "684",
            "--estimator",
            "replicates",
            "--out",
            os.path.join(bank, "replicates"),
        ]
    )
    outcome = {}
    for est in ("joint", "replicates"):
        r = json.load(open(os.path.join(bank, est, "compare.json")))
        better = r["better"]
        outcome[est] = better
        print(f"{est}: {r['verdict']}")
        print(
            f"  outcome against the measured answer (datacomp-none better at w128, 16k, 8 epochs): "
            f"{'WRONG' if better == 'dfn-dedup' else 'right' if better == 'datacomp-none' else 'undecided'}"
        )
    return 1 if outcome["joint"] == "dfn-dedup" else 0


if __name__ == "__main__":
    sys.exit(main())
