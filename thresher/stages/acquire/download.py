"""Download stage: `thresher download URLS --out POOL`.

URL list -> ingest (checked, uid per row, cut into shard inputs) -> one Ray task per shard, each running
img2dataset's Downloader on that shard -> WebDataset tars with Parquet metadata and stats.

Layout of a pool:

    POOL/manifest.json                 input hash, config + hash, package versions, counts by status
    POOL/shards/{i:08d}.tar            images (jpg), captions (txt), per-sample json; DataComp naming
    POOL/shards/{i:08d}.parquet        schema.POOL (+ extra input columns): every input row, once
    POOL/shards/{i:08d}_stats.json     per-shard counts (and failed rows by host); marks the shard complete
    POOL/stats/download-yield.json     the yield report: rows fetched, by failure reason, worst hosts (yields.py)
    POOL/_work/inputs/{i:08d}.arrow    the shard inputs, kept so that a re-run redoes exactly a shard
    POOL/_work/tmp/{i:08d}/            a shard in progress; moved into shards/ only when whole

Why our own per-shard tasks rather than img2dataset's ray distributor: that distributor has no shard
retry, ignores processes_count and has no deadline, so one stalled URL can hang a shard forever
(img2dataset #437). Here each shard is retried, bounded by a deadline, and written to a temporary
directory first, so a killed task never leaves a truncated tar (img2dataset #164).
"""

from __future__ import annotations

import math
import os
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import decode, netsafety, runtime, schema
from thresher.core.config import config_hash, from_dict, opt, to_dict
from thresher.core.errors import InputError, StageError
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.exec.stage import Stage, run_stage
from thresher.stages.acquire import ingest, yields

# Normalised failure reasons in the `failure` column (null on success).
FAILURES = {
    "http_<code>": "the server answered with an HTTP error, e.g. http_404",
    "timeout": "no answer within the timeout, on every try",
    "connection_error": "the connection was refused, reset or closed early",
    "opted_out": "the response carried an X-Robots-Tag directive that disallows use (noai, ...)",
    "decode_error": "bytes arrived but are not a decodable image",
    "too_large": "the image's header declares more pixels than max_pixels: refused before decoding",
    "hash_mismatch": "the bytes do not match the expected hash",
    "disallowed_address": "refused: a loopback, private, link-local or metadata host, as written, as resolved, "
    "as connected to, or as the target of a redirect",
    "download_error": "any other download error (see error_message)",
}
RESERVED_COLUMNS = {
    "key",
    "caption",
    "url",
    "width",
    "height",
    "original_width",
    "original_height",
    "status",
    "error_message",
    "exif",
    "md5",
    "sha256",
    "sha512",
    "failure",
}
OOM_SHARD_COUNT = 8  # shard names are {:08d}, as DataComp's
# img2dataset, imported by this module's functions (in the driver and in every task), imports
# albumentations, which asks a package index for its latest version unless told not to (issue 25): set
# before any of them runs, in whichever process imports this module, a cluster's worker included.
netsafety.no_third_party_traffic()


@dataclass
class DownloadConfig:
    # reading the URL list
    url_col: str = opt("url", "column holding the image URL")
    caption_col: str | None = opt("text", "column holding the caption (DataComp: text)")
    uid_col: str | None = opt("uid", "column holding a uid; when absent, uid = sha256(url NUL text)[:32]")
    extra_columns: list[str] = opt(help="input columns carried into the pool metadata", factory=list)
    input_format: str | None = opt(None, "parquet, csv or jsonl; default: from the file extension")
    # fetching and encoding (passed to img2dataset); defaults follow DataComp's download
    image_size: int = opt(512, "target image size in pixels")
    resize_mode: str = opt("keep_ratio_largest", "no, border, keep_ratio, keep_ratio_largest or center_crop")
    resize_only_if_bigger: bool = opt(True, "never upscale")
    encode_format: str = opt("jpg", "jpg, png or webp")
    encode_quality: int = opt(95, "encoder quality")
    timeout: float = opt(10.0, "seconds a socket operation may wait")
    retries: int = opt(2, "extra tries for a URL that fails")
    samples_per_shard: int = opt(10000, "rows per shard")
    processes: int = opt(0, "shards in flight at once; 0 = one per CPU of the Ray cluster")
    threads: int = opt(64, "concurrent fetches within one shard")
    honor_robots: bool = opt(True, "skip images whose response carries a disallowing X-Robots-Tag")
    disallowed_header_directives: list[str] = opt(
        help="X-Robots-Tag directives that count as an opt-out",
        factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
    )
    user_agent_token: str | None = opt("thresher", "token added to the User-Agent; X-Robots-Tag may name it")
    bbox_column: str | None = opt(None, "blur these boxes before writing (DataComp: face_bboxes)")
    verify_hash_column: str | None = opt(
        None, "column with each image's expected sha256 (DataComp: sha256); a mismatch fails the row as hash_mismatch"
    )
    allow_private_addresses: bool = opt(False, "fetch from loopback/private/link-local hosts (local tests only)")
    allow_hosts: list[str] = opt(
        help="hosts (HOST or HOST:PORT) fetched although private, e.g. an internal "
        "mirror; every other private address stays refused",
        factory=list,
    )
    max_pixels: int = opt(
        decode.MAX_PIXELS,
        "refuse an image whose header declares more pixels than this, before "
        "decoding it (too_large); Pillow's own limit by default; 0: no limit",
    )
    extract_exif: bool = opt(False, "keep EXIF data in the metadata")
    shard_retries: int = opt(2, "extra attempts for a shard that fails or overruns its deadline")
    shard_deadline_s: float = opt(0.0, "seconds a shard may take; 0 = derived from timeout, retries, threads")

    def validate(self) -> None:
        bad = sorted(set(self.extra_columns) & RESERVED_COLUMNS)
        if bad:
            raise InputError(f"extra_columns {bad} clash with columns the download stage writes; rename them")
        if self.resize_mode not in ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"):
            raise InputError(
                f"resize_mode {self.resize_mode!r} is not one of no, border, keep_ratio, "
                f"keep_ratio_largest, center_crop"
            )
        if self.encode_format not in ("jpg", "png", "webp"):
            raise InputError(f"encode_format {self.encode_format!r} is not one of jpg, png, webp")
        for name in ("image_size", "samples_per_shard", "threads"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1")
        if self.timeout <= 0 or self.retries < 0 or self.shard_retries < 0 or self.processes < 0:
            raise InputError("timeout must be > 0; retries, shard_retries and processes must be >= 0")

    def deadline(self, rows: int) -> float:
        if self.shard_deadline_s > 0:
            return self.shard_deadline_s
        # the worst case: every URL stalls on every try
        return math.ceil(rows / self.threads) * (self.retries + 1) * self.timeout + 120.0


# Fields that change how the stage runs but not what it writes; a re-run may change them freely.
OPERATIONAL = {"processes", "threads", "shard_retries", "shard_deadline_s"}
INGEST_FIELDS = (
    "url_col",
    "caption_col",
    "uid_col",
    "extra_columns",
    "bbox_column",
    "verify_hash_column",
    "input_format",
    "samples_per_shard",
)


def make_resizer(cfg: DownloadConfig):
    """img2dataset's Resizer, behind a check of the image's declared size.

    img2dataset decodes every image in full (cv2.imdecode) before it looks at its area, so a 30000 x
    30000 PNG of 150 KB costs 900 MB, per thread (issue 15). Pillow reads width and height from the
    header without decoding; past `max_pixels` the image is refused as too_large. What Pillow cannot
    identify goes on to img2dataset, which records it as before.

    It also records the MD5 of each image it resizes successfully, keyed by the bytes' sha256, in
    `md5_of`: img2dataset computes one hash (the sha256 we ask for), from the same stream, after this
    call and only for the rows this call lets through, so `_pool_metadata` finds every successful row's
    MD5 of the original bytes by that row's sha256."""
    import hashlib

    from img2dataset.blurrer import BoundingBoxBlurrer
    from img2dataset.resizer import Resizer

    class HeaderChecked(Resizer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.md5_of: dict[str, str] = {}  # sha256 -> md5 of the bytes as served, before resizing

        def __call__(self, img_stream, blurring_bbox_list=None):
            why = decode.pixel_refusal(img_stream, cfg.max_pixels)  # the one pixel-limit check (decode.py)
            if why:
                return None, None, None, None, None, why
            img_stream.seek(0)
            out = super().__call__(img_stream, blurring_bbox_list)
            if out[-1] is None:  # a success: img2dataset hashes these same bytes next (img_stream is the original)
                img_stream.seek(0)
                data = img_stream.read()
                self.md5_of[hashlib.sha256(data).hexdigest()] = hashlib.md5(data, usedforsecurity=False).hexdigest()
            return out

    return HeaderChecked(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        blurrer=BoundingBoxBlurrer() if cfg.bbox_column else None,
    )


def classify(status: str, error_message: str | None) -> str | None:
    """Normalised failure reason for one row (see FAILURES)."""
    if status == "success":
        return None
    if status == "refused":
        return "disallowed_address"
    msg = error_message or ""
    if "disallowed_address" in msg:  # refused at connect time or on a redirect (netsafety.safe_opener)
        return "disallowed_address"
    if "X-Robots-Tag" in msg:
        return "opted_out"
    m = re.search(r"HTTP Error (\d{3})", msg)
    if m:
        return f"http_{m.group(1)}"
    if "hash mismatch" in msg:
        return "hash_mismatch"
    if msg.startswith("too_large"):
        return "too_large"
    if status == "failed_to_resize":
        return "decode_error"
    low = msg.lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if any(
        s in low
        for s in (
            "connection refused",
            "connection reset",
            "remote end closed",
            "connection aborted",
            "name or service not known",
            "no route to host",
            "broken pipe",
        )
    ):
        return "connection_error"
    return "download_error"


def carried_columns(cfg: DownloadConfig) -> list[str]:
    """Input columns that ride along into the pool metadata: the extras, plus the blur-box column."""
    extras = list(cfg.extra_columns)
    if cfg.bbox_column and cfg.bbox_column not in extras:
        extras.append(cfg.bbox_column)
    return extras


def ingested_columns(cfg: DownloadConfig) -> list[str]:
    """Input columns the shard inputs keep: the carried ones and the expected-hash column."""
    cols = carried_columns(cfg)
    if cfg.verify_hash_column and cfg.verify_hash_column not in cols:
        cols.append(cfg.verify_hash_column)
    return cols


def _key(index: int, shard: int, per_shard: int) -> str:
    from img2dataset.downloader import compute_key

    return compute_key(index, shard, math.ceil(math.log10(max(per_shard, 2))), OOM_SHARD_COUNT)


def _shard_name(shard: int) -> str:
    return f"{shard:0{OOM_SHARD_COUNT}d}"


def download_shard(shard: int, pool: str, cfg_dict: dict) -> dict:
    """Download one shard into POOL/_work/tmp, then move its files into POOL/shards. Runs as a Ray task."""
    from img2dataset.downloader import Downloader
    from img2dataset.writer import WebDatasetSampleWriter

    cfg = from_dict(DownloadConfig, cfg_dict)
    name = _shard_name(shard)
    work = Pool(pool).work()
    tmp = runtime.join(work, "tmp", name)
    runtime.remove(tmp, recursive=True)
    runtime.makedirs(tmp)

    table = ingest.read_shard_input(runtime.join(work, "inputs", f"{name}.arrow"))
    refused = (
        [None] * table.num_rows
        if cfg.allow_private_addresses
        else ingest.refusals(table.column("url"), cfg.allow_hosts)
    )
    keep = pa.array([r is None for r in refused])
    allowed = table.filter(keep)
    refused_rows = table.filter(pc.invert(keep))
    refused_reasons = [r for r in refused if r is not None]

    # img2dataset reads its own copy (it deletes its input file when done). Column order matters:
    # it saves every column in column_list, and needs "url" and "caption" by those names.
    # The expected hash travels under the name img2dataset verifies ("sha256"); it writes the computed one back.
    column_list = ["uid", *carried_columns(cfg), *(["sha256"] if cfg.verify_hash_column else []), "caption", "url"]
    source = {c: c for c in column_list}
    if cfg.verify_hash_column:
        source["sha256"] = cfg.verify_hash_column
    i2d_table = pa.table({c: allowed.column(source[c]) for c in column_list})
    i2d_input = runtime.join(tmp, "input.arrow")
    fs, p = runtime.fs_path(i2d_input)
    with fs.open(p, "wb") as f, pa.ipc.new_file(f, i2d_table.schema) as w:
        w.write_table(i2d_table)

    resizer = make_resizer(cfg)
    downloader = Downloader(
        sample_writer_class=WebDatasetSampleWriter,
        resizer=resizer,
        thread_count=cfg.threads,
        save_caption=True,
        extract_exif=cfg.extract_exif,
        output_folder=tmp,
        column_list=column_list,
        timeout=cfg.timeout,
        number_sample_per_shard=cfg.samples_per_shard,
        oom_shard_count=OOM_SHARD_COUNT,
        compute_hash="sha256",
        verify_hash_type="sha256" if cfg.verify_hash_column else None,
        encode_format=cfg.encode_format,
        retries=cfg.retries,
        user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=cfg.disallowed_header_directives if cfg.honor_robots else None,
        blurring_bbox_col=cfg.bbox_column,
    )
    # img2dataset fetches with urllib.request.urlopen, which follows redirects and resolves names on its
    # own: the opener installed for this task checks every resolved and connected address and every
    # redirect (thresher/core/netsafety.py); with allow_private_addresses, only the redirects' scheme
    urllib.request.install_opener(netsafety.opener(cfg.allow_private_addresses, cfg.allow_hosts))
    # download_shard, not __call__: __call__ swallows errors, and we want Ray to see them
    downloader.download_shard((shard, i2d_input))

    meta = runtime.read_parquet(runtime.join(tmp, f"{name}.parquet"))
    table_out = _pool_metadata(meta, refused_rows, refused_reasons, shard, cfg, resizer.md5_of)
    runtime.write_parquet(table_out, runtime.join(tmp, "meta.parquet"))

    i2d_stats = runtime.read_json(runtime.join(tmp, f"{name}_stats.json"))
    statuses = Counter(table_out.column("status").to_pylist())
    failures = Counter(f for f in table_out.column("failure").to_pylist() if f is not None)
    stats = {
        "shard": shard,
        "count": table_out.num_rows,
        "successes": statuses.get("success", 0),
        "status": dict(statuses),
        "failures": dict(failures),
        "failed_hosts": yields.shard_hosts(table_out),  # the yield report's hosts (yields.py)
        "img2dataset": i2d_stats,
    }
    shards_dir = Pool(pool).shards_dir
    runtime.makedirs(shards_dir)
    runtime.move(runtime.join(tmp, f"{name}.tar"), runtime.join(shards_dir, f"{name}.tar"))
    runtime.move(runtime.join(tmp, "meta.parquet"), runtime.join(shards_dir, f"{name}.parquet"))
    runtime.remove(tmp, recursive=True)
    return stats  # the executor writes them as the shard's completion marker (DownloadStage.marker)


def _pool_metadata(
    meta: pa.Table,
    refused_rows: pa.Table,
    reasons: list[str],
    shard: int,
    cfg: DownloadConfig,
    md5_of: dict[str, str],
) -> pa.Table:
    """img2dataset's per-shard parquet, plus refused rows, in schema.POOL (+ extras), sorted by key.
    `md5_of` (the resizer's, sha256 -> md5 of the original bytes) gives each successful row its md5."""
    extras = carried_columns(cfg)
    rows = meta.to_pylist()
    n_fetched = len(rows)
    for j, row in enumerate(refused_rows.to_pylist()):
        rows.append(
            {
                **row,
                "key": _key(n_fetched + j, shard, cfg.samples_per_shard),
                "status": "refused",
                "error_message": reasons[j],
            }
        )
    out = []
    for row in rows:
        rec = {f.name: row.get(f.name) for f in schema.POOL}
        rec["failure"] = classify(row["status"], row.get("error_message"))
        # sha256 and md5 are of the bytes as served, and set on successful rows only (img2dataset's rule)
        rec["md5"] = md5_of.get(row.get("sha256")) if row["status"] == "success" else None
        if row["status"] == "success" and rec["md5"] is None:
            raise StageError(
                f"shard {_shard_name(shard)}: successful sample {row['key']} has no MD5 of its original bytes "
                f"(sha256 {row.get('sha256')}): img2dataset did not pass it through the resizer that records "
                "it, which this code relies on (has img2dataset's Downloader changed?)"
            )
        for c in extras:
            rec[c] = row.get(c)
        out.append(rec)
    out.sort(key=lambda r: r["key"])
    fields = list(schema.POOL) + [refused_rows.schema.field(c) for c in extras]
    return pa.Table.from_pylist(out, schema=pa.schema(fields))


# ---------------------------------------------------------------------------------------------------
# Driver


def _prepare_inputs(urls: str, pool: str, cfg: DownloadConfig, ray_address, log) -> dict:
    """Ingest once; a re-run reuses the shard inputs, after checking it was given the same list."""
    work = Pool(pool).work()
    state_path = runtime.join(work, "inputs", "_SUCCESS.json")
    ingest_cfg = {k: getattr(cfg, k) for k in INGEST_FIELDS}
    if runtime.exists(state_path):
        state = runtime.read_json(state_path)
        _check_same_list(pool, urls, cfg, state)
        if state["ingest"] != ingest_cfg:
            diff = sorted(k for k in ingest_cfg if state["ingest"].get(k) != ingest_cfg[k])
            raise InputError(
                f"{pool} was ingested with other settings ({', '.join(diff)} differ). "
                f"Re-run with the same options, or use a new --out"
            )
        return state
    log(f"[download] reading {urls}")
    inputs = ingest.ingest(
        urls,
        work,
        url_col=cfg.url_col,
        caption_col=cfg.caption_col,
        uid_col=cfg.uid_col,
        extra_columns=tuple(ingested_columns(cfg)),
        input_format=cfg.input_format,
        per_shard=cfg.samples_per_shard,
        ray_address=ray_address,
    )
    # shards are cut per input file, so each file's last shard may be short: keep every file's counts
    state = {"input_path": urls, "ingest": ingest_cfg, **inputs.record()}
    runtime.write_json(state_path, state)
    log(f"[download] {inputs.rows} rows from {len(inputs.files)} file(s) in {inputs.shards} shards")
    return state


def _check_same_list(pool: str, urls: str, cfg: DownloadConfig, state: dict) -> None:
    """A re-run must name the list the pool was made from: one file is re-hashed; for many files (DataComp's
    metadata is terabytes) their names and sizes are compared."""
    files = ingest.list_inputs(urls, cfg.input_format)
    before = state.get("files") or [{"path": state["input_path"]}]
    if len(files) == 1 and len(before) == 1:
        sha = runtime.file_sha256(files[0])
        if sha != state["input_sha256"]:
            raise InputError(
                f"{pool} was downloaded from another URL list (sha256 {state['input_sha256'][:12]}…, "
                f"{urls} has {sha[:12]}…). Use a new --out for a new list"
            )
        return
    now = [(os.path.basename(f), fs.size(p)) for f in files for fs, p in [runtime.fs_path(f)]]
    then = [(os.path.basename(f["path"]), f.get("size")) for f in before]
    if now != then:
        changed = sorted(set(now) ^ set(then))[:5]
        raise InputError(
            f"{pool} was downloaded from another URL list: {urls} has {len(now)} files, the pool was "
            f"made from {len(then)}; differing (name, size): {changed}. Use a new --out for a new list"
        )


def _check_fetch_config(pool: str, cfg: DownloadConfig, any_done: bool) -> None:
    """Shards fetched with other settings must not be mixed with new ones."""
    path = Pool(pool).work("download_config.json")
    current = {k: v for k, v in to_dict(cfg).items() if k not in OPERATIONAL}
    if runtime.exists(path) and any_done:
        before = runtime.read_json(path)
        diff = sorted(k for k in current if before.get(k) != current[k])
        if diff:
            raise InputError(
                f"{pool} has shards downloaded with other settings ({', '.join(diff)} differ). "
                f"Re-run with the same options, or use a new --out"
            )
    runtime.write_json(path, current)


@runtime.holds(lambda urls, pool, *a, **k: Pool(pool).work(), "this pool's download")
def run(urls: str, pool: str, cfg: DownloadConfig, ray_address: str | None = None, log=print) -> dict:
    """Download `urls` into `pool`, resuming whatever an earlier run finished. Returns the manifest."""
    cfg.validate()
    runtime.makedirs(pool)
    state = _prepare_inputs(urls, pool, cfg, ray_address, log)
    finished = set(Pool(pool).shards())
    _check_fetch_config(pool, cfg, bool(finished))
    todo = [s for s in range(state["shards"]) if s not in finished]
    if finished:
        log(f"[download] resuming: {len(finished)} of {state['shards']} shards already complete")

    failed: dict[int, str] = {}
    if todo:
        failed = _run_shards(pool, cfg, todo, state, ray_address, log)
    manifest = write_manifest(pool, urls, state, cfg, failed)
    manifest["yield"] = yields.write(pool)
    execute.raise_failures(f"download (after {cfg.shard_retries + 1} attempts)", failed)
    return manifest


@dataclass
class DownloadStage(Stage):
    """A shard of the URL list into POOL/shards: its tar, its metadata, then its marker (`_stats.json`)."""

    pool: str
    cfg: dict
    rows: list[int]  # rows of each input shard

    name: ClassVar[str] = "download"
    unit: ClassVar[str] = "samples"

    def process(self, shard: int) -> dict:
        return download_shard(shard, self.pool, self.cfg)

    def marker(self, shard: int) -> str:
        return Pool(self.pool).shard_stats(shard)

    def weight(self, shard: int) -> int:
        return self.rows[shard]

    def deadline_s(self, shard: int) -> float:
        return from_dict(DownloadConfig, self.cfg).deadline(self.rows[shard])

    def describe(self, stats: dict) -> str:
        return f"last shard {sum(stats['failures'].values())} failed"


def _run_shards(pool: str, cfg: DownloadConfig, todo: list[int], state: dict, ray_address, log) -> dict[int, str]:
    ex = execute.start(ray_address)
    rows = [_shard_rows(state)(s) for s in range(state["shards"])]
    stage = DownloadStage(pool, to_dict(cfg), rows)
    out = run_stage(stage, todo, retries=cfg.shard_retries, max_inflight=cfg.processes or ex.cpus(), log=log)
    return out.failures


def _shard_rows(state: dict):
    """Rows in each shard input: `per` but for each input file's last shard."""
    per = state["ingest"]["samples_per_shard"]
    files = state.get("files") or [{"rows": state["rows"], "shards": state["shards"]}]
    rows = [min(per, f["rows"] - per * i) for f in files for i in range(f["shards"])]
    return rows.__getitem__


def write_manifest(pool: str, urls: str, state: dict, cfg: DownloadConfig, failed: dict[int, str]) -> dict:
    status: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    complete = 0
    for path in runtime.glob(runtime.join(pool, "shards", "*_stats.json")):
        stats = runtime.read_json(path)
        status.update(stats["status"])
        failures.update(stats["failures"])
        complete += 1
    manifest = {
        "kind": "thresher.pool",
        **runtime.provenance(),
        "input": {
            "path": urls,
            "sha256": state["input_sha256"],
            "rows": state["rows"],
            "files": len(state.get("files") or [urls]),
        },
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "shards": {
            "total": state["shards"],
            "complete": complete,
            "failed": {f"{s:08d}": why for s, why in sorted(failed.items())},
        },
        "counts": {
            "rows": sum(status.values()),
            "status": dict(sorted(status.items())),
            "failure": dict(sorted(failures.items())),
        },
        "layout": {
            "tar": "shards/{shard:08d}.tar",
            "metadata": "shards/{shard:08d}.parquet",
            "stats": "shards/{shard:08d}_stats.json",
        },
    }
    runtime.write_json(Pool(pool).manifest, manifest)
    return manifest
