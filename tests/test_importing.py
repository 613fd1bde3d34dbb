"""Pools from what users already hold (issue 17, deliverables 2 and 3): DataComp-format metadata without
images (`import-metadata`), and the shards img2dataset already wrote (`import-pool`).

The acceptance case: a DataComp-format table made from the session's downloaded pool (its rows, sizes,
sha256, and the tiny scorer's scores and embeddings as DataComp's columns and .npz arrays) is imported
without images; the DataComp recipes written with --uids-only give the same uid sets on it as on the
downloaded pool."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.stages.acquire import adopt, importing
from thresher.stages.dedup import dedup
from thresher.stages.features import features
from thresher.stages.filter import filter as filtering
from thresher.stages.subset import subset

quiet = dict(log=lambda *_: None)
TINY = {"scorer": "clip_tiny"}


def _datacomp_tables(pool) -> list[tuple[pa.Table, dict]]:
    """The downloaded pool's successful rows as DataComp's metadata, in two files, with .npz arrays."""
    meta = Pool(pool).read_metadata()
    meta = meta.filter(pc.equal(meta.column("status"), "success")).sort_by("key")
    scorer, img, txt = features.read_scorer(str(pool), "clip_tiny", with_embeddings=True)
    assert scorer.column("uid").equals(meta.column("uid"))  # both in key order
    score = scorer.column("clip_score")
    table = pa.table(
        {
            "uid": meta.column("uid"),
            "url": meta.column("url"),
            "text": meta.column("caption"),
            "original_width": pc.cast(meta.column("original_width"), pa.int64()),
            "original_height": pc.cast(meta.column("original_height"), pa.int64()),
            "clip_b32_similarity_score": score,
            "clip_l14_similarity_score": score,
            "face_bboxes": pa.array([[] for _ in range(meta.num_rows)], pa.list_(pa.list_(pa.float64()))),
            "sha256": meta.column("sha256"),
        }
    )
    half = table.num_rows // 2
    out = []
    for lo, hi in ((0, half), (half, table.num_rows)):
        arrays = {"b32_img": img[lo:hi], "b32_txt": txt[lo:hi], "l14_img": img[lo:hi], "l14_txt": txt[lo:hi]}
        out.append((table.slice(lo, hi - lo), arrays))
    return out


@pytest.fixture(scope="module")
def datacomp_dir(featured_pool, tmp_path_factory):
    d = tmp_path_factory.mktemp("datacomp") / "metadata"
    d.mkdir()
    for i, (table, arrays) in enumerate(_datacomp_tables(featured_pool)):
        pq.write_table(table, d / f"{i:05d}.parquet")
        np.savez(d / f"{i:05d}.npz", **arrays)
    return d


@pytest.fixture(scope="module")
def metadata_pool(datacomp_dir, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("imported") / "pool"
    manifest = importing.import_metadata(
        [str(datacomp_dir)], str(out), npz_dir=str(datacomp_dir), samples_per_shard=700, **quiet
    )
    return out, manifest


def test_metadata_only_pool_holds_every_row_with_scorers_and_embeddings(metadata_pool, featured_pool, datacomp_dir):
    out, manifest = metadata_pool
    rows = sum(pq.read_metadata(p).num_rows for p in datacomp_dir.glob("*.parquet"))
    assert manifest["counts"] == {"rows": rows, "status": {"success": rows}, "failure": {}}
    assert manifest["layout"]["tar"] is None and manifest["source"] == {"kind": "metadata", "images": False}
    pool = Pool(out)
    per_file = [pq.read_metadata(p).num_rows for p in sorted(datacomp_dir.glob("*.parquet"))]
    assert not pool.has_images() and len(pool.shards()) == sum(-(-n // 700) for n in per_file)  # cut per file
    assert pool.scorers() == ["clip_b32", "clip_l14"]
    cols = pool.available_columns()
    assert cols["clip_l14_img_emb"] == "img_emb:clip_l14" and "pdq" not in cols and "width" not in cols
    # the same language, sizes and scores as the downloaded pool's, row for row
    base_a = features.read_base(str(featured_pool)).sort_by("uid")
    base_b = features.read_base(str(out)).sort_by("uid")
    for c in ("uid", "caption_lang", "caption_words", "original_width", "aspect_ratio", "sha256"):
        assert base_a.column(c).equals(base_b.column(c)), c
    emb_a = features.read_scorer(str(featured_pool), "clip_tiny", with_embeddings=True)
    emb_b = features.read_scorer(str(out), "clip_l14", with_embeddings=True)
    order_a, order_b = np.argsort(emb_a[0].column("uid").to_pylist()), np.argsort(emb_b[0].column("uid").to_pylist())
    assert np.array_equal(emb_a[1][order_a], emb_b[1][order_b]) and np.array_equal(emb_a[2][order_a], emb_b[2][order_b])
    scorer_manifest = json.loads((out / "features/clip_l14/manifest.json").read_text())
    assert (
        scorer_manifest["weights"]["kind"] == "precomputed" and "clip_l14_similarity_score" in scorer_manifest["source"]
    )
    # a re-run finds every shard done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    importing.import_metadata([str(datacomp_dir)], str(out), npz_dir=str(datacomp_dir), samples_per_shard=700, **quiet)
    assert before == {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}


@pytest.mark.parametrize("recipe", ["datacomp-basic", "datacomp-clip-l14-30pct"])
def test_uid_files_agree_between_the_metadata_only_and_the_downloaded_pool(
    recipe, metadata_pool, featured_pool, tmp_path
):
    """The acceptance check: the same rows give the same uid sets, all kept and the top/uniform N."""
    out, _ = metadata_pool
    for size in (None, 300):
        a = subset.write_uid_file(str(featured_pool), recipe, str(tmp_path / f"a{size}.npy"), size, 7, TINY, **quiet)
        b = subset.write_uid_file(str(out), recipe, str(tmp_path / f"b{size}.npy"), size, 7, None, **quiet)
        assert a["samples"] == b["samples"] > 0
        assert np.array_equal(np.load(tmp_path / f"a{size}.npy"), np.load(tmp_path / f"b{size}.npy")), (recipe, size)


@pytest.mark.parametrize("flat_max", [16384, 3])
def test_datacomp_1b_recipe_runs_on_metadata_alone(metadata_pool, featured_pool, tmp_path, flat_max):
    """Image-based AND CLIP L/14 top 30%: k-means over the imported .npz embeddings, as on the pool, flat and
    hierarchical: the same rows sharded otherwise give the same decisions."""
    out, _ = metadata_pool
    _, img, _ = features.read_scorer(str(featured_pool), "clip_tiny", with_embeddings=True, text=False)
    np.save(tmp_path / "target.npy", img[:40])
    recipe = "datacomp-image-based-and-clip-l14-30pct"
    kept = []
    for pool, scorer in ((featured_pool, "clip_tiny"), (out, "clip_l14")):
        v = {"scorer": scorer, "target": str(tmp_path / "target.npy"), "clusters": 8, "flat_max": flat_max}
        m = filtering.run(str(pool), recipe, v, **quiet)
        kept.append(
            (m["kept"], set(filtering.read(str(pool), recipe).filter(pc.field("keep")).column("uid").to_pylist()))
        )
    assert kept[0] == kept[1] and kept[0][0] > 0


def test_steps_that_need_pixels_fail_before_any_work_and_say_which(metadata_pool, tmp_path):
    out, _ = metadata_pool
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "image_pdq.txt").write_text("0" * 64 + "\n")
    with pytest.raises(InputError, match=r"step \d \(image_pdq, column pdq\).*imported from metadata only"):
        filtering.run(str(out), "relaion-safety", {"blocklists": str(lists)}, **quiet)
    assert not (out / "decisions" / "relaion-safety").exists()
    with pytest.raises(InputError, match="--scorer-id clip_tiny .*needs the images"):
        features.run_scorer(str(out), features.ScorerConfig(), **quiet)
    with pytest.raises(InputError, match=r"resharded subset .*--uids-only"):
        subset.run(str(out), ["datacomp-basic"], subset.SubsetConfig(size=10), str(tmp_path / "s"), **quiet)
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError, match="PDQ steps"):
        dedup.run(str(out), dedup.DedupConfig(scorer="clip_l14"), **quiet)
    # what needs no pixels runs: exact dedup by DataComp's sha256, SemDeDup on the imported embeddings
    result = dedup.run(str(out), dedup.DedupConfig(scorer="clip_l14", perceptual=False, contamination=False), **quiet)
    assert result["samples"] == sum(json.loads(p.read_text())["count"] for p in (out / "shards").glob("*_stats.json"))


def test_bad_metadata_is_named_before_a_pool_is_made(datacomp_dir, tmp_path, ray_local):
    table = pq.read_table(next(iter(sorted(datacomp_dir.glob("*.parquet")))))
    pq.write_table(table.drop(["url"]), tmp_path / "nourl.parquet")
    with pytest.raises(InputError, match="not DataComp metadata: no column"):
        importing.import_metadata([str(tmp_path / "nourl.parquet")], str(tmp_path / "p1"), **quiet)
    # a uid in two files (DataComp's uids are unique across the pool), as download refuses it
    d = tmp_path / "twice"
    d.mkdir()
    pq.write_table(table.slice(0, 10), d / "a.parquet")
    pq.write_table(table.slice(5, 10), d / "b.parquet")
    with pytest.raises(InputError, match="have the same uid"):
        importing.import_metadata([str(d)], str(tmp_path / "p2"), **quiet)
    # embeddings that do not line up with their Parquet
    d = tmp_path / "short"
    d.mkdir()
    pq.write_table(table.slice(0, 10), d / "a.parquet")
    np.savez(d / "a.npz", l14_img=np.zeros((9, 8), np.float16), b32_img=np.zeros((10, 8), np.float16))
    with pytest.raises(Exception, match=r"a.npz: l14_img has shape \(9, 8\); .*a.parquet has 10 rows"):
        importing.import_metadata([str(d)], str(tmp_path / "p3"), npz_dir=str(d), **quiet)


# ---------------------------------------------------------------------------------------------------
# import-pool: shards img2dataset wrote


@pytest.fixture(scope="module")
def img2dataset_out(synth_dir, server, tmp_path_factory):
    """img2dataset itself (its own downloader and writer, the multiprocessing distributor) over 600 URLs
    of the local pool: what a user already has on disk."""
    from img2dataset import download

    d = tmp_path_factory.mktemp("i2d")
    urls = pq.read_table(synth_dir / "urls.parquet").slice(0, 600).select(["uid", "url", "text"])
    pq.write_table(urls, d / "urls.parquet")
    download(
        url_list=str(d / "urls.parquet"),
        input_format="parquet",
        url_col="url",
        caption_col="text",
        save_additional_columns=["uid"],
        output_folder=str(d / "out"),
        output_format="webdataset",
        processes_count=1,
        thread_count=32,
        timeout=2,
        retries=0,
        number_sample_per_shard=250,
        image_size=128,
        compute_hash="sha256",
        distributor="multiprocessing",
        enable_wandb=False,
    )
    return d / "out"


@pytest.fixture(scope="module")
def adopted(img2dataset_out, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("adopted") / "pool"
    return out, adopt.import_pool(str(img2dataset_out), str(out), **quiet)


def test_import_pool_adopts_img2dataset_shards_without_copying_images(adopted, img2dataset_out, pool):
    out, manifest = adopted
    stats = [json.loads(p.read_text()) for p in sorted(img2dataset_out.glob("*_stats.json"))]
    assert manifest["counts"]["rows"] == sum(s["count"] for s in stats) == 600
    assert manifest["counts"]["status"]["success"] == sum(s["successes"] for s in stats)
    assert not list(out.rglob("*.tar"))  # the images stay in img2dataset's folder
    p = Pool(out)
    assert p.shards() == [0, 1, 2] and p.tar(1) == str(img2dataset_out / "00001.tar")
    meta = p.read_metadata()
    theirs = pa.concat_tables([pq.read_table(f, columns=["key"]) for f in sorted(img2dataset_out.glob("*.parquet"))])
    assert sorted(meta.column("key").to_pylist()) == sorted(theirs.column("key").to_pylist())  # img2dataset's keys
    assert all(
        f is None
        for f, s in zip(meta.column("failure").to_pylist(), meta.column("status").to_pylist())
        if s == "success"
    )
    assert any(f and f.startswith("http_") for f in meta.column("failure").to_pylist())  # planted 404s, normalised
    # the images' hashes agree with our own download of the same URLs
    ours = Pool(pool[0]).read_metadata()
    ours = dict(zip(ours.column("uid").to_pylist(), ours.column("sha256").to_pylist()))
    ok = meta.filter(pc.equal(meta.column("status"), "success"))
    same = [
        ours.get(u) == h for u, h in zip(ok.column("uid").to_pylist(), ok.column("sha256").to_pylist()) if ours.get(u)
    ]
    assert len(same) > 300 and all(same)
    assert len(p.read_images(0)) == p.successful_rows(0).num_rows


@pytest.mark.slow
def test_every_later_stage_runs_on_an_adopted_pool(adopted, tmp_path):
    from thresher.audit import audit

    out, _ = adopted
    features.run_base(str(out), **quiet)
    features.run_scorer(str(out), features.ScorerConfig(), **quiet)
    dedup.run(str(out), dedup.DedupConfig(), **quiet)
    for s in Pool(str(out)).shards():  # each shard's dedup rows are its own (img2dataset's keys: 5-digit shards)
        base = runtime.read_parquet(Pool(str(out)).features("base", s), columns=["uid"])
        assert runtime.read_parquet(Pool(str(out)).dedup(s)).column("uid").equals(base.column("uid")), s
    filtering.run(str(out), "datacomp-basic", **quiet)
    m = subset.run(
        str(out), ["datacomp-basic"], subset.SubsetConfig(size=100, samples_per_shard=60), str(tmp_path / "s"), **quiet
    )
    assert m["datacomp-basic"]["size"] == 100
    assert audit.verify(str(tmp_path / "s"))["ok"]
    with tarfile.open(tmp_path / "s" / "00000000.tar") as tar:
        assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == 60


def test_import_pool_names_what_is_wrong_with_a_folder(img2dataset_out, tmp_path, ray_local):
    with pytest.raises(InputError, match="no img2dataset shards"):
        adopt.import_pool(str(tmp_path), str(tmp_path / "p"), **quiet)
    broken = tmp_path / "broken"
    broken.mkdir()
    for ext in (".parquet", "_stats.json"):
        (broken / f"00000{ext}").write_bytes((img2dataset_out / f"00000{ext}").read_bytes())
    with pytest.raises(InputError, match="shard 00000 has a _stats.json but no 00000.tar"):
        adopt.import_pool(str(broken), str(tmp_path / "p2"), **quiet)
    # a tar that lost an image its Parquet says was downloaded
    with tarfile.open(img2dataset_out / "00000.tar") as src, tarfile.open(broken / "00000.tar", "w") as dst:
        for m in src.getmembers()[3:]:
            dst.addfile(m, src.extractfile(m))
    with pytest.raises(Exception, match="have no image in it"):
        adopt.import_pool(str(broken), str(tmp_path / "p3"), **quiet)
    assert runtime.exists(str(img2dataset_out / "00000.tar"))  # the user's files are never touched
