"""Thresher on a multi-node Ray cluster (issue 18, points 1 to 3), on this machine.

Ray's own test cluster (`ray.cluster_utils.Cluster`): a head with no CPUs for work and two one-CPU
worker nodes, each its own raylet and object store, so every task runs on a worker node and the job's
driver (the `thresher run` subprocess) only connects, as it would to a real cluster. An S3-compatible
server (moto's, on 127.0.0.1) stands in for object storage; the cluster's workers get its endpoint from
the environment, as a real cluster's would from its nodes' configuration.

`jobs/build_subset.yaml` (the pool job's steps, then filter, subset, verify and report) runs three
times on a 1,500-sample synthetic pool in 10 download shards: locally, on the cluster while worker nodes
are removed mid-stage (download, base features, clip_tiny's CLIP scoring, subset, each every run), and on the
cluster with the pool and subset on s3://. The local run is the session's `thresher demo` (tests/conftest.py:
jobs/demo.yaml runs build_subset.yaml's steps, with the same vars, download config and port, on this
machine's local Ray; its later steps only read the pool, filter datacomp-none and write other folders), so
the pool is not built a third time. The three give the same decisions, the same CLIP scores and
embeddings (bit for bit), the same subset (uids and shard bytes) and, with nodes lost, every input row once
and no partial file. After the node-loss run, dedup over partitions (Ray tasks)
loses a node too and gives the local run's in-process verdicts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import DEMO_ROWS_PER_SHARD, DEMO_VARS

from thresher.core import runtime
from thresher.core.pool import Pool
from thresher.stages.dedup import dedup
from thresher.stages.features.features import read_scorer
from thresher.stages.filter import filter as filtering
from thresher.stages.subset import subset

pytestmark = pytest.mark.slow

VARS = DEMO_VARS  # the demo's, so that it is the local run
ROWS, PER_SHARD = VARS["samples"], DEMO_ROWS_PER_SHARD
THRESHER = str(Path(sys.executable).with_name("thresher"))


@pytest.fixture(scope="module")
def cluster(s3):
    """Ray's Cluster installs its own SIGINT/SIGTERM handlers in this process (each add_node too); they are
    put back afterwards, since the stall watchdog's tests need Python's KeyboardInterrupt on SIGINT."""
    import signal

    from ray.cluster_utils import Cluster

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    mem = 300 * 2**20
    # a removed node is marked dead after 3 failed health checks 1 s apart, not Ray's default 5 x 3 s: the
    # job's lost tasks are retried once it is (each node loss waited ~15 s for that); a node that is alive
    # answers a check well within its timeout (10 s, left as it is)
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": mem, "_system_config": health}
    )
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=mem)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
        for s, h in handlers.items():
            signal.signal(s, h)


@pytest.fixture(scope="module")
def download_config(demo_download_config) -> str:
    """The demo's download settings in 150-row shards, so two nodes share ten of them."""
    return demo_download_config


@pytest.fixture(scope="module")
def job_port(demo) -> int:
    """The demo's port, for every run: the synthetic URLs, and so the uids, contain it."""
    out, _, _ = demo
    return json.loads((out / "demo.json").read_text())["port"]


def run_job(out: Path, port: int, config: str, store: str = ".", address: str | None = None, watch=None) -> None:
    """`thresher run build_subset` as a user runs it; `watch()` is called every 50 ms while it runs (in
    this thread: Ray's Cluster adds nodes from the main thread only)."""
    argv = [THRESHER, "run", "build_subset", "--out", str(out)]
    for k, v in {**VARS, "port": port, "download": config, "store": store}.items():
        argv += ["--var", f"{k}={v}"]
    if address:
        argv += ["--ray-address", address]
    out.parent.mkdir(parents=True, exist_ok=True)
    run_cli(argv, out.parent, out.parent / f"{out.name}.log", watch)


def run_cli(argv: list[str], cwd: Path, log: Path, watch=None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            if watch:
                watch()
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, log.read_text()[-5000:]


@pytest.fixture(scope="module")
def local_run(demo, download_config):
    """The job run locally: the session's demo (its folder has pool/, subset/ and source/ as build_subset's has)."""
    out, _, _ = demo
    settings = json.loads((out / "demo.json").read_text())
    assert {k: settings[k] for k in VARS} == VARS and settings["download"] == download_config
    return out


class NodeKiller:
    """Removes a worker node, and adds a fresh one so the job keeps two, when a stage is part-way (some
    but not all of its completion markers are there, or a condition of its own holds); the stages named in
    `every_node` lose all the worker nodes at once (a model actor's among them, wherever it runs). Records
    which stages lost nodes."""

    def __init__(self, cluster, stages: dict, every_node: tuple = ()):
        self.cluster, self.stages, self.every_node, self.hit = cluster, stages, every_node, []

    def __call__(self):
        for name, when in self.stages.items():
            if name in self.hit:  # each look globs folders: only those of stages still to hit
                continue
            if when() if callable(when) else 0 < len(runtime.glob(when[0])) < when[1]:
                nodes = list(self.cluster.worker_nodes)
                for node in nodes if name in self.every_node else nodes[:1]:
                    self.cluster.remove_node(node, allow_graceful=False)
                    self.cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
                self.hit.append(name)


def _decisions(pool: str) -> dict:
    t = filtering.read(pool, "dfn-dedup")
    return dict(zip(t.column("uid").to_pylist(), zip(t.column("keep").to_pylist(), t.column("dropped_by").to_pylist())))


def _subset(path: str) -> tuple[set, list]:
    m = subset.read_manifest(path)
    uids = set(subset.read_lineage(path, ["uid"]).column("uid").to_pylist())
    return uids, [(s["name"], s["samples"], s["sha256"]) for s in m["shards"]]


def _scores(pool: str, scorer: str) -> tuple:
    """A scorer's table and embeddings in uid order."""
    t, img, txt = read_scorer(pool, scorer, with_embeddings=True)
    order = np.argsort(np.array(t.column("uid").to_pylist()))
    t = t.take(pa.array(order))
    score = t.column("clip_score").to_numpy(zero_copy_only=False)
    return t.drop_columns(["clip_score"]).to_pylist(), score, img[order], txt[order]


def _same_scores(pool: str, local_pool: str) -> None:
    """Both CLIP scorers' rows, scores and embeddings, bit for bit: the tiny model's CPU outputs did not
    depend on how rows are batched (37 or 256 a batch) or on torch's threads (1 or 2) when measured, so a
    batch re-run after a node loss, and batched differently, gives the same bits."""
    for scorer in ("clip_tiny", "dfn"):
        (rows, score, img, txt), (rows0, score0, img0, txt0) = _scores(pool, scorer), _scores(local_pool, scorer)
        assert rows == rows0, scorer
        assert np.array_equal(score, score0, equal_nan=True), scorer
        assert np.array_equal(img, img0) and np.array_equal(txt, txt0), scorer


def _same_outputs(local: Path, pool: str, sub: str) -> None:
    assert _decisions(pool) == _decisions(str(local / "pool"))
    _same_scores(pool, str(local / "pool"))
    assert _subset(sub) == _subset(str(local / "subset"))
    a, b = Pool(pool).read_metadata(), Pool(str(local / "pool")).read_metadata()
    cols = ["uid", "status", "failure", "sha256", "md5", "width", "height"]
    assert a.select(cols).sort_by("uid").equals(b.select(cols).sort_by("uid"))


def test_build_subset_on_a_cluster_that_loses_nodes_matches_a_local_run(
    local_run, cluster, tmp_path, job_port, download_config
):
    out = tmp_path / "job"
    pool = out / "pool"
    killer = NodeKiller(
        cluster,
        {
            "download": (str(pool / "shards" / "*_stats.json"), ROWS // PER_SHARD),
            "features": (str(pool / "features" / "base" / "*_stats.json"), ROWS // PER_SHARD),
            # once the model actor has written a part (its batches' parts are written as they are embedded)
            # or a shard is joined, and before every shard is joined: the actor and the producers are lost.
            # (A part alone was missed once: with scoring's pipeline faster, a shard's parts live a moment)
            "clip_tiny": lambda: (
                (
                    bool(runtime.glob(str(pool / "features" / "clip_tiny" / "_parts" / "*" / "*.parquet")))
                    or bool(runtime.glob(str(pool / "features" / "clip_tiny" / "*_stats.json")))
                )
                and len(runtime.glob(str(pool / "features" / "clip_tiny" / "*_stats.json"))) < ROWS // PER_SHARD
            ),
            # once its index pass has begun (its 10 index files can all land between two polls)
            "subset": lambda: (
                (out / "subset" / "_work" / "index").is_dir() and not (out / "subset" / "manifest.json").exists()
            ),
        },
        every_node=("clip_tiny",),
    )
    run_job(out, job_port, download_config, address=cluster.address, watch=killer)
    # nodes went while those ran
    assert {"download", "features", "clip_tiny", "subset"} <= set(killer.hit), killer.hit
    # every input row once, no temporary or partial file left, every tar whole
    meta = Pool(str(pool)).read_metadata()
    assert meta.num_rows == ROWS and len(set(meta.column("uid").to_pylist())) == ROWS
    assert not list((pool / "_work").glob("tmp/*")) and not list(out.rglob("*.tmp"))
    assert not list((pool / "features").glob("*/_parts/*"))  # every shard's parts joined, none left over
    for tar in sorted((pool / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            assert len(t.getmembers()) > 0
    ok = meta.filter(pc.equal(meta.column("status"), "success")).num_rows
    assert ok == sum(Pool(str(pool)).successful_rows(s).num_rows for s in Pool(str(pool)).shards())
    _same_outputs(local_run, str(pool), str(out / "subset"))

    # dedup as Ray tasks over partitions (the job's own runs in one process), a node lost once its map
    # round has started: the same verdicts as the local run's in-process dedup (exact, PDQ, contamination)
    work = pool / "dedup" / "_work"
    dedup_killer = NodeKiller(cluster, {"dedup": lambda: (work / "map").is_dir() and not (work / "pverdict").exists()})
    evals = [str(out / "source" / "eval" / e) for e in ("shapes_kind", "shapes_color")]
    argv = [THRESHER, "dedup", str(pool), "--no-semantic", "--eval-sets", ",".join(evals), "--partitions", "10"]
    run_cli([*argv, "--ray-address", cluster.address], out, out.parent / "dedup.log", watch=dedup_killer)
    assert dedup_killer.hit == ["dedup"]
    assert dedup.read(str(pool)).to_pylist() == dedup.read(str(local_run / "pool")).to_pylist()
    assert not work.exists()


def test_build_subset_on_a_cluster_with_the_pool_on_s3_matches_a_local_run(
    local_run, cluster, s3, tmp_path, job_port, download_config
):
    out = tmp_path / "job"
    store = f"{s3}/run"
    run_job(out, job_port, download_config, store=store, address=cluster.address)
    assert not (out / "pool").exists() and not (out / "subset").exists()  # nothing of them on local disk
    assert runtime.exists(f"{store}/pool/manifest.json") and runtime.exists(f"{store}/subset/manifest.json")
    _same_outputs(local_run, f"{store}/pool", f"{store}/subset")


def test_clip_scoring_finishes_on_a_cluster_with_one_cpu_in_all(local_run, cluster, tmp_path):
    """The model actor and the decoder share the one CPU; before, the decoder waited forever for it (on
    any pool: here a copy of two of the local run's shards)."""
    pool = tmp_path / "pool"
    (pool / "shards").mkdir(parents=True)
    for f in sorted((local_run / "pool" / "shards").glob("0000000[01]*")):
        shutil.copy(f, pool / "shards" / f.name)
    cluster.remove_node(next(iter(cluster.worker_nodes)))
    try:
        argv = [THRESHER, "features", str(pool), "--model", "thresher-tiny", "--pretrained", "none"]
        argv += ["--scorer-id", "one_cpu", "--no-base", "--ray-address", cluster.address]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert Pool(str(pool)).completed("one_cpu") == set(Pool(str(pool)).shards()) == {0, 1}
    finally:
        cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
