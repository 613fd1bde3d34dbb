"""Built-in filters. Each is the single rule a published recipe uses; recipes in configs/recipes/
compose them (docs/filters.md gives each recipe's source rule)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core.config import opt
from thresher.core.errors import InputError
from thresher.filters.api import register


def _stamp(args: tuple) -> tuple:
    """(path, size, mtime) of each argument that names a file: what a cached read of it depends on."""
    from thresher.core import runtime

    out = []
    for a in args:
        if isinstance(a, str) and a and runtime.is_file(a):
            fs, path = runtime.fs_path(a)
            info = fs.info(path)
            out.append((a, info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag")))
    return tuple(out)


def cached_by_file(fn):
    """Read once per worker process, like lru_cache, but keyed by the files' size and modification time
    too: a list or model updated in place is read again (the filter's fingerprint re-runs the recipe)."""
    cached = lru_cache(maxsize=None)(lambda _stamp_key, *args: fn(*args))

    @functools.wraps(fn)
    def wrapper(*args):
        return cached(_stamp(args), *args)

    return wrapper


def _np(table: pa.Table, column: str, dtype=np.float64, fill=np.nan) -> np.ndarray:
    col = table.column(column)
    if col.null_count:
        col = pc.fill_null(col, fill)
    return col.to_numpy(zero_copy_only=False).astype(dtype)


def _embeddings(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, d] from a fixed-size list column, and which rows have one (undecodable images are zeros)."""
    emb = np.ascontiguousarray(
        np.asarray(table.column(column).combine_chunks().values, np.float32).reshape(table.num_rows, -1)
    )
    return emb, np.linalg.norm(emb, axis=1) > 0.5


@register("none")
def keep_all(table, _p):
    """Keeps everything (DataComp's no-filtering baseline)."""
    return np.ones(table.num_rows, bool), None


@dataclass
class Seed:
    seed: int = opt(0, "seed of the hash of (seed, uid)")


@register("random", Seed, needs=["uid"], scores=True)
def random_score(table, p: Seed):
    """A uniform pseudo-random score per sample, a function of (uid, seed) only, so shards need no
    coordination; with top_fraction it is DataComp's random-subset baseline."""
    uids = table.column("uid").to_pylist()
    digest = [hashlib.blake2b(f"{p.seed}\0{u}".encode(), digest_size=8).digest() for u in uids]
    score = np.frombuffer(b"".join(digest), dtype=">u8").astype(np.float64) / 2.0**64
    return np.ones(table.num_rows, bool), score


@dataclass
class Language:
    lang: str = opt("en", "fastText lid.176 label the caption must have, e.g. en")
    min_score: float = opt(0.0, "lowest probability of that label")


@register("language", Language, needs=["caption_lang", "caption_lang_score"], scores=True)
def language(table, p: Language):
    """Caption language (fastText lid.176 top-1) equals `lang`, with probability >= min_score."""
    lang = table.column("caption_lang")
    score = _np(table, "caption_lang_score", fill=0.0)
    keep = pc.fill_null(pc.equal(lang, p.lang), False).to_numpy(zero_copy_only=False) & (score >= p.min_score)
    return keep, score


@dataclass
class CaptionLength:
    more_words_than: int = opt(2, "keep captions with more whitespace-separated words than this")
    more_chars_than: int = opt(5, "and more characters than this")


@register("caption_length", CaptionLength, needs=["caption_words", "caption_chars"])
def caption_length(table, p: CaptionLength):
    """Caption has more than `more_words_than` whitespace-separated words and more than `more_chars_than`
    characters."""
    return (
        (_np(table, "caption_words", np.int64, 0) > p.more_words_than)
        & (_np(table, "caption_chars", np.int64, 0) > p.more_chars_than)
    ), None


@dataclass
class ImageSize:
    min_side: int = opt(200, "smallest allowed short side of the original image, in pixels")


@register("image_size", ImageSize, needs=["original_width", "original_height"])
def image_size(table, p: ImageSize):
    """min(original width, original height) >= min_side."""
    side = np.minimum(_np(table, "original_width", np.int64, 0), _np(table, "original_height", np.int64, 0))
    return side >= p.min_side, None


@dataclass
class AspectRatio:
    max_ratio: float = opt(3.0, "largest allowed max(w, h) / min(w, h) of the original image")


@register("aspect_ratio", AspectRatio, needs=["original_width", "original_height"])
def aspect_ratio(table, p: AspectRatio):
    """max(w, h) / min(w, h) of the original image <= max_ratio."""
    w = _np(table, "original_width", np.float64, 0)
    h = _np(table, "original_height", np.float64, 0)
    lo = np.minimum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(lo > 0, np.maximum(w, h) / lo, np.inf)
    return ratio <= p.max_ratio, None


@dataclass
class ClipScore:
    scorer: str = opt("clip_b32", "scorer id whose image-text cosine is read (column SCORER_score)")
    min_score: float | None = opt(None, "keep scores >= this; none = keep every scored sample")


@register("clip_score", ClipScore, needs=lambda p: [f"{p.scorer}_score"], scores=True)
def clip_score(table, p: ClipScore):
    """The scorer's image-text cosine; kept when >= min_score (if set). Samples without a score fail."""
    score = _np(table, f"{p.scorer}_score")
    keep = np.isfinite(score)
    if p.min_score is not None:
        keep &= score >= p.min_score
    return keep, np.where(np.isfinite(score), score, -np.inf)


@register("dedup", needs=["dedup_keep"])
def dedup_keep(table, _p):
    """Keeps what the dedup stage kept (one of each duplicate group; no eval-set contamination)."""
    return pc.fill_null(table.column("dedup_keep"), True).to_numpy(zero_copy_only=False).astype(bool), None


# ---------------------------------------------------------------------------------------------------
# Hash blocklists (Re-LAION-style safety). Format: docs/schemas.md#blocklists.

BLOCKLIST_COLUMNS = {
    "url_md5": "url",
    "url_sha256": "url",
    "image_sha256": "sha256",
    "image_md5": "md5",
    "image_pdq": "pdq",
}


@dataclass
class Blocklist:
    kind: str = opt(
        "url_sha256",
        "what the list hashes: url_md5, url_sha256, image_sha256, image_md5 (both of the original bytes) or image_pdq",
    )
    path: str = opt("", "the list file (required; format in docs/schemas.md#blocklists)")
    radius: int = opt(31, "image_pdq: Hamming radius of a match, in bits")
    missing_ok: bool = opt(False, "a missing file drops nothing instead of failing")

    def __post_init__(self):
        if not self.missing_ok:
            _must_exist(self.path)


def _must_exist(*paths: str, shipped_dir: str | None = None) -> None:
    """Checked when a recipe is loaded, before any data is read: a list file the recipe names exists
    (a missing one used to fail only inside a Ray task, after the pool was read: issue 15)."""
    from thresher.core import runtime
    from thresher.core.config import CONFIG_DIR

    for path in paths:
        if not path:
            continue
        if shipped_dir and "/" not in path and (CONFIG_DIR / shipped_dir / f"{path}.txt").exists():
            continue
        if not runtime.exists(path):
            raise InputError(f"list file {path} does not exist")


def _read_list(path: str, missing_ok: bool) -> list[str]:
    from thresher.core import runtime

    if not runtime.exists(path):
        if missing_ok:
            return []
        raise InputError(f"blocklist {path} does not exist")
    fs, p = runtime.fs_path(path)
    with fs.open(p, "rt", encoding="utf-8") as f:
        return [ln.strip().lower() for ln in f if ln.strip() and not ln.startswith("#")]


@cached_by_file
def _listed(kind: str, path: str, missing_ok: bool):
    """A blocklist, read once per worker process: PDQ codes for image_pdq, else a set of digests."""
    from thresher.algo import hashes

    entries = _read_list(path, missing_ok)
    if kind == "image_pdq":
        return hashes.pdq_codes(entries)[0] if entries else None
    return set(entries) or None


def _blocklist_needs(p: Blocklist) -> list[str]:
    from thresher.core import runtime

    if p.kind not in BLOCKLIST_COLUMNS:
        raise InputError(f"blocklist kind must be one of {', '.join(BLOCKLIST_COLUMNS)}, not {p.kind!r}")
    if not p.path:
        raise InputError("blocklist: `path` is required")
    if p.kind == "image_md5" and p.missing_ok and not runtime.exists(p.path):
        return []  # nothing to match, so a pool downloaded before md5 was recorded still runs relaion-safety
    return [BLOCKLIST_COLUMNS[p.kind]]


def _has_md5(shard: int, pool: str) -> bool:
    """Whether every downloaded image of a shard has its md5: pools downloaded before it was recorded
    lack the column; metadata-only pools, and img2dataset output hashed with sha256, hold nulls."""
    import pyarrow.compute as pc

    from thresher.core import runtime
    from thresher.core.pool import Pool

    path = Pool(pool).metadata(shard)
    if "md5" not in runtime.parquet_columns(path):
        return False
    rows = runtime.read_parquet(path, columns=["status", "md5"])
    return rows.filter(pc.equal(rows.column("status"), "success")).column("md5").null_count == 0


def _prepare_blocklist(pool: str, p: Blocklist) -> dict:
    """On the driver, before any shard is read: the list's size (recorded in the decisions manifest) and,
    for image_md5, that every shard's metadata has the md5 column."""
    from thresher.core import runtime
    from thresher.core.pool import Pool
    from thresher.exec import execute

    if not runtime.exists(p.path):  # missing_ok (else the recipe would not have loaded)
        return {"info": {"entries": 0, "missing": True}}
    if p.kind == "image_md5":
        shards = Pool(pool).shards()
        have = execute.map(_has_md5, shards, pool, label="blocklist image_md5: md5 column")
        lacking = [s for s, ok in zip(shards, have) if not ok]
        if lacking:
            more = f" (and {len(lacking) - 1} more shards)" if len(lacking) > 1 else ""
            raise InputError(
                f"blocklist image_md5 ({p.path}): {pool} shard {lacking[0]:08d}{more} has no MD5 of its original "
                f"image bytes in its metadata ({Pool(pool).metadata(lacking[0])}): it was downloaded before the "
                "MD5 was recorded, imported from metadata without one, or hashed by img2dataset with sha256 only. "
                "Re-download the pool (`thresher download` into a new --out) or match the images by SHA-256 "
                "instead (kind image_sha256)"
            )
    listed = _listed(p.kind, p.path, p.missing_ok)
    return {"info": {"entries": 0 if listed is None else len(listed)}}


@register("blocklist", Blocklist, needs=_blocklist_needs, prepare=_prepare_blocklist)
def blocklist(table, p: Blocklist, _ctx=None):
    """Drops samples whose URL or image hash is on a list (exact digests; PDQ within `radius` bits)."""
    from thresher.algo import hashes

    listed = _listed(p.kind, p.path, p.missing_ok)
    n = table.num_rows
    if listed is None:
        return np.ones(n, bool), None
    if BLOCKLIST_COLUMNS[p.kind] not in table.column_names:  # image_md5's list appeared after the recipe loaded
        raise InputError(f"blocklist {p.path} appeared while the filter ran; run it again")
    if p.kind == "image_pdq":
        codes, have = hashes.pdq_codes(table.column("pdq").to_pylist())
        hit = np.zeros(n, bool)
        pairs = hashes.hamming_pairs(listed, p.radius, queries=codes) if len(codes) else np.zeros((0, 2), int)
        if len(pairs):
            hit[have[np.unique(pairs[:, 0])]] = True
        return ~hit, None
    values = table.column(BLOCKLIST_COLUMNS[p.kind]).to_pylist()
    if p.kind.startswith("url_"):
        algo = p.kind.split("_")[1]
        values = [hashes.url_hash(v, algo) if v else None for v in values]
    return np.array([v is None or v.lower() not in listed for v in values], bool), None


@dataclass
class ClassNames:
    path: str = opt("", "file of class names, one per line; a bare NAME means configs/classes/NAME.txt")

    def __post_init__(self):
        _must_exist(self.path, shipped_dir="classes")


@cached_by_file
def _class_names(name_or_path: str) -> tuple[tuple[str, ...], ...]:
    import re

    from thresher.core.config import CONFIG_DIR

    shipped = CONFIG_DIR / "classes" / f"{name_or_path}.txt"  # a bare name is a list shipped in configs/classes/
    path = str(shipped) if "/" not in name_or_path and shipped.exists() else name_or_path
    names = [tuple(re.findall(r"[a-z0-9]+", ln.lower())) for ln in _read_list(path, False)]
    return tuple(n for n in names if n)


@register("caption_names_class", ClassNames, needs=["caption"])
def caption_names_class(table, p: ClassNames):
    """Some word sequence of the caption names a target class (DataComp's text-based baseline, matching
    class names as lower-cased word sequences; the reference code also matches WordNet synonyms)."""
    import re

    names = _class_names(p.path)
    singles = {n[0] for n in names if len(n) == 1}
    multi = [n for n in names if len(n) > 1]
    keep = []
    for caption in table.column("caption").to_pylist():
        words = re.findall(r"[a-z0-9]+", (caption or "").lower())
        hit = any(
            w in singles or (w.endswith("s") and w[:-1] in singles) or (w.endswith("es") and w[:-2] in singles)
            for w in words
        )
        if not hit and multi:
            joined = " " + " ".join(words) + " "
            hit = any(" " + " ".join(n) + " " in joined for n in multi)
        keep.append(hit)
    return np.array(keep, bool), None


# ---------------------------------------------------------------------------------------------------
# Text-side filters through datatrove (its filters take Documents: the caption is the text, the URL
# rides in the metadata, as datatrove's own web pipelines do)


@dataclass
class UrlBlocklist:
    domains: str = opt("", "file: one blocked domain per line (subdomains are blocked too)")
    urls: str = opt("", "file: one blocked full URL per line")
    banned_words: str = opt("", "file: words that block a URL containing them")
    integrated_lists: bool = opt(True, "add datatrove's bundled lists (UT1 adult domains and URLs, banned words)")

    def __post_init__(self):
        _must_exist(self.domains, self.urls, self.banned_words)


def _lines(path: str) -> list[str] | None:
    return _read_list(path, False) if path else None


@cached_by_file
def _url_filter(domains: str, urls: str, banned: str, integrated: bool):
    import tldextract
    from datatrove.pipeline.filters import URLFilter

    f = URLFilter(
        extra_domains=_lines(domains),
        extra_urls=_lines(urls),
        banned_words=_lines(banned),
        use_integrated_lists=integrated,
    )
    # the public-suffix list snapshot shipped with tldextract: no fetch (machines may be offline)
    f.tldextractor = tldextract.TLDExtract(suffix_list_urls=())
    f.download_data()  # despite the name, this extracts lists bundled in the package
    return f


@cached_by_file
def _word_filter(path: str):
    import re

    from datatrove.pipeline.filters import RegexFilter

    words = sorted(set(_read_list(path, False)), key=len, reverse=True)
    return RegexFilter(r"(?i)\b(?:" + "|".join(re.escape(w) for w in words) + r")\b") if words else None


@register("url_blocklist", UrlBlocklist, needs=["url"])
def url_blocklist(table, p: UrlBlocklist):
    """Drops samples whose URL's domain, URL or words are blocklisted (datatrove's URLFilter)."""
    from datatrove.data import Document

    f = _url_filter(p.domains, p.urls, p.banned_words, p.integrated_lists)
    keep = [
        bool(u) and f.filter(Document(text="", id="", metadata={"url": u})) is True
        for u in table.column("url").to_pylist()
    ]
    return np.array(keep, bool), None


@dataclass
class UidList:
    path: str = opt("", "DataComp uid file (.npy: sorted u8,u8, each uid's high and low 64 bits)")

    def __post_init__(self):
        if not str(self.path).endswith(".npy"):
            raise InputError(f"uid_list: path {self.path!r} is not a .npy file (DataComp's uid files are)")
        _must_exist(self.path)


@cached_by_file
def _uid_file(path: str) -> set[str]:
    """The uids of a DataComp uid file, read and checked once per worker process."""
    from thresher.algo import hashes
    from thresher.core import runtime

    fs, p = runtime.fs_path(path)
    try:
        with fs.open(p, "rb") as f:  # checked from its header first: never a pickle, never a huge allocation
            return set(hashes.uids_of(hashes.read_uid_file(f, path)))
    except ValueError as err:  # not an .npy, a pickled object array, the wrong dtype or shape, unsorted
        raise InputError(f"uid_list: {err}" if str(err).startswith(path) else f"uid_list: {path}: {err}") from None


@register("uid_list", UidList, needs=["uid"])
def uid_list(table, p: UidList):
    """Keeps exactly the uids in a DataComp uid file (a subset made by DataComp's scripts, or by anyone).
    The pool's uids are read by the one uid rule, so a pool made before it (upper-case uids) still
    matches, and a pool uid no uid file can hold is an error, not a silent drop."""
    from thresher.algo import hashes

    listed = _uid_file(p.path)
    uids = hashes.canonical_uids(table.column("uid"), f"uid_list {p.path}: the pool's field 'uid'")
    return np.array([u in listed for u in uids.to_pylist()], bool), None


@dataclass
class BannedWords:
    path: str = opt("", "file: one word or phrase per line")

    def __post_init__(self):
        _must_exist(self.path)


@register("banned_words", BannedWords, needs=["caption"])
def banned_words(table, p: BannedWords):
    """Drops samples whose caption contains a listed word or phrase, whole words, any case (datatrove's
    RegexFilter)."""
    from datatrove.data import Document

    f = _word_filter(p.path)
    if f is None:
        return np.ones(table.num_rows, bool), None
    return np.array([f.filter(Document(text=c or "", id="")) for c in table.column("caption").to_pylist()], bool), None


# ---------------------------------------------------------------------------------------------------
# DataComp image-based filtering: k-means over the pool's image embeddings; keep the clusters that are
# nearest to some image of a target set (ImageNet train in the paper)


@dataclass
class ImageClusters:
    scorer: str = opt("clip_l14", "scorer id whose image embeddings are clustered")
    target_embeddings: str = opt(
        "",
        ".npy of L2-normalised image embeddings of the target set (`thresher "
        "embed-images`), from the scorer's model (required)",
    )
    clusters: int = opt(
        100_000, "k-means clusters (the paper's count for its large pools); capped at a tenth of the sample"
    )
    sample: int = opt(2_000_000, "embeddings k-means trains on, spread evenly over the pool")
    iters: int = opt(20, "k-means iterations")
    seed: int = opt(0, "seed of the sample and of k-means")
    flat_max: int = opt(
        16_384, "past this many clusters k-means is hierarchical (sqrt(k) coarse clusters, each split into its share)"
    )
    gpu: bool = opt(True, "k-means on the GPU (faiss-gpu) when the cluster has one and faiss can use it")


def _image_clusters_needs(p: ImageClusters) -> list[str]:
    if not p.target_embeddings:
        raise InputError("image_clusters: `target_embeddings` (a .npy file) is required")
    return [f"{p.scorer}_img_emb"]


def _prepare_image_clusters(pool: str, p: ImageClusters) -> dict:
    """Spherical k-means over the pool's embeddings, as tasks (thresher/algo/kmeans.py: a task per shard stages
    its share of the training rows, Lloyd steps return per-cluster sums), so the driver holds the
    centroids, never the pool's embeddings (13 TB for DataComp's 12.8B at L/14) nor a sample of them;
    then each target image's nearest centroid, as tasks over slices of the target file (2 GB for
    ImageNet's 1.28M at L/14), so the driver receives cluster ids only."""
    from thresher.algo import kmeans
    from thresher.core import runtime
    from thresher.core.pool import Pool

    if not runtime.exists(p.target_embeddings):
        raise InputError(
            f"image_clusters: target embeddings {p.target_embeddings} do not exist "
            f"(make them with `thresher embed-images`)"
        )
    shards = Pool(pool).shards()
    counts = {s: runtime.read_json(Pool(pool).feature_stats(p.scorer, s))["count"] for s in shards}
    total = sum(counts.values())
    target_shape = kmeans.npy_shape(p.target_embeddings)  # the rows are read by tasks, a slice each
    width = kmeans.npy_shape(Pool(pool).embeddings(p.scorer, shards[0]))[1] if shards else None
    if len(target_shape) != 2 or target_shape[1] != width:
        raise InputError(
            f"image_clusters: target embeddings {p.target_embeddings} have shape {target_shape}; "
            f"the pool's {p.scorer} embeddings are {width}-d (same model needed)"
        )
    k = max(1, min(p.clusters, min(p.sample, total) // 10))
    work = runtime.join(Pool(pool).work("kmeans"), "image_clusters")
    try:
        km = kmeans.fit_clusters(
            shards,
            kmeans.PoolEmbeddings(pool, p.scorer),
            k,
            work=work,
            flat_max=p.flat_max,
            gpu=p.gpu,
            iters=p.iters,
            seed=p.seed,
            rows=total,
            train_rows=min(p.sample, kmeans.POINTS_PER_CENTROID * k),  # FAISS's cap of 256 a centroid, as before
            label="image_clusters k-means",
        )
        if km is None:
            raise InputError(f"image_clusters: {pool} has no {p.scorer} image embeddings to cluster")
        km.load()  # a hierarchy's fine centroids travel with the filter's steps: one centroid set a task
    finally:
        runtime.remove(work, recursive=True)
    chosen = kmeans.chosen_clusters(p.target_embeddings, km)
    info = {"clusters": km.k, "trained_on": km.train_rows, "targets": target_shape[0], "clusters_kept": len(chosen)}
    return {"clusters": km, "chosen": chosen, "info": {**info, "hierarchical": isinstance(km, kmeans.Hierarchy)}}


@register("image_clusters", ImageClusters, needs=_image_clusters_needs, prepare=_prepare_image_clusters)
def image_clusters(table, p: ImageClusters, ctx: dict):
    """Keeps samples whose image embedding's nearest k-means centroid is nearest to some target image."""
    if table.num_rows == 0:
        return np.zeros(0, bool), None
    emb, ok = _embeddings(table, f"{p.scorer}_img_emb")
    return ok & np.isin(ctx["clusters"].nearest(emb)[0], ctx["chosen"]), None


# ---------------------------------------------------------------------------------------------------
# A classifier on image embeddings (e.g. NSFW): a probe from `thresher train-probe` or a TorchScript file


@dataclass
class ImageProbe:
    scorer: str = opt("clip_l14", "scorer id whose image embeddings the probe reads")
    probe: str = opt("", ".npz from `thresher train-probe`, or a TorchScript module (.pt/.ts) (required)")
    max_probability: float = opt(0.5, "samples the probe gives more than this are dropped")


@cached_by_file
def _probe(path: str):
    from thresher.stages.features.probe import load_probe

    return load_probe(path)


def _image_probe_needs(p: ImageProbe) -> list[str]:
    if not p.probe:
        raise InputError("image_probe: `probe` (a .npz or TorchScript file) is required")
    return [f"{p.scorer}_img_emb"]


@register("image_probe", ImageProbe, needs=_image_probe_needs, scores=True)
def image_probe(table, p: ImageProbe):
    """Drops samples a classifier on the image embedding flags (probability > max_probability); scores by
    1 - probability, so top_fraction keeps the least flagged."""
    if table.num_rows == 0:
        return np.zeros(0, bool), np.zeros(0)
    emb, ok = _embeddings(table, f"{p.scorer}_img_emb")
    prob = _probe(p.probe)(emb)
    return ok & (prob <= p.max_probability), 1.0 - prob
