"""Is the A/B verdict calibrated, and does it decide? `python benchmarks/ab_calibration.py [--simulated-only]`.

**Simulated.** Grids drawn from generators whose answer is known: per recipe, error(width, samples) =
E + 0.01215 g^-0.5 + B D^-0.5 (a capacity term and a data term; g the measured GFLOPs per sample of our
three tiny widths, compute g x samples; D the effective samples, Muennighoff et al.'s decay of repeated
samples where a world repeats them), 4 constant-LR checkpoints per run, and noise in three layers with the
sizes measured on our own grids (docs/scaling-laws.md): a per-replicate effect (the subset draw) shared by
all of a replicate's runs, a per-run effect shared by a run's checkpoints, and AR(1) checkpoint noise.
Worlds:
- **null**: both recipes the same law;
- **planted**: B's data term smaller by --effect (error 0.099 lower at the largest measured compute);
- **cross-asymptote**: B has no data term but an asymptote 0.06 higher: better where measured, worse at
  the target (the ranking crosses between the largest measured compute and 10x);
- **cross-repetition**: 2,000-sample subsets (and quarter-size ones at the two small widths), B's data
  term a third of A's but each repetition of its subset worth much less (R 1 against 100): better where
  measured (8 epochs), worse at the target (80 epochs).
Each trial runs pipeline.compare.compare_table, what `thresher compare` runs, with both estimators: the
joint law (the default) and the earlier per-replicate fits. Prints, per world, estimator and verdict
(measured: the largest point both recipes measured; extrapolated: 10x that compute), the share of
verdicts naming B, naming A, and the median smallest detectable difference. The null's false-positive
rate must be at most 0.05 within its sampling error, and the crossing worlds' wrong-way share too.

**Real** (without --simulated-only): trains a bank of replicates on the synthetic pool with real
training (`--real-dir` from `thresher demo`), then scores null and planted A/B pairs: see --help.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

# one BLAS thread per trial process: the joint law's matrices are tiny, and two processes each running two
# BLAS threads on two cores made every trial about 3x slower (set before numpy loads; the workers fork)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# the repository root, not benchmarks/: benchmarks/select.py would shadow the standard library's select
sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

from thresher.experiments import compare  # noqa: E402

# GFLOPs per sample of thresher-w32, thresher-tiny (w64) and thresher-w128 (train.gflops_per_sample)
WIDTH_GFLOPS = (0.00320, 0.01122, 0.04175)
WIDTH_SAMPLES = (8192, 8192, 16384)  # jobs/ab_test.yaml's grid: 3 widths, 2 decades of compute
CHECKPOINTS = 4
E0, DATA_TERM = 0.475, 12.7
SUBSET = 2000
# the repetition world's runs: (width, subset size, samples seen): the grid plus quarter-size draws
REPETITION_RUNS = (
    (0, SUBSET, 8192),
    (1, SUBSET, 8192),
    (2, SUBSET, 16384),
    (0, SUBSET // 4, 8192),
    (1, SUBSET // 4, 8192),
)
WORLDS = ("null", "planted", "cross-asymptote", "cross-repetition", "runs-null", "runs-planted")
RUN_SAMPLES = (1024, 2048, 4096, 8192, 16384)  # the independent-run worlds: one run per width x samples seen


def effective(s, U, R):
    s = np.asarray(s, float)
    if U is None or not math.isfinite(R):
        return s
    return np.where(s <= U, s, U + U * R * (1 - np.exp(-(s / U - 1) / R)))


def true_error(g: float, samples, law: dict, U=None) -> np.ndarray:
    """The generator's law, at the levels of the demo pool's image retrieval R@5 error (0.97 at w32 after
    2k samples, 0.83 at w32 and 0.73 at w64 after 8k: benchmarks/ab_real.py's bank)."""
    return (
        law.get("E", E0) + 0.01215 * g**-0.5 + law["B"] * np.power(effective(samples, U, law.get("R", math.inf)), -0.5)
    )


def laws(world: str, effect: float) -> tuple[dict, dict]:
    """(A's law, B's law) of a world."""
    a = {"B": DATA_TERM}
    if world in ("null", "runs-null"):
        return a, dict(a)
    if world in ("planted", "runs-planted"):
        return a, {"B": DATA_TERM * (1 - effect)}
    if world == "cross-asymptote":
        return a, {"B": 0.0, "E": E0 + 0.06}
    return {"B": DATA_TERM, "R": 100.0}, {"B": DATA_TERM * 0.35, "R": 1.0}


def simulate_grid(rng, name: str, law: dict, replicates: int, noise: dict, runs=None) -> list[dict]:
    """Rows of a results table (recipe, scale, draw, seed, epoch, gflops_total, error[, subset_size]) for
    one recipe: each replicate its own draw and seed; every run 4 const checkpoints after warm-up."""
    rows = []
    law = law if isinstance(law, dict) else {"B": law}  # a bare number: the data term
    runs = runs or [(w, None, WIDTH_SAMPLES[w]) for w in range(3)]
    for rep in range(replicates):
        rep_effect = rng.normal(0, noise["replicate"])
        for w, U, total in runs:
            g = WIDTH_GFLOPS[w]
            run_effect = rng.normal(0, noise["run"])
            ar = 0.0
            for e in range(1, CHECKPOINTS + 1):
                ar = noise["rho"] * ar + math.sqrt(1 - noise["rho"] ** 2) * rng.normal(0, noise["checkpoint"])
                s = total * e / CHECKPOINTS
                err = float(true_error(g, s, law, U)) + rep_effect + run_effect + ar
                row = {
                    "recipe": name,
                    "scale": f"w{w}",
                    "draw": rep,
                    "seed": rep,
                    "epoch": e,
                    "lr_scheduler": "const",
                    "gflops_per_sample": g,
                    "samples_seen": s,
                    "gflops_total": g * s,
                    "error": min(max(err, 1e-3), 0.999),
                }
                if U is not None:
                    row["subset_size"] = U
                rows.append(row)
    return rows


def simulate_runs(rng, name: str, law: dict, noise: dict) -> list[dict]:
    """A published-style table: every (width, samples seen) its own training run (a cosine schedule's
    last checkpoint), one row each; a run's noise is its run effect plus its checkpoint's."""
    rows = []
    sd = math.hypot(noise["run"], noise["checkpoint"])
    for w, g in enumerate(WIDTH_GFLOPS):
        for s in RUN_SAMPLES:
            err = float(true_error(g, s, law)) + rng.normal(0, sd)
            rows.append(
                {
                    "recipe": name,
                    "model": f"w{w}",
                    "lr_scheduler": "cosine",
                    "gflops_per_sample": g,
                    "samples_seen": s,
                    "gflops_total": g * s,
                    "error": min(max(err, 1e-3), 0.999),
                }
            )
    return rows


def truth(law_a: dict, law_b: dict, compute: float, U) -> float:
    """error B - error A at a compute: each the best of the measured widths there."""
    best = lambda law: min(float(true_error(g, compute / g, law, U)) for g in WIDTH_GFLOPS)  # noqa: E731
    return best(law_b) - best(law_a)


def best_width(law: dict, compute: float, U) -> float:
    """The GFLOPs per sample of the measured width that is best for a recipe at a compute."""
    return min(WIDTH_GFLOPS, key=lambda g: float(true_error(g, compute / g, law, U)))


def noise_cov(df, noise: dict) -> np.ndarray:
    """The rows' true noise covariance: the replicate effect shared by a (recipe, draw), the run effect by a
    run, and the AR(1) checkpoint noise as simulate_grid draws it (started at 0, so its variance grows to
    sd^2 along a run); the independent-run worlds' rows are independent."""
    n = len(df)
    if "draw" not in df:
        return np.eye(n) * (noise["run"] ** 2 + noise["checkpoint"] ** 2)
    rep = df["recipe"].astype(str) + "/" + df["draw"].astype(str)
    run = rep + "/" + df["scale"].astype(str)
    if "subset_size" in df:
        run = run + "/" + df["subset_size"].astype(str)
    same_rep = (rep.values[:, None] == rep.values[None, :]).astype(float)
    same_run = (run.values[:, None] == run.values[None, :]).astype(float)
    e = df["epoch"].to_numpy(int)
    lo, hi = np.minimum.outer(e, e), np.maximum.outer(e, e)
    rho, sd = noise["rho"], noise["checkpoint"]
    ar = sd**2 * (1 - rho ** (2 * lo)) * rho ** (hi - lo)
    return noise["replicate"] ** 2 * same_rep + same_run * (noise["run"] ** 2 + ar)


def oracle_points(top: float, factor: float, U) -> dict:
    """The oracle's two points, as (width of a law, samples seen at that width): the widest measured model
    at the largest measured compute, and each recipe's best width at `factor` times it."""
    g_top = WIDTH_GFLOPS[2]
    return {
        "measured": (lambda law: g_top, lambda g: top / g_top),
        "extrapolated": (lambda law: best_width(law, top * factor, U), lambda g: top * factor / g),
    }


def oracle(df, law_a: dict, law_b: dict, noise: dict, U, points: dict, level: float) -> dict:
    """The verdicts of an estimator told the law's shape (exponents, capacity term, repetition decay) and
    the noise's covariance, which estimates only each recipe's asymptote and data term, by generalised
    least squares, and tests their contrast with a known variance: no calibrated estimator that frees
    each recipe's asymptote can do better, so its power is the ceiling the others are held against."""
    from scipy.stats import norm

    laws_ = {"a": law_a, "b": law_b}
    x = np.zeros((len(df), 4))
    y = df["error"].to_numpy(float).copy()
    sub = df.get("subset_size")
    for j, name in enumerate("ab"):
        mask = (df["recipe"] == name).to_numpy()
        law = laws_[name]
        u = None if sub is None else sub.to_numpy(float)[mask]
        s = df["samples_seen"].to_numpy(float)[mask]
        d = (
            effective(s, None, math.inf)
            if u is None
            else np.array([float(effective(si, ui, law.get("R", math.inf))) for si, ui in zip(s, u)])
        )
        x[mask, 2 * j], x[mask, 2 * j + 1] = 1.0, d**-0.5
        y[mask] -= 0.01215 * df["gflops_per_sample"].to_numpy(float)[mask] ** -0.5
    vi = np.linalg.inv(noise_cov(df, noise))
    cov = np.linalg.inv(x.T @ vi @ x)
    beta = cov @ x.T @ vi @ y
    z = norm.ppf(0.5 + level / 2)
    out = {}
    for kind, (g_of, samples_of) in points.items():
        c, const = np.zeros(4), 0.0
        for j, (name, sign) in enumerate((("a", -1.0), ("b", 1.0))):
            g = g_of(laws_[name])
            d = float(effective(samples_of(g), U, laws_[name].get("R", math.inf)))
            c[2 * j], c[2 * j + 1] = sign, sign * d**-0.5
            const += sign * 0.01215 * g**-0.5
        diff, se = float(c @ beta) + const, float(np.sqrt(c @ cov @ c))
        out[kind] = "b" if diff + z * se < 0 else "a" if diff - z * se > 0 else None
        out["mde" if kind == "extrapolated" else "measured_mde"] = 2.8 * se
    return out


def one_trial(args) -> dict:
    import pandas as pd

    seed, world, cfg = args
    rng = np.random.default_rng(seed)
    law_a, law_b = laws(world, cfg["effect"])
    runs = REPETITION_RUNS if world == "cross-repetition" else None
    if world.startswith("runs-"):
        df = pd.DataFrame(simulate_runs(rng, "a", law_a, cfg["noise"]) + simulate_runs(rng, "b", law_b, cfg["noise"]))
    else:
        df = pd.DataFrame(
            simulate_grid(rng, "a", law_a, cfg["replicates"], cfg["noise"], runs)
            + simulate_grid(rng, "b", law_b, cfg["replicates"], cfg["noise"], runs)
        )
    U = SUBSET if runs else None
    top = float(df["gflops_total"].max())
    out = {"world": world}
    for est in cfg["estimators"]:
        if est == "oracle":
            points = oracle_points(top, cfg["factor"], U)
            out[est] = oracle(df, law_a, law_b, cfg["noise"], U, points, cfg["level"])
            out[est]["covered"] = None
            continue
        opts = compare.FitOptions(n_bootstrap=0, estimator=est)
        c = compare.compare_table(
            df, "a", "b", "error", f"{cfg['factor']}x", accuracy=False, level=cfg["level"], opts=opts
        )
        m, ex = c.measured[2], c.extrapolated
        out[est] = {
            "measured": m.better,
            "extrapolated": ex.better,
            "mde": ex.mde,
            "measured_mde": m.mde,
            "covered": bool(ex.lo <= truth(law_a, law_b, top * cfg["factor"], U) <= ex.hi)
            if math.isfinite(ex.lo)
            else None,
        }
    s_top = top / WIDTH_GFLOPS[2]
    out["true_measured"] = float(
        true_error(WIDTH_GFLOPS[2], s_top, law_b, U) - true_error(WIDTH_GFLOPS[2], s_top, law_a, U)
    )
    out["true_target"] = truth(law_a, law_b, top * cfg["factor"], U)
    return out


def rate(hits: int, n: int) -> str:
    se = math.sqrt(max(hits, 1) * (n - hits) / n) / n if n else float("nan")
    return f"{hits / n:.3f} ({hits}/{n}; +- {1.96 * se:.3f})"


def right_answer(diff: float, tol: float = 1e-3) -> str | None:
    return "b" if diff < -tol else "a" if diff > tol else None


def simulated(args) -> dict:
    cfg = {
        "replicates": args.replicates,
        "effect": args.effect,
        "level": args.confidence,
        "factor": args.factor,
        "estimators": args.estimators.split(","),
        "noise": {
            "replicate": args.noise_replicate,
            "run": args.noise_run,
            "checkpoint": args.noise_checkpoint,
            "rho": 0.5,
        },
    }
    worlds = args.worlds.split(",")
    jobs = [
        (args.seed * 10**7 + w * 10**6 + i, world, cfg)
        for w, world in enumerate(WORLDS)
        if world in worlds
        for i in range(args.trials)
    ]
    t0 = time.time()
    with ProcessPoolExecutor(args.processes) as pool:
        out = list(pool.map(one_trial, jobs, chunksize=10))
    print(
        f"simulated: {args.trials} trials per world, {args.replicates} replicates per recipe, noise {cfg['noise']}, "
        f"target {args.factor:g}x the largest measured compute, {time.time() - t0:.1f}s"
    )
    res = {}
    for world in worlds:
        rows = [o for o in out if o["world"] == world]
        tm, tt = np.mean([o["true_measured"] for o in rows]), np.mean([o["true_target"] for o in rows])
        print(f"  {world}: true error B - A {tm:+.4f} at the largest measured point, {tt:+.4f} at the target")
        for est in cfg["estimators"]:
            for kind, true in (("measured", tm), ("extrapolated", tt)):
                b = sum(o[est][kind] == "b" for o in rows)
                a = sum(o[est][kind] == "a" for o in rows)
                right = right_answer(true)
                wrong = {"b": a, "a": b, None: a + b}[right]
                decided = {"b": b, "a": a, None: 0}[right]
                mdes = [o[est]["mde" if kind == "extrapolated" else "measured_mde"] for o in rows]
                undecidable = int(np.sum(~np.isfinite(mdes)))  # no interval: a shape at its bound, or one run
                mde = np.nanmedian(mdes) if undecidable < len(mdes) else float("nan")
                res[(world, est, kind)] = {"wrong": wrong / len(rows), "right": decided / len(rows)}
                label = "false positives" if right is None else "wrong-way"
                print(
                    f"    {est:10s} {kind:12s}: {label} {rate(wrong, len(rows))}; "
                    + (f"power {rate(decided, len(rows))}; " if right else "")
                    + f"median smallest detectable difference {mde:.4f}"
                    + (f" ({undecidable} without an interval)" if undecidable else "")
                )
        if world == "planted":
            for est in (e for e in cfg["estimators"] if e != "oracle"):
                cov = [o[est]["covered"] for o in rows if o[est]["covered"] is not None]
                print(
                    f"    {est:10s} the extrapolated interval holds the true difference in {rate(sum(cov), len(cov))}"
                )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulated-only", action="store_true")
    ap.add_argument("--trials", type=int, default=300, help="trials per world (default 300)")
    ap.add_argument("--seed", type=int, default=0, help="which trials: another seed draws other grids (default 0)")
    ap.add_argument("--worlds", default=",".join(WORLDS), help=f"which worlds (default all: {','.join(WORLDS)})")
    ap.add_argument(
        "--estimators",
        default="joint,replicates,oracle",
        help="which of joint, replicates and oracle (told the true law's shape and the noise: the ceiling) "
        "(default all three)",
    )
    ap.add_argument("--replicates", type=int, default=3, help="replicates per recipe (default 3)")
    ap.add_argument(
        "--effect",
        type=float,
        default=1.0,
        help="planted: B's data term this much smaller (1.0, none: error 0.10 lower at the largest "
        "compute, about dfn-dedup's measured advantage over datacomp-none at 92 GFLOPs)",
    )
    ap.add_argument("--factor", type=float, default=10.0, help="target compute: this multiple of the largest measured")
    ap.add_argument("--confidence", type=float, default=0.95)
    # the spread measured on the real bank (benchmarks/ab_real.py, datacomp-none, 15 replicates): a shared
    # per-replicate effect of SD 0.021, a per-run effect of 0.023 and checkpoint noise of 0.017-0.022
    ap.add_argument("--noise-replicate", type=float, default=0.021)
    ap.add_argument("--noise-run", type=float, default=0.023)
    ap.add_argument("--noise-checkpoint", type=float, default=0.020)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--real-dir", default=None, help="real part: a demo directory (thresher demo --out DIR)")
    ap.add_argument(
        "--real-out", default=None, help="where the real part keeps its bank (default REAL_DIR/ab-calibration)"
    )
    ap.add_argument("--real-null-draws", type=int, default=15, help="datacomp-none replicates in the bank")
    ap.add_argument("--real-planted-draws", type=int, default=10, help="dfn-dedup replicates in the bank")
    ap.add_argument("--real-replicates", type=int, default=5, help="replicates per arm in the real trials")
    ap.add_argument("--real-nulls", type=int, default=10, help="null trials (disjoint splits of datacomp-none)")
    ap.add_argument("--real-planted", type=int, default=5, help="planted trials (datacomp-none vs dfn-dedup)")
    ap.add_argument(
        "--real-larger-draws",
        type=int,
        default=6,
        help="draws per recipe that also train w128 at 16k samples (0: skip the larger check)",
    )
    args = ap.parse_args(argv)
    sim = simulated(args)
    bound = 0.05 + 1.96 * math.sqrt(0.05 * 0.95 / args.trials)
    joint_rates = {k: v["wrong"] for k, v in sim.items() if k[1] == "joint"}
    ok = all(v <= bound for v in joint_rates.values())
    if not args.simulated_only:
        from benchmarks import ab_real  # noqa: F401 - the real part (training), in its own module

        ab_real.main(args)
    for (world, est, kind), v in sorted(sim.items()):
        if world == "null":
            print(f"false positive rate at {args.confidence} ({est}, {kind}): {v['wrong']:.3f}")
        elif world == "planted":
            print(f"power at a planted effect of {args.effect:.0%} of the data term ({est}, {kind}): {v['right']:.3f}")
        else:
            print(f"wrong-way share in the {world} world ({est}, {kind}): {v['wrong']:.3f}")
    print(
        f"joint estimator: every false-positive and wrong-way share {'within' if ok else 'ABOVE'} 0.05 + sampling error ({bound:.3f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
