"""`thresher browse` on big pools: page, filter, search and thumbnail latency, and the server's memory.

    python benchmarks/browse.py [--dir /tmp/thresher-browse-bench] [--demo thresher-demo]

Builds (or reuses) the two pools of benchmarks/browse_pools.py: 1,000,000 rows of DataComp-format metadata
(import-metadata, 512-d embeddings, two recipes) and 20,000 samples with images (img2dataset's shards
adopted by import-pool; base features, a clip_tiny scorer, dedup, two recipes). For each, with a cold cache
folder, it starts the app (thresher/app/browse/) on uvicorn in this process and times over HTTP:

- the catalog's build (cold) and a restart that reuses it;
- the first page (`/api/info` and the first 60 samples; with images, their 60 thumbnails, cold: each
  shard's member-offset index is built then) and each filter change of a list (recipe and step, score
  range, language, download status, dedup, caption substring, sort, all at once), the near-threshold view
  and a sample's page; targets: under 1 s each;
- search: the FAISS index's build (cold), then "more like this" queries (target: under 0.3 s over 1M
  embeddings), and the index's recall@10 against exact search;
- the server's memory: this process's resident set after all of it, against the pool's size on disk.

References measured in the same run, as ratios: a filter change against reading the pool's metadata
whole and filtering it (what a viewer without the catalog does: `Pool.read_metadata`); a thumbnail page
of a page sorted by score (its images scattered over the tars) against reading each image by streaming
its tar from the start; a search against one exact search by NumPy over the stored embeddings, shard by
shard. Thumbnails are fetched over 6 connections at once, as a browser does.

With --demo DIR (a finished `thresher demo`), also the precision of text search with the demo's DFN
scorer, against the synthetic pool's answer key: a colour's or a shape's name, its top 48.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root, not benchmarks/, whose select.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # would shadow the standard library's

import argparse
import shutil
import subprocess
import tarfile
import threading
import time

import numpy as np
import pyarrow.compute as pc

from benchmarks.browse_pools import DEFAULT_DIR
from thresher.core import runtime
from thresher.core.pool import Pool, member_key, read_npy

PAGE_TARGET_S = 1.0
SEARCH_TARGET_S = 0.3


def rss_gb() -> float:
    """This process's resident memory now (VmRSS), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def du_gb(path: str) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**30


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The app over `pool` on uvicorn in a thread of this process; `get(path)` -> (seconds, response)."""

    def __init__(self, pool: str, cache: str):
        import httpx
        import uvicorn

        from thresher.app.browse.server import Browser, make_app

        t0 = time.perf_counter()
        self.browser = Browser(pool, cache, log=lambda *a: None)
        self.start_s = time.perf_counter() - t0
        port = free_port()
        app = make_app(self.browser, hosts=["127.0.0.1"])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)

    def get(self, path: str, **params):
        t0 = time.perf_counter()
        r = self.http.get(path, params=params)
        seconds = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{path} {params}: {r.status_code} {r.text[:300]}")
        return seconds, r

    def thumbnails(self, rows: list[dict], side: int) -> float:
        """Seconds to fetch the thumbnails of `rows` (the downloaded ones) over 6 connections at once, as a
        browser does (HTTP/1.1's 6 per host)."""
        from concurrent.futures import ThreadPoolExecutor

        paths = [f"/img/{r['shard']}/{r['key']}" for r in rows if r["status"] == "success"]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda p: self.get(p, side=side), paths))
        return time.perf_counter() - t0

    def close(self):
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)


def row(name: str, seconds: float, target: float | None = None, reference: float | None = None, note: str = ""):
    """One printed line: seconds, against the target and the reference when given."""
    parts = [f"  {name:<46} {seconds:8.3f} s"]
    if target:
        parts.append(f"  {'ok ' if seconds < target else 'OVER'} (target {target:g} s)")
    if reference:
        parts.append(f"  reference {reference:.3f} s, ratio {seconds / reference:.3f}")
    print("".join(parts) + (f"  {note}" if note else ""), flush=True)


def filters(info: dict) -> list[tuple[str, dict]]:
    """The filter changes timed on a pool: each recipe's kept and each of its steps' dropped, a score
    range, a language, a download status, dedup, a caption substring, a sort, and all at once."""
    out = []
    for r in info["recipes"]:
        out.append((f"recipe {r['name']}: kept", {"recipe": r["name"], "state": "kept"}))
        for s in r["steps"][:3]:
            out.append(
                (f"recipe {r['name']}: dropped by {s['name']}", {"recipe": r["name"], "state": f"dropped:{s['name']}"})
            )
    scorer = info["scorers"][0] if info["scorers"] else None
    if scorer:
        out.append((f"{scorer} score in [0.25, 0.3]", {f"min:score:{scorer}": 0.25, f"max:score:{scorer}": 0.3}))
        out.append((f"sort by {scorer} score", {"sort": f"score:{scorer}:desc"}))
    if len(info["languages"]) > 1:
        out.append((f"language {info['languages'][1][0]}", {"lang": info["languages"][1][0]}))
    if info["failures"]:
        out.append(("download failed", {"status": "failed_to_download"}))
    if info["dedup"]:
        out.append(("dedup: dropped", {"dedup": "dropped"}))
    out.append(("caption contains 'red'", {"q": "red"}))
    if info["recipes"] and scorer:
        r = info["recipes"][0]
        everything = {
            "recipe": r["name"],
            "state": "kept",
            "q": "a",
            f"min:score:{scorer}": 0.2,
            "sort": f"score:{scorer}:desc",
        }
        out.append(("all at once (recipe, caption, score, sort)", everything))
    return out


def reference_filter(pool: str, params: dict) -> float:
    """Reading the pool's metadata whole and filtering it by the caption: a viewer without the catalog."""
    t0 = time.perf_counter()
    meta = Pool(pool).read_metadata()
    meta.filter(pc.match_substring(meta.column("caption"), params.get("q", "red"), ignore_case=True))
    return time.perf_counter() - t0


def reference_thumbnails(pool: str, rows: list[dict]) -> float:
    """Each image of `rows` read by streaming its tar from the start up to it (no member-offset index)."""
    p = Pool(pool)
    t0 = time.perf_counter()
    for r in rows:
        if r["status"] != "success":
            continue
        fs, path = runtime.fs_path(p.tar(r["shard"]))
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for m in tar:
                if member_key(m.name)[0] == r["key"] and m.isfile():
                    tar.extractfile(m).read()
                    break
    return time.perf_counter() - t0


def exact_search(pool: str, scorer: str, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, float]:
    """Exact top-k rows (positions in the pool's embedding order) by NumPy, shard by shard; and its seconds."""
    p = Pool(pool)
    t0 = time.perf_counter()
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    start = 0
    for s in p.shards():
        emb = read_npy(p.embeddings(scorer, s)).astype(np.float32)
        sims = queries @ emb.T
        cand_s = np.concatenate([best_s, sims], axis=1)
        cand_i = np.concatenate([best_i, np.arange(start, start + len(emb))[None, :].repeat(len(queries), 0)], axis=1)
        top = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
        start += len(emb)
    return best_i, time.perf_counter() - t0


def bench_pool(name: str, pool: str, cache: str) -> dict:
    print(f"\n== {name}: {pool} ({du_gb(pool) if not pool.startswith('s3://') else float('nan'):.2f} GB on disk)")
    shutil.rmtree(cache, ignore_errors=True)
    rss0 = rss_gb()
    served = Served(pool, cache)
    results = {"catalog_build_s": served.start_s}
    row("start, cold (catalog built)", served.start_s, note=f"{served.browser.catalog.rows:,} rows")
    try:
        t_info, info = served.get("/api/info")
        info = info.json()
        t_page, page = served.get("/api/samples", limit=60)
        first = t_info + t_page
        rows = page.json()["rows"]
        if info["has_images"]:
            thumbs = served.thumbnails(rows, 256)
            first += thumbs
            row("its 60 thumbnails, cold (member-offset index built)", thumbs)
            scattered = served.get("/api/samples", limit=60, sort=f"score:{info['scorers'][0]}:desc")[1].json()["rows"]
            row(
                "60 thumbnails of a page sorted by score (both shards)",
                served.thumbnails(scattered, 256),
                reference=reference_thumbnails(pool, scattered),
                note="(reference: each read by streaming its tar from the start)",
            )
        row("first page (info + 60 samples" + (" + thumbnails)" if info["has_images"] else ")"), first, PAGE_TARGET_S)
        results["first_page_s"] = first
        slowest = 0.0
        ref = reference_filter(pool, {"q": "red"})
        for label, params in filters(info):
            t, r = served.get("/api/samples", limit=60, **params)
            slowest = max(slowest, t)
            row(f"filter: {label}", t, PAGE_TARGET_S, ref, note=f"{r.json()['total']:,} match")
        results["slowest_filter_s"] = slowest
        for r in info["recipes"]:
            for step in r["scored"][:1]:
                t, _ = served.get(f"/api/threshold/{r['name']}/{step}")
                row(f"near the threshold: {r['name']}/{step}", t, PAGE_TARGET_S)
        t, _ = served.get(f"/api/sample/{rows[1]['shard']}/{rows[1]['key']}")
        row("a sample's page", t, PAGE_TARGET_S)
        for scorer in info["searchable"][:1]:
            t0 = time.perf_counter()
            index = served.browser.index(scorer)
            index.load_or_build()
            row(f"search index of {scorer}, built (cold)", time.perf_counter() - t0, note=type(index.index).__name__)
            ok = [r for r in _all_rows(served, 400) if r["status"] == "success"][::8][:50]
            times = []
            for r in ok:
                t, _ = served.get("/api/search", scorer=scorer, shard=r["shard"], key=r["key"], k=48)
                times.append(t)
            queries = np.stack([index.vector_of(r["row"]) for r in ok])
            exact, _ = exact_search(pool, scorer, queries)
            _, exact_s = exact_search(pool, scorer, queries[:1])  # one query, as a user's
            found = [index.search(q, 10)[0] for q in queries]
            recall = np.mean([len(set(index.rows[e]) & set(f)) / 10 for e, f in zip(exact, found)])
            row(
                f"search, more like this (median of {len(times)})",
                float(np.median(times)),
                SEARCH_TARGET_S,
                exact_s,
                note=f"max {max(times):.3f} s; recall@10 against exact {recall:.3f} (reference: exact, by NumPy)",
            )
            results.update(search_s=float(np.median(times)), search_max_s=max(times), recall_at_10=float(recall))
        if info["has_images"]:  # a later visit: the shard's member-offset index built, no thumbnail cached
            served.browser.thumbnail.cache_clear()
            t_info, _ = served.get("/api/info")
            t_page, _ = served.get("/api/samples", limit=60)
            row(
                "first page again (indexes built, thumbnails made anew)",
                t_info + t_page + served.thumbnails(rows, 256),
                PAGE_TARGET_S,
            )
        rss = rss_gb()
        results["rss_gb"] = rss
        catalog = Path(served.browser.catalog.path).stat().st_size / 2**30
        print(
            f"  server memory: {rss:.2f} GB resident ({rss - rss0:+.2f} GB since before it started); "
            f"catalog {catalog:.3f} GB on disk, cache folder {du_gb(cache):.2f} GB"
        )
    finally:
        served.close()
    t0 = time.perf_counter()
    again = Served(pool, cache)
    row("restart, warm (catalog reused)", time.perf_counter() - t0)
    again.close()
    return results


def _all_rows(served: Served, n: int) -> list[dict]:
    return (
        served.get("/api/samples", limit=200)[1].json()["rows"]
        + served.get("/api/samples", limit=200, offset=200)[1].json()["rows"][: max(0, n - 200)]
    )


def demo_precision(demo: str) -> None:
    """Text search with the demo's DFN: for each colour and shape name, the share of its top 48 that the
    answer key gives that colour or shape."""
    import pyarrow.parquet as pq

    from thresher.app.browse.server import Browser

    b = Browser(f"{demo}/pool", f"{demo}-browse-cache", log=lambda *a: None)
    truth = {r["uid"]: r for r in pq.read_table(f"{demo}/source/ground_truth.parquet").to_pylist()}
    print(f"\n== text search precision@48 with {demo}'s DFN scorer (answer key: the synthetic pool's)")
    for field in ("color", "kind"):
        names = sorted({t[field] for t in truth.values() if t[field]})
        precision = []
        for name in names:
            found = b.search("dfn", name, None, None, 48)["rows"]
            precision.append(np.mean([truth[r["uid"]][field] == name for r in found]))
        print(
            f"  by {field} name: mean {np.mean(precision):.3f} (chance {1 / len(names):.3f}); "
            + ", ".join(f"{n} {p:.2f}" for n, p in zip(names, precision))
        )
    shutil.rmtree(f"{demo}-browse-cache", ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=DEFAULT_DIR, help=f"the pools' folder (default {DEFAULT_DIR})")
    ap.add_argument("--demo", help="a finished `thresher demo` folder: text search precision with its DFN")
    ap.add_argument("--only", choices=("metadata", "images"))
    args = ap.parse_args(argv)
    build = [sys.executable, str(Path(__file__).with_name("browse_pools.py")), "--dir", args.dir]
    subprocess.run(build + (["--only", args.only] if args.only else []), check=True)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for name, folder in (("metadata", "metadata-pool"), ("images", "image-pool")):
        if args.only in (None, name):
            bench_pool(name, f"{args.dir}/{folder}", f"{args.dir}/cache-{folder}")
    if args.demo:
        demo_precision(args.demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
