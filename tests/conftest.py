"""Shared fixtures: one synthetic pool per test session, its HTTP server, a local Ray, one download; one
small `thresher demo`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from thresher.exec import execute
from thresher.stages.acquire import download
from thresher.synthetic import serve
from thresher.synthetic.synth import SynthConfig, generate

POOL_SAMPLES = 3000


def pytest_collection_modifyitems(config, items):
    """`ray` for every test that starts the session's Ray (directly or through a fixture); `gpu` tests
    are skipped where CUDA is not available (CI has none; the device machine runs them)."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch, no GPU
        cuda = False
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("gpu") and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
    # In one process, the multi-node cluster tests last: Ray's Cluster changes process-wide state of the test
    # process (signal handlers, which its fixture puts back, Ray's current-cluster file), and two stall-watchdog
    # tests after them failed in CI (2026-12-01). With workers (pytest-xdist, pyproject's addopts), first: the
    # longest file (4 to 7 minutes of a ~15-minute run) then runs beside the others instead of alone at the
    # end, and every test its worker ran after it passed (three full runs, 2026-12-07).
    # test_browse last: nearly all of it reads the session's demo, which the cluster file's first test builds
    # (about 90 s); taken early, it kept the other worker waiting on the demo's lock (a 926 s run, 2026-12-07)
    workers = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    place = {"test_cluster": 0 if workers else 2, "test_browse": 2}
    items.sort(key=lambda item: place.get(item.module.__name__, 1) if item.module else 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory, port) -> Path:
    out = tmp_path_factory.mktemp("synth")
    # planted failures are raised a little so every category has a few dozen samples at this size
    generate(out, SynthConfig(samples=POOL_SAMPLES, seed=1, port=port, stall_seconds=60.0), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def ground_truth(synth_dir):
    return pq.read_table(synth_dir / "ground_truth.parquet").to_pylist()


@pytest.fixture(scope="session")
def truth_by_uid(ground_truth):
    return {g["uid"]: g for g in ground_truth}


@pytest.fixture(scope="session")
def server(synth_dir, port):
    srv = serve.start(synth_dir, port)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ray_local():
    import ray

    execute.init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def ray_by_value(ray_local, request):
    """The session's Ray, with the test module's functions and classes sent by value: Ray workers cannot
    import a test module."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(request.module)
    yield
    cloudpickle.unregister_pickle_by_value(request.module)


def test_download_config(**overrides) -> download.DownloadConfig:
    """Small shards, a short timeout (planted stalls fail fast) and local addresses allowed."""
    base = dict(samples_per_shard=500, timeout=2.0, retries=2, threads=32, allow_private_addresses=True)
    return download.DownloadConfig(**{**base, **overrides})


test_download_config.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session")
def pool(tmp_path_factory, synth_dir, server, ray_local):
    out = tmp_path_factory.mktemp("pool")
    manifest = download.run(str(synth_dir / "urls.parquet"), str(out), test_download_config(), log=lambda *_: None)
    return out, manifest


@pytest.fixture(scope="session")
def featured_pool(pool, ray_local):
    """The downloaded pool with base features and the tiny (random-init) CLIP scorer."""
    from thresher.stages.features import features

    out, _ = pool
    features.run_base(str(out), log=lambda *_: None)
    features.run_scorer(str(out), features.ScorerConfig(), log=lambda *_: None)
    return out


# `thresher demo` as the session runs it once (the `demo` fixture): a small pool in 150-row download shards
# and one quick scale for the A/B grid (4 const checkpoints of 512 samples). Its job runs build_subset.yaml's
# steps with these vars, so it is also the local run tests/test_cluster.py compares the cluster's runs with.
DEMO_VARS = {"samples": 1500, "trusted": 200, "eval_images": 50, "dfn_epochs": 1, "size": 200}
DEMO_ROWS_PER_SHARD = 150
QUICK_SCALES = (
    "defaults: {batch_size: 64, lr: 1.0e-3, warmup: 1, schedule: const, checkpoints: 4, precision: fp32,"
    " shard_image_size: 80}\n"
    "scales:\n  - {name: a, model: thresher-w32, samples_seen: 512}\n"
)


def shared_dir(tmp_path_factory) -> Path:
    """A folder all of this run's pytest-xdist workers share (their base folders' parent); the base folder
    itself in a run without workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """(folder, done): the shared folder NAME, locked against the other workers until the block ends, and
    whether a worker already built it (its `.built` file). A block that builds it calls `done()`."""
    root = shared_dir(tmp_path_factory)
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        folder.mkdir(exist_ok=True)
        yield folder, (folder / ".built").exists(), lambda: (folder / ".built").touch()


@pytest.fixture(scope="session")
def demo_download_config(tmp_path_factory) -> str:
    """The demo's download settings in 150-row shards (so the two nodes of test_cluster's cluster share ten)."""
    with built_once(tmp_path_factory, "config") as (folder, built, done):
        path = folder / "download.yaml"
        if not built:
            demo = (Path(__file__).resolve().parent.parent / "configs/download/demo.yaml").read_text()
            assert "samples_per_shard: 1000" in demo
            path.write_text(demo.replace("samples_per_shard: 1000", f"samples_per_shard: {DEMO_ROWS_PER_SHARD}"))
            done()
    return str(path)


def run_test_demo(out: Path, port: int, scales: str, download: str, log) -> dict:
    from thresher.app.demo import run_demo

    variables = {k: v for k, v in DEMO_VARS.items() if k != "samples"}
    return run_demo(
        out=str(out),
        samples=DEMO_VARS["samples"],
        port=port,
        scales=scales,
        overrides={**variables, "download": download},
        log=log,
    )


@pytest.fixture(scope="session")
def demo(tmp_path_factory, ray_local, demo_download_config):
    """`thresher demo` (jobs/demo.yaml) on a small pool, once per run (whichever worker asks first builds it,
    the others wait and read it): (its folder, its result, its log lines). Its settings (and port) are in
    FOLDER/demo.json. Tests read its outputs and write nothing into it (they filter a copy_pool of its pool).
    It runs in a process of its own, as a user's command does: in a test process its DFN training once gave
    other bits after the tests run before it there (test_cluster compares them with a cluster's, bit for bit)."""
    with built_once(tmp_path_factory, "demo") as (tmp, built, done):
        record = tmp / "fixture.json"
        if not built:
            (tmp / "scales.yaml").write_text(QUICK_SCALES)
            code = (
                "import json, sys; from pathlib import Path; from conftest import run_test_demo; lines = []; "
                "result = run_test_demo(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], lines.append); "
                "json.dump({'result': result, 'lines': lines}, open(sys.argv[5], 'w'))"
            )
            argv = [str(tmp / "demo"), str(free_port()), str(tmp / "scales.yaml"), demo_download_config, str(record)]
            env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "THRESHER_EXECUTOR")}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
            run = subprocess.run(
                [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=1200
            )
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
            done()
        saved = json.loads(record.read_text())
    return tmp / "demo", saved["result"], saved["lines"]


def copy_pool(src: Path, dst: Path) -> Path:
    """A pool's copy to write into (decisions, stats): every file copied but the tar shards, which no stage
    rewrites once finished; those are symlinks to the originals."""

    def copy(a: str, b: str) -> None:
        os.symlink(a, b) if a.endswith(".tar") else shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


def pip(*args: str) -> None:
    """This environment's pip, quiet, never fetching dependencies (nothing can be fetched here)."""
    subprocess.run(
        [sys.executable, "-m", "pip", args[0], "--quiet", "--no-deps", *args[1:]], check=True, capture_output=True
    )


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example package, built and installed (no network, no dependencies) into a directory of its own."""
    tmp = tmp_path_factory.mktemp("plugin")
    # setuptools builds in the source tree: a copy keeps the checkout clean
    src = shutil.copytree(
        Path(__file__).resolve().parent.parent / "docs" / "plugin-example",
        tmp / "src",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    pip("install", "--no-build-isolation", "--no-index", "--target", str(tmp / "site"), str(src))
    assert (tmp / "site" / "thresher_example_filters").is_dir()
    return tmp / "site"


@pytest.fixture(scope="module")
def s3():
    """moto's threaded S3 server with one bucket, s3://thresher-test; its endpoint and dummy keys in this
    process's environment (which a test's cluster nodes and subprocesses inherit) for the module's tests."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("thresher-test")
    yield "s3://thresher-test"
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    if not CHROMIUM:
        why = "headless Chromium is not installed (apt-get install chromium)"
        if os.environ.get("THRESHER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why}, and THRESHER_REQUIRE_BROWSER=1")
        pytest.skip(f"{why}; set THRESHER_REQUIRE_BROWSER=1 to make this a failure")
    return CHROMIUM
