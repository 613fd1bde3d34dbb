"""The real part of benchmarks/ab_calibration.py: null and planted A/B comparisons with real training.

On a demo's pool (`thresher demo --out DIR`, which has `datacomp-none` and `dfn-dedup` decisions), it
makes a bank of replicates, each its own uniform subset draw and its own training seed
(`thresher subset --draws K`, `thresher grid --replicates paired`, the demo's two widths): K_NONE draws
of datacomp-none and K_DFN of dfn-dedup, 2,000 samples each. Then:
- null trials: two disjoint groups of 3 datacomp-none replicates (equal-size uniform draws of one pool
  under one rule: no difference by construction), labelled as two recipes;
- planted trials: 3 datacomp-none replicates against 3 dfn-dedup replicates (dfn-dedup removes 98% of the
  pool's planted mismatched captions, which is what retrieval punishes).
Each trial runs pipeline.compare.analyse, as `thresher compare` does, on image retrieval R@5 at 10x.
Trials share replicates (a trial is valid on its own; the trials are not independent of each other).
The bank is kept in --real-out and reused by a re-run (the grid resumes).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from pipeline import cli, compare, scaling

METRIC = "shapes_retrieval/image_retrieval_recall@5"


def build_bank(demo: str, out: str, k_none: int, k_dfn: int, log=print) -> str:
    pool = os.path.join(demo, "pool")
    subsets = []
    for recipe, k, seed in (("datacomp-none", k_none, 100), ("dfn-dedup", k_dfn, 200)):
        target = os.path.join(out, "subsets", recipe)
        cli.main(["subset", pool, "--recipe", recipe, "--size", "2000", "--draws", str(k), "--seed", str(seed),
                  "--samples-per-shard", "500", "--out", target])
        subsets += [os.path.join(target, f"draw-{i}") for i in range(k)]
    scales = os.path.join(out, "scales.yaml")
    import yaml

    from pipeline import train

    spec = yaml.safe_load(open(train.SCALE_DIR / "demo.yaml"))
    spec["defaults"].pop("seeds", None)
    spec["seeds"] = list(range(max(k_none, k_dfn)))
    with open(scales, "w") as f:
        yaml.safe_dump(spec, f)
    evals = [os.path.join(demo, "source", "eval", s) for s in ("shapes_color", "shapes_retrieval")]
    args = ["grid", *[a for s in subsets for a in ("--subset", s)], "--scale", scales, "--replicates", "paired",
            *[a for e in evals for a in ("--eval-set", e)], "--out", os.path.join(out, "grid")]
    t0 = time.time()
    if cli.main(args) != 0:
        raise SystemExit("the bank's grid failed")
    log(f"bank: {len(subsets)} replicates x 2 widths trained or found in {time.time() - t0:.0f}s")
    return os.path.join(out, "grid", "results.csv")


def trial(df, a_draws, b_draws, a_recipe, b_recipe, level: float):
    sub_a = df[(df.recipe == a_recipe) & df.draw.isin(a_draws)].assign(recipe="arm-a")
    sub_b = df[(df.recipe == b_recipe) & df.draw.isin(b_draws)].assign(recipe="arm-b")
    import pandas as pd

    arm_a, arm_b = compare.arms_from_table(pd.concat([sub_a, sub_b]), "arm-a", "arm-b", METRIC)
    top = max(float(r.x.max()) for r in arm_a.reps)
    c = compare.analyse(arm_a, arm_b, 10 * top, level, compare.FitOptions(n_bootstrap=0))
    return c.measured[2], c.extrapolated


def main(args) -> dict:
    demo = args.real_dir
    if not demo or not os.path.exists(os.path.join(demo, "pool", "decisions", "dfn-dedup")):
        raise SystemExit("the real part needs --real-dir DIR from `thresher demo --out DIR` (or --simulated-only)")
    out = args.real_out or os.path.join(demo, "ab-calibration")
    results = build_bank(demo, out, args.real_null_draws, args.real_planted_draws)
    df = scaling.read_table(results)
    rng = np.random.default_rng(0)
    none = sorted(df[df.recipe == "datacomp-none"].draw.unique())
    dfn = sorted(df[df.recipe == "dfn-dedup"].draw.unique())
    rows = []
    for t in range(args.real_nulls):
        p = rng.permutation(none)
        m, e = trial(df, p[:3], p[3:6], "datacomp-none", "datacomp-none", args.confidence)
        rows.append({"kind": "null", "a": p[:3].tolist(), "b": p[3:6].tolist(), "measured": m.better,
                     "extrapolated": e.better, "measured_diff": m.diff, "measured_ci": [m.lo, m.hi],
                     "extrapolated_diff": e.diff, "extrapolated_ci": [e.lo, e.hi]})
    for t in range(args.real_planted):
        a, b = rng.permutation(none)[:3], rng.permutation(dfn)[:3]
        m, e = trial(df, a, b, "datacomp-none", "dfn-dedup", args.confidence)
        rows.append({"kind": "planted", "a": a.tolist(), "b": b.tolist(), "measured": m.better,
                     "extrapolated": e.better, "measured_diff": m.diff, "measured_ci": [m.lo, m.hi],
                     "extrapolated_diff": e.diff, "extrapolated_ci": [e.lo, e.hi]})
    for r in rows:
        print(f"  {r['kind']:8s} A draws {r['a']} B draws {r['b']}: measured {r['measured'] or '-':2s} "
              f"{r['measured_diff']:+.4f} [{r['measured_ci'][0]:+.4f}, {r['measured_ci'][1]:+.4f}]  "
              f"10x {r['extrapolated'] or '-':2s} {r['extrapolated_diff']:+.4f} "
              f"[{r['extrapolated_ci'][0]:+.4f}, {r['extrapolated_ci'][1]:+.4f}]")
    spread = run_spread(df)
    summary = {}
    for kind in ("measured", "extrapolated"):
        fp = sum(r[kind] is not None for r in rows if r["kind"] == "null")
        hit = sum(r[kind] == "b" for r in rows if r["kind"] == "planted")
        summary[kind] = {"false_better": fp, "nulls": args.real_nulls, "found": hit, "planted": args.real_planted}
        print(f"real {kind}: {fp} false 'better' verdict(s) in {args.real_nulls} nulls (bound: at most 1); planted "
              f"difference found in {hit} of {args.real_planted} (bound: at least 4)")
    print(f"real run-to-run spread (SD of the error over replicates, per scale and checkpoint, datacomp-none): "
          f"{json.dumps(spread)}")
    with open(os.path.join(out, "calibration.json"), "w") as f:
        json.dump({"trials": rows, "summary": summary, "spread": spread}, f, indent=1, default=float)
    return summary


def run_spread(df) -> dict:
    sub = df[df.recipe == "datacomp-none"]
    out = {}
    for (scale, epoch), g in sub.groupby(["scale", "epoch"]):
        out[f"{scale}/e{epoch}"] = round(float((1 - g[METRIC]).std(ddof=1)), 4)
    return out
