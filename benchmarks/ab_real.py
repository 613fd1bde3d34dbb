"""The real part of benchmarks/ab_calibration.py: null and planted A/B comparisons with real training.

On a demo's pool (`thresher demo --out DIR`, which has `datacomp-none` and `dfn-dedup` decisions), it
makes a bank of replicates, each its own uniform subset draw and its own training seed
(`thresher subset --draws K`, `thresher grid --replicates paired`, the demo's two widths): K_NONE draws
of datacomp-none and K_DFN of dfn-dedup, 2,000 samples each. Then:
- null trials: two disjoint groups of --real-replicates (5) datacomp-none replicates (equal-size uniform
  draws of one pool under one rule: no difference by construction), labelled as two recipes;
- planted trials: 5 datacomp-none replicates against 5 dfn-dedup replicates (dfn-dedup removes 98% of the
  pool's planted mismatched captions, which is what retrieval punishes at these scales).
Each trial runs pipeline.compare.analyse, as `thresher compare` does, on image retrieval R@5: the
measured verdict at the largest compute (92 GFLOPs) and the extrapolated one at 3x (276 GFLOPs). Trials
share replicates (a trial is valid on its own; the trials are not independent of each other).

The larger check (--real-larger-draws K): the first K draws of each recipe also train w128 at 16k
samples seen (jobs/ab_test.yaml's third width, up to 684 GFLOPs), which measures the answer beyond the
bank's grid: the measured verdict at each w128 checkpoint, and backtests of the 2-width fits against
them. This is where the synthetic world's ranking turns out to cross (docs/scaling-laws.md).

The bank is kept in --real-out and reused by a re-run (the grid resumes).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from thresher.app import cli
from thresher.experiments import compare, scaling

METRIC = "shapes_retrieval/image_retrieval_recall@5"
FACTOR = 3.0  # the extrapolated verdict's target: 3x the bank's largest compute, where the larger check measures
# the answer (dfn-dedup better at 171 and 342 GFLOPs); 10x lies past the crossing the larger check finds


def build_bank(demo: str, out: str, k_none: int, k_dfn: int, log=print) -> str:
    pool = os.path.join(demo, "pool")
    subsets = []
    for recipe, k, seed in (("datacomp-none", k_none, 100), ("dfn-dedup", k_dfn, 200)):
        target = os.path.join(out, "subsets", recipe)
        cli.main(
            [
                "subset",
                pool,
                "--recipe",
                recipe,
                "--size",
                "2000",
                "--draws",
                str(k),
                "--seed",
                str(seed),
                "--samples-per-shard",
                "500",
                "--out",
                target,
            ]
        )
        subsets += [os.path.join(target, f"draw-{i}") for i in range(k)]
    scales = os.path.join(out, "scales.yaml")
    import yaml

    from thresher.experiments import train

    spec = yaml.safe_load(open(train.SCALE_DIR / "demo.yaml"))
    spec["defaults"].pop("seeds", None)
    spec["seeds"] = list(range(max(k_none, k_dfn)))
    with open(scales, "w") as f:
        yaml.safe_dump(spec, f)
    evals = [os.path.join(demo, "source", "eval", s) for s in ("shapes_color", "shapes_retrieval")]
    args = [
        "grid",
        *[a for s in subsets for a in ("--subset", s)],
        "--scale",
        scales,
        "--replicates",
        "paired",
        *[a for e in evals for a in ("--eval-set", e)],
        "--out",
        os.path.join(out, "grid"),
    ]
    t0 = time.time()
    if cli.main(args) != 0:
        raise SystemExit("the bank's grid failed")
    log(f"bank: {len(subsets)} replicates x 2 widths trained or found in {time.time() - t0:.0f}s")
    return os.path.join(out, "grid", "results.csv")


def trial(df, a_draws, b_draws, a_recipe, b_recipe, level: float):
    """(measured Difference, extrapolated Difference, held-out points inside/total, backtest outcome)."""
    sub_a = df[(df.recipe == a_recipe) & df.draw.isin(a_draws)].assign(recipe="arm-a")
    sub_b = df[(df.recipe == b_recipe) & df.draw.isin(b_draws)].assign(recipe="arm-b")
    import pandas as pd

    arm_a, arm_b = compare.arms_from_table(pd.concat([sub_a, sub_b]), "arm-a", "arm-b", compare.TableSpec(METRIC))
    top = max(float(r.x.max()) for r in arm_a.reps)
    opts = compare.FitOptions(n_bootstrap=0, estimator="replicates")  # the joint law: not yet in the real part
    c = compare.analyse(arm_a, arm_b, FACTOR * top, level, opts)
    # the smallest width's largest compute: fit at or below it, score the larger width's points above it
    per_scale = {}
    for r in arm_a.reps:
        for x, p in zip(r.x, r.points):
            per_scale[p[0]] = max(per_scale.get(p[0], 0.0), float(x))
    cut = min(per_scale.values())
    held = compare.FitOptions(n_bootstrap=0, fit_below=cut, estimator="replicates")
    fa, fb = compare.arms_from_table(pd.concat([sub_a, sub_b]), "arm-a", "arm-b", compare.TableSpec(METRIC))
    compare.analyse(fa, fb, FACTOR * top, level, held)
    pts = [p for arm in (fa, fb) for p in compare.held_out(arm, level, held)["points"]]
    outcome = compare.backtest(arm_a, arm_b, cut, level, opts)["outcome"]
    return c.measured[2], c.extrapolated, (sum(p["inside_prediction"] for p in pts), len(pts)), outcome


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
        k = args.real_replicates
        m, e, held, bt = trial(df, p[:k], p[k : 2 * k], "datacomp-none", "datacomp-none", args.confidence)
        rows.append(
            {
                "kind": "null",
                "a": p[:k].tolist(),
                "b": p[k : 2 * k].tolist(),
                "measured": m.better,
                "held_out_inside": held,
                "backtest": bt,
                "extrapolated": e.better,
                "measured_diff": m.diff,
                "measured_ci": [m.lo, m.hi],
                "extrapolated_diff": e.diff,
                "extrapolated_ci": [e.lo, e.hi],
            }
        )
    for t in range(args.real_planted):
        a, b = rng.permutation(none)[: args.real_replicates], rng.permutation(dfn)[: args.real_replicates]
        m, e, held, bt = trial(df, a, b, "datacomp-none", "dfn-dedup", args.confidence)
        rows.append(
            {
                "kind": "planted",
                "a": a.tolist(),
                "b": b.tolist(),
                "measured": m.better,
                "held_out_inside": held,
                "backtest": bt,
                "extrapolated": e.better,
                "measured_diff": m.diff,
                "measured_ci": [m.lo, m.hi],
                "extrapolated_diff": e.diff,
                "extrapolated_ci": [e.lo, e.hi],
            }
        )
    for r in rows:
        print(
            f"  {r['kind']:8s} A draws {r['a']} B draws {r['b']}: measured {r['measured'] or '-':2s} "
            f"{r['measured_diff']:+.4f} [{r['measured_ci'][0]:+.4f}, {r['measured_ci'][1]:+.4f}]  "
            f"{FACTOR:g}x {r['extrapolated'] or '-':2s} {r['extrapolated_diff']:+.4f} "
            f"[{r['extrapolated_ci'][0]:+.4f}, {r['extrapolated_ci'][1]:+.4f}]; held out "
            f"{r['held_out_inside'][0]}/{r['held_out_inside'][1]} inside; backtest {r['backtest']}"
        )
    inside = sum(r["held_out_inside"][0] for r in rows)
    total = sum(r["held_out_inside"][1] for r in rows)
    print(
        f"real held-out coverage: {inside}/{total} = {inside / max(total, 1):.3f} of the larger width's frontier "
        f"points inside the {args.confidence:.0%} prediction bands fitted on the smaller width (bound: 0.90)"
    )
    from collections import Counter

    print(
        f"real backtests (fit on the smaller width, scored at the larger's last point): "
        f"{dict(Counter(r['backtest'] for r in rows))}"
    )
    spread = run_spread(df)
    if args.real_larger_draws:
        summary_larger = larger_check(demo, out, args.real_larger_draws, args.confidence)
    summary = {}
    for kind in ("measured", "extrapolated"):
        fp = sum(r[kind] is not None for r in rows if r["kind"] == "null")
        hit = sum(r[kind] == "b" for r in rows if r["kind"] == "planted")
        summary[kind] = {"false_better": fp, "nulls": args.real_nulls, "found": hit, "planted": args.real_planted}
        print(
            f"real {kind}: {fp} false 'better' verdict(s) in {args.real_nulls} nulls (bound: at most 1); planted "
            f"difference found in {hit} of {args.real_planted} (bound: at least 4)"
        )
    print(
        f"real run-to-run spread (SD of the error over replicates, per scale and checkpoint, datacomp-none): "
        f"{json.dumps(spread)}"
    )
    if args.real_larger_draws:
        summary["larger"] = summary_larger
    with open(os.path.join(out, "calibration.json"), "w") as f:
        json.dump({"trials": rows, "summary": summary, "spread": spread}, f, indent=1, default=float)
    return summary


def run_spread(df) -> dict:
    sub = df[df.recipe == "datacomp-none"]
    out = {}
    for (scale, epoch), g in sub.groupby(["scale", "epoch"]):
        out[f"{scale}/e{epoch}"] = round(float((1 - g[METRIC]).std(ddof=1)), 4)
    return out


def larger_check(demo: str, out: str, k: int, level: float) -> dict:
    """Train w128-const-16k for the first k draws of each recipe (the bank's w32 and w64 runs are reused:
    copied, as the grid would find them), then the measured verdict at every point and backtests."""
    import shutil

    import yaml

    from thresher.experiments import train

    larger = os.path.join(out, "grid-larger")
    subsets = []
    for recipe in ("datacomp-none", "dfn-dedup"):
        for d in range(k):
            subsets.append(os.path.join(out, "subsets", recipe, f"draw-{d}"))
            for scale in ("w32-const-8k", "w64-const-8k"):
                src = os.path.join(out, "grid", "runs", recipe, scale, f"d{d}-s{d}")
                dst = os.path.join(larger, "runs", recipe, scale, f"d{d}-s{d}")
                if os.path.exists(src) and not os.path.exists(dst):
                    shutil.copytree(src, dst)
    spec = yaml.safe_load(open(train.SCALE_DIR / "ab.yaml"))
    spec["seeds"] = list(range(k))
    scales = os.path.join(out, "scales-larger.yaml")
    with open(scales, "w") as f:
        yaml.safe_dump(spec, f)
    evals = [os.path.join(demo, "source", "eval", s) for s in ("shapes_color", "shapes_retrieval")]
    args = [
        "grid",
        *[a for s in subsets for a in ("--subset", s)],
        "--scale",
        scales,
        "--replicates",
        "paired",
        *[a for e in evals for a in ("--eval-set", e)],
        "--out",
        larger,
    ]
    if cli.main(args) != 0:
        raise SystemExit("the larger check's grid failed")
    df = scaling.read_table(os.path.join(larger, "results.csv"))
    arm_a, arm_b = compare.arms_from_table(df, "datacomp-none", "dfn-dedup", compare.TableSpec(METRIC))
    print(f"larger check ({k} vs {k} replicates, 3 widths): the measured verdict at each point of w64 and w128")
    points = []
    for x, key in compare.common_points(arm_a, arm_b):
        if key[0] == "w32-const-8k":
            continue
        d = compare.welch(*(arm.unit_means(compare.values_at(arm, key)) for arm in (arm_a, arm_b)), level)
        points.append({"x": x, "point": list(key), "better": d.better, "diff": d.diff, "ci": [d.lo, d.hi]})
        print(f"  {x:7.1f} GFLOPs {'/'.join(key):18s}: {d.better or '-':2s} {d.diff:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")
    tests = {}
    opts = compare.FitOptions(n_bootstrap=0, estimator="replicates")  # the joint law: not yet in the real part
    for name, below in (
        ("w32 only", max(float(r.x[[p[0] == "w32-const-8k" for p in r.points]].max()) for r in arm_a.reps)),
        ("w32 and w64", max(float(r.x[[p[0] != "w128-const-16k" for p in r.points]].max()) for r in arm_a.reps)),
    ):
        bt = compare.backtest(arm_a, arm_b, below, level, opts)
        tests[name] = {
            "outcome": bt["outcome"],
            "predicted": bt["predicted_verdict"],
            "measured": bt["measured_verdict"],
        }
        print(
            f"  backtest, fitted on {name} (<= {below:.1f}), scored at {bt['x']:.1f}: {bt['outcome']}\n"
            f"    {bt['predicted_verdict']}\n    {bt['measured_verdict']}"
        )
    return {"points": points, "backtests": tests}
