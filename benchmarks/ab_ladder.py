"""Decision accuracy over a ladder of recipes of known order: `python benchmarks/ab_ladder.py DEMO_DIR`.

Four recipes on the demo's pool, each a `uid_list` of exactly 2,000 downloaded samples: the same 2,000
except that rung k swaps a fixed set of M planted mismatched captions for clean samples, keeping
(1 - k/3) of them: rung 0 has all M, rung 3 none (the planted ground truth, source/ground_truth.parquet).
Fewer mismatched captions is better by construction, so every pair's right answer is known. The demo's
grid (configs/scales/demo.yaml: 2 widths x 4 const checkpoints, 3 seeds) trains every rung with real
training, and every pair (6) is compared three ways:
- the joint law's verdict at the largest measured compute (`thresher compare`, the default estimator);
- the per-replicate estimator's measured verdict (`--estimator replicates`): today's baseline;
- the single-scale ranking: the lower mean error at the largest measured point wins (what DataDecide
  found hard to beat); it always decides;
and the extrapolated verdicts at --target (default 3x) of both estimators. Prints, for each, the share of
pairs decided and the share of decided pairs that are right (goal: at least 95% right, and more pairs
decided than the per-replicate estimator).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np

# the repository root, not benchmarks/: benchmarks/select.py would shadow the standard library's select
sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

from thresher.app import cli  # noqa: E402
from thresher.core.pool import Pool  # noqa: E402

METRIC = "shapes_retrieval/image_retrieval_recall@5"
RUNGS = 4


def run(args: list[str]) -> None:
    print("$ thresher " + " ".join(args), flush=True)
    if cli.main(args) != 0:
        raise SystemExit(f"thresher {args[0]} failed")


def ladder_uids(demo: str, size: int, mismatched: int, seed: int) -> list[np.ndarray]:
    """Each rung's uid array (DataComp's u8,u8, sorted): `size` downloaded samples, rung k holding
    round(mismatched * (1 - k / (RUNGS - 1))) planted mismatched captions and clean samples for the rest."""
    import pyarrow.parquet as pq

    from thresher.algo import hashes

    pool = Pool(os.path.join(demo, "pool"))
    ok = {u for sh in pool.shards() for u in pool.successful_rows(sh).column("uid").to_pylist()}
    truth = pq.read_table(os.path.join(demo, "source", "ground_truth.parquet")).to_pylist()
    rng = np.random.default_rng(seed)
    mis = sorted(g["uid"] for g in truth if g["category"] == "mismatched_caption" and g["uid"] in ok)
    clean = sorted(g["uid"] for g in truth if g["category"] == "clean" and g["uid"] in ok)
    if len(mis) < mismatched or len(clean) < size:
        raise SystemExit(
            f"{demo}: {len(mis)} mismatched and {len(clean)} clean samples downloaded; need {mismatched} and {size}"
        )
    mis = list(rng.permutation(mis)[:mismatched])
    clean = list(rng.permutation(clean)[:size])
    out = []
    for k in range(RUNGS):
        m = round(mismatched * (1 - k / (RUNGS - 1)))
        out.append(hashes.uid_array(mis[:m] + clean[: size - m]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", help="a demo directory (thresher demo --out DIR)")
    ap.add_argument("--out", default=None, help="the bank (default DEMO/ab-ladder)")
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--mismatched", type=int, default=1200, help="mismatched captions in rung 0 (default 1200)")
    ap.add_argument("--scale", default="demo", help="the grid's scales (default the demo's: 2 widths, 3 seeds)")
    ap.add_argument("--target", default="3x")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    demo = os.path.abspath(args.demo)
    bank = os.path.abspath(args.out or os.path.join(demo, "ab-ladder"))
    os.makedirs(bank, exist_ok=True)
    # rung 3 is best: order known by construction. The names carry M: a ladder of another M is another
    # set of recipes, whose decisions must not replace these in the pool
    names = [f"ladder-m{args.mismatched}-{k}" for k in range(RUNGS)]
    recipes = []
    for name, uids in zip(names, ladder_uids(demo, args.size, args.mismatched, args.seed)):
        path = os.path.join(bank, f"{name}.npy")
        np.save(path, uids)
        recipe = os.path.join(bank, f"{name}.yaml")
        with open(recipe, "w") as f:
            f.write(
                f"name: {name}\ndescription: ladder rung (ab_ladder.py)\nsteps:\n  - {{filter: uid_list, params: {{path: {path}}}}}\n"
            )
        recipes.append(recipe)
    subsets = os.path.join(bank, "subsets")
    if not all(os.path.exists(os.path.join(subsets, n, "manifest.json")) for n in names):
        run(
            [
                "subset",
                os.path.join(demo, "pool"),
                *[a for r in recipes for a in ("--recipe", r)],
                "--size",
                str(args.size),
                "--out",
                subsets,
                "--seed",
                str(args.seed),
            ]
        )
    evals = [os.path.join(demo, "source", "eval", e) for e in ("shapes_color", "shapes_retrieval")]
    grid = os.path.join(bank, "grid")
    run(
        [
            "grid",
            *[a for n in names for a in ("--subset", os.path.join(subsets, n))],
            "--scale",
            args.scale,
            *[a for e in evals for a in ("--eval-set", e)],
            "--out",
            grid,
        ]
    )
    import pandas as pd

    df = pd.read_csv(os.path.join(grid, "results.csv"))
    top = df["gflops_total"].max()
    at_top = df[df["gflops_total"] == top].groupby("recipe")[METRIC].mean()
    tally = {
        k: [0, 0]
        for k in (
            "joint measured",
            "replicates measured",
            "single-scale ranking",
            "joint extrapolated",
            "replicates extrapolated",
        )
    }
    rows = []
    for lo, hi in itertools.combinations(range(RUNGS), 2):  # hi is better by construction
        a, b = names[lo], names[hi]
        got = {}
        for est in ("joint", "replicates"):
            out = os.path.join(bank, "compare", f"{a}-vs-{b}-{est}")
            if not os.path.exists(os.path.join(out, "compare.json")):
                run(
                    [
                        "compare",
                        grid,
                        "--a",
                        a,
                        "--b",
                        b,
                        "--metric",
                        METRIC,
                        "--target-compute",
                        args.target,
                        "--estimator",
                        est,
                        "--out",
                        out,
                    ]
                )
            r = json.load(open(os.path.join(out, "compare.json")))
            got[f"{est} measured"] = (r["measured"] or {}).get("better")
            got[f"{est} extrapolated"] = r["better"]
        got["single-scale ranking"] = b if at_top[b] > at_top[a] else a  # higher recall@5 is lower error
        for k, v in got.items():
            if v is not None:
                tally[k][0] += 1
                tally[k][1] += v == b
        rows.append((a, b, got))
        print(f"{a} vs {b} (right: {b}): " + "; ".join(f"{k}: {v or 'undecided'}" for k, v in got.items()))
    pairs = len(rows)
    print(
        f"\n{pairs} pairs of {RUNGS} rungs, {args.size} samples each, {args.mismatched} mismatched captions in rung 0:"
    )
    for k, (decided, right) in tally.items():
        share = f"{right / decided:.2f}" if decided else "-"
        print(f"  {k:25s}: decided {decided}/{pairs} ({decided / pairs:.2f}), right {right}/{decided} ({share})")
    jm, rm = tally["joint measured"], tally["replicates measured"]
    ok = (jm[0] == 0 or jm[1] / jm[0] >= 0.95) and jm[0] >= rm[0]
    print(
        f"joint law: {'meets' if ok else 'MISSES'} the goal (at least 95% of decided pairs right, more decided than replicates)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
