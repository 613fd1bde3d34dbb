"""`thresher fit` on 2,000 points with 200 bootstraps: wall time (target <= 60 s on 2 cores).

    python benchmarks/fit.py [--points 2000] [--bootstrap 200]

The points imitate a grid's results: compute log-uniform over six decades, errors on or above a known
law A*C^-alpha + E (runs that were not compute-optimal sit above it), two groups. Times
`pipeline.scaling.fit_table` end to end (frontier, both forms from the grid of starts, bootstraps,
hold-out, fits.json and the PNG) and prints the recovered parameters against the truth. The reference
is the same fit without bootstraps, measured in the same run.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

# sys.path[0] is this directory, which holds select.py: replace it with the repository root so that
# the file cannot shadow the standard library's select module
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from thresher.experiments import scaling  # noqa: E402

TRUTH = {"a": (30.0, 0.2, 0.12), "b": (30.0, 0.2, 0.08)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name, (a, alpha, e) in TRUTH.items():
        n = args.points // len(TRUTH)
        x = 10 ** rng.uniform(6, 12, n)
        gap = np.where(rng.random(n) < 0.2, 0.0, rng.exponential(0.05, n))  # most runs sit above the law
        y = (a * x**-alpha + e) * np.exp(gap + rng.normal(0, 0.005, n))
        rows += [{"group": name, "gflops_total": xi, "acc1": 1 - yi} for xi, yi in zip(x, y)]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/results.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        t0 = time.perf_counter()
        scaling.fit_table(
            path,
            "gflops_total",
            "acc1",
            "group",
            f"{tmp}/ref",
            accuracy=True,
            n_bootstrap=0,
            holdout_above=1e11,
            predict=[1e13],
        )
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = scaling.fit_table(
            path,
            "gflops_total",
            "acc1",
            "group",
            f"{tmp}/out",
            accuracy=True,
            n_bootstrap=args.bootstrap,
            holdout_above=1e11,
            predict=[1e13],
        )
        t = time.perf_counter() - t0
    for name, g in res["groups"].items():
        a, alpha, e = TRUTH[name]
        p, ci = g["params"], g["params_ci95"]
        print(
            f"{name}: {g['form']} alpha {p['alpha']:.4f} (truth {alpha}, 95% CI {ci['alpha'][0]:.4f}-"
            f"{ci['alpha'][1]:.4f}), E {p['E']:.4f} (truth {e}), {len(g['frontier'])} frontier points, "
            f"held-out RMSE {g['holdout']['rmse']:.4f}"
        )
    print(
        f"fit, {args.points} points, {args.bootstrap} bootstraps per group: {t:.1f} s "
        f"(target <= 60 s: {'met' if t <= 60 else 'NOT met'}); without bootstraps: {t_ref:.1f} s"
    )


if __name__ == "__main__":
    main()
