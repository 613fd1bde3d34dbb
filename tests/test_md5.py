"""MD5 image lists (issue 17, point 5): the download records the MD5 of the bytes as served, before
img2dataset resizes them, and the relaion-safety recipe matches image_md5.txt against it."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.core import schema
from thresher.core.errors import InputError, StageError
from thresher.core.pool import Pool
from thresher.stages.acquire import download
from thresher.stages.filter import filter as flt


def served(synth_dir: Path, url: str) -> bytes:
    """The bytes the synthetic server answers `url` with (www/ holds them under the URL's path)."""
    return (synth_dir / "www" / urlparse(url).path.lstrip("/")).read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# The download


def test_md5_is_of_the_served_bytes_not_the_resized_ones(pool, synth_dir):
    out, _ = pool
    meta = Pool(str(out)).read_metadata().to_pylist()
    ok = [r for r in meta if r["status"] == "success"]
    assert len(ok) > 2000
    for r in ok:
        data = served(synth_dir, r["url"])
        assert r["md5"] == md5(data) and r["sha256"] == hashlib.sha256(data).hexdigest(), r["uid"]
    # failed downloads, undecodable (failed_to_resize) and refused rows: no bytes kept, no hashes
    assert all(r["md5"] is None and r["sha256"] is None for r in meta if r["status"] != "success")
    assert {"failed_to_download", "failed_to_resize"} <= {r["status"] for r in meta}
    # images the download made smaller: what the tar stores differs, the md5 is still of the original
    resized = {r["key"]: r for r in ok if max(r["original_width"], r["original_height"]) > max(r["width"], r["height"])}
    assert len(resized) >= 10
    checked = 0
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if ext == "jpg" and key in resized:
                    stored = tar.extractfile(m).read()
                    r = resized[key]
                    assert md5(stored) != r["md5"] == md5(served(synth_dir, r["url"]))
                    checked += 1
    assert checked == len(resized)


def test_resizer_records_md5_of_what_it_resizes_only():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (900, 600), "red").save(buf, format="PNG")
    original = buf.getvalue()
    resizer = download.make_resizer(download.DownloadConfig())
    img, w, h, ow, oh, err = resizer(io.BytesIO(original))
    assert err is None and (ow, oh) == (900, 600) and (w, h) == (512, 341) and md5(img) != md5(original)
    assert resizer.md5_of == {hashlib.sha256(original).hexdigest(): md5(original)}
    assert resizer(io.BytesIO(b"not an image"))[-1] is not None  # failed_to_resize: nothing recorded
    assert download.make_resizer(download.DownloadConfig(max_pixels=1000))(io.BytesIO(original))[-1].startswith(
        "too_large"
    )
    assert len(resizer.md5_of) == 1


def test_a_success_without_an_md5_fails_the_shard():
    """Were img2dataset to hash a row it did not pass through our resizer, the shard fails, not the list."""
    row = {"uid": "u", "key": "000000000000", "url": "http://x.invalid/a", "caption": "c", "status": "success"}
    meta = pa.Table.from_pylist([{**row, "sha256": "ab" * 32}])
    no_rows = pa.table({"uid": pa.array([], pa.string()), "url": pa.array([], pa.string())})
    cfg = download.DownloadConfig()
    with pytest.raises(StageError, match="000000000000 has no MD5"):
        download._pool_metadata(meta, no_rows, [], 0, cfg, {})
    table = download._pool_metadata(meta, no_rows, [], 0, cfg, {"ab" * 32: "cd" * 16})
    assert table.schema.equals(schema.POOL) and table.column("md5").to_pylist() == ["cd" * 16]


# ---------------------------------------------------------------------------------------------------
# The relaion-safety recipe


@pytest.fixture
def pool_copy(featured_pool, tmp_path) -> Path:
    """The featured pool, hard-linked (its files are only read) without its decisions, so these runs do
    not replace the relaion-safety decisions other tests read."""
    return Path(
        shutil.copytree(
            featured_pool, tmp_path / "pool", copy_function=os.link, ignore=shutil.ignore_patterns("decisions", "stats")
        )
    )


def _run(pool: Path, lists: Path) -> tuple[dict, dict]:
    manifest = flt.run(str(pool), "relaion-safety", {"blocklists": str(lists)}, log=lambda *_: None)
    rows = {r["uid"]: r for r in flt.read(str(pool), "relaion-safety").to_pylist()}
    return manifest, rows


def test_image_md5_list_drops_exactly_its_samples(pool_copy, synth_dir, truth_by_uid, ray_local, tmp_path):
    meta = [r for r in Pool(str(pool_copy)).read_metadata().to_pylist() if r["status"] == "success"]
    # without an image_md5.txt the step drops nothing (the synthetic source has none)
    assert not (synth_dir / "blocklists" / "image_md5.txt").exists()
    manifest, before = _run(pool_copy, synth_dir / "blocklists")
    assert {f["step"]: f["dropped"] for f in manifest["funnel"]}["image_md5"] == 0
    assert manifest["prepared"]["image_md5"] == {"entries": 0, "missing": True}
    assert {u for u, r in before.items() if not r["keep"]} == {u for u in before if truth_by_uid[u]["blocklist"]}

    # a few unlisted samples with bytes of their own, resized ones among them, listed by MD5 of the served bytes
    copies = collections.Counter(r["sha256"] for r in meta)
    candidates = [r for r in meta if not truth_by_uid[r["uid"]]["blocklist"] and copies[r["sha256"]] == 1]
    resized = [r for r in candidates if max(r["original_width"], r["original_height"]) > 512]
    chosen = resized[:3] + [r for r in candidates if r not in resized[:3]][:3]
    assert len(chosen) == 6 and len({r["uid"] for r in chosen}) == 6
    decoy = next(r for r in resized[3:])  # its stored (resized) bytes' MD5 must not match it
    with tarfile.open(pool_copy / "shards" / f"{decoy['key'][:8]}.tar") as tar:
        decoy_stored = md5(tar.extractfile(f"{decoy['key']}.jpg").read())
    lists = Path(shutil.copytree(synth_dir / "blocklists", tmp_path / "lists"))
    (lists / "image_md5.txt").write_text(
        "# Re-LAION-style list\n"
        + "".join(md5(served(synth_dir, r["url"])).upper() + "\n" for r in chosen)
        + decoy_stored
        + "\n"
    )
    manifest, after = _run(pool_copy, lists)
    assert manifest["prepared"]["image_md5"] == {"entries": 7}
    assert {u for u, r in after.items() if r["dropped_by"] == "image_md5"} == {r["uid"] for r in chosen}
    assert after[decoy["uid"]]["keep"]
    # every other sample's decision is the one it had without the list
    assert all(after[u] == before[u] for u in before if u not in {r["uid"] for r in chosen})
    # the same list path, updated in place: the decisions are stale and made again (their fingerprint
    # holds the list's sha256), so a new entry is never missed
    extra = candidates[10]
    with open(lists / "image_md5.txt", "a") as f:
        f.write(md5(served(synth_dir, extra["url"])) + "\n")
    manifest, again = _run(pool_copy, lists)
    assert manifest["prepared"]["image_md5"] == {"entries": 8} and again[extra["uid"]]["dropped_by"] == "image_md5"


def test_a_pool_without_md5_fails_clearly_on_an_md5_list(pool_copy, synth_dir, ray_local, tmp_path):
    """A pool downloaded before md5 was recorded: relaion-safety still runs without an image_md5.txt, and
    with one the error names the shard and the ways out."""
    layout = Pool(str(pool_copy))
    for shard in (1, 4):
        path = layout.metadata(shard)
        old = pq.read_table(path).drop_columns(["md5"])
        os.remove(path)  # a hard link: write a file of its own, leave the shared pool's alone
        pq.write_table(old, path)
    manifest, rows = _run(pool_copy, synth_dir / "blocklists")
    assert manifest["kept"] > 0
    lists = Path(shutil.copytree(synth_dir / "blocklists", tmp_path / "lists"))
    (lists / "image_md5.txt").write_text("0" * 32 + "\n")
    with pytest.raises(InputError, match=r"shard 00000001 \(and 1 more shards\) has no MD5 of its original") as err:
        _run(pool_copy, lists)
    assert "Re-download" in str(err.value) and "image_sha256" in str(err.value)


def test_subsets_of_a_pool_from_before_md5_still_work(pool_copy, tmp_path):
    """Older shards lack the md5 column: a subset's metadata holds null there (unknown), not an error."""
    from thresher.stages.subset import subset

    path = Pool(str(pool_copy)).metadata(2)
    old = pq.read_table(path).drop_columns(["md5"])
    os.remove(path)
    pq.write_table(old, path)
    cfg = subset.SubsetConfig(size=50, samples_per_shard=50)
    m = subset.run(str(pool_copy), ["datacomp-none"], cfg, str(tmp_path / "s"), log=lambda *_: None)
    assert m["datacomp-none"]["size"] == 50
