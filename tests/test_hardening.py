"""Hardening (issue 15): what a user, a web page or another run on the machine hands us cannot break a
command, escape its folder or reach a private address.

Each test here failed before its fix (the issue names the finding) and passes now.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

# what every command does first: start Ray (a local instance of its own when no address is given)
INIT = ("import ray; from pipeline import runtime; runtime.init_ray(num_cpus=1); "
        "print('CPUS', int(ray.cluster_resources()['CPU']))")


def _run_init(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", INIT], env=env, capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of its own (where ray_current_cluster lives), short: Ray's socket paths under it
    must fit AF_UNIX's 107 bytes, which pytest's tmp_path does not."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(ray_tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def test_a_stale_ray_current_cluster_file_does_not_break_commands(ray_tmp):
    """Finding 5: `ray.init()` without an address follows the `ray_current_cluster` file a killed cluster
    leaves behind; every command then failed. Thresher starts its own local instance."""
    env = _env(ray_tmp)
    folder = ray_tmp / "ray"
    folder.mkdir(parents=True)
    (folder / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing listens there
    r = _run_init(env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CPUS 1" in r.stdout


def test_a_second_local_cluster_does_not_capture_commands(ray_tmp):
    """Finding 5: with a head node started by `ray start` on the machine, `init_ray` passed num_cpus to a
    `ray.init()` that found it: ValueError. Now the command runs on a local instance of its own."""
    env = _env(ray_tmp)
    port = free_port()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                             "--num-cpus=3", "--include-dashboard=false", "--block"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        marker = ray_tmp / "ray" / "ray_current_cluster"
        for _ in range(120):
            if marker.exists():
                break
            time.sleep(0.5)
        assert marker.exists(), "ray start did not come up"
        r = _run_init(env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "CPUS 1" in r.stdout  # its own instance, not the head's 3 CPUs
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------
# Finding 1: names that become paths

BAD_NAMES = ["..", "../shards", "a/b", "/etc", ".hidden", "", "x" * 200, "a b", "ok/../..", "..x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_name_rule_refuses_names_that_could_escape(name):
    from pipeline.config import check_name
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="cannot be used as a name"):
        check_name(name, "recipe name", "r.yaml: field 'name'")
    assert check_name("datacomp-clip-l14-30pct", "recipe name", "x") == "datacomp-clip-l14-30pct"


def _tree(pool: Path) -> dict:
    return {str(p.relative_to(pool)): p.stat().st_mtime_ns for p in pool.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["..", "../shards"])
def test_a_recipe_named_to_escape_is_refused_before_any_work(featured_pool, tmp_path, capsys, name):
    """`name: ..` replaced the pool's manifest.json, `name: ../shards` every shard's Parquet."""
    from pipeline import cli

    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: '{name}'\nsteps:\n  - filter: none\n")
    before = _tree(featured_pool)
    assert cli.main(["filter", str(featured_pool), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "evil.yaml: field 'name'" in err and "cannot be used as a name" in err
    assert _tree(featured_pool) == before  # nothing written, nothing replaced


def test_a_scorer_id_scale_name_or_job_name_that_escapes_is_refused(featured_pool, tmp_path, capsys):
    from pipeline import cli, jobs, train
    from pipeline.errors import InputError

    before = _tree(featured_pool)
    assert cli.main(["features", str(featured_pool), "--model", "thresher-w32", "--pretrained", "none",
                     "--scorer-id", "../shards", "--no-base"]) == 2
    assert "scorer id '../shards' cannot be used as a name" in capsys.readouterr().err
    assert _tree(featured_pool) == before
    (tmp_path / "s.yaml").write_text("scales:\n  - {name: ../x, model: thresher-w32, samples_seen: 8, batch_size: 8,"
                                     " lr: 0.1, warmup: 1}\n")
    with pytest.raises(InputError, match="scale name '../x'"):
        train.load_scales(str(tmp_path / "s.yaml"))
    (tmp_path / "j.yaml").write_text("name: ../../etc\nsteps:\n  - fit: {results: r.csv, x: a, y: b, out: f}\n")
    with pytest.raises(InputError, match="job name"):
        jobs.load(str(tmp_path / "j.yaml"))
    (tmp_path / "k.yaml").write_text("name: k\nsteps:\n  - fit: {results: r.csv, x: a, y: b, out: ../../elsewhere}\n")
    with pytest.raises(InputError, match="leaves the job's directory"):
        jobs.load(str(tmp_path / "k.yaml"), out=str(tmp_path / "job"))
    (tmp_path / "l.yaml").write_text("- fit: {}\n")
    with pytest.raises(InputError, match="a job is a mapping"):
        jobs.load(str(tmp_path / "l.yaml"))
