"""The null comparison of issue 14, rerun with replicates: `python benchmarks/ab_null_case.py DEMO_DIR`.

On a demo's pool: two recipe files that both say `filter: none` (null-a, null-b), equal subsets of 2,000
samples, the demo grid (configs/scales/demo.yaml, now 3 seeds), and `thresher compare` on image
retrieval R@5 at 10x. There is no difference between the arms by construction. Before replicates the
report named a winner with P = 0.91, 0.99 and 0.48 for the subset-seed pairs 1/2, 3/4 and 5/6.

Two designs, each printed with its verdicts:
- `seeds`: one draw per arm (subset seeds 1/2, 3/4, 5/6, as in the issue), 3 training seeds each;
- `draws`: 3 draws per arm (subset seeds 1-3 against 4-6), each draw with its own training seed
  (`--replicates paired`), so the subset draw is in the interval too.
"""

from __future__ import annotations

import json
import os
import sys

sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

from thresher.app import cli  # noqa: E402

METRIC = "shapes_retrieval/image_retrieval_recall@5"


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if not argv:
        print(__doc__)
        return 2
    demo = os.path.abspath(argv[0])
    out = os.path.join(demo, "null-case")
    os.makedirs(out, exist_ok=True)
    for name in ("null-a", "null-b"):
        with open(os.path.join(out, f"{name}.yaml"), "w") as f:
            f.write(f"name: {name}\ndescription: every sample (a null arm)\nsteps:\n  - filter: none\n")
    pool = os.path.join(demo, "pool")
    evals = [
        a for s in ("shapes_color", "shapes_retrieval") for a in ("--eval-set", os.path.join(demo, "source", "eval", s))
    ]
    verdicts = []
    designs = [("seeds", f"{sa}-{sb}", [(sa, 1), (sb, 1)], "crossed") for sa, sb in ((1, 2), (3, 4), (5, 6))]
    designs.append(("draws", "1..3-4..6", [(1, 3), (4, 3)], "paired"))
    for design, label, arms, replicates in designs:
        base = os.path.join(out, f"{design}-{label}")
        subsets = []
        for name, (seed, draws) in zip(("null-a", "null-b"), arms):
            target = os.path.join(base, "subsets", name)
            cli.main(
                [
                    "subset",
                    pool,
                    "--recipe",
                    os.path.join(out, f"{name}.yaml"),
                    "--size",
                    "2000",
                    "--seed",
                    str(seed),
                    "--draws",
                    str(draws),
                    "--samples-per-shard",
                    "500",
                    "--out",
                    target,
                ]
            )
            subsets += [target] if draws == 1 else [os.path.join(target, f"draw-{k}") for k in range(draws)]
        grid = os.path.join(base, "grid")
        assert (
            cli.main(
                [
                    "grid",
                    *[a for s in subsets for a in ("--subset", s)],
                    "--scale",
                    "demo",
                    *evals,
                    "--replicates",
                    replicates,
                    "--out",
                    grid,
                ]
            )
            == 0
        )
        assert (
            cli.main(
                [
                    "compare",
                    grid,
                    "--a",
                    "null-a",
                    "--b",
                    "null-b",
                    "--metric",
                    METRIC,
                    "--target-compute",
                    "10x",
                    "--out",
                    os.path.join(base, "report"),
                ]
            )
            == 0
        )
        res = json.load(open(os.path.join(base, "report", "compare.json")))
        verdicts.append(
            (design, label, res["better"], res["measured"]["better"], res["verdict"], res["measured"]["verdict"])
        )
    print()
    for design, label, better, measured, verdict, mverdict in verdicts:
        print(
            f"null case, {design} {label}: target {better or 'no difference'}, measured {measured or 'no difference'}"
        )
        print(f"  {verdict}\n  {mverdict}")
    named = sum(b is not None for _, _, b, _, _, _ in verdicts) + sum(m is not None for _, _, _, m, _, _ in verdicts)
    print(
        f"null case: {named} 'better' verdict(s) in {2 * len(verdicts)} (target and measured, {len(verdicts)} designs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
