"""A pool on disk: the one owner of its layout, and of reading across it.

Every stage that reads or writes a pool goes through `Pool(root)`, so the layout below is written
down once (docs/architecture.md shows it) and tests build pools with the same calls:

    POOL/manifest.json                       download's manifest
    POOL/shards/{i:08d}.tar|.parquet         WebDataset shard, one metadata row per input row
    POOL/shards/{i:08d}_stats.json           marks shard i downloaded (img2dataset's rule)
    POOL/_work/                              download's inputs and temporaries, its lock
    POOL/features/KIND/{i:08d}.parquet       KIND = base, or a scorer id
    POOL/features/SCORER/{i:08d}.img.npy     image (and .txt.npy text) embeddings
    POOL/features/KIND/{i:08d}_stats.json    marks shard i's features complete
    POOL/features/KIND/manifest.json
    POOL/dedup/{i:08d}.parquet, manifest.json
    POOL/decisions/RECIPE/{i:08d}.parquet, manifest.json
    POOL/stats/NAME.json

A shard is complete in a folder when its `{i:08d}_stats.json` marker is there (`completed`): the one
reader of completion markers for every stage.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import runtime, schema
from thresher.core.errors import InputError, StageError


def shard_name(shard: int) -> str:
    """DataComp's (and img2dataset's) shard naming: 8 digits."""
    return f"{shard:08d}"


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # the members of a shard tar that are its images


def member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a shard tar's member: the one key rule of import-pool, `Pool.read_images`, the
    subset index and `audit verify`. WebDataset's rule (the key ends at the basename's first dot), after
    dropping a leading "./" (`tar -C DIR .` writes `./KEY.jpg`); the extension is lower-cased (`.JPG` is
    `.jpg`). A member in a folder keeps the folder in its key (`sub/KEY`): import-pool refuses those,
    img2dataset writes none."""
    while name.startswith("./"):
        name = name[2:]
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


class HashingReader:
    """A read-only file wrapper that hashes what is read through it (a tar's sha256 in the same pass
    that reads it); `finish` reads the rest (a tar reader stops before the end-of-archive padding)."""

    def __init__(self, f):
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.size += len(data)
        return data

    def seek(self, pos: int) -> None:
        """Forwards only: what is skipped is read, and hashed (the member-offset index's header reader
        seeks over members' data, tarindex.py)."""
        if pos < self.size:
            raise ValueError(f"a backward seek, to {pos} from {self.size}")
        while self.size < pos and self.read(min(pos - self.size, 1 << 20)):
            pass

    def finish(self) -> str:
        while self.read(1 << 20):
            pass
        return self.h.hexdigest()


def completed(directory: str) -> set[int]:
    """Shards with a `{shard:08d}_stats.json` completion marker in `directory`."""
    return {int(p.rsplit("/", 1)[-1].split("_")[0]) for p in runtime.glob(runtime.join(directory, "*_stats.json"))}


@dataclass(frozen=True)
class Pool:
    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", str(self.root))

    def path(self, *parts: str) -> str:
        return runtime.join(self.root, *parts)

    # --- download -------------------------------------------------------------------------------
    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    @property
    def shards_dir(self) -> str:
        return self.path("shards")

    def tar(self, shard: int) -> str:
        """Shard i's images: POOL/shards/{i:08d}.tar, or where the manifest's layout says (a pool adopted
        from img2dataset's output keeps its tars where they are)."""
        where = self.layout().get("tar", DEFAULT_TAR)
        if where is None:
            raise InputError(self.no_images("reading images"))
        where = where.format(shard=shard)
        return where if "://" in where or where.startswith("/") else self.path(where)

    def layout(self) -> dict:
        """The manifest's `layout` (where the tars are; "tar": null for a pool without images), or the
        default while a download has written no manifest yet."""
        return (runtime.read_json(self.manifest).get("layout") or {}) if runtime.exists(self.manifest) else {}

    def has_images(self) -> bool:
        return self.layout().get("tar", DEFAULT_TAR) is not None

    def no_images(self, what: str) -> str:
        return (
            f"{what} needs the images, and {self.root} has none: it was imported from metadata only "
            f"(thresher import-metadata). Run it on a downloaded pool (thresher download, or thresher "
            f"import-pool for shards img2dataset wrote)"
        )

    def require_images(self, what: str) -> Pool:
        """This pool, if it has images; else an error naming `what` needed them (before any work)."""
        if not self.has_images():
            raise InputError(self.no_images(what))
        return self

    def metadata(self, shard: int) -> str:
        return self.path("shards", f"{shard_name(shard)}.parquet")

    def shard_stats(self, shard: int) -> str:
        return self.path("shards", f"{shard_name(shard)}_stats.json")

    def work(self, *parts: str) -> str:
        return self.path("_work", *parts)

    # --- features ---------------------------------------------------------------------------------
    def features_dir(self, kind: str) -> str:
        return self.path("features", kind)

    def features(self, kind: str, shard: int) -> str:
        return self.path("features", kind, f"{shard_name(shard)}.parquet")

    def embeddings(self, scorer: str, shard: int, which: str = "img") -> str:
        return self.path("features", scorer, f"{shard_name(shard)}.{which}.npy")

    def feature_stats(self, kind: str, shard: int) -> str:
        return self.path("features", kind, f"{shard_name(shard)}_stats.json")

    def features_manifest(self, kind: str) -> str:
        return self.path("features", kind, "manifest.json")

    def scorers(self) -> list[str]:
        """Feature sets with a manifest (scorers; base has one too)."""
        return sorted(p.rsplit("/", 2)[-2] for p in runtime.glob(self.path("features", "*", "manifest.json")))

    # --- dedup, decisions, stats ------------------------------------------------------------------
    @property
    def dedup_dir(self) -> str:
        return self.path("dedup")

    def dedup(self, shard: int) -> str:
        return self.path("dedup", f"{shard_name(shard)}.parquet")

    @property
    def dedup_manifest(self) -> str:
        return self.path("dedup", "manifest.json")

    def decisions_dir(self, recipe: str) -> str:
        return self.path("decisions", recipe)

    def decisions(self, recipe: str, shard: int) -> str:
        return self.path("decisions", recipe, f"{shard_name(shard)}.parquet")

    def decisions_manifest(self, recipe: str) -> str:
        return self.path("decisions", recipe, "manifest.json")

    def stats(self, name: str) -> str:
        return self.path("stats", f"{name}.json")

    # --- reading ----------------------------------------------------------------------------------
    def is_pool(self) -> bool:
        return runtime.exists(self.manifest) or runtime.exists(self.shards_dir)

    def require(self) -> Pool:
        """This pool, if it is one (what download writes first); else an error saying how to make one.
        Checked before a stage takes its output lock, so a mistyped directory gets no folders in it."""
        if not self.is_pool():
            raise InputError(
                f"{self.root} is not a pool (no manifest.json or shards/); make one with `thresher download`"
            )
        return self

    def shards(self) -> list[int]:
        """The downloaded (complete) shards, in order."""
        return sorted(completed(self.shards_dir))

    def completed(self, kind: str) -> set[int]:
        """Shards whose features of `kind` are complete."""
        return completed(self.features_dir(kind))

    def successful_rows(self, shard: int) -> pa.Table:
        """The shard's metadata rows that were downloaded (status success)."""
        meta = runtime.read_parquet(self.metadata(shard))
        return meta.filter(pc.equal(meta.column("status"), "success"))

    def read_images(self, shard: int) -> dict[str, bytes]:
        """key -> image bytes of a shard's tar (keys by `member_key`). Raises on an unreadable or truncated
        tar, and on an adopted tar that is not the one import-pool fingerprinted (hashed as it is read)."""
        fs, path = runtime.fs_path(self.tar(shard))
        images: dict[str, bytes] = {}
        want = self.tar_sha256(shard)
        try:
            with fs.open(path, "rb") as raw:
                f = HashingReader(raw)
                with tarfile.open(fileobj=f, mode="r|") as tar:
                    for member in tar:
                        key, ext = member_key(member.name)
                        if member.isfile() and ext in IMAGE_EXTS:
                            images[key] = tar.extractfile(member).read()
                if want:
                    self.check_tar(shard, f.finish())
        except (tarfile.TarError, OSError, EOFError) as err:
            raise StageError(f"shard {shard:08d}: unreadable tar {path}: {err}") from err
        return images

    def tar_sha256(self, shard: int) -> str | None:
        """The sha256 import-pool recorded of an adopted shard's tar (which lives outside the pool, where
        anyone may change it); None for a downloaded shard, or one not yet complete."""
        stats = self.shard_stats(shard)
        return runtime.read_json(stats).get("tar_sha256") if runtime.exists(stats) else None

    def check_tar(self, shard: int, seen: str | None = None) -> None:
        """Refuse an adopted tar whose sha256 (`seen`, or hashed now) is not the one recorded at import:
        the pool's metadata, features and scores describe the images as they were."""
        want = self.tar_sha256(shard)
        if not want:
            return
        seen = seen or runtime.file_sha256(self.tar(shard))
        if seen != want:
            raise InputError(
                f"{self.tar(shard)}: changed since import-pool made {self.root} (sha256 {seen[:12]}…, "
                f"recorded {want[:12]}…); restore it, or import the folder again into a new --out"
            )

    def read_metadata(self) -> pa.Table:
        """All of the pool's per-shard metadata as one table (for tests, audits and small pools)."""
        paths = runtime.glob(self.path("shards", "*.parquet"))
        if not paths:
            raise InputError(f"{self.root} has no downloaded shards (expected {self.root}/shards/*.parquet)")
        return pa.concat_tables([runtime.read_parquet(p) for p in paths], promote_options="default")

    # --- columns across metadata, features and dedup (what filters read) ---------------------------
    def available_columns(self) -> dict[str, str]:
        """column -> where it comes from ("metadata", "base", "score:S", "img_emb:S", "dedup"), for the
        pool's complete feature sets (reads only markers). shard_table reads each column from its source."""
        shards = set(self.shards())
        cols = {c: "metadata" for c in META_COLUMNS}
        if shards and shards <= self.completed("base"):
            cols.update({c: "base" for c in BASE_ONLY if c != "error"})
        if not self.has_images():  # what only pixels give is not there (filter.check_columns says why)
            cols = {c: src for c, src in cols.items() if c not in IMAGE_COLUMNS}
        for scorer in self.scorers():
            if scorer != "base" and shards and shards <= self.completed(scorer):
                cols[f"{scorer}_score"] = f"score:{scorer}"
                if runtime.exists(self.embeddings(scorer, min(shards))):
                    cols[f"{scorer}_img_emb"] = f"img_emb:{scorer}"
        if runtime.exists(self.dedup_manifest):
            cols.update({"dedup_keep": "dedup", "dedup_reason": "dedup"})
        return cols

    def shard_table(self, shard: int, columns: dict[str, str]) -> pa.Table:
        """One shard's successful samples, sorted by key, with the requested columns (column -> source, as
        available_columns gives them) joined in."""
        meta = sorted(c for c, src in columns.items() if src == "metadata" and c not in ("uid", "key"))
        present = set(runtime.parquet_columns(self.metadata(shard)))
        rows = runtime.read_parquet(
            self.metadata(shard), columns=["uid", "key", "status"] + [c for c in meta if c in present]
        )
        for c in (c for c in meta if c not in present):  # a pool from before the column (md5): null, as unknown
            rows = rows.append_column(c, pa.nulls(rows.num_rows, schema.POOL.field(c).type))
        rows = rows.filter(pc.equal(rows.column("status"), "success"))
        keys = rows.column("key")
        if len(keys) > 1 and pc.any(pc.less(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py():
            rows = rows.take(pc.sort_indices(rows, sort_keys=[("key", "ascending")]))  # features are in key order
        uids = rows.column("uid")
        name = shard_name(shard)
        out = {
            "uid": uids,
            **({"key": rows.column("key")} if "key" in columns else {}),
            **{c: rows.column(c) for c in meta},
        }

        def aligned(table: pa.Table, what: str) -> pa.Table:
            if not table.column("uid").equals(uids):
                raise InputError(
                    f"{self.root}: {what} of shard {name} is not row-aligned with its metadata; recompute it"
                )
            return table

        tables: dict[str, pa.Table] = {}  # each Parquet source read once, whatever number of its columns
        for c, src in sorted(columns.items()):
            kind, _, scorer = src.partition(":")
            if kind == "base":
                if "base" not in tables:
                    tables["base"] = aligned(runtime.read_parquet(self.features("base", shard)), "base features")
                out[c] = tables["base"].column(c)
            elif kind == "score":
                t = aligned(runtime.read_parquet(self.features(scorer, shard)), f"scorer {scorer}")
                out[c] = t.column("clip_score")
            elif kind == "img_emb":  # float32 [n, d] as a fixed-size list column
                emb = read_npy(self.embeddings(scorer, shard))
                if len(emb) != len(uids):
                    raise InputError(
                        f"{self.root}: embeddings of shard {name} have {len(emb)} rows, metadata {len(uids)}"
                    )
                out[c] = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel()), emb.shape[1])
            elif kind == "dedup":
                if "dedup" not in tables:
                    tables["dedup"] = aligned(runtime.read_parquet(self.dedup(shard)), "dedup")
                out[c] = tables["dedup"].column({"dedup_keep": "keep", "dedup_reason": "reason"}[c])
        return pa.table(out)


# the metadata columns a filter can read, and the base features' own (one source: schema.py)
META_COLUMNS = [
    "uid",
    "key",
    "url",
    "caption",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "md5",
]
BASE_ONLY = [f.name for f in schema.BASE_FEATURES if f.name not in META_COLUMNS]
# the columns only a pool's images give: the stored sizes and the perceptual hash
IMAGE_COLUMNS = {"width", "height", "pdq", "pdq_quality"}
DEFAULT_TAR = "shards/{shard:08d}.tar"


def npy_header(f) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the .npy array open as `f` (binary), from its header alone, leaving `f` at the
    data: what a file claims is checked before a byte of it is allocated or unpickled. ValueError on a
    file NumPy's formats 1.0 and 2.0 do not describe."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version}")
    shape, _, dtype = readers[version](f)
    return shape, dtype


def read_npy(url: str) -> np.ndarray:
    fs, path = runtime.fs_path(url)
    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))
