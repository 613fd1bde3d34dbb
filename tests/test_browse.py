"""`thresher browse` (thresher/app/browse/): its API against the pool's own files, and its pages in a real
headless Chromium (driven over the DevTools pipe of tests/test_browser.py).

Every figure the browser shows is checked against what the stages wrote (decisions, dedup, lineage,
`audit explain`) or against the synthetic pool's answer key, never against the browser's own code. Pools:
the session's `thresher demo` (downloaded, with dedup, two recipes, a DFN scorer and a subset), an
adopted pool with hostile captions, a metadata-only pool, and the demo's pool copied to S3 (moto).
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import free_port
from PIL import Image
from starlette.testclient import TestClient
from test_browser import DevTools, console_errors

from thresher.app.browse.server import Browser, make_app
from thresher.audit import audit
from thresher.core import decode, runtime, tarindex
from thresher.core.errors import StageError
from thresher.core.pool import Pool, read_npy

DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


# --- fixtures ------------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (size, mtime in ns)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo_browser(demo, tmp_path_factory):
    out, _, _ = demo
    cache = tmp_path_factory.mktemp("browse-cache")
    before = _tree(out / "pool")
    browser = Browser(str(out / "pool"), str(cache), [str(out / "subset")], log=lambda *a: None)
    yield browser, out, cache
    assert _tree(out / "pool") == before, "thresher browse wrote into the pool"


@pytest.fixture(scope="module")
def client(demo_browser):
    return TestClient(make_app(demo_browser[0]))


def _decisions(out: Path, recipe: str):
    """uid -> decision row of a recipe, from the decisions files."""
    pool = Pool(str(out / "pool"))
    rows = {}
    for s in pool.shards():
        for r in runtime.read_parquet(pool.decisions(recipe, s)).to_pylist():
            rows[r["uid"]] = r
    return rows


def _all(client, **params) -> list[dict]:
    """Every row of a filter, page by page."""
    rows, offset = [], 0
    while True:
        page = client.get("/api/samples", params={**params, "offset": offset, "limit": 200}).json()
        rows += page["rows"]
        offset += 200
        if offset >= page["total"]:
            return rows


# --- the API against the pool's files --------------------------------------------------------------------


def test_each_filter_selects_what_the_pools_files_say(demo_browser, client):
    browser, out, _ = demo_browser
    meta = Pool(str(out / "pool")).read_metadata()
    assert client.get("/api/samples").json()["total"] == meta.num_rows
    failed = client.get("/api/samples", params={"status": "failed_to_download"}).json()
    assert failed["total"] == pc.sum(pc.equal(meta.column("status"), "failed_to_download")).as_py() > 0
    dfn = _decisions(out, "dfn-dedup")
    for step in ("dedup", "clip_score"):
        got = {r["uid"] for r in _all(client, recipe="dfn-dedup", state=f"dropped:{step}")}
        assert got == {u for u, r in dfn.items() if r["dropped_by"] == step} and got
    kept = {r["uid"] for r in _all(client, recipe="dfn-dedup", state="kept")}
    assert kept == {u for u, r in dfn.items() if r["keep"]}
    lineage = set(pq.read_table(out / "subset" / "lineage.parquet").column("uid").to_pylist())
    assert {r["uid"] for r in _all(client, subset="subset")} == lineage
    word = "red"
    hits = _all(client, q=word.upper())  # case-insensitive
    assert {r["uid"] for r in hits} == {
        u
        for u, c in zip(meta.column("uid").to_pylist(), meta.column("caption").to_pylist())
        if word in (c or "").lower()
    }
    dfn_scores = np.array([r["score:dfn"] for r in _all(client, status="success")])
    lo, hi = np.percentile(dfn_scores, [25, 75])
    ranged = _all(client, **{"min:score:dfn": str(lo), "max:score:dfn": str(hi), "sort": "score:dfn:desc"})
    scores = [r["score:dfn"] for r in ranged]
    assert scores == sorted(scores, reverse=True) and all(lo <= s <= hi for s in scores)
    assert len(scores) == ((dfn_scores >= lo) & (dfn_scores <= hi)).sum() > 0


COPIES = {"exact_duplicate", "near_duplicate", "eval_contamination"}


def duplicates_by_the_answer_key(truth: dict) -> set[str]:
    """The samples the answer key calls duplicates: every planted copy, and every source of a copy in the
    pool (dedup keeps one per group, not necessarily the original)."""
    copies = {u for u, t in truth.items() if t["category"] in COPIES}
    return copies | {truth[u]["source_uid"] for u in copies if truth[u]["source_uid"] in truth}


def test_dropped_by_dedup_shows_only_duplicates_by_the_answer_key(client, truth_by_uid_demo):
    rows = _all(client, recipe="dfn-dedup", state="dropped:dedup")
    assert rows and {r["uid"] for r in rows} <= duplicates_by_the_answer_key(truth_by_uid_demo)


@pytest.fixture(scope="module")
def truth_by_uid_demo(demo):
    out, _, _ = demo
    return {r["uid"]: r for r in pq.read_table(out / "source" / "ground_truth.parquet").to_pylist()}


def test_the_threshold_view_is_the_recipes_cut(demo_browser, client):
    _, out, _ = demo_browser
    manifest = json.loads((out / "pool" / "decisions" / "dfn-dedup" / "manifest.json").read_text())
    t = client.get("/api/threshold/dfn-dedup/clip_score", params={"around": 10}).json()
    cut = manifest["thresholds"]["clip_score"]["threshold"]
    assert t["threshold"] == pytest.approx(cut) and t["threshold_source"] == "top_fraction"
    col = "step:dfn-dedup:clip_score"
    above, below = [r[col] for r in t["above"]], [r[col] for r in t["below"]]
    assert above == sorted(above) and below == sorted(below, reverse=True)
    assert all(r["keep:dfn-dedup"] for r in t["above"]) and min(above) >= cut
    assert all(r["dropped_by:dfn-dedup"] == "clip_score" for r in t["below"]) and max(below) < cut
    dfn = _decisions(out, "dfn-dedup")
    step = [s["name"] for s in manifest["recipe_resolved"]["steps"]].index("clip_score")
    dropped = sorted((r["step_scores"][step] for r in dfn.values() if r["dropped_by"] == "clip_score"), reverse=True)
    assert below == pytest.approx(dropped[: len(below)])  # the nearest ones, not any
    reached = sum(1 for r in dfn.values() if r["dropped_by"] != "dedup")
    assert t["reached"] == reached == sum(t["kept"]) + sum(t["dropped_hist"])
    assert client.get("/api/threshold/dfn-dedup/nope").status_code == 400


def test_a_samples_page_says_what_audit_explain_says_with_its_duplicates(demo_browser, client, truth_by_uid_demo):
    browser, out, _ = demo_browser
    row = next(r for r in _all(client, dedup="exact"))
    page = client.get(f"/api/sample/{row['shard']}/{row['key']}").json()
    assert page["explain"] == json.loads(json.dumps(audit.explain(str(out / "pool"), row["uid"]), default=str))
    group = {d["uid"] for d in page["duplicates"]}
    truth = truth_by_uid_demo[row["uid"]]
    assert truth["category"] == "exact_duplicate" and page["explain"]["dedup"]["group"] in group
    # the group's kept sample and this one are copies of one source by the answer key
    kept = truth_by_uid_demo[page["explain"]["dedup"]["group"]]
    assert truth["source_uid"] in (kept["uid"], kept["source_uid"])


def test_more_like_this_and_a_text_query_search_the_stored_embeddings(demo_browser, client):
    browser, out, cache = demo_browser
    row = _all(client, status="success")[5]
    res = client.get("/api/search", params={"scorer": "dfn", "shard": row["shard"], "key": row["key"], "k": 10}).json()
    assert res["rows"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert row["uid"] in {r["uid"] for r in res["rows"] if r["similarity"] > 0.999}
    assert list(Path(cache, "features", "dfn").glob("image-*.faiss"))  # the index is in the cache, not the pool
    # a text query is embedded by the DFN's own text tower: a sample's caption lands on its stored text
    # embedding, and the results are the exact nearest images by cosine (a flat index on this pool)
    pool = Pool(str(out / "pool"))
    shard = pool.shards()[0]
    caption = pool.successful_rows(shard).column("caption")[0].as_py()
    stored_txt = read_npy(pool.embeddings("dfn", shard, "txt"))[0].astype(np.float32)
    query = browser.encoders["dfn"].encode(caption)
    assert float(query @ stored_txt) > 0.999
    found = client.get("/api/search", params={"scorer": "dfn", "q": caption, "k": 20}).json()
    images = np.concatenate([read_npy(pool.embeddings("dfn", s)).astype(np.float32) for s in pool.shards()])
    best = np.sort(images @ query)[::-1][:20]
    assert [r["similarity"] for r in found["rows"]] == pytest.approx(best.tolist(), abs=1e-4)
    bad = client.get("/api/search", params={"scorer": "nope", "q": "x"})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]


def test_unknown_samples_images_and_bad_parameters_are_named_errors(client):
    assert client.get("/img/99999/00000000000").status_code == 404
    assert client.get("/img/0/no-such-key").status_code == 404
    assert client.get("/img/0/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/api/sample/0/nope").status_code == 404
    for params, words in [
        ({"recipe": "nope"}, "nope"),
        ({"min:score:dfn": "abc"}, "abc"),
        ({"min:score:nope": "1"}, "nope"),
        ({"dedup": "maybe"}, "maybe"),
        ({"subset": "other"}, "other"),
    ]:
        r = client.get("/api/samples", params=params)
        assert r.status_code == 400 and words in r.json()["error"], (params, r.text)
    assert client.get("/img/0/00000000000", params={"side": 4096}).status_code == 400
    assert client.get("/static/../../pyproject.toml").status_code == 404


def test_thumbnails_come_from_the_tar_by_offset_within_the_pixel_limit(demo_browser, client):
    browser, out, cache = demo_browser
    pool = Pool(str(out / "pool"))
    shard = pool.shards()[0]
    images = pool.read_images(shard)
    key = sorted(images)[3]
    r = client.get(f"/img/{shard}/{key}", params={"side": 128})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    source = Image.open(io.BytesIO(images[key]))
    assert max(thumb.size) <= 128 and abs(thumb.size[0] / thumb.size[1] - source.size[0] / source.size[1]) < 0.1
    index = tarindex.shard_index(pool, shard, str(cache))
    assert index.read(key) == images[key]  # the member's bytes, by offset
    assert (Path(cache) / "tars" / f"{shard:08d}.parquet").exists()
    # a pixel limit below the image's size refuses it from its header
    with pytest.raises(decode.TooLarge, match="too_large"):
        tarindex.thumbnail(images[key], 64, 100)


def test_a_cached_tar_index_is_dropped_when_the_tar_changes(tmp_path):
    def write(path, n):
        with tarfile.open(path, "w") as t:
            for i in range(n):
                data = f"image {i}".encode() * (i + 1)
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))

    pool = tmp_path / "pool"
    (pool / "shards").mkdir(parents=True)
    write(pool / "shards" / "00000000.tar", 3)
    first = tarindex.shard_index(Pool(str(pool)), 0, str(tmp_path / "cache"))
    assert first.read("000000002") == b"image 2" * 3
    write(pool / "shards" / "00000000.tar", 5)
    os.utime(pool / "shards" / "00000000.tar", ns=(time.time_ns(), time.time_ns() + 10**9))
    again = tarindex.shard_index(Pool(str(pool)), 0, str(tmp_path / "cache"))
    assert set(again.members) == {f"{i:09d}" for i in range(5)}


def test_off_loopback_every_request_needs_the_token_and_on_it_the_host_is_checked(demo_browser):
    browser = demo_browser[0]
    guarded = TestClient(make_app(browser, token="s3cret"))
    assert guarded.get("/api/info").status_code == 403
    assert guarded.get("/api/info", params={"token": "wrong"}).status_code == 403
    first = guarded.get("/", params={"token": "s3cret"})
    assert first.status_code == 200 and "thresher_token" in first.cookies
    assert guarded.get("/api/info").status_code == 200  # the cookie it set
    local = TestClient(make_app(browser, hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8770")
    assert local.get("/api/info").status_code == 200
    assert local.get("/api/info", headers={"host": "attacker.example:8770"}).status_code == 400  # DNS rebinding
    headers = local.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"


# --- in a browser ----------------------------------------------------------------------------------------


class Tab:
    """A headless Chromium tab on a running `thresher browse`: go(route) waits until the app has drawn it."""

    def __init__(self, chromium: str, profile: Path, base: str):
        self.b, self.base = DevTools(chromium, profile), base
        target = self.b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.s = self.b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.b.send(f"{domain}.enable", session=self.s)
        metrics = {"width": 1280, "height": 2400, "deviceScaleFactor": 1, "mobile": False}
        self.b.send("Emulation.setDeviceMetricsOverride", metrics, session=self.s)

    def js(self, expression: str):
        r = self.b.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=self.s
        )
        return r["result"].get("value")

    def go(self, route: str, timeout: float = 60) -> dict:
        self.b.send("Page.navigate", {"url": self.base + route}, session=self.s)
        deadline = time.monotonic() + timeout
        while self.js("document.body && document.body.dataset.ready") != route:
            assert time.monotonic() < deadline, f"{route} was not drawn in {timeout} s"
            time.sleep(0.1)
        # every image loaded (or failed): then what a reader sees
        while not self.js("[...document.images].every(i => i.complete)"):
            assert time.monotonic() < deadline, f"{route}: images still loading after {timeout} s"
            time.sleep(0.1)
        return json.loads(
            self.js(
                "JSON.stringify({text: document.getElementById('main').innerText,"
                " error: [...document.querySelectorAll('.error')].map(e => e.innerText),"
                " tiles: [...document.querySelectorAll('.tile')].map(t => t.dataset.uid),"
                " images: [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]),"
                " scripts: document.scripts.length, svg: document.querySelectorAll('svg rect').length})"
            )
        )

    def screenshot(self, path: Path, height: int = 1400) -> Image.Image:
        shot = self.b.send(
            "Page.captureScreenshot",
            {"format": "png", "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}},
            session=self.s,
        )
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent == DOCS_IMAGES:  # 256 colours: a third of the bytes in the repository, alike to the eye
            image.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)
        else:
            image.save(path)
        return image

    def errors(self) -> list[str]:
        return console_errors(self.b.events)

    def dialogs(self) -> list[dict]:
        return [e for e in self.b.events if e.get("method") == "Page.javascriptDialogOpening"]

    def close(self):
        self.b.close()


def serving(browser: Browser, **kw):
    """(base URL, stop): the app on uvicorn in a thread, on a free port of 127.0.0.1."""
    import uvicorn

    port = free_port()
    hosts = ["127.0.0.1"]
    server = uvicorn.Server(
        uvicorn.Config(make_app(browser, hosts=hosts, **kw), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}/", stop


@pytest.fixture(scope="module")
def demo_tab(demo_browser, chromium, tmp_path_factory):
    base, stop = serving(demo_browser[0])
    tab = Tab(chromium, tmp_path_factory.mktemp("profile"), base)
    yield tab
    tab.close()
    stop()


def _shots() -> Path | None:
    """Where the screenshots for docs/browse.md go: docs/images/ with THRESHER_DOCS_SCREENSHOTS=1."""
    return DOCS_IMAGES if os.environ.get("THRESHER_DOCS_SCREENSHOTS") == "1" else None


def test_the_grid_loads_with_thumbnails_and_no_console_errors(demo_tab, tmp_path):
    page = demo_tab.go("#/samples")
    assert not page["error"] and len(page["tiles"]) == 60
    thumbs = [i for i in page["images"] if i[0].startswith("/img/")]
    assert thumbs and all(w > 0 and h > 0 for _, w, h in thumbs), "a thumbnail did not decode"
    shot = demo_tab.screenshot((_shots() or tmp_path) / "browse-grid.png")
    assert len(shot.getcolors(1 << 20) or range(1 << 20)) > 1000  # photographs, not a blank page
    assert demo_tab.errors() == []


def test_the_funnels_step_link_shows_what_the_step_dropped(demo_tab, demo, truth_by_uid_demo, tmp_path):
    out, _, _ = demo
    demo_tab.go("#/samples?recipe=dfn-dedup")
    link = demo_tab.js("[...document.querySelectorAll('a.step')].map(a => a.getAttribute('href'))")
    assert "#/samples?recipe=dfn-dedup&state=dropped%3Adedup" in link, link
    page = demo_tab.go("#/samples?recipe=dfn-dedup&state=dropped%3Adedup")
    dropped = {u for u, r in _decisions(out, "dfn-dedup").items() if r["dropped_by"] == "dedup"}
    assert page["tiles"] and set(page["tiles"]) <= dropped
    assert set(page["tiles"]) <= duplicates_by_the_answer_key(truth_by_uid_demo)
    assert f"{len(dropped):,} samples" in page["text"]
    demo_tab.screenshot((_shots() or tmp_path) / "browse-dropped-by-dedup.png")
    t = demo_tab.go("#/threshold/dfn-dedup/clip_score")
    assert t["svg"] > 10 and "threshold" in t["text"] and not t["error"]
    demo_tab.screenshot((_shots() or tmp_path) / "browse-threshold.png")
    assert demo_tab.errors() == []


def test_a_sample_page_and_search_in_the_browser(demo_tab, client, tmp_path):
    row = next(r for r in _all(client, dedup="exact"))
    page = demo_tab.go(f"#/sample/{row['shard']}/{row['key']}")
    assert row["uid"] in page["text"] and "Recipe dfn-dedup" in page["text"] and not page["error"]
    assert len(page["images"]) >= 3  # the sample, and its duplicate group side by side
    demo_tab.screenshot((_shots() or tmp_path) / "browse-sample.png")
    found = demo_tab.go("#/search?scorer=dfn&q=red")
    assert len(found["tiles"]) == 48 and "nearest by dfn" in found["text"]
    demo_tab.screenshot((_shots() or tmp_path) / "browse-search.png")
    assert demo_tab.errors() == []


# --- pools of other kinds --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_pool(demo, s3):
    """Two shards of the demo's pool (every file of theirs, and the manifests) on moto's S3."""
    import s3fs

    out, _, _ = demo
    fs = s3fs.S3FileSystem()
    root = out / "pool"
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        name = path.name
        if (
            path.is_file()
            and not rel.startswith("_work")
            and (name == "manifest.json" or name.startswith(("00000000", "00000001")))
        ):
            fs.put_file(str(path), f"{s3}/pool/{rel}")
    return f"{s3}/pool"


def test_a_pool_on_s3_is_browsed_like_a_local_one(s3_pool, demo_browser, tmp_path):
    local = TestClient(make_app(demo_browser[0]))
    remote_browser = Browser(s3_pool, str(tmp_path / "cache"), log=lambda *a: None)
    remote = TestClient(make_app(remote_browser))
    pool = Pool(s3_pool)
    assert pool.shards() == [0, 1]
    rows = _all(remote, recipe="dfn-dedup", state="dropped:clip_score")
    local_rows = [r for r in _all(local, recipe="dfn-dedup", state="dropped:clip_score") if r["shard"] in (0, 1)]
    assert [r["uid"] for r in rows] == [r["uid"] for r in local_rows] and rows
    key = rows[0]["key"]
    assert remote.get(f"/img/0/{key}").content == local.get(f"/img/0/{key}").content  # by ranged reads of S3
    near = remote.get("/api/search", params={"scorer": "dfn", "shard": 0, "key": key, "k": 5}).json()["rows"]
    assert near[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert remote.get(f"/api/sample/0/{key}").json()["explain"]["uid"] == rows[0]["uid"]


@pytest.fixture(scope="module")
def local_executor():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THRESHER_EXECUTOR", "local")  # each stage in this process: no Ray start for small pools
        yield


@pytest.fixture(scope="module")
def hostile_pool(tmp_path_factory, local_executor):
    """img2dataset's shards (benchmarks/browse_pools.py: drawn JPEGs, failures, every HOSTILE_CAPTION on
    downloaded and failed rows) adopted with import-pool: its tars stay in the img2dataset folder."""
    from benchmarks.browse_pools import image_source
    from thresher.stages.acquire import adopt

    root = tmp_path_factory.mktemp("hostile")
    image_source(root / "i2d", samples=120, seed=3, hostile=True, per_shard=60)
    adopt.import_pool(str(root / "i2d"), str(root / "pool"), log=lambda *a: None)
    return root / "pool"


def test_hostile_captions_render_as_text_on_an_adopted_pool(hostile_pool, chromium, tmp_path):
    from benchmarks.browse_pools import HOSTILE_CAPTIONS

    browser = Browser(str(hostile_pool), str(tmp_path / "cache"), log=lambda *a: None)
    client = TestClient(make_app(browser))
    base, stop = serving(browser)
    tab = Tab(chromium, tmp_path / "profile", base)
    try:
        for caption in HOSTILE_CAPTIONS[:4]:
            hits = client.get("/api/samples", params={"q": caption[:40]}).json()
            assert hits["total"] > 0, caption
            row = next(r for r in hits["rows"] if r["status"] == "success")
            page = tab.go(f"#/sample/{row['shard']}/{row['key']}")
            assert caption.strip().splitlines()[0][:40] in page["text"], caption  # shown, as the characters it is
            assert page["scripts"] == 1 and not page["error"]  # no script but the app's
            # the page holds no element the caption could have made: no img but the sample's, no svg
            assert [src for src, _, _ in page["images"]] == [f"/img/{row['shard']}/{row['key']}?side=512"]
            assert not tab.js("document.querySelector('main svg, main iframe, main textarea')")
        grid = tab.go("#/samples?q=%3Cscript")  # the grid of them: their captions as text, no script run
        assert grid["tiles"] and grid["scripts"] == 1 and "<script>" in grid["text"]
        failed = tab.go("#/samples?status=failed_to_download")
        assert failed["tiles"] and not [i for i in failed["images"] if i[0].startswith("/img/")]  # URLs, no thumbnail
        assert "failed_to_download" in failed["text"]
        assert tab.dialogs() == [] and tab.errors() == []  # no alert() ran, nothing failed
        tab.screenshot(tmp_path / "hostile.png")
    finally:
        tab.close()
        stop()


@pytest.fixture(scope="module")
def metadata_only_pool(tmp_path_factory, local_executor):
    """DataComp-format metadata with .npz embeddings (benchmarks/browse_pools.py), import-metadata'ed."""
    from benchmarks.browse_pools import metadata_source
    from thresher.stages.acquire import importing

    root = tmp_path_factory.mktemp("metadata-only")
    metadata_source(root / "meta", rows=400, dim=32, seed=1, hostile=True, per_file=200)
    importing.import_metadata([str(root / "meta")], str(root / "pool"), npz_dir=str(root / "meta"), log=lambda *a: None)
    return root / "pool"


def test_a_metadata_only_pool_shows_urls_filters_and_searches_by_image(metadata_only_pool, tmp_path):
    browser = Browser(str(metadata_only_pool), str(tmp_path / "cache"), log=lambda *a: None)
    client = TestClient(make_app(browser))
    info = client.get("/api/info").json()
    assert info["has_images"] is False and info["rows"] == 400 and "clip_b32" in info["searchable"]
    row = client.get("/api/samples", params={"limit": 1}).json()["rows"][0]
    assert row["url"].startswith("http")
    assert client.get(f"/img/{row['shard']}/{row['key']}").status_code == 404
    near = client.get("/api/search", params={"scorer": "clip_b32", "shard": row["shard"], "key": row["key"]}).json()
    assert near["rows"][0]["similarity"] == pytest.approx(1.0, abs=1e-2)
    text = client.get("/api/search", params={"scorer": "clip_b32", "q": "a dog"})
    assert text.status_code == 400 and "more like this" in text.json()["error"]
    lang = info["languages"][0][0]
    assert client.get("/api/samples", params={"lang": lang}).json()["total"] == info["languages"][0][1]


def test_the_command_serves_another_address_only_with_the_token_it_prints(hostile_pool, tmp_path):
    """`thresher browse --host H` for an H other than 127.0.0.1: every request needs the printed token (the
    test binds 127.0.0.2, another loopback address, so nothing leaves this machine)."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    port = free_port()
    exe = str(Path(sys.executable).with_name("thresher"))
    cmd = [exe, "browse", str(hostile_pool), "--host", "127.0.0.2", "--port", str(port), "--cache", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "token=" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "thresher browse ended before printing its address"
        url = line.split()[1]
        assert url.startswith(f"http://127.0.0.2:{port}/?token=")
        bare = url.split("?")[0] + "api/info"
        for _ in range(100):
            try:
                urllib.request.urlopen(bare, timeout=5)
                raise AssertionError("served without the token")
            except urllib.error.HTTPError as err:
                assert err.code == 403
                break
            except urllib.error.URLError:
                time.sleep(0.1)  # not listening yet
        with urllib.request.urlopen(bare + "?token=" + url.split("token=")[1], timeout=5) as r:
            assert json.loads(r.read())["rows"] == 120
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_member_index_reads_every_tar_format_as_tarfile_does(tmp_path, fmt):
    """tarindex reads headers itself (ten times tarfile's speed): ustar (with a prefix), GNU long names,
    pax paths and sizes give the offsets tarfile gives; what it does not read falls back to tarfile."""
    path = tmp_path / "t.tar"
    names = ["00000001.jpg", "00000001.txt", "d" * 90 + "/" + "k" * 60 + ".jpg", "ünïcode-ключ.png", "0002.JPG"]
    if fmt == tarfile.USTAR_FORMAT:
        names = [n for n in names if not n.startswith("ü")]
    with tarfile.open(path, "w", format=fmt) as t:
        for i, name in enumerate(names):
            data = bytes([i]) * (700 * i + 3)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("00000009.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "00000001.jpg"
        t.addfile(link)
    with tarfile.open(path) as t:
        want = [(m.name, m.offset_data, m.size, m.isfile()) for m in t]
    with open(path, "rb") as f:
        assert list(tarindex._headers(f)) == want
    table = tarindex.scan(str(path))
    got = dict(zip(table.column("key").to_pylist(), table.column("offset").to_pylist()))
    assert "00000009" not in got and got["00000001"] == want[0][1]  # images only, no links
    data = bytearray(path.read_bytes())
    data[150] ^= 0x11  # the first header's checksum: tarfile's reading decides, and it refuses this tar
    path.write_bytes(bytes(data))
    with pytest.raises(StageError, match="unreadable tar"):
        tarindex.scan(str(path))


def test_an_adopted_tar_changed_since_import_is_refused_not_shown(tmp_path, local_executor):
    from benchmarks.browse_pools import image_source
    from thresher.stages.acquire import adopt

    image_source(tmp_path / "i2d", samples=20, seed=5, hostile=False, per_shard=20)
    adopt.import_pool(str(tmp_path / "i2d"), str(tmp_path / "pool"), log=lambda *a: None)
    tar = tmp_path / "i2d" / "00000.tar"
    data = bytearray(tar.read_bytes())
    data[-2000] ^= 0xFF  # a byte of the last member's image: its headers still read
    tar.write_bytes(bytes(data))
    client = TestClient(make_app(Browser(str(tmp_path / "pool"), str(tmp_path / "cache"), log=lambda *a: None)))
    row = client.get("/api/samples", params={"status": "success", "limit": 1}).json()["rows"][0]
    r = client.get(f"/img/{row['shard']}/{row['key']}")
    assert r.status_code == 400 and "changed since import-pool" in r.json()["error"]
