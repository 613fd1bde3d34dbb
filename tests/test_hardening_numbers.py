"""Issue 25, findings 8 and 9 (and 11's zero compute): the YAML and the numbers users hand us.

- A job file (or a `--var`) of YAML aliases, a "billion laughs", is refused before it is expanded, and
  so is nesting too deep to walk (thresher/core/config.py: parse_yaml, the one parser of user YAML).
- Results tables: every compute, model size, samples seen and metric passes one rule
  (thresher/experiments/scaling.py: RULES, numeric) in `fit` and `compare` alike; a bad number is refused naming the
  file, row and column. Numbers given on the command line (--target-compute, the target point,
  --predict, the cuts) must be positive and finite. compare.json and fits.json are always valid JSON.
- A name with `$...$` (a recipe, a metric, a group, a filter step) is drawn as it is, never parsed as
  matplotlib mathtext (thresher/core/plotting.py: plain).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import ab_calibration as sim
from thresher.app import cli
from thresher.audit import report
from thresher.core import config
from thresher.core.errors import InputError
from thresher.experiments import compare, compare_report

THRESHER = str(Path(sys.executable).parent / "thresher")
NOISE = {"replicate": 0.02, "run": 0.02, "checkpoint": 0.02, "rho": 0.5}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err[-600:]
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# Finding 8: YAML aliases and nesting


def _laughs(levels: int = 9) -> str:
    """A flow list whose last item stands for 10**levels values in under 600 bytes."""
    items = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def _job(tmp_path: Path, vars_value: str) -> Path:
    path = tmp_path / "lol.yaml"
    path.write_text(f"name: lol\nvars:\n  lol: {vars_value}\nsteps:\n  - synth: {{out: source, samples: 10}}\n")
    return path


@pytest.mark.parametrize("where", ["job file", "--var"])
def test_a_billion_laughs_is_refused_before_it_is_expanded(tmp_path, where):
    """600 bytes of aliases: `thresher run --dry-run` grew 500 MB in 30 s while `substitute` copied them
    out. Now it ends at once with one line naming the file (or the --var) and the aliases. A subprocess
    with a deadline, so the code before the fix fails here instead of hanging the suite."""
    bomb = _laughs()
    assert len(bomb) < 600
    if where == "job file":
        job, extra, named = _job(tmp_path, bomb), [], str(tmp_path / "lol.yaml")
    else:
        job, extra, named = _job(tmp_path, "1"), ["--var", f"lol={bomb}"], "--var lol"
    t0 = time.monotonic()
    r = subprocess.run(
        [THRESHER, "run", str(job), "--dry-run", *extra], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert time.monotonic() - t0 < 60
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-600:]
    assert named in lines[0] and "aliases" in lines[0] and "1,000,000 values" in lines[0]


@pytest.mark.parametrize(
    "value, says",
    [
        ("[" * 60_000 + "]" * 60_000, "nested more than 100 levels"),  # was: unexpected RecursionError
        ("&me [1, *me]", "cannot contain itself"),  # a list that holds itself: substitute never ended
    ],
    ids=["60000-deep", "self-alias"],
)
def test_yaml_nested_too_deep_or_holding_itself_is_refused_in_one_line(tmp_path, capsys, value, says):
    job = _job(tmp_path, value)
    assert cli.main(["run", str(job), "--dry-run"]) == 2
    line = _one_line_error(capsys)
    assert str(job) in line and says in line


def test_aliases_within_the_bounds_still_work(tmp_path):
    """Anchors are YAML: a config that reuses a block is read as before."""
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {timeout: 5, retries: 2}\nfast: *b\nlist: [&x [1, 2], *x]\n")
    assert config.read_yaml(path) == {
        "base": {"timeout": 5, "retries": 2},
        "fast": {"timeout": 5, "retries": 2},
        "list": [[1, 2], [1, 2]],
    }
    with pytest.raises(InputError, match="ok2.yaml: not valid YAML"):
        (tmp_path / "ok2.yaml").write_text("a: *undefined\n")
        config.read_yaml(tmp_path / "ok2.yaml")


# ---------------------------------------------------------------------------------------------------
# Finding 9: numbers in results tables and on the command line


def _table(tmp_path: Path, edits: dict | None = None, recipes=("a", "b"), metric="acc", scale="w") -> Path:
    """A small constant-LR grid of two recipes (2 replicates x 3 widths x 4 checkpoints each), with
    `edits` {(row, column): value} applied; rows count from 1 as the errors do."""
    rng = np.random.default_rng(0)
    rows = []
    for name, term in zip(recipes, (12.7, 0.0)):
        rows += sim.simulate_grid(rng, name, term, 2, NOISE)
    df = pd.DataFrame(rows)
    df[metric] = 1 - df.pop("error")
    df["scale"] = df["scale"].str.replace("w", scale)
    df = df.astype({"gflops_total": object, metric: object})
    for (row, col), value in (edits or {}).items():
        df.loc[row - 1, col] = value
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    return path


def _compare(path: Path, out: Path, *extra: str, target: str = "10x", metric: str = "acc", a="a", b="b") -> list:
    return [
        "compare",
        str(path),
        "--a",
        a,
        "--b",
        b,
        "--metric",
        metric,
        f"--target-compute={target}",  # '=': argparse reads a bare '-3x' as an option
        "--estimator",
        "replicates",
        "--bootstrap",
        "0",
        "--out",
        str(out),
        *extra,
    ]


def _fit(path: Path, out: Path, *extra: str, y: str = "acc") -> list:
    return [
        "fit",
        str(path),
        "--x",
        "gflops_total",
        "--y",
        y,
        "--accuracy",
        "--group",
        "recipe",
        "--bootstrap",
        "0",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("command", ["compare", "fit"])
@pytest.mark.parametrize(
    "value", [-5e9, 0, math.inf, ""], ids=["negative", "zero", "infinite", "empty"]
)  # zero: compare ended in "Geometric sequence cannot include zero" (finding 11)
def test_a_bad_compute_is_refused_naming_the_file_row_and_column(tmp_path, capsys, command, value):
    """Negative compute entered the measured range and still gave a verdict; `fit` dropped zero and
    infinite compute silently while `compare` refused infinity: one rule now, in both."""
    path = _table(tmp_path, {(6, "gflops_total"): value})
    argv = _compare(path, tmp_path / "out") if command == "compare" else _fit(path, tmp_path / "out")
    assert cli.main(argv) == 2
    line = _one_line_error(capsys)
    assert str(path) in line and "row 6" in line and "'gflops_total'" in line and "positive, finite" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("command", ["compare", "fit"])
@pytest.mark.parametrize("value", [1.5, -0.2], ids=["above-1", "negative"])
def test_an_accuracy_outside_0_to_1_is_refused(tmp_path, capsys, command, value):
    """An accuracy of 1.5 made its replicate's fit fail, and the replicate was dropped without a word."""
    path = _table(tmp_path, {(3, "acc"): value})
    argv = _compare(path, tmp_path / "out") if command == "compare" else _fit(path, tmp_path / "out")
    assert cli.main(argv) == 2
    line = _one_line_error(capsys)
    assert str(path) in line and "row 3" in line and "'acc'" in line and "from 0 to 1" in line


@pytest.mark.parametrize("target", ["-3x", "0", "nan", "inf", "-1e12", "0x", "1e400", "1e308x"])
def test_a_target_compute_must_be_positive_and_finite(tmp_path, capsys, target):
    """`-3x`, `0` and `nan` gave a verdict 'at compute -810' and a compare.json holding NaN."""
    path = _table(tmp_path)
    assert cli.main(_compare(path, tmp_path / "out", target=target)) == 2
    line = _one_line_error(capsys)
    assert f"--target-compute {target!r}" in line and "positive" in line


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--target-model=-5", "--target-samples=1e9"], "--target-model"),
        (["--target-model=5", "--target-samples=nan"], "--target-samples"),
        (["--target-model=5", "--target-samples=1e9", "--target-subset-size=0"], "--target-subset-size"),
        (["--fit-below=-1"], "--fit-below"),
        (["--backtest=nan"], "--backtest"),
    ],
)
def test_the_other_numbers_of_compare_must_be_positive_and_finite(tmp_path, capsys, extra, named):
    path = _table(tmp_path)
    argv = [a for a in _compare(path, tmp_path / "out", *extra) if not a.startswith("--target-compute")]
    if not extra[0].startswith("--target-model"):
        argv.append("--target-compute=10x")
    assert cli.main(argv) == 2
    line = _one_line_error(capsys)
    assert named in line and "positive, finite" in line


@pytest.mark.parametrize("extra, named", [(["--predict=-1e12"], "--predict"), (["--fit-below=nan"], "--holdout")])
def test_the_numbers_given_to_fit_must_be_positive_and_finite(tmp_path, capsys, extra, named):
    """A prediction at a negative compute wrote NaN into fits.json."""
    path = _table(tmp_path)
    assert cli.main(_fit(path, tmp_path / "out", *extra)) == 2
    line = _one_line_error(capsys)
    assert named in line and "positive, finite" in line


def test_fit_leaves_rows_without_the_metric_out_with_a_note(tmp_path, capsys):
    """As compare does: a row lacking the metric (a run not evaluated on it) is left out, and fits.json
    says how many per group; `fit` used to drop them without a word."""
    path = _table(tmp_path, {(2, "acc"): "", (30, "acc"): ""})
    assert cli.main(_fit(path, tmp_path / "out")) == 0
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["left_out"]["rows"] == {"a": 1, "b": 1}


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_compare_json_is_always_valid_json(tmp_path, monkeypatch):
    """json.dump writes NaN for a figure that is not a number, and compare.json was then not JSON: every
    non-finite figure is written as null."""
    path = _table(tmp_path)
    real = compare.from_table

    def with_a_nan(*args, **kw):
        cmp = real(*args, **kw)
        cmp.result["figures"] = [float("nan"), np.float64("inf"), 1.5]  # figures that could not be computed
        return cmp

    monkeypatch.setattr(compare, "from_table", with_a_nan)
    opts = compare.FitOptions(n_bootstrap=0, estimator="replicates")
    compare_report.run(str(path), "a", "b", "acc", "10x", str(tmp_path / "ab"), opts=opts)
    out = _strict((tmp_path / "ab" / "compare.json").read_text())
    assert out["figures"] == [None, None, 1.5] and out["a"] == "a"


# ---------------------------------------------------------------------------------------------------
# Finding 9: `$...$` in names is drawn, not parsed as mathtext

BAD_MATH = r"$\notacommand$"  # invalid mathtext: matplotlib raised ValueError when saving the figure


@pytest.mark.parametrize("estimator", ["replicates", "joint"])
def test_compare_draws_dollar_signs_in_recipe_metric_and_scale_names(tmp_path, capsys, estimator):
    a, b, metric = f"a{BAD_MATH}", f"b{BAD_MATH}", f"acc{BAD_MATH}"
    path = _table(tmp_path, recipes=(a, b), metric=metric, scale=f"w{BAD_MATH}")
    argv = _compare(path, tmp_path / "out", metric=metric, a=a, b=b)
    argv[argv.index("--estimator") + 1] = estimator
    assert cli.main(argv) == 0, capsys.readouterr().err[-600:]
    assert (tmp_path / "out" / "compare.png").stat().st_size and (tmp_path / "out" / "compare_diff.png").exists()


def test_fit_draws_dollar_signs_in_group_and_column_names(tmp_path, capsys):
    path = _table(tmp_path, recipes=(f"a{BAD_MATH}", f"b{BAD_MATH}"), metric=f"acc{BAD_MATH}")
    assert cli.main(_fit(path, tmp_path / "out", y=f"acc{BAD_MATH}")) == 0, capsys.readouterr().err[-600:]
    assert (tmp_path / "out" / "fits.png").stat().st_size


def test_audit_report_plots_draw_dollar_signs_in_step_domain_and_score_names():
    """The report's bars (funnel steps, domains, languages) and histograms (score columns) are labelled
    with the subset's own names."""
    import matplotlib

    matplotlib.use("Agg")
    assert report._bar([f"step {BAD_MATH}", "$x$y$"], [10, 3], "Samples left", "samples")
    assert report._hist({f"clip{BAD_MATH}_score": np.linspace(0, 1, 50)}, "scores", "score")
