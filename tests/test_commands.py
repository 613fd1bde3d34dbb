"""The command registry (thresher/app/commands/): one record per command, beneath the CLI, jobs and --plan."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from thresher.app import cli, commands, jobs
from thresher.core.errors import InputError

REPO = Path(__file__).resolve().parent.parent


def test_the_console_script_is_the_cli_entry_point():
    """The CLI is an entry point only (tests/test_layout.py checks that no module imports it)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["thresher"] == "thresher.app.cli:main"


def _every_command():
    for cmd in cli.all_commands().values():
        yield from (cmd.actions or {cmd.name: cmd}).values()


def test_every_command_has_help_an_example_and_distinct_arguments():
    for cmd in cli.all_commands().values():
        assert cmd.help and cmd.example.startswith(f"thresher {cmd.name}"), cmd.name
    for cmd in _every_command():
        dests = [a.dest for a in commands.arguments(cmd.args)]
        assert len(dests) == len(set(dests)), (cmd.name, dests)  # a config field never shadows an option
        assert dests[0] == "ray_address" and cmd.run is not None, cmd.name


def test_a_step_binds_to_typed_arguments(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "vars: {n: '7'}\nsteps:\n"
        "  - subset: {pool: p, recipe: [a, b], size: '{n}', out: o, allow_repeat: true}\n"
        "  - dedup: {pool: p, semantic: false, eval_sets: [x, y], clusters: 3}\n"
        "  - fit: {results: r.csv, x: c, y: e, out: f, predict: [1e12, 2], bootstrap: 50}\n"
    )
    subset, dedup, fit = (s.call for s in jobs.load(str(path), out=str(tmp_path)).steps)
    assert isinstance(subset.args, commands.SubsetArgs) and subset.args.size == 7  # "7" parses as --size 7 would
    assert subset.args.recipe == ["a", "b"] and subset.args.allow_repeat and subset.args.seed == 0
    assert subset.args.pool == str(tmp_path / "p")
    assert dedup.args.overrides == {
        "semantic": False,
        "eval_sets": [str(tmp_path / "x"), str(tmp_path / "y")],
        "clusters": 3,
    }
    assert fit.args.predict == [1e12, 2.0] and fit.args.options.bootstrap == 50 and fit.args.options.loss == "log"


def test_the_plan_reads_the_config_a_step_names(tmp_path):
    """--plan costs dedup from its resolved config (file, then flags), not from the flags alone."""
    from thresher.app import plan

    (tmp_path / "d.yaml").write_text("semantic: false\nperceptual: false\npartitions: 64\n")
    path = tmp_path / "job.yaml"
    path.write_text(f"plan: {{pool_samples: 1000000}}\nsteps:\n  - dedup: {{pool: p, config: {tmp_path / 'd.yaml'}}}\n")
    step = plan.plan_job(jobs.load(str(path), out=str(tmp_path)), cluster="local")["steps"][0]
    assert "over 64 partitions" in step.what and step.cores == 64


def test_audit_actions_are_nested_commands():
    audit = commands.COMMANDS["audit"]
    assert list(audit.actions) == ["verify", "trace", "explain", "report", "remove", "recheck"]
    call = cli.parse(["audit", "verify", "s", "--ray-address", "ray://x:1"])
    assert call.name == "audit" and call.command is audit.actions["verify"]
    assert call.args == commands.VerifyArgs(subset="s", ray_address="ray://x:1")
    assert cli.parse(["audit", "--ray-address", "ray://y:2", "trace", "s", "u"]).args.ray_address == "ray://y:2"


def test_a_command_is_run_or_actions():
    with pytest.raises(TypeError):
        commands.Command("x", "h", "thresher x", commands.Common, None)


def test_a_bad_value_names_the_step_and_the_argument(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("steps:\n  - synth: {out: s, proportions: 'dup'}\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: step 1: proportions: expected KEY=VALUE, got 'dup'")):
        jobs.load(str(path))


def test_a_folder_named_like_a_preset_does_not_hide_the_preset(tmp_path, monkeypatch):
    """`thresher demo --out demo` leaves a folder `demo/`; `--config demo` run from beside it used to
    read that folder as the config file ("is a directory, not a YAML file")."""
    from thresher.stages.filter import filter as flt

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "dfn").mkdir()
    assert commands._config_path("demo", "download") == commands.CONFIG_DIR / "download" / "demo.yaml"
    assert flt.recipe_path("dfn") == flt.RECIPE_DIR / "dfn.yaml"
    (tmp_path / "mine.yaml").write_text("x: 1\n")
    assert commands._config_path("mine.yaml", "download") == Path("mine.yaml")
