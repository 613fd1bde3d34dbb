"""The A/B verdict (thresher/experiments/compare.py): calibrated on cases whose answer is known by construction.

Null comparisons (both recipes drawn from one law), planted differences, the interval arithmetic against
scipy's own Welch test, the three-way verdict, bands and their held-out coverage, the backtest, the
report, replicates in the grid (seeds and draws) and the grid's determinism.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks import ab_calibration as sim
from thresher.app import cli
from thresher.experiments import compare, compare_report

NOISE = {"replicate": 0.021, "run": 0.023, "checkpoint": 0.020, "rho": 0.5}  # our own grids' (ab_calibration.py)
BASE = 12.7  # the generator's data term
PLANTED = 0.0  # B without the data term: error 0.10 lower at the largest compute, ~3x the run-to-run spread


def simulated_table(seed: int, b_data_term: float, replicates: int = 3, noise=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = sim.simulate_grid(rng, "a", BASE, replicates, noise or NOISE) + sim.simulate_grid(
        rng, "b", b_data_term, replicates, noise or NOISE
    )
    df = pd.DataFrame(rows)
    df["acc"] = 1 - df["error"]
    return df


def analyse(df, factor=10.0, level=0.95, **opts):
    a, b = compare.arms_from_table(df, "a", "b", compare.TableSpec("acc"))
    top = max(float(r.x.max()) for r in a.reps)
    # the per-replicate estimator (`--estimator replicates`); tests/test_joint.py tests the joint law
    return compare.analyse(
        a, b, factor * top, level, compare.FitOptions(n_bootstrap=0, **{"estimator": "replicates", **opts})
    )


def test_welch_interval_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.02, 4), rng.normal(0.47, 0.03, 3)
    d = compare.welch(a, b, 0.95)
    t = stats.ttest_ind(b, a, equal_var=False)
    ci = t.confidence_interval(0.95)
    assert d.diff == pytest.approx(b.mean() - a.mean())
    assert (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d.p_b_better == pytest.approx(stats.t.cdf(-d.diff / d.se, t.df))  # one-sided: B's error lower
    assert d.better == ("b" if ci.high < 0 else "a" if ci.low > 0 else None)
    one = compare.welch(a, b[:1], 0.95)  # a single run measures no spread: no verdict, and it says why
    assert one.better is None and one.p_b_better is None and "single run" in one.reason


def test_null_comparisons_rarely_name_a_winner_and_planted_ones_are_found():
    """200 null trials at 0.95 (three replicates a recipe, noise of our own grids' size): at most ~5%
    'better' verdicts, measured or extrapolated; a planted difference three times that noise is found (power about 0.6)."""
    null = [analyse(simulated_table(s, BASE)) for s in range(200)]
    for kind in ("measured", "extrapolated"):
        fp = sum((c.measured[2] if kind == "measured" else c.extrapolated).better is not None for c in null)
        assert fp <= 200 * 0.05 + 2 * math.sqrt(200 * 0.05 * 0.95), (kind, fp)
    planted = [analyse(simulated_table(1000 + s, PLANTED)) for s in range(40)]
    assert sum(c.measured[2].better == "b" for c in planted) >= 16  # about 0.6 expected (Welch, 4 df)
    assert sum(c.measured[2].better == "a" for c in planted) == 0


def test_the_null_case_says_no_detectable_difference_and_what_would_resolve_it(tmp_path):
    df = simulated_table(7, BASE)
    df.to_csv(tmp_path / "null.csv", index=False)
    res = compare_report.run(str(tmp_path / "null.csv"), "a", "b", "acc", "10x", str(tmp_path / "ab"))
    assert res["better"] is None and res["verdict"].startswith("no detectable difference at compute")
    d = res["difference"]
    assert d["lo"] < 0 < d["hi"] and d["mde"] > abs(d["diff"]) and "could detect a difference of" in res["verdict"]
    assert res["resolve"].startswith("to resolve it: about")
    assert res["measured"]["better"] is None and res["extrapolation_factor"] == pytest.approx(10)
    # compare.json keeps the fields it had
    for key in (
        "a",
        "b",
        "target_compute",
        "error_a",
        "error_b",
        "ci_a",
        "ci_b",
        "better",
        "p_b_better",
        "crossings",
        "verdict",
        "measured_range",
        "source",
        "metric",
        "fits",
    ):
        assert key in res
    page = (tmp_path / "ab" / "compare.html").read_text()
    assert "no detectable difference" in page and "0.9769230769230769" not in page
    assert page.count("<tr>") >= 1 + 2 * 3 * 3  # the runs table: every (recipe, scale, replicate)


def test_one_replicate_gives_no_verdict(tmp_path):
    df = simulated_table(3, PLANTED, replicates=1)
    c = analyse(df)
    assert c.result["better"] is None and "single run" in c.result["verdict"]


def test_seeds_without_draws_are_flagged_as_covering_training_only():
    df = simulated_table(4, BASE).assign(draw=0)
    c = analyse(df)
    assert c.arm_a.unit_kind == "seed" and any("not the draw of the subset" in f for f in c.result["flags"])


def test_draws_with_seeds_average_seeds_within_a_draw():
    df = simulated_table(5, BASE)
    df = pd.concat([df, df.assign(seed=df.seed + 10, error=df.error + 0.001)])  # 2 seeds per draw
    df["acc"] = 1 - df["error"]
    a, _ = compare.arms_from_table(df, "a", "b", compare.TableSpec("acc"))
    assert a.unit_kind == "draw" and len(a.reps) == 6 and len(a.units()) == 3


def test_prediction_bands_cover_held_out_points():
    """Fit the points at or below the second width's compute, score the rest: 95% prediction bands hold
    at least 90% of the held-out frontier points over many simulated grids."""
    cut = sim.WIDTH_GFLOPS[1] * sim.WIDTH_SAMPLES[1]
    inside, total = 0, 0
    for s in range(30):
        c = analyse(simulated_table(200 + s, BASE), fit_below=cut)
        for arm in (c.arm_a, c.arm_b):
            h = compare.held_out(arm, 0.95, c.opts)
            inside += sum(p["inside_prediction"] for p in h["points"])
            total += len(h["points"])
    assert total > 100 and inside / total >= 0.90, (inside, total)


def test_backtest_scores_the_extrapolation_against_the_measurement(tmp_path):
    quiet = {**NOISE, "replicate": 0.005, "run": 0.005, "checkpoint": 0.005}  # a difference far above the noise
    df = simulated_table(11, PLANTED, noise=quiet)
    df.to_csv(tmp_path / "r.csv", index=False)
    cut = sim.WIDTH_GFLOPS[1] * sim.WIDTH_SAMPLES[1]
    res = compare_report.run(str(tmp_path / "r.csv"), "a", "b", "acc", "10x", str(tmp_path / "ab"), backtest_below=cut)
    bt = res["backtest"]
    assert bt["x"] > cut and bt["outcome"] in compare.OUTCOMES.values()
    assert bt["measured"]["better"] == "b" and bt["outcome"] in (
        "right",
        "missed (the runs show a difference the fits did not)",
    )
    null = simulated_table(12, BASE)
    null.to_csv(tmp_path / "n.csv", index=False)
    bt = compare_report.run(str(tmp_path / "n.csv"), "a", "b", "acc", "10x", str(tmp_path / "ab2"), backtest_below=cut)[
        "backtest"
    ]
    assert bt["outcome"] == "rightly undecided"


def test_compare_cli_takes_every_fit_option(tmp_path, capsys):
    simulated_table(13, PLANTED).to_csv(tmp_path / "r.csv", index=False)
    assert (
        cli.main(
            [
                "compare",
                str(tmp_path / "r.csv"),
                "--a",
                "a",
                "--b",
                "b",
                "--metric",
                "acc",
                "--target-compute",
                "3x",
                "--confidence",
                "0.9",
                "--frontier",
                "laion",
                "--loss",
                "mse",
                "--forms",
                "power",
                "--bins-per-decade",
                "2",
                "--bootstrap",
                "0",
                "--fit-below",
                "200",
                "--out",
                str(tmp_path / "ab"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "ab" / "compare.json").read_text())
    assert res["confidence"] == 0.9 and res["fit_options"] == {
        "frontier": "laion",
        "loss": "mse",
        "forms": ["power"],
        "bins_per_decade": 2.0,
        "fit_below": 200.0,
    }
    assert "held_out" in res and "prediction band" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "compare",
                str(tmp_path / "r.csv"),
                "--a",
                "a",
                "--b",
                "b",
                "--metric",
                "acc",
                "--target-compute",
                "3x",
                "--confidence",
                "2",
                "--out",
                str(tmp_path / "ab"),
            ]
        )
        == 2
    )


def test_calibration_benchmark_simulated_part_prints_its_figures(capsys):
    # 8 trials print every figure; far too few to judge the rates (tests/test_joint.py and the 200 nulls
    # above do that, and the benchmark's own default of 300 trials per world)
    sim.main(["--simulated-only", "--trials", "8", "--processes", "1", "--worlds", "null,planted"])
    out = capsys.readouterr().out
    for est in ("joint", "replicates"):
        assert f"false positive rate at 0.95 ({est}, measured)" in out and f"({est}, extrapolated)" in out
        assert f"of the data term ({est}, measured)" in out
    assert out.splitlines()[-1].startswith("joint estimator: every false-positive and wrong-way share")


def test_scale_files_ask_for_seeds(tmp_path):
    from thresher.core.errors import InputError
    from thresher.experiments import train

    demo = train.load_scales("demo")
    assert [(s.name, s.seed) for s in demo] == [(n, k) for n in ("w32-const-8k", "w64-const-8k") for k in range(3)]
    ab = train.load_scales("ab")
    assert len({s.model for s in ab}) >= 3 and all(s.seeds is None for s in ab)
    gflops = {m: train.gflops_per_sample(m) for m in {s.model for s in ab}}
    lo = min(gflops[s.model] * s.samples_seen / s.checkpoints for s in ab)
    hi = max(gflops[s.model] * s.samples_seen for s in ab)
    assert hi / lo >= 100  # jobs/ab_test.yaml's grid spans two decades of compute
    (tmp_path / "per.yaml").write_text(
        "defaults: {model: thresher-w32, batch_size: 8, lr: 0.1, warmup: 1}\n"
        "scales:\n  - {name: a, samples_seen: 64, seeds: [3, 4]}\n"
        "  - {name: b, samples_seen: 64}\n"
    )
    assert [(s.name, s.seed) for s in train.load_scales(str(tmp_path / "per.yaml"))] == [("a", 3), ("a", 4), ("b", 0)]
    (tmp_path / "bad.yaml").write_text(
        "seeds: [1, 1]\nscales:\n  - {name: a, model: m, samples_seen: 8, batch_size: 8, lr: 0.1, warmup: 1}\n"
    )
    with pytest.raises(InputError, match="without repeats"):
        train.load_scales(str(tmp_path / "bad.yaml"))


@pytest.mark.slow
def test_draws_and_seeds_are_replicates_and_a_grid_is_deterministic(featured_pool, synth_dir, tmp_path, ray_local):
    """`thresher subset --draws 2` gives two draws of each recipe (distinct samples, recorded in the
    manifest); a grid with `--replicates paired` trains draw k with seed k; the same grid from scratch
    gives the identical results.csv, and the identical verdict and P."""
    from thresher.stages.subset import subset

    assert (
        cli.main(
            [
                "subset",
                str(featured_pool),
                "--recipe",
                "datacomp-none",
                "--recipe",
                "datacomp-basic",
                "--size",
                "200",
                "--draws",
                "2",
                "--samples-per-shard",
                "100",
                "--out",
                str(tmp_path / "subsets"),
            ]
        )
        == 0
    )
    dirs = [tmp_path / "subsets" / r / f"draw-{k}" for r in ("datacomp-none", "datacomp-basic") for k in (0, 1)]
    m = [subset.read_manifest(str(d)) for d in dirs]
    assert [x["draw"]["index"] for x in m] == [0, 1, 0, 1] and [x["seed"] for x in m] == [0, 1, 0, 1]
    assert all(x["draw"]["of"] == 2 and x["draw"]["distinct"] for x in m)
    uids = [set(subset.read_lineage(str(d), ["uid"]).column("uid").to_pylist()) for d in dirs[:2]]
    assert len(uids[0]) == len(uids[1]) == 200 and uids[0] != uids[1]
    (tmp_path / "scales.yaml").write_text(
        "seeds: [0, 1]\ndefaults: {batch_size: 64, lr: 1.0e-3, warmup: 1, schedule: const, checkpoints: 2,"
        " precision: fp32, shard_image_size: 64}\nscales:\n  - {name: q, model: thresher-w32, samples_seen: 256}\n"
    )
    results = []
    for g in ("g1", "g2"):
        args = [
            "grid",
            "--scale",
            str(tmp_path / "scales.yaml"),
            "--replicates",
            "paired",
            "--cpus-per-run",
            "1",
            "--eval-set",
            str(synth_dir / "eval" / "shapes_retrieval"),
            "--out",
            str(tmp_path / g),
        ]
        assert cli.main(args + [a for d in dirs for a in ("--subset", str(d))]) == 0
        results.append((tmp_path / g / "results.csv").read_text())
        assert (
            cli.main(
                [
                    "compare",
                    str(tmp_path / g),
                    "--a",
                    "datacomp-none",
                    "--b",
                    "datacomp-basic",
                    "--metric",
                    "shapes_retrieval/image_retrieval_recall@5",
                    "--target-compute",
                    "2x",
                    "--out",
                    str(tmp_path / g / "ab"),
                ]
            )
            == 0
        )
    assert results[0] == results[1]
    df = pd.read_csv(tmp_path / "g1" / "results.csv")
    assert sorted(set(zip(df.recipe, df.draw, df.seed))) == [
        ("datacomp-basic", 0, 0),
        ("datacomp-basic", 1, 1),
        ("datacomp-none", 0, 0),
        ("datacomp-none", 1, 1),
    ]
    v1, v2 = (json.loads((tmp_path / g / "ab" / "compare.json").read_text()) for g in ("g1", "g2"))
    assert (v1["verdict"], v1["p_b_better"]) == (v2["verdict"], v2["p_b_better"])
