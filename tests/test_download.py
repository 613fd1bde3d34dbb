"""The download stage against the synthetic pool served over HTTP, scored against its ground truth."""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import test_download_config

from thresher.core import runtime
from thresher.core.errors import StageError
from thresher.core.pool import Pool
from thresher.stages.acquire import download

# what each planted category must end as; every other category downloads successfully
EXPECTED_FAILURE = {"http_404": "http_404", "timeout": "timeout", "corrupt": "decode_error", "opted_out": "opted_out"}


def _by_uid(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    return {r["uid"]: r for r in rows}


def test_every_row_once_with_the_right_status(pool, ground_truth):
    out, _ = pool
    meta = Pool(str(out)).read_metadata()
    uids = meta.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == len(ground_truth)
    rows = _by_uid(meta)
    for gt in ground_truth:
        row = rows[gt["uid"]]
        expected = EXPECTED_FAILURE.get(gt["category"])
        assert row["failure"] == expected, (gt["category"], row["error_message"])
        assert (row["status"] == "success") == (expected is None)


def test_exact_counts_per_status(pool, ground_truth):
    _, manifest = pool
    planted = collections.Counter(gt["category"] for gt in ground_truth)
    expected = collections.Counter({EXPECTED_FAILURE[c]: n for c, n in planted.items() if c in EXPECTED_FAILURE})
    assert manifest["counts"]["failure"] == dict(expected)
    assert manifest["counts"]["status"]["success"] == len(ground_truth) - sum(expected.values())
    assert manifest["counts"]["rows"] == len(ground_truth)
    assert manifest["shards"] == {"total": 6, "complete": 6, "failed": {}}


def test_the_yield_report_counts_every_failed_row_by_reason_and_host(pool, ground_truth):
    """POOL/stats/download-yield.json (yields.py) against the metadata; the loopback world has one host."""
    out, manifest = pool
    meta = Pool(str(out)).read_metadata()
    report = json.loads((out / "stats" / "download-yield.json").read_text())
    assert report == manifest["yield"]
    failures = collections.Counter(f for f in meta.column("failure").to_pylist() if f)
    assert {k: v["rows"] for k, v in report["by_reason"].items()} == dict(failures)
    assert report["rows"] == meta.num_rows and report["fetched"] == meta.num_rows - sum(failures.values())
    assert report["yield"] == pytest.approx(report["fetched"] / report["rows"])
    [only] = report["hosts"]
    assert only == {
        "host": "127.0.0.1",
        "rows": meta.num_rows,
        "failed": sum(failures.values()),
        "reasons": only["reasons"],
    }
    assert only["reasons"] == dict(failures) and report["shards_without_hosts"] == 0


def test_the_yield_reports_hosts_are_the_most_failing_and_each_shard_keeps_few(monkeypatch):
    from thresher.stages.acquire import yields

    urls = ["https://A.example/x.jpg"] * 5 + ["http://b.example/y"] * 3 + ["https://c.example/z"] * 2 + ["::bad"]
    failure = ["http_404", "timeout", None, None, None, "timeout", "timeout", "http_404", None, None, "http_404"]
    table = pa.table({"url": urls, "failure": failure})
    assert yields.shard_hosts(table) == {
        "b.example": {"rows": 3, "failed": {"timeout": 2, "http_404": 1}},
        "a.example": {"rows": 5, "failed": {"http_404": 1, "timeout": 1}},
        "?": {"rows": 1, "failed": {"http_404": 1}},
    }
    monkeypatch.setattr(yields, "SHARD_HOSTS", 1)
    assert list(yields.shard_hosts(table)) == ["b.example"]


def test_metadata_matches_served_bytes_and_tars(pool, ground_truth):
    out, _ = pool
    meta = Pool(str(out)).read_metadata()
    rows = _by_uid(meta)
    for gt in ground_truth:
        row = rows[gt["uid"]]
        if row["status"] == "success":
            assert row["sha256"] == gt["sha256"]
            assert (row["original_width"], row["original_height"]) == (gt["width"], gt["height"])
            assert max(row["width"], row["height"]) <= 512
    # the tar of each shard holds exactly the successful keys, each with jpg, txt and json
    for shard_meta in sorted((out / "shards").glob("*.parquet")):
        table = pq.read_table(shard_meta)
        ok = {r["key"]: r for r in table.to_pylist() if r["status"] == "success"}
        with tarfile.open(shard_meta.with_suffix(".tar")) as tar:
            members = collections.defaultdict(set)
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members[key].add(ext)
            assert set(members) == set(ok)
            assert all(exts == {"jpg", "txt", "json"} for exts in members.values())
            some = next(iter(ok))
            assert tar.extractfile(f"{some}.txt").read().decode() == ok[some]["caption"]
            assert json.loads(tar.extractfile(f"{some}.json").read())["uid"] == ok[some]["uid"]


def test_manifest_records_input_config_and_versions(pool, synth_dir):
    out, manifest = pool
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["input"]["sha256"] == runtime.file_sha256(str(synth_dir / "urls.parquet"))
    assert on_disk["input"]["rows"] == 3000
    from thresher.core.config import config_hash

    assert on_disk["config_hash"] == config_hash(test_download_config())
    assert on_disk["packages"]["img2dataset"] and on_disk["packages"]["ray"] and on_disk["packages"]["pyarrow"]
    stats = json.loads((out / "shards" / "00000000_stats.json").read_text())
    assert stats["count"] == 500 and sum(stats["status"].values()) == 500


def test_rerun_of_a_finished_pool_fetches_nothing(pool, synth_dir, server):
    out, manifest = pool
    before = sum(server.hits.values())
    again = download.run(str(synth_dir / "urls.parquet"), str(out), test_download_config(), log=lambda *_: None)
    assert sum(server.hits.values()) == before
    assert again["counts"] == manifest["counts"]


def test_rerun_with_other_settings_is_refused(pool, synth_dir):
    out, _ = pool
    from thresher.core.errors import InputError

    with pytest.raises(InputError, match="image_size"):
        download.run(
            str(synth_dir / "urls.parquet"), str(out), test_download_config(image_size=256), log=lambda *_: None
        )


def _subset(synth_dir, tmp_path, rows: slice, name: str) -> str:
    table = pq.read_table(synth_dir / "urls.parquet")
    path = tmp_path / name
    pq.write_table(table.slice(rows.start, rows.stop - rows.start), path)
    return str(path)


@pytest.mark.slow
def test_resume_after_kill_loses_nothing_and_refetches_no_finished_shard(synth_dir, server, ray_local, tmp_path):
    # six 200-row shards, one at a time: killed once two are finished, so at least three are left to resume
    # (twelve before: most of the test's time was the resumed shards' planted stalls, 6 s each)
    rows, shards = 1200, 6
    urls = _subset(synth_dir, tmp_path, slice(0, rows), "urls.parquet")
    out = tmp_path / "pool"
    cmd = [
        sys.executable,
        "-m",
        "thresher.app.cli",
        "download",
        urls,
        "--out",
        str(out),
        "--samples-per-shard",
        "200",
        "--processes",
        "1",
        "--threads",
        "8",
        "--timeout",
        "2",
        "--allow-private-addresses",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    deadline = time.time() + 240
    while len(set(Pool(str(out)).shards())) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die mid-shard
    proc.wait()
    time.sleep(1.0)
    finished = set(Pool(str(out)).shards())
    assert 2 <= len(finished) < shards, finished
    stamps = {s: (out / "shards" / f"{s:08d}_stats.json").stat().st_mtime_ns for s in finished}
    # a torn shard as a killed writer would leave it: a truncated tar with no stats file
    torn = max(set(range(shards)) - finished)
    (out / "shards" / f"{torn:08d}.tar").write_bytes(b"\x00" * 100)
    finished_urls = set()
    for s in finished:
        finished_urls |= set(pq.read_table(out / "shards" / f"{s:08d}.parquet").column("url").to_pylist())
    hits_before = collections.Counter(server.hits)

    cfg = test_download_config(samples_per_shard=200, processes=1, threads=8)
    manifest = download.run(urls, str(out), cfg, log=lambda *_: None)

    assert manifest["shards"]["complete"] == shards
    meta = Pool(str(out)).read_metadata()
    uids = meta.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == rows
    assert set(uids) == set(pq.read_table(urls).column("uid").to_pylist())
    for s, stamp in stamps.items():  # finished shards were left alone
        assert (out / "shards" / f"{s:08d}_stats.json").stat().st_mtime_ns == stamp
    paths = ["/" + u.split("/", 3)[3].split("?", 1)[0] for u in finished_urls]
    refetched = [p for p in paths if server.hits[p] != hits_before[p]]
    assert refetched == []
    with tarfile.open(out / "shards" / f"{torn:08d}.tar") as tar:  # the torn shard was redone whole
        assert len(tar.getmembers()) > 0
    assert not list((out / "shards").glob("*.tmp"))


def test_a_failed_shard_is_reported_and_rerun(synth_dir, ground_truth, server, ray_local, tmp_path):
    # 60 rows, one of which stalls: with a 1 s shard deadline and no shard retries, its shard fails
    stall_uid = next(g["uid"] for g in ground_truth if g["category"] == "timeout")
    table = pq.read_table(synth_dir / "urls.parquet")
    uids = table.column("uid").to_pylist()
    i = uids.index(stall_uid)
    start = max(0, i - 30)
    urls = str(tmp_path / "urls.parquet")
    pq.write_table(table.slice(start, 60), urls)
    out = tmp_path / "pool"
    with pytest.raises(StageError, match="run the same command again"):
        download.run(
            urls,
            str(out),
            test_download_config(samples_per_shard=60, shard_deadline_s=1.0, shard_retries=0),
            log=lambda *_: None,
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert "00000000" in manifest["shards"]["failed"]
    assert "deadline" in manifest["shards"]["failed"]["00000000"]
    assert not (out / "shards" / "00000000_stats.json").exists()
    manifest = download.run(urls, str(out), test_download_config(samples_per_shard=60), log=lambda *_: None)
    assert manifest["shards"] == {"total": 1, "complete": 1, "failed": {}}
    assert manifest["counts"]["failure"] == {"timeout": 1} | {
        k: v for k, v in manifest["counts"]["failure"].items() if k != "timeout"
    }
    assert Pool(str(out)).read_metadata().num_rows == 60


def test_local_addresses_are_refused_by_default(synth_dir, server, ray_local, tmp_path, port):
    path = "/img/00000000.jpg"
    hosts = ["127.0.0.1", "localhost", "127.1", "[::1]", "2130706433", "0x7f.0.0.1"]
    rows = [{"url": f"http://{h}:{port}{path}?{i}", "text": f"sample {i}"} for i, h in enumerate(hosts)]
    urls = str(tmp_path / "urls.jsonl")
    with open(urls, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    before = server.hits[path]
    manifest = download.run(
        urls, str(tmp_path / "pool"), test_download_config(allow_private_addresses=False), log=lambda *_: None
    )
    assert manifest["counts"]["status"] == {"refused": len(hosts)}
    assert manifest["counts"]["failure"] == {"disallowed_address": len(hosts)}
    assert server.hits[path] == before  # nothing was fetched
    meta = Pool(str(tmp_path / "pool")).read_metadata().to_pylist()
    assert all("loopback" in r["error_message"] or "local" in r["error_message"] for r in meta)


def test_face_boxes_are_blurred(synth_dir, server, ray_local, tmp_path):
    import numpy as np
    from PIL import Image

    table = pq.read_table(synth_dir / "urls.parquet")
    gt = pq.read_table(synth_dir / "ground_truth.parquet")
    ok = [
        i
        for i, (b, c) in enumerate(zip(table.column("face_bboxes").to_pylist(), gt.column("category").to_pylist()))
        if b and c == "clean"
    ][:5]
    assert ok, "the synthetic pool should plant a few face boxes"
    urls = str(tmp_path / "urls.parquet")
    pq.write_table(table.take(ok), urls)
    plain = download.run(urls, str(tmp_path / "plain"), test_download_config(), log=lambda *_: None)
    blurred = download.run(
        urls, str(tmp_path / "blur"), test_download_config(bbox_column="face_bboxes"), log=lambda *_: None
    )
    assert plain["counts"]["status"] == blurred["counts"]["status"] == {"success": len(ok)}

    def first_image(pool_dir):
        with tarfile.open(pool_dir / "shards" / "00000000.tar") as tar:
            name = sorted(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))[0]
            meta = json.loads(tar.extractfile(name.replace(".jpg", ".json")).read())
            return np.asarray(Image.open(io.BytesIO(tar.extractfile(name).read())).convert("L"), float), meta

    a, _ = first_image(tmp_path / "plain")
    b, meta = first_image(tmp_path / "blur")
    x0, y0, x1, y1 = meta["face_bboxes"][0]
    h, w = a.shape
    box = (slice(int(y0 * h) + 2, int(y1 * h) - 2), slice(int(x0 * w) + 2, int(x1 * w) - 2))
    assert np.abs(a[box] - b[box]).mean() > 1.0  # the box changed
    outside = np.ones_like(a, bool)
    outside[int(y0 * h) - 10 : int(y1 * h) + 10, int(x0 * w) - 10 : int(x1 * w) + 10] = False
    assert np.abs(a[outside] - b[outside]).mean() < 1.0  # the rest did not


def test_expected_hashes_are_verified(synth_dir, ground_truth, server, ray_local, tmp_path):
    import pyarrow as pa

    clean = [g for g in ground_truth if g["category"] == "clean"][:20]
    expected = [g["sha256"] for g in clean]
    expected[3] = "0" * 64
    expected[7] = "f" * 64
    urls = str(tmp_path / "urls.parquet")
    pq.write_table(
        pa.table(
            {
                "uid": [g["uid"] for g in clean],
                "url": [g["url"] for g in clean],
                "text": ["a b c"] * 20,
                "sha256": expected,
            }
        ),
        urls,
    )
    manifest = download.run(
        urls, str(tmp_path / "pool"), test_download_config(verify_hash_column="sha256"), log=lambda *_: None
    )
    assert manifest["counts"]["failure"] == {"hash_mismatch": 2}
    rows = {r["uid"]: r for r in Pool(str(tmp_path / "pool")).read_metadata().to_pylist()}
    assert rows[clean[3]["uid"]]["failure"] == rows[clean[7]["uid"]]["failure"] == "hash_mismatch"
    assert all(rows[g["uid"]]["sha256"] == g["sha256"] for i, g in enumerate(clean) if i not in (3, 7))
    # md5 as sha256: of the verified bytes as served, none where the hash did not match
    import hashlib
    from urllib.parse import urlparse

    assert rows[clean[3]["uid"]]["md5"] is None and rows[clean[7]["uid"]]["md5"] is None
    for i, g in enumerate(clean):
        if i not in (3, 7):
            data = (synth_dir / "www" / urlparse(g["url"]).path.lstrip("/")).read_bytes()
            assert rows[g["uid"]]["md5"] == hashlib.md5(data).hexdigest()


def test_a_directory_of_url_lists_downloads_as_one_pool(synth_dir, server, ray_local, tmp_path):
    """DataComp ships its metadata as many Parquet files: a directory of them is one pool, each file cut into
    its own shards (so the last of each may be short), and a re-run checks it is the same directory."""
    from thresher.core.errors import InputError

    table = pq.read_table(synth_dir / "urls.parquet").slice(0, 550)
    parts = tmp_path / "metadata"
    parts.mkdir()
    for i, (start, n) in enumerate([(0, 250), (250, 200), (450, 100)]):
        pq.write_table(table.slice(start, n), parts / f"part-{i:05d}.parquet")
    out = tmp_path / "pool"
    manifest = download.run(str(parts), str(out), test_download_config(samples_per_shard=100), log=lambda *_: None)
    assert manifest["input"]["files"] == 3 and manifest["input"]["rows"] == 550
    assert manifest["shards"] == {"total": 6, "complete": 6, "failed": {}}
    rows = [pq.read_metadata(out / "shards" / f"{s:08d}.parquet").num_rows for s in range(6)]
    assert rows == [100, 100, 50, 100, 100, 100]
    assert Pool(str(out)).read_metadata().column("uid").to_pylist() == table.column("uid").to_pylist()
    pq.write_table(table.slice(0, 10), parts / "part-00003.parquet")
    with pytest.raises(InputError, match="another URL list: .* has 4 files, the pool was made from 3"):
        download.run(str(parts), str(out), test_download_config(samples_per_shard=100), log=lambda *_: None)
