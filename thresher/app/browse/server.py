"""The web app of `thresher browse`: a JSON API over the catalog, thumbnails, and a static front end.

FastAPI on uvicorn (docs/browse.md says why). Every route is a GET; nothing writes to the pool.

    GET /                                  the front end (static/index.html, app.js, app.css: no build step)
    GET /api/info                          the pool: counts, scorers, recipes and their funnels, subsets
    GET /api/samples?FILTER&offset&limit   a page of samples matching a filter (query.Filter)
    GET /api/sample/{shard}/{key}          one sample: audit explain's story, features, duplicates, subsets
    GET /api/threshold/{recipe}/{step}     a step's score histogram and the samples either side of its threshold
    GET /api/search?scorer&q | &shard&key  nearest neighbours of a text query or of a sample's image
    GET /img/{shard}/{key}?side=N          a JPEG thumbnail of a pool image, by shard and key only

Safe by default: bound to 127.0.0.1 with a Host check (a page elsewhere cannot reach it by DNS
rebinding); another address only with a token (`?token=` once, then a cookie). Every response carries a
Content-Security-Policy that allows no inline script and no other origin, and the front end puts web
text into the page only as text (`textContent`), so a caption holding `<script>` shows as text.
"""

from __future__ import annotations

import functools
import importlib.resources
import secrets
import threading

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from thresher.app.browse import catalog as catalog_mod
from thresher.app.browse.query import Catalog, Filter
from thresher.app.browse.search import Index, TextEncoder
from thresher.audit import audit
from thresher.core import decode, runtime, tarindex
from thresher.core.errors import InputError, StageError
from thresher.core.pool import Pool

SIDES = (128, 256, 512)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = ("index.html", "app.js", "app.css")


class NotFound(LookupError):
    pass


class Browser:
    """The state one server holds: the pool (read only), its catalog, indexes and model, and caches."""

    def __init__(self, pool: str, cache: str | None = None, subsets: list[str] | None = None, log=print):
        self.pool = Pool(pool).require()
        self.cache = cache or catalog_mod.default_cache(pool)
        path, cols = catalog_mod.build(self.pool, self.cache, subsets or [], log)
        self.catalog = Catalog(path, cols)
        self.has_images = self.pool.has_images()
        self.max_pixels = decode.max_pixels_of(pool) if self.has_images else 0
        self.shards = set(self.pool.shards())
        self.indexes: dict[str, Index] = {}
        self.encoders = {s: TextEncoder(self.pool, s) for s in cols.scorers}
        self.thumbnail = functools.lru_cache(maxsize=4096)(self._thumbnail)
        self.shard_index = functools.lru_cache(maxsize=64)(self._shard_index)
        self.index_lock, self.tar_lock = threading.Lock(), threading.Lock()
        self.log = log
        first = min(self.shards, default=None)
        self.searchable = [
            s for s in cols.scorers if first is not None and runtime.exists(self.pool.embeddings(s, first))
        ]

    # --- search ------------------------------------------------------------------------------------
    def index(self, scorer: str) -> Index:
        if scorer not in self.searchable:
            raise InputError(
                f"scorer: {scorer!r} has no stored image embeddings in this pool; one of {self.searchable}"
            )
        with self.index_lock:  # one Index per scorer, whichever thread asks first (a search, or the warm-up)
            if scorer not in self.indexes:
                valid = pc.field(f"score:{scorer}").is_valid()
                t = self.catalog.dataset.to_table(columns=["row", "shard"], filter=valid)
                shards, rows = t.column("shard").to_numpy(), t.column("row").to_numpy()
                per_shard = {int(s): rows[shards == s] for s in np.unique(shards)}
                self.indexes[scorer] = Index(self.pool, scorer, self.cache, per_shard, self.log)
            return self.indexes[scorer]

    def build_indexes(self) -> threading.Thread:
        """In the background: the first shard's member-offset index (the first page's thumbnails come from
        it), then every scorer's search index, so that the first page and the first search do not wait."""

        def work():
            if self.has_images and self.shards:
                try:
                    self.shard_index(min(self.shards))
                except Exception as err:  # noqa: BLE001 - said again when its thumbnails are asked for
                    self.log(f"[browse] shard {min(self.shards):08d}: no index: {err}")
            for s in self.searchable:
                try:
                    self.index(s).load_or_build()
                except Exception as err:  # noqa: BLE001 - raised again when that scorer is searched
                    self.log(f"[browse] {s}: no index: {err}")

        thread = threading.Thread(target=work, name="browse-index", daemon=True)
        thread.start()
        return thread

    def search(self, scorer: str, q: str | None, shard: int | None, key: str | None, k: int) -> dict:
        index = self.index(scorer)
        if q:
            vector, query = self.encoders[scorer].encode(q), {"text": q}
        elif shard is not None and key is not None:
            row = self.sample_row(shard, key)
            vector, query = index.vector_of(row["row"]), {"shard": shard, "key": key}
        else:
            raise InputError("search takes q=TEXT, or shard and key of a sample (more like this)")
        rows, sims = index.search(vector, max(1, min(k, 200)))
        found = self.catalog.take(rows)
        for r, s in zip(found, sims):
            r["similarity"] = float(s)
        return {"scorer": scorer, "query": query, "index": type(index.index).__name__, "rows": found}

    # --- samples -----------------------------------------------------------------------------------
    def sample_row(self, shard: int, key: str) -> dict:
        row = self.catalog.find(shard, key) if shard in self.shards else None
        if row is None:
            raise NotFound(f"no sample {key!r} in shard {shard} of this pool")
        return row

    def sample(self, shard: int, key: str) -> dict:
        row = self.sample_row(shard, key)
        story = audit.explain_row(self.pool.root, shard, row)  # the catalog row holds the metadata it reads
        out = {
            "row": row,
            "explain": story,
            "features": {},
            "duplicates": [],
            "subsets": {},
            "source": self.source(shard),
        }
        if row["status"] == "success" and self.catalog.cols.has_base:
            base = runtime.read_parquet(self.pool.features("base", shard))
            j = pc.index(base.column("uid"), row["uid"]).as_py()
            out["features"] = {k: v for k, v in base.slice(j, 1).to_pylist()[0].items() if k not in ("uid", "key")}
        group = row.get("dedup_group")
        if group:
            out["duplicates"] = [r for r in self.catalog.group(group) if r["row"] != row["row"]]
        for s in self.catalog.cols.subsets:
            if row.get(f"in:{s.name}"):
                lineage = ds.dataset(runtime.join(s.path, "lineage.parquet"), format="parquet")
                keep = ["subset_shard", "subset_key", "copy", "rank_key", "downloaded_at"]
                hits = lineage.to_table(columns=keep, filter=ds.field("uid") == row["uid"])
                out["subsets"][s.name] = hits.to_pylist()
        return out

    def source(self, shard: int) -> dict:
        """Where a shard's samples came from: the pool's input (a URL list with its sha256, or the folder
        import-pool adopted) and when the shard was finished."""
        manifest = runtime.read_json(self.pool.manifest) if runtime.exists(self.pool.manifest) else {}
        stats_path = self.pool.shard_stats(shard)
        stats = runtime.read_json(stats_path) if runtime.exists(stats_path) else {}
        return {
            "input": manifest.get("input") or manifest.get("source"),
            "shard_finished": stats.get("end_time"),
            "tar": self.pool.tar(shard) if self.has_images else None,
        }

    # --- images ------------------------------------------------------------------------------------
    def _shard_index(self, shard: int) -> tarindex.ShardIndex:
        with self.tar_lock:  # one scan per shard, however many thumbnails of it are asked for at once
            return tarindex.shard_index(self.pool, shard, self.cache)

    def _thumbnail(self, shard: int, key: str, side: int) -> bytes:
        if not self.has_images:
            raise NotFound("this pool has no images (imported from metadata): see the sample's URL")
        if shard not in self.shards:
            raise NotFound(f"no shard {shard} in this pool")
        data = self.shard_index(shard).read(key)
        if data is None:
            raise NotFound(f"no image {key!r} in shard {shard}")
        return tarindex.thumbnail(data, side, self.max_pixels)

    # --- the pool ----------------------------------------------------------------------------------
    def info(self) -> dict:
        c = self.catalog
        cols = c.cols
        return {
            "pool": self.pool.root,
            "rows": c.rows,
            "has_images": self.has_images,
            "status": c.counts("status"),
            "failures": c.counts("failure"),
            "languages": c.counts("lang")[:40] if cols.has_base else [],
            "dedup": c.counts("dedup_reason") if cols.has_dedup else None,
            "scorers": cols.scorers,
            "searchable": self.searchable,
            "recipes": [
                {
                    "name": r.name,
                    "steps": r.steps,
                    "thresholds": r.thresholds,
                    "funnel": r.funnel,
                    "scored": self.catalog.scored_steps(r),
                }
                for r in cols.recipes
            ],
            "subsets": [{"name": s.name, "path": s.path} for s in cols.subsets],
        }


def _integer(name: str, value: str | None, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name}: not an integer: {value[:40]!r}") from None


def make_app(browser: Browser, token: str | None = None, hosts: list[str] | None = None):
    """The FastAPI app over `browser`. With `token`, every request needs it (query or cookie); `hosts`
    are the Host headers accepted (None: any, as when a token guards it)."""
    app = FastAPI(title="thresher browse", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        given = request.query_params.get("token") or request.cookies.get("thresher_token")
        if token and not (given and secrets.compare_digest(given, token)):
            return _headers(
                Response("a token is needed: open the URL thresher browse printed", 403, media_type="text/plain")
            )
        response = _headers(await call_next(request))
        if token and request.query_params.get("token"):
            response.set_cookie("thresher_token", token, httponly=True, samesite="strict")
        return response

    if hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)

    def _headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(InputError)
    async def bad_input(request, err):
        return JSONResponse({"error": str(err)}, 400)

    @app.exception_handler(NotFound)
    async def not_found(request, err):
        return JSONResponse({"error": str(err)}, 404)

    @app.exception_handler(StageError)
    async def failed(request, err):
        return JSONResponse({"error": str(err)}, 500)

    files = importlib.resources.files("thresher.app.browse") / "static"
    kinds = {"html": "text/html; charset=utf-8", "js": "text/javascript", "css": "text/css"}

    def static(name: str):
        return Response((files / name).read_bytes(), media_type=kinds[name.rsplit(".", 1)[1]])

    @app.get("/")
    def index():
        return static("index.html")

    @app.get("/static/{name}")
    def asset(name: str):
        if name not in STATIC:
            raise NotFound(f"no file {name!r}")
        return static(name)

    @app.get("/api/info")
    def info():
        return browser.info()

    @app.get("/api/samples")
    def samples(request: Request):
        params = dict(request.query_params)
        f = Filter.parse(params, browser.catalog.cols)
        offset = max(0, _integer("offset", params.get("offset"), 0))
        return browser.catalog.page(f, offset, _integer("limit", params.get("limit"), 60))

    @app.get("/api/sample/{shard}/{key}")
    def sample(shard: int, key: str):
        return browser.sample(shard, key)

    @app.get("/api/threshold/{recipe}/{step}")
    def threshold(recipe: str, step: str, around: int = 12):
        return browser.catalog.threshold(recipe, step, max(1, min(around, 60)))

    @app.get("/api/search")
    def search(scorer: str, q: str | None = None, shard: int | None = None, key: str | None = None, k: int = 48):
        return browser.search(scorer, q, shard, key, k)

    @app.get("/img/{shard}/{key}")
    def image(shard: int, key: str, side: int = 256):
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}")
        try:
            data = browser.thumbnail(shard, key, side)
        except decode.TooLarge as err:
            return Response(str(err), 422, media_type="text/plain")
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for bytes that are no image
            return Response(f"decode_error: {err}"[:300], 422, media_type="text/plain")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app
