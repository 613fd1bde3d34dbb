"""Subsets, resharding, lineage and the audit commands, on the session's 3,000-sample pool."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import copy_pool
from PIL import Image

from thresher.app import cli
from thresher.audit import audit, gallery, report
from thresher.core import runtime, tarindex
from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.stages.filter import filter as filtering
from thresher.stages.subset import subset

RECIPES = ["datacomp-basic", "datacomp-clip-b32-30pct"]  # keep/drop (uniform draw) and ranked (top score)
VARS = {"scorer": "clip_tiny"}
N, PER = 500, 200
quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def subsets(featured_pool, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("subsets") / "a"
    cfg = subset.SubsetConfig(size=N, seed=3, samples_per_shard=PER)
    manifests = subset.run(str(featured_pool), RECIPES, cfg, str(out), VARS, **quiet)
    return out, manifests


def test_shuffle_is_a_seeded_bijection():
    for n in (1, 2, 7, 500, 4097):
        s = subset.Shuffle(n, seed=5)
        y = s.forward(np.arange(n))
        assert sorted(y.tolist()) == list(range(n))
        assert (s.inverse(y) == np.arange(n)).all()
    a, b = subset.Shuffle(1000, 1).forward(np.arange(1000)), subset.Shuffle(1000, 2).forward(np.arange(1000))
    assert (a != b).mean() > 0.9


def test_cut_breaks_ties_by_uid():
    keys = np.array([9, 7, 7, 7, 5], np.uint32)
    uids = np.array(["e", "c", "a", "b", "d"], dtype=object)
    hist = np.bincount(keys >> 16, minlength=65536)
    cut = subset.find_cut(hist, 3, lambda b: (keys[(keys >> 16) == b], uids[(keys >> 16) == b]))
    assert sorted(uids[cut.inside(keys, uids)]) == ["a", "b", "e"]  # 9, then the two smallest uids of the 7s


def test_exact_and_equal_sizes(subsets, featured_pool):
    out, manifests = subsets
    layouts = []
    for name in RECIPES:
        m = manifests[name]
        assert m["size"] == N
        layouts.append([(s["name"], s["samples"]) for s in m["shards"]])
        lin = pq.read_table(out / name / "lineage.parquet").to_pandas()
        assert len(lin) == N and lin.uid.nunique() == N
        dec = filtering.read(str(featured_pool), name).to_pandas()
        kept = dec[dec.keep]
        assert set(lin.uid) <= set(kept.uid)
        assert m["funnel"][-1] == {"stage": "select", "in": len(kept), "out": N}
        for s in m["shards"]:
            with tarfile.open(out / name / s["name"]) as tar:
                assert len({n.split(".")[0] for n in tar.getnames()}) == s["samples"]
            assert pq.read_table(out / name / s["parquet"]).num_rows == s["samples"]
    assert layouts[0] == layouts[1] == [("00000000.tar", 200), ("00000001.tar", 200), ("00000002.tar", 100)]
    # the ranked recipe takes the top N by its ranking step's score, ties by uid
    assert manifests["datacomp-clip-b32-30pct"]["selection"]["mode"] == "top_score"
    dec = filtering.read(str(featured_pool), "datacomp-clip-b32-30pct").to_pandas()
    dec = dec[dec.keep].assign(s=[np.float32(x[-1]) for x in dec[dec.keep].step_scores])
    top = dec.sort_values(["s", "uid"], ascending=[False, True]).uid[:N]
    lin = pq.read_table(out / "datacomp-clip-b32-30pct" / "lineage.parquet")
    assert set(lin.column("uid").to_pylist()) == set(top)
    assert manifests["datacomp-basic"]["selection"]["mode"] == "uniform"


def test_same_seed_gives_byte_identical_output(subsets, featured_pool, tmp_path):
    out, manifests = subsets
    again = tmp_path / "b"
    subset.build(
        str(featured_pool),
        runtime.read_json(str(featured_pool / "decisions" / "datacomp-basic" / "manifest.json")),
        subset.rule_for(manifests["datacomp-basic"], 3),
        subset.SubsetConfig(size=N, seed=3, samples_per_shard=PER),
        str(again),
        **quiet,
    )
    first = sorted(p.name for p in (out / "datacomp-basic").iterdir())
    assert first == sorted(p.name for p in again.iterdir())
    for name in first:
        assert (out / "datacomp-basic" / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "c"
    m = subset.run(
        str(featured_pool),
        ["datacomp-basic"],
        subset.SubsetConfig(size=N, seed=4, samples_per_shard=PER),
        str(other),
        **quiet,
    )["datacomp-basic"]
    assert m["shards"][0]["sha256"] != manifests["datacomp-basic"]["shards"][0]["sha256"]


def test_asking_for_more_than_kept_fails_before_writing(featured_pool, tmp_path, ray_local):
    with pytest.raises(InputError, match=r"datacomp-clip-b32-30pct keeps \d+ samples .*fewer than --size 100000"):
        subset.run(str(featured_pool), RECIPES, subset.SubsetConfig(size=100000), str(tmp_path / "x"), VARS, **quiet)
    assert not (tmp_path / "x").exists()


def test_allow_repeat_upsamples_and_says_so(featured_pool, tmp_path, ray_local):
    kept = int(filtering.read(str(featured_pool), "datacomp-clip-b32-30pct").to_pandas().keep.sum())
    size = 2 * kept + 7
    m = subset.run(
        str(featured_pool),
        ["datacomp-clip-b32-30pct"],
        subset.SubsetConfig(size=size, seed=0, samples_per_shard=1000, allow_repeat=True),
        str(tmp_path / "r"),
        VARS,
        **quiet,
    )["datacomp-clip-b32-30pct"]
    assert m["size"] == size and m["selection"]["repeat"] == {"each": 2, "plus_one": 7}
    lin = pq.read_table(tmp_path / "r" / "lineage.parquet").to_pandas()
    assert len(lin) == size and lin.uid.nunique() == kept and lin.subset_key.nunique() == size
    assert lin.groupby("uid").size().value_counts().to_dict() == {2: kept - 7, 3: 7}
    assert audit.verify(str(tmp_path / "r"))["ok"]


def _flip_byte_in_sample(tar_path: Path) -> str:
    with tarfile.open(tar_path) as tar:
        m = next(x for x in tar.getmembers() if x.name.endswith(".jpg"))
    data = bytearray(tar_path.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0x01
    tar_path.write_bytes(bytes(data))
    return m.name.split(".")[0]


def test_verify_passes_then_names_each_change(subsets, tmp_path):
    out, _ = subsets
    for name in RECIPES:
        assert cli.main(["audit", "verify", str(out / name)]) == 0
    bad = tmp_path / "bad"
    shutil.copytree(out / "datacomp-basic", bad)
    key = _flip_byte_in_sample(bad / "00000000.tar")
    (bad / "00000001.tar").unlink()
    (bad / "notes.txt").write_text("not part of the release")
    res = audit.verify(str(bad))
    text = "\n".join(res["problems"])
    assert not res["ok"]
    assert "changed shard file 00000000.tar" in text
    assert f"changed sample {key} in 00000000.tar" in text
    assert sum("changed sample" in p for p in res["problems"]) == 1  # only the flipped one
    assert "missing shard file 00000001.tar" in text
    assert "extra file notes.txt" in text
    assert cli.main(["audit", "verify", str(bad)]) == 1


def test_trace_matches_the_source_and_the_shard(subsets, truth_by_uid):
    out, _ = subsets
    lin = pq.read_table(out / "datacomp-basic" / "lineage.parquet").to_pylist()
    row = next(r for r in lin if truth_by_uid[r["uid"]]["category"] == "clean")
    t = audit.trace(str(out / "datacomp-basic"), row["uid"])
    truth = truth_by_uid[row["uid"]]
    assert t["url"] == truth["url"]
    assert t["download"]["source_sha256"] == truth["sha256"]  # the bytes as served
    assert [s["step"] for s in t["recipe"]["steps"]] == ["english", "caption_length", "image_size", "aspect_ratio"]
    assert all(s["decision"] == "kept" for s in t["recipe"]["steps"])
    where = t["in_subset"][0]
    with tarfile.open(out / "datacomp-basic" / f"{where['shard']}.tar") as tar:
        assert hashlib.sha256(tar.extractfile(f"{where['key']}.jpg").read()).hexdigest() == where["image_sha256"]
    with pytest.raises(InputError, match="audit explain"):
        audit.trace(str(out / "datacomp-basic"), "0" * 32)


def test_explain_names_the_step_score_and_threshold(subsets, featured_pool, truth_by_uid):
    def first(category):
        return next(u for u, t in truth_by_uid.items() if t["category"] == category)

    e = audit.explain(str(featured_pool), first("non_english"), ["datacomp-basic"])
    assert re.match(
        r"dropped by step english \(language\): score [0-9.]+; rule: lang=en", e["recipes"]["datacomp-basic"]["verdict"]
    )
    e = audit.explain(str(featured_pool), first("tiny_image"), ["datacomp-basic"])
    assert e["recipes"]["datacomp-basic"]["verdict"].startswith("dropped by step image_size")
    assert [s["decision"] for s in e["recipes"]["datacomp-basic"]["steps"]][2:] == ["dropped", "not reached"]
    e = audit.explain(str(featured_pool), first("http_404"))
    assert e["verdict"].startswith("not downloaded: http_404")
    dec = filtering.read(str(featured_pool), "datacomp-clip-b32-30pct").to_pandas()
    uid = dec[dec.dropped_by == "clip_score"].uid.iloc[0]
    v = audit.explain(str(featured_pool), uid, ["datacomp-clip-b32-30pct"])["recipes"]["datacomp-clip-b32-30pct"]
    threshold = runtime.read_json(str(featured_pool / "decisions" / "datacomp-clip-b32-30pct" / "manifest.json"))[
        "thresholds"
    ]["clip_score"]["threshold"]
    score = float(re.search(r"score (-?[0-9.e-]+);", v["verdict"]).group(1))
    assert score < threshold and f"threshold {threshold:.6g}" in v["verdict"]


def test_remove_with_refill_keeps_n_and_excludes_the_urls(subsets, tmp_path):
    out, _ = subsets
    src = out / "datacomp-basic"
    lin = pq.read_table(src / "lineage.parquet").to_pandas()
    gone = lin.url.iloc[[3, 50, 400]].tolist()
    (tmp_path / "urls.txt").write_text("# takedown 2026-11\n" + "\n".join(gone) + "\n")
    assert (
        cli.main(
            [
                "audit",
                "remove",
                str(src),
                "--urls",
                str(tmp_path / "urls.txt"),
                "--out",
                str(tmp_path / "v2"),
                "--refill",
            ]
        )
        == 0
    )
    m = subset.read_manifest(str(tmp_path / "v2"))
    new = pq.read_table(tmp_path / "v2" / "lineage.parquet").to_pandas()
    assert m["size"] == N == len(new) and not set(gone) & set(new.url)
    assert len(set(lin.uid) - set(new.uid)) == 3 and len(set(new.uid) - set(lin.uid)) == 3  # next-ranked refill
    assert m["previous"]["manifest_sha256"] == runtime.file_sha256(str(src / "manifest.json"))
    assert m["previous"]["removed"] == 3
    assert audit.verify(str(tmp_path / "v2"))["ok"]
    # without refill the version shrinks; requests accumulate across versions
    (tmp_path / "more.txt").write_text(new.url.iloc[0] + "\n")
    m3 = audit.remove(str(tmp_path / "v2"), str(tmp_path / "v3"), urls_file=str(tmp_path / "more.txt"), **quiet)
    v3 = pq.read_table(tmp_path / "v3" / "lineage.parquet").to_pandas()
    assert m3["size"] == N - 1 and not (set(gone) | {new.url.iloc[0]}) & set(v3.url)
    with pytest.raises(InputError, match="already honours"):
        audit.remove(str(tmp_path / "v3"), str(tmp_path / "v4"), urls_file=str(tmp_path / "urls.txt"), **quiet)
    (tmp_path / "domains.txt").write_text("127.0.0.1\n")
    with pytest.raises(InputError, match="every sample"):
        audit.remove(str(src), str(tmp_path / "v5"), domains_file=str(tmp_path / "domains.txt"), **quiet)


def test_recheck_reports_link_rot_and_drift(subsets, synth_dir, server):
    out, _ = subsets
    lin = pq.read_table(out / "datacomp-basic" / "lineage.parquet").to_pandas()
    www = Path(synth_dir) / "www"
    files = [www / re.sub(r"^https?://[^/]+/", "", u) for u in lin.url]
    gone, drift = files[:5], files[5:12]
    saved = {p: p.read_bytes() for p in gone + drift}
    try:
        for p in gone:
            p.unlink()
        for p in drift:
            p.write_bytes(saved[p] + b"\x00")  # served bytes change
        res = audit.recheck(str(out / "datacomp-basic"), sample=N, threads=16, timeout=5, allow_private_addresses=True)
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    assert res["checked"] == N
    assert res["counts"] == {"gone": 5, "drifted": 7, "ok": N - 12}
    assert res["gone_rate"] == pytest.approx(5 / N)
    refused = audit.recheck(str(out / "datacomp-basic"), sample=3)
    assert refused["counts"] == {"refused": 3}  # loopback is refused unless allowed, as at download


def test_report_embeds_its_plots(subsets, tmp_path):
    out, _ = subsets
    page = tmp_path / "report.html"
    res = report.build_report(str(out / "datacomp-clip-b32-30pct"), str(page))
    assert res["compliance"]["compliant"] == "yes"
    assert res["compliance"]["pool samples opted out at download (X-Robots-Tag)"] > 0
    html = page.read_text()
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([^"]+)"', html)
    assert {a for a, _ in images} == {"funnel", "domains", "languages", "sizes", "scores"}
    manifest = json.loads((out / "datacomp-clip-b32-30pct" / "manifest.json").read_text())
    pool_yield = json.loads(Path(Pool(manifest["pool"]["path"]).stats("download-yield")).read_text())
    assert "<h2>Download yield</h2>" in html and "Hosts that failed most" in html and "127.0.0.1" in html
    assert f"{pool_yield['fetched']:,} of {pool_yield['rows']:,} rows fetched" in html
    import io

    from PIL import Image

    for _, data in images:
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        assert im.size[0] > 300 and len(np.unique(np.asarray(im.convert("L")))) > 5  # a drawn plot, not blank
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # render the page as a reader would see it
        shot = tmp_path / "page.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--screenshot={shot}",
                "--window-size=1000,2600",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
        im = Image.open(shot).convert("L")
        hist = np.bincount(np.asarray(im).ravel(), minlength=256)
        assert hist[:200].sum() > 0.02 * hist.sum()  # plots and text drawn, not an empty page


def galleries_of(page: str) -> dict[str, dict]:
    """A report's galleries: heading (as read) -> its note and samples (uid, the tooltip, the JPEG bytes or
    None, the rest of the figure's HTML)."""
    out = {}
    for part in page.split("<h3>")[1:]:
        heading, rest = part.split("</h3>", 1)
        rest = rest.split("<h2>", 1)[0]
        note = re.match(r'<p class="note">(.*?)</p>', rest)
        samples = []
        for title, picture, caption in re.findall(
            r'<figure title="([^"]*)">(.*?)<figcaption>(.*?)</figcaption></figure>', rest
        ):
            src = re.search(r'<img class="thumb" alt="[^"]*" src="data:image/jpeg;base64,([^"]+)">', picture)
            samples.append(
                {
                    "uid": re.match(r"uid ([0-9a-f]+) · ", title).group(1),
                    "title": html.unescape(title),
                    "thumb": base64.b64decode(src.group(1)) if src else None,
                    "picture": picture,
                    "caption": caption,
                }
            )
        out[html.unescape(heading)] = {"note": html.unescape(note.group(1)) if note else "", "samples": samples}
    return out


def tar_images(path) -> dict[str, bytes]:
    """key -> image bytes of a tar, read whole the plain way (what the galleries' ranged reads must match)."""
    with tarfile.open(path) as tar:
        return {m.name.split(".")[0]: tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")}


@pytest.mark.parametrize("name", RECIPES)
def test_report_galleries_show_kept_and_each_steps_dropped_samples(subsets, featured_pool, tmp_path, name):
    out, manifests = subsets
    m = manifests[name]
    res = report.build_report(str(out / name), str(tmp_path / "report.html"))
    shown = galleries_of((tmp_path / "report.html").read_text())
    # kept: the subset's first 8 samples, thumbnails of the bytes in its own tar
    kept = shown.pop(f"Kept: {m['size']:,} samples")["samples"]
    first = pq.read_table(out / name / "00000000.parquet").slice(0, 8)
    assert [s["uid"] for s in kept] == first.column("uid").to_pylist()
    images = tar_images(out / name / "00000000.tar")
    for s, key in zip(kept, first.column("key").to_pylist()):
        assert s["thumb"] == tarindex.thumbnail(images[key], gallery.THUMB_SIDE)
    # dropped: per filter step, the first 8 its decisions drop, in the pool's shard and key order
    decisions = sorted((featured_pool / "decisions" / name).glob("*.parquet"))
    dec = pa.concat_tables([pq.read_table(p) for p in decisions]).to_pandas()
    where = {  # uid -> (pool shard file, key)
        uid: (p.with_suffix(".tar"), key)
        for p in sorted((featured_pool / "shards").glob("*.parquet"))
        for uid, key in zip(*pq.read_table(p, columns=["uid", "key"]).to_pydict().values())
    }
    pool_images = {}
    steps = [f for f in m["funnel"] if f["stage"].startswith("filter:")]
    assert len(shown) == len(steps) and sum(res["gallery"]["dropped"].values()) > 0
    for f in steps:
        step = f["stage"].removeprefix("filter:")
        g = shown[f"Dropped by {step} ({f['filter']}): {f['in'] - f['out']:,} samples"]["samples"]
        uids = [s["uid"] for s in g]
        assert uids == dec[dec.dropped_by == step].uid.iloc[:8].tolist()
        assert len(uids) == min(8, f["in"] - f["out"]) == res["gallery"]["dropped"][step]
        assert set(dec.set_index("uid").loc[uids].dropped_by) <= {step}
        for s in g:
            tar, key = where[s["uid"]]
            if tar not in pool_images:  # each shard read whole once, the plain way
                pool_images[tar] = tar_images(tar)
            assert s["thumb"] == tarindex.thumbnail(pool_images[tar][key], gallery.THUMB_SIDE)
            assert f"{step} score" in s["title"] or "no score" in s["title"]
    for s in kept + [s for g in shown.values() for s in g["samples"]]:
        im = Image.open(io.BytesIO(s["thumb"]))
        im.load()
        assert im.format == "JPEG" and max(im.size) <= gallery.THUMB_SIDE


HOSTILE = ["<script>alert(1)</script>", '<img src=x onerror=alert(1)> "quoted" & more']


def test_the_reports_yield_section_escapes_hosts(tmp_path):
    pool = tmp_path / "pool"
    (pool / "stats").mkdir(parents=True)
    hostile = {"host": "<script>alert(1)</script>.example", "rows": 3, "failed": 2, "reasons": {"<b>x</b>": 2}}
    r = {
        "rows": 3,
        "fetched": 1,
        "yield": 1 / 3,
        "by_reason": {"<i>y</i>": {"rows": 2, "share": 2 / 3}},
        "hosts": [hostile],
    }
    (pool / "stats" / "download-yield.json").write_text(json.dumps(r))
    text = report._yield_html(str(pool))
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;.example" in text
    assert "<b>x</b>" not in text and "<i>y</i>" not in text and "1 of 3 rows fetched" in text
    assert "no downloaded shards" in report._yield_html(str(tmp_path / "gone"))


def test_report_gallery_escapes_captions_and_names_bad_images(subsets, tmp_path):
    out, _ = subsets
    sub = copy_pool(out / RECIPES[0], tmp_path / "subset")  # tars are symlinks: shard 0's is replaced below
    t = pq.read_table(sub / "00000000.parquet")
    captions = t.column("caption").to_pylist()
    captions[:2] = HOSTILE
    pq.write_table(
        t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(captions)), sub / "00000000.parquet"
    )
    # the third sample's image bytes overwritten: not an image any more
    tar = sub / "00000000.tar"
    offset, size = tarindex.tar_index(str(tar)).members[t.column("key")[2].as_py()]
    data = bytearray(tar.read_bytes())
    data[offset : offset + size] = b"\0" * size
    tar.unlink()
    tar.write_bytes(bytes(data))
    report.build_report(str(sub), str(tmp_path / "report.html"), gallery=3)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt; &quot;quoted&quot; &amp; more" in page
    tags = re.findall(r"<img [^>]*>", page)
    assert all(t.startswith(('<img class="thumb" alt="sample ', '<img alt="')) for t in tags), tags
    kept = next(g for h, g in galleries_of(page).items() if h.startswith("Kept"))["samples"]
    assert [html.unescape(s["caption"]) for s in kept[:2]] == HOSTILE
    assert kept[0]["thumb"] and kept[1]["thumb"] and kept[2]["thumb"] is None
    assert "decode_error: " in kept[2]["picture"]


@pytest.mark.parametrize("case", ["moved", "metadata-only"])
def test_report_says_why_dropped_samples_are_missing(subsets, featured_pool, tmp_path, case):
    out, manifests = subsets
    sub = copy_pool(out / RECIPES[0], tmp_path / "subset")
    m = json.loads((sub / "manifest.json").read_text())
    pool = tmp_path / "pool"
    if case == "metadata-only":  # what import-metadata writes: no tars; and a pixel limit every image is over
        pool.mkdir()
        pm = json.loads((featured_pool / "manifest.json").read_text())
        pm["layout"], pm["config"] = {"tar": None}, {**pm.get("config", {}), "max_pixels": 100}
        (pool / "manifest.json").write_text(json.dumps(pm))
    m["pool"]["path"] = str(pool)
    (sub / "manifest.json").write_text(json.dumps(m))
    page_path = tmp_path / "report.html"
    assert cli.main(["audit", "report", str(sub), "--out", str(page_path)]) == 0
    shown = galleries_of(page_path.read_text())
    why = "is not reachable (moved or deleted)" if case == "moved" else "has no images (imported from metadata only"
    dropped = {h: g for h, g in shown.items() if h.startswith("Dropped by")}
    assert len(dropped) == 4 and all(why in g["note"] and not g["samples"] for g in dropped.values())
    kept = shown[f"Kept: {m['size']:,} samples"]["samples"]  # from the subset's own tars, pool or none
    assert len(kept) == 8
    if case == "moved":
        assert all(s["thumb"] for s in kept)
    else:  # the pool's pixel limit holds for its images in the subset too
        assert all(s["thumb"] is None and "too_large: " in s["picture"] for s in kept)
    assert cli.main(["audit", "report", str(sub), "--out", str(page_path), "--gallery", "0"]) == 0
    assert "<h2>Samples</h2>" not in page_path.read_text() and "Funnel" in page_path.read_text()


def test_uids_only_writes_the_same_selection_as_datacomp_uid_files(subsets, featured_pool, tmp_path):
    from thresher.algo import hashes

    out, _ = subsets
    for name in RECIPES:
        resharded = set(pq.read_table(out / name / "lineage.parquet").column("uid").to_pylist())
        path = tmp_path / f"{name}.npy"
        record = subset.write_uid_file(str(featured_pool), name, str(path), size=N, seed=3, variables=VARS, **quiet)
        arr = np.load(path, allow_pickle=False)
        assert arr.dtype == np.dtype("u8,u8") and hashes.check_uid_array(arr, str(path)) is arr
        assert set(hashes.uids_of(arr)) == resharded and record["samples"] == N
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        assert path.read_bytes() == buf.getvalue()  # streamed range by range, byte for byte what np.save writes
        assert len(np.unique(arr["f0"] >> np.uint64(56))) > 100  # the uids span most of the 256 ranges
        # without --size: every sample the recipe keeps, as DataComp's baseline scripts write them
        every = subset.write_uid_file(
            str(featured_pool), name, str(tmp_path / f"{name}-all.npy"), variables=VARS, **quiet
        )
        kept = filtering.read(str(featured_pool), name).to_pandas().query("keep").uid
        assert set(hashes.uids_of(np.load(tmp_path / f"{name}-all.npy"))) == set(kept) and every["samples"] == len(kept)
    # a re-run finds it done; other inputs never overwrite it
    again = subset.write_uid_file(
        str(featured_pool), RECIPES[0], str(tmp_path / f"{RECIPES[0]}.npy"), size=N, seed=3, variables=VARS, **quiet
    )
    assert again["sha256"] == hashlib.sha256((tmp_path / f"{RECIPES[0]}.npy").read_bytes()).hexdigest()
    with pytest.raises(InputError, match="not written from these inputs"):
        subset.write_uid_file(
            str(featured_pool),
            RECIPES[0],
            str(tmp_path / f"{RECIPES[0]}.npy"),
            size=N - 1,
            seed=3,
            variables=VARS,
            **quiet,
        )
    with pytest.raises(InputError, match="is a .npy file"):
        subset.write_uid_file(str(featured_pool), RECIPES[0], str(tmp_path / "x.txt"), variables=VARS, **quiet)
    with pytest.raises(InputError, match="cannot repeat"):
        subset.write_uid_file(
            str(featured_pool), RECIPES[0], str(tmp_path / "big.npy"), size=10**6, variables=VARS, **quiet
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "5"], "give --out DIR .* or --uids-only"),
        (["--size", "5", "--out", "o", "--uids-only", "u.npy"], "one of the two"),
        (["--out", "o"], "--size is required with --out"),
        (["--uids-only", "u.npy", "--draws", "2"], "one --recipe, one draw"),
    ],
)
def test_subset_command_takes_one_kind_of_output(argv, message, tmp_path, capsys):
    assert cli.main(["subset", str(tmp_path), "--recipe", "datacomp-basic", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
