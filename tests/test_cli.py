"""The command line: every command has help with an example; the demo runs end to end."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import free_port
from pipeline import cli


@pytest.mark.parametrize("command", ["demo", "synth", "serve", "download", "features", "export-metadata", "dedup",
                                     "filter", "filters", "train", "train-probe", "embed-images", "subset", "audit", "fit",
                                     "compare", "eval", "grid"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"thresher {command}" in out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True)
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


def test_demo_end_to_end(tmp_path, ray_local, capsys):
    from pipeline.demo import run_demo
    from pipeline.filter import missing_plugins

    # the A/B grid at a size this small pool can feed quickly: 4 const checkpoints of 512 samples
    (tmp_path / "scales.yaml").write_text(
        "defaults: {batch_size: 64, lr: 1.0e-3, warmup: 1, schedule: const, checkpoints: 4, precision: fp32,"
        " shard_image_size: 80}\n"
        "scales:\n  - {name: a, model: thresher-w32, samples_seen: 512}\n")
    result = run_demo(out=str(tmp_path / "demo"), samples=1200, port=free_port(), scales=str(tmp_path / "scales.yaml"))
    manifest = json.loads((tmp_path / "demo" / "pool" / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 1200
    assert manifest["shards"]["complete"] == manifest["shards"]["total"] == 2
    assert "pool:" in capsys.readouterr().out
    pool = tmp_path / "demo" / "pool"
    success = manifest["counts"]["status"]["success"]
    for kind in ("base", "clip_tiny"):
        stats = list((pool / "features" / kind).glob("*_stats.json"))
        assert sum(json.loads(p.read_text())["count"] for p in stats) == success
    assert json.loads((pool / "dedup" / "manifest.json").read_text())["samples"] == success
    presets = sorted(p.stem for p in (cli.CONFIG_DIR / "recipes").glob("*.yaml")
                     if not missing_plugins(str(p)))  # a plugin's preset runs only where it is installed
    assert sorted(result["recipes"]) == presets
    for name in presets:  # every preset ran, and its funnel is in the pool's stats
        funnel = json.loads((pool / "stats" / f"filter-{name}.json").read_text())
        assert funnel["samples"] == success and funnel["funnel"][0]["in"] == success
    assert result["pool"].endswith("pool")
    sizes = {r: s["size"] for r, s in result["subsets"].items()}
    assert len(sizes) >= 3 and len(set(sizes.values())) == 1 and all(s["verified"] for s in result["subsets"].values())
    for s in result["subsets"].values():
        assert (Path(s["dir"]) / "manifest.json").exists() and (Path(s["dir"]) / "lineage.parquet").exists()
    assert Path(result["reports"]["audit"]).exists()
    rows = (tmp_path / "demo" / "ab-grid" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4  # 2 recipes x 4 checkpoints past warm-up
    # a verdict, or at 1,200 samples possibly "no comparison: ..." (too few frontier points); a report either way
    assert Path(result["reports"]["ab"]).exists() and result["ab"]["verdict"]
