"""The command line: every command has help with an example; the demo runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_ROWS_PER_SHARD, DEMO_VARS, copy_pool, run_test_demo

from thresher.app import cli


@pytest.mark.parametrize(
    "command",
    [
        "demo",
        "synth",
        "serve",
        "download",
        "features",
        "export-metadata",
        "dedup",
        "filter",
        "filters",
        "train",
        "train-probe",
        "embed-images",
        "subset",
        "audit",
        "fit",
        "compare",
        "eval",
        "grid",
    ],
)
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"thresher {command}" in out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "thresher.app.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("thresher ")


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["download", "x.parquet", "--out", str(tmp_path), "--config", "nope"]) == 2
    assert "no preset" in capsys.readouterr().err


def test_bad_recipe_exits_2_naming_the_file(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps:\n  - {filter: nope}\n")
    assert cli.main(["filter", str(tmp_path / "pool"), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and "unknown filter 'nope'" in err


def test_demo_runs_the_three_workflows_and_prints_their_paths(demo):
    """`thresher demo` on a small pool (the session's `demo` fixture, tests/conftest.py: 1,500 samples in 150-row
    shards, one quick scale for the A/B grid)."""
    out, result, lines = demo
    manifest = json.loads((out / "pool" / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == DEMO_VARS["samples"]
    shards = DEMO_VARS["samples"] // DEMO_ROWS_PER_SHARD
    assert manifest["shards"]["complete"] == manifest["shards"]["total"] == shards == 10
    pool, success = out / "pool", manifest["counts"]["status"]["success"]
    for kind in ("base", "clip_tiny", "dfn"):
        stats = list((pool / "features" / kind).glob("*_stats.json"))
        assert sum(json.loads(p.read_text())["count"] for p in stats) == success
    assert json.loads((pool / "dedup" / "manifest.json").read_text())["samples"] == success
    # workflow 1: an exact-size subset of the recipe, verified
    sub = json.loads((out / "subset" / "manifest.json").read_text())
    assert sub["size"] == DEMO_VARS["size"] == 200 and sub["recipe"] == "dfn-dedup"
    # the A/B's filter step found dfn-dedup's decisions up to date and left them, so the subset still points
    # at the decisions it was cut from (`audit remove` continues its ranking from them)
    from thresher.core import runtime

    assert sub["decisions_manifest_sha256"] == runtime.file_sha256(
        str(pool / "decisions" / "dfn-dedup" / "manifest.json")
    )
    # workflow 3: the provenance report and the link-rot recheck (the served pool still serves most URLs)
    assert result["recheck"]["checked"] > 0 and result["recheck"]["gone_rate"] < 0.5
    # workflow 2: equal subsets of both arms, the grid, and a verdict (at this size possibly "no comparison:
    # ..." when too few frontier points: a report either way)
    for arm in ("datacomp-none", "dfn-dedup"):
        assert json.loads((out / "subsets" / arm / "manifest.json").read_text())["size"] == DEMO_VARS["size"]
    assert len((out / "grid" / "results.csv").read_text().splitlines()) == 1 + 2 * 4
    assert result["ab"]["verdict"]
    # it ends with the three paths, each of which exists
    tail = "\n".join(lines[-3:])
    for key, label in (("subset", "subset:"), ("audit", "audit:"), ("ab", "A/B report:")):
        assert Path(result["paths"][key]).exists() and f"{label} " in tail and result["paths"][key] in tail
    # one job: the pool steps the three workflows share ran once, and each step left its record
    records = sorted((out / "_job").glob("*.json"))
    assert [r.name.split("-", 1)[1] for r in records].count("synth.json") == 1
    assert len(records) == len(__import__("thresher.app.jobs").app.jobs.load("demo").steps)


def test_demo_rerun_resumes_without_redoing_work(demo):
    out, result, _ = demo
    settings = json.loads((out / "demo.json").read_text())
    lines = []
    run_test_demo(out, settings["port"], settings["scales"], settings["download"], lines.append)
    assert sum("done already" in line for line in lines) == len(list((out / "_job").glob("*.json")))


def test_every_preset_recipe_runs_on_the_demo_pool(demo, tmp_path, capsys):
    """Each preset in configs/recipes/ on a real downloaded pool (a copy of the demo's); the demo's scorers
    stand in for clip_b32 and clip_l14 (random-init clip_tiny: those decisions exercise the machinery, their
    choices mean nothing)."""
    import pyarrow.parquet as pq

    from thresher.core import runtime
    from thresher.stages.features import features, probe
    from thresher.stages.filter import filter as filtering
    from thresher.stages.filter.filter import missing_plugins

    demo_out, _, _ = demo
    out, src = tmp_path, demo_out / "source"
    pool = copy_pool(demo_out / "pool", out / "pool")
    # image-based filtering's target set: labelled evaluation images, embedded by the same model
    target = out / "shapes_kind.thresher-tiny.npy"
    features.embed_images(str(src / "eval" / "shapes_kind"), "thresher-tiny", None, str(target))
    # an NSFW-style probe trained on half the pool's answer key, as a user would bring labelled examples
    truth = pq.read_table(src / "ground_truth.parquet").to_pylist()
    uids = features.read_scorer(str(pool), "clip_tiny").column("uid").to_pylist()
    unsafe = {g["uid"] for g in truth if g["category"].startswith("blocked_")}
    half = [u for u in uids if int(u[:2], 16) < 128]
    runtime.write_parquet(probe.labels_table(half, [int(u in unsafe) for u in half]), str(out / "labels.parquet"))
    probe.train_probe(str(pool), "clip_tiny", str(out / "labels.parquet"), str(out / "probe.npz"))
    variables = {
        "scorer": "clip_tiny",
        "blocklists": str(src / "blocklists"),
        "target": str(target),
        "clusters": 6,
        "probe_scorer": "clip_tiny",
        "probe": str(out / "probe.npz"),
    }
    success = json.loads((pool / "manifest.json").read_text())["counts"]["status"]["success"]
    presets = [
        p.stem for p in sorted((cli.CONFIG_DIR / "recipes").glob("*.yaml")) if not missing_plugins(str(p))
    ]  # a plugin's preset runs only where it is installed
    assert len(presets) >= 14
    for name in presets:
        filtering.run(str(pool), name, variables, log=lambda *_: None)
        funnel = json.loads((pool / "stats" / f"filter-{name}.json").read_text())
        assert funnel["samples"] == success and funnel["funnel"][0]["in"] == success, name
