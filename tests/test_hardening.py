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
