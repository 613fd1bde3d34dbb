"""Subset stage: `thresher subset POOL --recipe NAME [--recipe NAME2 ...] --size N --out DIR --seed S`,
and `thresher subset POOL --recipe NAME [--size N] --uids-only FILE.npy` (write_uid_file).

From a recipe's decisions (POOL/decisions/NAME, written by the filter stage, which this runs first when
they are missing or stale), select exactly N samples and reshard them:

- A recipe that ranks (it has a `top_fraction` step) gives the top N by its last ranking step's score,
  ties broken by uid. A keep/drop recipe gives N drawn uniformly from the kept samples: the top N by a
  seeded hash of the uid, so a larger N always extends a smaller one and the draw is reproducible.
- The Nth key is found by the one top-k search the filter's thresholds use (topk.py): per-shard
  65,536-bin histograms merged on the driver, then only the keys inside one bin are gathered.
- Output order is a seeded permutation of the selected samples (a Feistel network over their global
  index), so every output shard can compute which samples it holds without any node holding the list.

Layout of a subset (DataComp's shard naming: open_clip and DataComp tooling read it as is):

    DIR/{j:08d}.tar        WebDataset shard; the pool's members streamed unchanged, json rewritten
    DIR/{j:08d}.parquet    per-sample metadata: the pool's metadata and features under the new key,
                           recipe_score and copy (docs/schemas.md)
    DIR/manifest.json      recipe, hashes, code, N, seed, every shard's sha256, the funnel
    DIR/lineage.parquet    uid -> source URL, pool shard/key, download, hashes, every step's score and
                           decision, subset shard/key (schema.LINEAGE)

While it runs, DIR/_work holds the plan, per-pool-shard indexes and per-output-shard completion
markers; a re-run resumes from them, and they are removed once the manifest is written.

With `--uids-only FILE.npy` nothing is resharded: the same selection (the same cut, so with `--size N`
the same N samples a resharded subset holds; without it every sample the recipe keeps) is written as
DataComp's uid file, a sorted `u8,u8` array that DataComp's resharder takes, with FILE.npy.json beside
it (recipe, decisions, pool, size, seed, the file's sha256).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.algo import hashes, topk
from thresher.algo.hashes import normalize_url
from thresher.core import runtime, schema
from thresher.core.config import check_name, opt, to_dict
from thresher.core.errors import InputError, StageError
from thresher.core.pool import IMAGE_EXTS, Pool, member_key
from thresher.exec import execute
from thresher.stages.filter import filter as filtering

MTIME = 0  # tar member times are fixed so the same selection gives byte-identical shards


@dataclass
class SubsetConfig:
    size: int = opt(help="samples in each subset (exactly)")
    seed: int = opt(0, "seed of the uniform draw and of the shuffle across shards")
    samples_per_shard: int = opt(10000, "samples per output shard (the last may hold fewer)")
    allow_repeat: bool = opt(False, "when a recipe keeps fewer than size samples, repeat them instead of failing")
    draws: int = opt(
        1,
        "independent draws per recipe, each its own seed (seed, seed+1, ...) and its own "
        "directory OUT[/RECIPE]/draw-K: replicates for an A/B comparison",
    )


@dataclass
class Exclusion:
    """Samples no subset may hold (takedowns, opt-outs): by normalised URL or by host (and its subdomains)."""

    urls: set = field(default_factory=set)
    domains: set = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.urls or self.domains)

    def mask(self, urls: list[str]) -> np.ndarray:
        out = np.zeros(len(urls), bool)
        for i, u in enumerate(urls):
            if normalize_url(u) in self.urls or (self.domains and _host_matches(u, self.domains)):
                out[i] = True
        return out

    def describe(self) -> dict:
        """What a manifest records: the lists themselves, so a later removal can carry them forward."""
        return {"urls": len(self.urls), "url_list": sorted(self.urls), "domains": sorted(self.domains)}


def _host_matches(url: str, domains: set) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    parts = host.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts)))


def read_exclusion(urls_file: str | None = None, domains_file: str | None = None) -> Exclusion:
    """One entry per line; blank lines and lines starting with # are skipped."""

    def lines(path):
        fs, p = runtime.fs_path(path)
        if not fs.exists(p):
            raise InputError(f"{path} does not exist")
        with fs.open(p, "r") as f:
            return [x.strip() for x in f if x.strip() and not x.lstrip().startswith("#")]

    ex = Exclusion()
    if urls_file:
        ex.urls = {normalize_url(u) for u in lines(urls_file)}
    if domains_file:
        ex.domains = {d.lower().strip(".") for d in lines(domains_file)}
    if not ex:
        raise InputError("nothing to remove: give --urls FILE and/or --domains FILE with at least one entry")
    return ex


# ---------------------------------------------------------------------------------------------------
# Selection keys: larger is better; ties go to the smaller uid


@dataclass
class Rule:
    mode: str  # "top_score" or "uniform"
    step: int | None = None  # for top_score: the ranking step's index in the recipe
    step_name: str | None = None
    seed: int = 0

    def describe(self) -> dict:
        return {"mode": self.mode, "step": self.step_name, "seed": self.seed if self.mode == "uniform" else None}


def rule_for(decisions_manifest: dict, seed: int) -> Rule:
    steps = decisions_manifest["recipe_resolved"]["steps"]
    ranked = [i for i, s in enumerate(steps) if s.get("top_fraction") is not None]
    if ranked:
        return Rule("top_score", ranked[-1], steps[ranked[-1]]["name"], seed)
    return Rule("uniform", seed=seed)


def uid_keys(uids: list[str], seed: int) -> np.ndarray:
    """uint32 from a keyed hash of each uid: a uniform draw that is the same wherever it is computed."""
    key = int(seed).to_bytes(8, "little", signed=True)
    return np.frombuffer(
        b"".join(hashlib.blake2b(u.encode(), digest_size=4, key=key).digest() for u in uids), dtype=">u4"
    ).astype(np.uint32)


def selection_keys(dec: pa.Table, rule: Rule) -> np.ndarray:
    if rule.mode == "uniform":
        return uid_keys(dec.column("uid").to_pylist(), rule.seed)
    col = dec.column("step_scores").combine_chunks()
    offsets = col.offsets.to_numpy()
    lengths = np.diff(offsets)
    if len(col) and col.null_count == 0 and (lengths == lengths[0]).all() and lengths[0] > rule.step:
        # one score per step in every list (as the filter writes them): slice the step out of the flat values
        flat = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        scores = flat.to_numpy(zero_copy_only=False).reshape(len(col), int(lengths[0]))[:, rule.step]
    else:
        scores = pc.list_element(col, rule.step).to_numpy(zero_copy_only=False)
    scores = np.asarray(scores, dtype=np.float32)
    return topk.order_key(np.where(np.isnan(scores), -np.inf, scores))


RANKING = ["uid", "keep", "step_scores"]  # the decisions columns selecting reads


def _candidates(pool: str, recipe: str, shard: int, rule: Rule, exclude: Exclusion, columns=None):
    """(decisions table with `columns` (all if None), candidate mask, keys) for one pool shard."""
    path = Pool(pool).decisions(recipe, shard)
    try:
        dec = runtime.read_parquet(path, columns=columns, use_threads=False)
    except (KeyError, pa.ArrowInvalid):  # a file without step_scores: the check below names it
        dec = runtime.read_parquet(path, use_threads=False)
    if "step_scores" not in dec.column_names:
        raise InputError(
            f"{pool}: decisions of {recipe} shard {shard:08d} predate per-step scores; "
            f"run `thresher filter {pool} --recipe {recipe}` again"
        )
    mask = dec.column("keep").to_numpy(zero_copy_only=False).astype(bool)
    if exclude:
        urls = Pool(pool).shard_table(shard, {"uid": "metadata", "url": "metadata"})
        if not urls.column("uid").equals(dec.column("uid")):
            raise InputError(f"{pool}: decisions of {recipe} shard {shard:08d} are not aligned with its metadata")
        mask &= ~exclude.mask(urls.column("url").to_pylist())
    return dec, mask, selection_keys(dec, rule)


def _histogram_task(shard, pool, recipe, rule, exclude):
    need_uid = rule.mode == "uniform" or bool(exclude)  # a score ranking's histogram needs no uids
    _, mask, keys = _candidates(pool, recipe, shard, rule, exclude, RANKING if need_uid else RANKING[1:])
    return topk.histogram(keys[mask])


def _bin_task(shard, pool, recipe, rule, exclude, bin_index):
    dec, mask, keys = _candidates(pool, recipe, shard, rule, exclude, RANKING)
    sel = np.flatnonzero(mask & (topk.bin_of(keys) == bin_index))
    return keys[sel], np.asarray(dec.column("uid").take(pa.array(sel)).to_pylist(), dtype=object)


@dataclass
class Cut:
    """Everything ranked at or above (key, uid) is in: key > cut.key, or key == cut.key and uid <= cut.uid."""

    key: int | None = None  # None: everything is in
    uid: str | None = None

    def inside(self, keys: np.ndarray, uids: np.ndarray) -> np.ndarray:
        if self.key is None:
            return np.ones(len(keys), bool)
        keys = keys.astype(np.int64)
        out = keys > self.key
        tie = np.flatnonzero(keys == self.key)  # uids are read and compared only where keys tie
        if len(tie):
            tied = (
                np.asarray(uids.take(pa.array(tie)).to_pylist(), dtype=object)
                if isinstance(uids, (pa.Array, pa.ChunkedArray))
                else np.asarray(uids)[tie]
            )
            out[tie] = tied <= self.uid
        return out


def find_cut(hist: np.ndarray, rank: int, in_bin) -> Cut:
    """The cut holding exactly `rank` samples, from merged histograms of keys' top 16 bits;
    `in_bin(b)` returns (keys, uids) of every candidate in bin b."""
    total = int(hist.sum())
    if rank >= total:
        return Cut()
    if rank <= 0:
        return Cut(key=1 << 33, uid="")  # nothing is in
    b, above = topk.locate(hist, rank)
    keys, uids = in_bin(b)
    order = np.lexsort((np.asarray(uids, dtype=str), -keys.astype(np.int64)))  # key descending, then uid
    i = order[rank - above - 1]
    return Cut(int(keys[i]), str(uids[i]))


def _chosen(dec: pa.Table, mask: np.ndarray, keys: np.ndarray, cut: Cut) -> np.ndarray:
    """Which of a shard's candidates a subset holds: the one rule of resharded subsets and uid files."""
    return mask & cut.inside(keys, dec.column("uid"))


def _uids_task(shard, pool, recipe, rule, exclude, cut) -> np.ndarray:
    """The shard's selected uids as a sorted DataComp `u8,u8` array (16 bytes a sample back to the driver)."""
    dec, mask, keys = _candidates(pool, recipe, shard, rule, exclude, RANKING)
    # the one uid rule: a uid of a pool made before it (spaces, 0x) is named by row, never renumbered
    where = f"{Pool(pool).decisions(recipe, shard)}, field 'uid' (a uid file holds 128-bit uids only)"
    uids = hashes.canonical_uids(dec.column("uid"), where)
    return hashes.uid_array(uids.take(pa.array(np.flatnonzero(_chosen(dec, mask, keys, cut)))), where)


def write_uid_file(
    pool: str,
    recipe: str,
    out: str,
    size: int | None = None,
    seed: int = 0,
    variables: dict | None = None,
    ray_address: str | None = None,
    log=print,
) -> dict:
    """The recipe's selection as DataComp's uid file `out` (.npy, sorted `u8,u8`), without resharding: with
    `size`, the N samples `thresher subset --size N` would hold; without, every sample the recipe keeps.
    Writes `out`.json beside it; a second run with the same inputs finds it done, other inputs are refused.
    Its folder is made first if missing, and `out` is held by one run at a time (`runtime.file_lock`),
    both before any work."""
    if not str(out).endswith(".npy"):
        raise InputError(f"--uids-only {out}: a uid file is a .npy file (DataComp's format)")
    if size is not None and size < 1:
        raise InputError(f"--size must be positive (got {size})")
    Pool(pool).require()
    _make_folder_of(out)
    with runtime.file_lock(out, "this uid file"):
        return _locked_uid_file(pool, recipe, out, size, seed, variables, ray_address, log)


def _make_folder_of(out: str) -> None:
    """The folder `out` goes in, made now: a run into a missing folder used to do all its work, then fail
    on its temporary file."""
    fs, path = runtime.fs_path(out)
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    try:
        fs.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise InputError(f"--uids-only {out}: cannot make its folder {parent} ({err.strerror or err})") from None


def _locked_uid_file(pool, recipe, out, size, seed, variables, ray_address, log) -> dict:
    """write_uid_file's work, run holding the lock on `out`."""
    execute.start(ray_address)
    decisions = decisions_for(pool, recipe, variables, log)
    name = decisions["recipe"]
    rule = rule_for(decisions, seed)
    plan = {
        "pool": str(pool),
        "recipe": name,
        "decisions_sha256": runtime.file_sha256(Pool(pool).decisions_manifest(name)),
        "size": size,
        "seed": seed if rule.mode == "uniform" and size is not None else None,
    }
    sidecar = f"{out}.json"
    if runtime.exists(out):
        if runtime.exists(sidecar) and runtime.read_json(sidecar).get("plan") == plan:
            log(f"[subset:{name}] {out} is complete already")
            return runtime.read_json(sidecar)
        raise InputError(f"{out} exists and was not written from these inputs; choose another path")
    shards = Pool(pool).shards()
    hist = _count(pool, name, rule, Exclusion(), shards)
    kept = int(hist.sum())
    if size is not None and kept < size:
        raise InputError(
            f"recipe {name} keeps {kept} samples in {pool}, fewer than --size {size}; ask for at most {kept} "
            f"(a uid file holds each uid once, so it cannot repeat samples)"
        )
    cut = Cut() if size is None else _cut(pool, name, rule, Exclusion(), shards, hist, size)
    want = kept if size is None else size
    _remove_killed_uid_work(pool)
    work = Pool(pool).work("uids", uuid.uuid4().hex[:12])  # this run's own: two runs never share it
    with runtime.output_lock(work, "a --uids-only sort"):  # held while alive: tells a live run from a killed one
        try:
            samples, sha256 = _write_sorted_uids(pool, name, rule, cut, shards, want, work, out)
        finally:
            runtime.remove(work, recursive=True)
    record = {
        "kind": "thresher.uids",
        "format": 1,
        "file": str(out).rsplit("/", 1)[-1],
        "sha256": sha256,
        "samples": samples,
        "plan": plan,
        "recipe_sha256": decisions["recipe_sha256"],
        "thresholds": decisions["thresholds"],
        "selection": {**rule.describe(), "kept_by_recipe": kept, "cut_key": cut.key, "cut_uid": cut.uid},
        "code": runtime.code_version(),
    }
    runtime.write_json(sidecar, record)
    log(f"[subset:{name}] {samples} uids ({'all kept' if size is None else 'top N'} of {kept}) -> {out}")
    return record


def _remove_killed_uid_work(pool: str) -> None:
    """Remove the sort folders (POOL/_work/uids/ID) of --uids-only runs that were killed: a live run
    holds its folder's output lock, a killed run's lock went with its process. A folder without a lock
    file is a run's being made now, or one from before these locks (removed once a minute old). Local
    pools only: on an object store nothing tells a live run from a dead one."""
    root = runtime.fs_path(Pool(pool).work("uids"))[1]
    if ("://" in str(pool) and not str(pool).startswith("file://")) or not os.path.isdir(root):
        return
    for name in os.listdir(root):
        d = os.path.join(root, name)
        try:
            if not os.path.exists(os.path.join(d, ".thresher.lock")):
                if time.time() - os.path.getmtime(d) > 60:
                    shutil.rmtree(d, ignore_errors=True)
                continue
            with runtime.output_lock(d, "a --uids-only sort"):
                shutil.rmtree(d, ignore_errors=True)
        except (InputError, OSError):
            continue  # a live run's, or one that ended while we looked


# The uid file is one sorted array (1.4B uids = 22 GB at DataComp-1B's size), so it is sorted as tasks and
# streamed: a task per shard group splits its selected uids into UID_BUCKETS ranges by their top byte (uids
# are hex digests, spread evenly), a task per range sorts that range from every group, and the driver
# writes the .npy header and then the ranges in order, one at a time, hashing as it goes.
UID_BUCKETS = 256


def _uids_map(g: int, groups: list[list[int]], pool, recipe, rule, exclude, cut, work: str) -> np.ndarray:
    """Group g's selected uids into work/map/{g}.npz, a member b{b} per top byte; returns the counts [256]."""
    parts = [_uids_task(s, pool, recipe, rule, exclude, cut) for s in groups[g]]
    arr = np.concatenate(parts) if parts else np.empty(0, hashes.UID_DTYPE)
    top = (arr["f0"] >> np.uint64(56)).astype(np.int64)
    order = np.argsort(top, kind="stable")
    counts = np.bincount(top, minlength=UID_BUCKETS)
    bounds = np.r_[0, np.cumsum(counts)]
    members = {f"b{b}": arr[order[bounds[b] : bounds[b + 1]]] for b in np.flatnonzero(counts)}
    runtime.write_npz(runtime.join(work, "map", f"{g:06d}.npz"), members)
    return counts


def _uids_reduce(b: int, maps: list[int], work: str) -> tuple[int, int]:
    """Range b's uids from the groups that have some, sorted, to work/sorted/{b}.bin (the raw `u8,u8`
    rows): (uids, distinct uids)."""
    parts = [runtime.read_npz(runtime.join(work, "map", f"{g:06d}.npz"), [f"b{b}"])[0] for g in maps]
    arr = np.sort(np.concatenate(parts)) if parts else np.empty(0, hashes.UID_DTYPE)
    runtime.write_bytes(runtime.join(work, "sorted", f"{b:03d}.bin"), arr.tobytes())
    return len(arr), len(arr) - int(np.sum(arr[1:] == arr[:-1])) if len(arr) else 0


def _uids_reduce_item(item: tuple[int, list[int]], work: str) -> tuple[int, int]:
    return _uids_reduce(item[0], item[1], work)


def _write_sorted_uids(pool, name, rule, cut, shards, want: int, work: str, out: str) -> tuple[int, str]:
    """The selected uids, sorted, streamed into `out` (atomic); returns (uids, sha256 of the file)."""
    for d in ("map", "sorted"):
        runtime.makedirs(runtime.join(work, d))
    n_groups = max(1, min(len(shards), 8 * execute.current().cpus(), 4096))
    groups = [g.tolist() for g in np.array_split(np.array(shards), n_groups)] if shards else []
    counts = execute.map(
        _uids_map, range(len(groups)), groups, pool, name, rule, Exclusion(), cut, work, label=f"subset:{name} uids"
    )  # [groups] x [256] counts: the driver's only view of the uids
    per = np.stack(counts) if counts else np.zeros((0, UID_BUCKETS), np.int64)
    todo = [(b, np.flatnonzero(per[:, b]).tolist()) for b in range(UID_BUCKETS) if per[:, b].sum()]
    sizes = execute.map(_uids_reduce_item, todo, work, label=f"subset:{name} sort")
    total, distinct = sum(n for n, _ in sizes), sum(d for _, d in sizes)
    if total != want or distinct != total:
        raise StageError(
            f"subset {name}: selected {distinct} distinct uids, not {want}; a uid repeats in {pool} or the "
            f"decisions changed while it ran"
        )
    header = io.BytesIO()  # the header np.save writes for this dtype and length
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(hashes.UID_DTYPE), "fortran_order": False, "shape": (total,)},
    )
    digest = hashlib.sha256(header.getvalue())
    with runtime.atomic_writer(out) as f:
        f.write(header.getvalue())
        last = None
        for b, _ in todo:  # one range at a time, in order: the driver never holds more than one
            data = runtime.read_bytes(runtime.join(work, "sorted", f"{b:03d}.bin"))
            arr = hashes.check_uid_array(np.frombuffer(data, hashes.UID_DTYPE), out)  # sorted, checked on write
            if last is not None and len(arr) and not _uid_less(last, arr[0]):
                raise StageError(f"subset {name}: uid range {b} does not follow the one before it")
            last = arr[-1] if len(arr) else last
            digest.update(data)
            f.write(data)
    return total, digest.hexdigest()


def _uid_less(a, b) -> bool:
    return (int(a["f0"]), int(a["f1"])) < (int(b["f0"]), int(b["f1"]))


# ---------------------------------------------------------------------------------------------------
# The shuffle: a seeded bijection of [0, n) that any task can evaluate or invert for its own slice


def _round(x: np.ndarray, key: int, mask: int) -> np.ndarray:
    z = (x ^ np.uint64(key)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) & np.uint64(mask)


class Shuffle:
    """Feistel network (6 rounds) on the smallest even-bit domain holding n, cycle-walked into [0, n)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.half = max(1, math.ceil(max(1, (n - 1).bit_length()) / 2))
        self.mask = (1 << self.half) - 1
        self.keys = [int(k) for k in np.random.default_rng([seed, 0x5EED]).integers(0, 2**63, 6)]

    def _enc(self, x):
        h, m = np.uint64(self.half), self.mask
        left, right = x >> h, x & np.uint64(m)
        for k in self.keys:
            left, right = right, left ^ _round(right, k, m)
        return (left << h) | right

    def _dec(self, y):
        h, m = np.uint64(self.half), self.mask
        left, right = y >> h, y & np.uint64(m)
        for k in reversed(self.keys):
            left, right = right ^ _round(left, k, m), left
        return (left << h) | right

    def _walk(self, x, step):
        x = np.asarray(x, dtype=np.uint64)
        with np.errstate(over="ignore"):
            y = step(x)
            while (out := y >= np.uint64(self.n)).any():
                y[out] = step(y[out])
        return y.astype(np.int64)

    def forward(self, x):
        return self._walk(x, self._enc)

    def inverse(self, y):
        return self._walk(y, self._dec)


# ---------------------------------------------------------------------------------------------------
# Per pool shard: the index of selected samples (where their members are, their metadata)


def _member_index(pool: str, shard: int) -> dict[str, list[tuple[str, int, int]]]:
    """key -> [(extension, data offset, size)] of a pool tar, reading only its headers (an adopted tar is
    hashed whole first: one that changed since import-pool is refused, not shipped)."""
    Pool(pool).check_tar(shard)
    fs, path = runtime.fs_path(Pool(pool).tar(shard))
    out: dict[str, list] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    key, ext = member_key(m.name)
                    out.setdefault(key, []).append((ext, m.offset_data, m.size))
    except (tarfile.TarError, OSError) as err:
        raise StageError(f"{pool}: shard {shard:08d}.tar is unreadable ({err}); re-download it") from err
    return out


def _feature_columns(pool: str) -> dict[str, str]:
    """Columns a subset carries per sample: metadata, base features and CLIP scores (not embeddings)."""
    return {
        c: src
        for c, src in Pool(pool).available_columns().items()
        if src == "metadata" or src == "base" or src.startswith("score:")
    }


def _index_task(shard, pool, recipe, rule, exclude, cut, repeat, out_dir):
    """Write _work/index/{shard}.parquet: the shard's selected samples (repeated when upsampling), in key
    order, with their tar members and every column the subset's metadata and lineage need."""
    dec, mask, keys = _candidates(pool, recipe, shard, rule, exclude)
    uids = dec.column("uid")
    chosen = _chosen(dec, mask, keys, cut).astype(np.int64)
    copies = np.where(mask, repeat["each"], 0) + chosen if repeat else chosen
    rows = np.repeat(np.arange(len(uids)), copies)
    copy = (np.arange(len(rows)) - np.repeat(np.cumsum(copies) - copies, copies)).astype(np.int32)
    table = Pool(pool).shard_table(shard, _feature_columns(pool))
    if not table.column("uid").equals(dec.column("uid")):
        raise InputError(f"{pool}: decisions of {recipe} shard {shard:08d} are not aligned with its features")
    members = _member_index(pool, shard)
    pool_keys = table.column("key").to_pylist()
    missing = [pool_keys[i] for i in np.flatnonzero(copies) if pool_keys[i] not in members]
    if missing:
        raise StageError(f"{pool}: shard {shard:08d}.tar lacks selected samples {missing[:5]}; re-download it")
    stats = runtime.read_json(Pool(pool).shard_stats(shard))
    idx = pa.array(rows, pa.int64())
    out = table.take(idx)
    out = out.append_column("pool_shard", pa.array(np.full(len(rows), shard, np.int32)))
    out = out.append_column("copy", pa.array(copy))
    out = out.append_column(
        "downloaded_at",
        pa.array(np.full(len(rows), int(stats["end_time"] * 1000), np.int64)).cast(pa.timestamp("ms", tz="UTC")),
    )
    out = out.append_column("recipe_score", dec.column("score").take(idx))
    out = out.append_column("rank_key", pa.array(keys[rows].astype(np.int64)))
    out = out.append_column("step_scores", dec.column("step_scores").take(idx))
    out = out.append_column(
        "members",
        pa.array(
            [[{"ext": e, "offset": o, "size": s} for e, o, s in sorted(members[pool_keys[i]])] for i in rows],
            pa.list_(pa.struct([("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])),
        ),
    )
    runtime.write_parquet(out, runtime.join(out_dir, f"{shard:08d}.parquet"))
    return {"count": 1, "selected": len(rows)}  # progress counts pool shards here


# ---------------------------------------------------------------------------------------------------
# Per output shard: stream members into a new tar, write its metadata and lineage part


class _HashingWriter:
    """File wrapper that hashes what goes through it, so a shard's sha256 costs no second read."""

    def __init__(self, f):
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.size += len(b)
        return self.f.write(b)

    def tell(self):
        return self.size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard_task(j, plan, work):
    pool, size, per = plan["pool"], plan["size"], plan["samples_per_shard"]
    offsets = np.asarray(plan["offsets"], np.int64)
    positions = np.arange(j * per, min(size, (j + 1) * per), dtype=np.int64)
    g = Shuffle(size, plan["seed"]).inverse(positions)
    src = np.searchsorted(offsets, g, side="right") - 1
    local = g - offsets[src]
    sources = plan["sources"]
    parts = []
    for s in np.unique(src):
        index = runtime.read_parquet(runtime.join(work, "index", f"{sources[s]:08d}.parquet"))
        where = np.flatnonzero(src == s)
        parts.append((where, index.take(pa.array(local[where]))))
    rows = pa.concat_tables([t for _, t in parts])
    order = np.argsort(np.concatenate([w for w, _ in parts]), kind="stable")
    rows = rows.take(pa.array(order))  # output order
    width = max(4, len(str(per - 1)))
    keys = [f"{j:08d}{i:0{width}d}" for i in range(rows.num_rows)]
    name = f"{j:08d}"
    fs, _ = runtime.fs_path(plan["out"])
    tmp_tar = runtime.join(work, "tmp", f"{name}.tar")
    runtime.makedirs(runtime.join(work, "tmp"))
    image_sha = []
    handles: dict[int, object] = {}
    try:
        with fs.open(runtime.fs_path(tmp_tar)[1], "wb") as raw:
            w = _HashingWriter(raw)
            with tarfile.open(fileobj=w, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                members = rows.column("members").to_pylist()
                pshard = rows.column("pool_shard").to_pylist()
                uids, pool_keys = rows.column("uid").to_pylist(), rows.column("key").to_pylist()
                for key, mem, ps, uid, pkey in zip(keys, members, pshard, uids, pool_keys):
                    if ps not in handles:
                        pfs, ppath = runtime.fs_path(Pool(pool).tar(ps))
                        handles[ps] = pfs.open(ppath, "rb")
                    f = handles[ps]
                    digest = None
                    for m in mem:
                        f.seek(m["offset"])
                        data = f.read(m["size"])
                        if len(data) != m["size"]:
                            raise StageError(f"{pool}: shard {ps:08d}.tar is shorter than its index; re-download it")
                        if m["ext"] == "json":
                            meta = json.loads(data)
                            meta.update(key=key, uid=uid, source_key=pkey, source_shard=ps)
                            data = json.dumps(meta, sort_keys=True).encode()
                        elif m["ext"] in IMAGE_EXTS and digest is None:
                            digest = hashlib.sha256(data).hexdigest()
                        _add(tar, f"{key}.{m['ext']}", data)
                    image_sha.append(digest)
            tar_sha, tar_bytes = w.h.hexdigest(), w.size
    finally:
        for f in handles.values():
            f.close()
    meta = subset_metadata(rows, keys)
    lineage = lineage_rows(rows, keys, image_sha, j, plan["step_names"], plan["step_filters"])
    runtime.write_parquet(meta, runtime.join(work, "tmp", f"{name}.parquet"))
    runtime.write_parquet(lineage, runtime.join(work, "lineage", f"{name}.parquet"))
    runtime.move(runtime.join(work, "tmp", f"{name}.parquet"), runtime.join(plan["out"], f"{name}.parquet"))
    runtime.move(tmp_tar, runtime.join(plan["out"], f"{name}.tar"))
    stats = {
        "name": f"{name}.tar",
        "samples": rows.num_rows,
        "sha256": tar_sha,
        "bytes": tar_bytes,
        "parquet": f"{name}.parquet",
        "parquet_sha256": runtime.file_sha256(runtime.join(plan["out"], f"{name}.parquet")),
    }
    runtime.write_json(runtime.join(work, "done", f"{name}.json"), stats)  # completion marker: last
    return {**stats, "count": rows.num_rows}


DROP_FROM_METADATA = ("members", "pool_shard", "downloaded_at", "rank_key", "step_scores")


def subset_metadata(rows: pa.Table, keys: list[str]) -> pa.Table:
    """The Parquet beside a subset shard: the sample's metadata and features, under its new key."""
    out = rows.drop_columns([c for c in DROP_FROM_METADATA if c in rows.column_names])
    out = out.set_column(out.column_names.index("key"), "key", pa.array(keys, pa.string()))
    first = ["uid", "key", "url", "caption"]
    return out.select(first + [c for c in out.column_names if c not in first])


def lineage_rows(rows: pa.Table, keys: list[str], image_sha: list, shard: int, step_names, step_filters):
    scores = rows.column("step_scores").to_pylist()
    steps = [
        [{"step": n, "filter": f, "score": s, "decision": "kept"} for n, f, s in zip(step_names, step_filters, sc)]
        for sc in scores
    ]
    return pa.table(
        {
            "uid": rows.column("uid"),
            "url": rows.column("url"),
            "pool_shard": rows.column("pool_shard"),
            "pool_key": rows.column("key"),
            # shard_table keeps only successful downloads, so every selected sample's status is "success"
            "status": pa.array(["success"] * rows.num_rows, pa.string()),
            "downloaded_at": rows.column("downloaded_at"),
            "source_sha256": rows.column("sha256"),
            "image_sha256": pa.array(image_sha, pa.string()),
            "steps": pa.array(steps, schema.LINEAGE.field("steps").type),
            "rank_key": rows.column("rank_key"),
            "subset_shard": pa.array(np.full(rows.num_rows, shard, np.int32)),
            "subset_key": pa.array(keys, pa.string()),
            "copy": rows.column("copy"),
        },
        schema=schema.LINEAGE,
    )


# ---------------------------------------------------------------------------------------------------
# The stage


def decisions_for(pool: str, recipe: str, variables: dict | None, log) -> dict:
    """The recipe's decisions manifest, running the filter stage first when they are missing or were
    made from another version of the recipe or other --var values."""
    rec, _, path = filtering.load_recipe(recipe, variables)
    mpath = Pool(pool).decisions_manifest(rec.name)
    if runtime.exists(mpath):
        m = runtime.read_json(mpath)
        same_vars = m["recipe_resolved"].get("vars") == {**rec.vars, **(variables or {})}
        if m.get("recipe_sha256") == runtime.file_sha256(str(path)) and (variables is None or same_vars):
            return m
        log(f"[subset] decisions of {rec.name} are stale (recipe or vars changed); filtering again")
    return filtering.run(pool, recipe, variables, log=log)


def _count(pool, name, rule, exclude, shards) -> np.ndarray:
    """The merged histogram of the candidates' keys (its sum: how many candidates there are)."""
    return execute.fold(
        _histogram_task,
        shards,
        pool,
        name,
        rule,
        exclude,
        add=np.add,
        start=np.zeros(topk.BINS, np.int64),
        label=f"subset:{name} count",
    )


def _cut(pool, name, rule, ex, shards, hist, rank) -> Cut:
    def in_bin(b):
        parts = execute.map(_bin_task, shards, pool, name, rule, ex, b, label=f"subset:{name} cut")
        return np.concatenate([k for k, _ in parts]), np.concatenate([u for _, u in parts])

    return find_cut(hist, rank, in_bin)


def plan_hash(plan: dict) -> str:
    keep = {
        k: plan[k]
        for k in (
            "pool",
            "recipe",
            "decisions_sha256",
            "size",
            "seed",
            "samples_per_shard",
            "allow_repeat",
            "exclusion_sha256",
        )
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def run(
    pool: str,
    recipes: list[str],
    cfg: SubsetConfig,
    out: str,
    variables: dict | None = None,
    ray_address: str | None = None,
    log=print,
) -> dict[str, dict]:
    """Equal-sized subsets of every recipe: `out` itself for one recipe, `out/NAME` for several, each
    with /draw-K under it for several draws (target_dir). Every recipe's count is checked before any
    shard is written. Results are keyed by recipe, or RECIPE/draw-K."""
    if cfg.size < 1 or cfg.samples_per_shard < 1 or cfg.draws < 1:
        raise InputError(
            f"--size, --samples-per-shard and --draws must be positive (got {cfg.size}, "
            f"{cfg.samples_per_shard}, {cfg.draws})"
        )
    if not runtime.exists(Pool(pool).manifest):
        raise InputError(f"{pool} is not a pool (no manifest.json); run `thresher download` first")
    Pool(pool).require_images("a resharded subset (--out); a uid file (--uids-only FILE.npy) does not, and")
    execute.start(ray_address)
    manifests = [decisions_for(pool, r, variables, log) for r in recipes]
    names = [check_name(m["recipe"], "recipe", f"{pool}/decisions") for m in manifests]
    if len(set(names)) != len(names):
        raise InputError(f"recipes given twice: {names}")
    shards = Pool(pool).shards()
    counted, short = [], []
    for m in manifests:
        rule = rule_for(m, cfg.seed)
        hist = _count(pool, m["recipe"], rule, Exclusion(), shards)
        counted.append((m, rule, hist))
        kept = int(hist.sum())
        if (kept < cfg.size and not cfg.allow_repeat) or kept == 0:
            short.append((m["recipe"], kept, m["samples"]))
    if short:
        listing = "; ".join(f"recipe {r} keeps {k} samples of {n}" for r, k, n in short)
        raise InputError(
            f"{pool}: {listing}, fewer than --size {cfg.size}; ask for at most "
            f"{min(k for _, k, _ in short)}, or pass --allow-repeat to upsample (a recipe that "
            f"keeps nothing cannot be)"
        )
    results = {}
    for m, rule, hist in counted:
        target = target_dir(out, m["recipe"], len(recipes))
        if cfg.draws == 1:
            results[m["recipe"]] = build(pool, m, rule, cfg, target, hist=hist, exclude=Exclusion(), log=log)
            continue
        if rule.mode != "uniform" or int(hist.sum()) <= cfg.size:
            log(
                f"[subset:{m['recipe']}] warning: its {cfg.draws} draws hold the same samples ("
                + ("its last step ranks by score" if rule.mode != "uniform" else "it keeps no more than --size")
                + "): they replicate the shuffle only, not the data"
            )
        for k in range(cfg.draws):
            ck = replace(cfg, seed=cfg.seed + k)
            results[f"{m['recipe']}/draw-{k}"] = build(
                pool,
                m,
                rule_for(m, ck.seed),
                ck,
                target_dir(out, m["recipe"], len(recipes), k, cfg.draws),
                hist=hist if k == 0 else None,
                exclude=Exclusion(),
                draw=k,
                log=log,
            )
    return results


def target_dir(out: str, recipe: str, recipes: int = 1, draw: int = 0, draws: int = 1) -> str:
    """Where `thresher subset` writes a recipe's subset: OUT (one recipe) or OUT/RECIPE, then /draw-K when
    there are several draws."""
    base = out if recipes == 1 else runtime.join(out, recipe)
    return base if draws == 1 else runtime.join(base, f"draw-{draw}")


@runtime.holds(lambda pool, decisions, rule, cfg, out, *a, **k: runtime.join(out, "_work"), "this subset")
def build(
    pool: str,
    decisions: dict,
    rule: Rule,
    cfg: SubsetConfig,
    out: str,
    *,
    hist=None,
    exclude: Exclusion | None = None,
    previous: dict | None = None,
    draw: int = 0,
    log=print,
) -> dict:
    """Select and reshard one recipe's subset into `out`; resumes a run with the same plan."""
    t0 = time.time()
    exclude = exclude or Exclusion()
    name = decisions["recipe"]
    shards = Pool(pool).shards()
    work = runtime.join(out, "_work")
    dec_sha = runtime.file_sha256(Pool(pool).decisions_manifest(name))
    ex_sha = (
        hashlib.sha256(json.dumps([sorted(exclude.urls), sorted(exclude.domains)]).encode()).hexdigest()
        if exclude
        else None
    )
    plan = {
        "pool": str(pool),
        "recipe": name,
        "decisions_sha256": dec_sha,
        "size": cfg.size,
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "allow_repeat": cfg.allow_repeat,
        "exclusion_sha256": ex_sha,
        "out": str(out),
        "draw": draw,
    }
    phash = plan_hash(plan)
    if runtime.exists(runtime.join(out, "manifest.json")):
        m = runtime.read_json(runtime.join(out, "manifest.json"))
        if m.get("plan_sha256") == phash:
            log(f"[subset:{name}] {out} is complete already")
            return m
        raise InputError(f"{out} already holds a subset made with other settings; choose another --out")
    if runtime.exists(runtime.join(work, "plan.json")):
        if runtime.read_json(runtime.join(work, "plan.json"))["plan_sha256"] != phash:
            raise InputError(
                f"{out} holds an unfinished subset made with other settings; delete {out} or choose another --out"
            )
    elif runtime.exists(out) and [p for p in runtime.glob(runtime.join(out, "*")) if not p.endswith("/_work")]:
        raise InputError(f"{out} exists and is not empty; choose another --out")
    runtime.makedirs(work)

    ex_ref = execute.current().share(exclude)
    if hist is None:
        hist = _count(pool, name, rule, ex_ref, shards)
    kept = int(hist.sum())
    repeat = None
    if kept < cfg.size:
        if not cfg.allow_repeat or kept == 0:
            raise InputError(
                f"recipe {name} keeps {kept} samples (after exclusions) in {pool}, fewer than "
                f"--size {cfg.size}; ask for at most {kept}, or pass --allow-repeat to upsample"
            )
        repeat = {"each": cfg.size // kept, "plus_one": cfg.size % kept}
        cut = _cut(pool, name, rule, ex_ref, shards, hist, repeat["plus_one"])
        log(
            f"[subset:{name}] {kept} kept < {cfg.size}: each sample {repeat['each']}x, the top "
            f"{repeat['plus_one']} once more"
        )
    else:
        cut = _cut(pool, name, rule, ex_ref, shards, hist, cfg.size)

    # pass 1: per pool shard, the index of what it gives
    index_dir = runtime.join(work, "index")
    runtime.makedirs(index_dir)
    todo = [s for s in shards if not runtime.exists(runtime.join(index_dir, f"{s:08d}.parquet"))]
    if not runtime.exists(runtime.join(work, "plan.json")):
        runtime.write_json(runtime.join(work, "plan.json"), {**plan, "plan_sha256": phash})
    execute.run(
        _index_task,
        todo,
        pool,
        name,
        rule,
        ex_ref,
        cut,
        repeat,
        index_dir,
        label=f"subset:{name} index",
        unit="shards",
        max_inflight=2 * execute.current().cpus(),
        retries=2,
        deadline_s=3600,
        log=log,
    ).raise_if_failed(f"subset {name} (index)")
    counts = [
        runtime.read_parquet(runtime.join(index_dir, f"{s:08d}.parquet"), columns=["uid"]).num_rows for s in shards
    ]
    if sum(counts) != cfg.size:
        raise StageError(
            f"subset {name}: selected {sum(counts)} samples, not {cfg.size}; the decisions changed "
            f"while it ran? delete {work} and run again"
        )
    sources = [s for s, c in zip(shards, counts) if c]
    offsets = np.concatenate([[0], np.cumsum([c for c in counts if c])[:-1]]).astype(np.int64).tolist()

    # pass 2: per output shard, stream the members
    steps = decisions["recipe_resolved"]["steps"]
    wplan = {
        **plan,
        "sources": sources,
        "offsets": offsets,
        "step_names": [s["name"] for s in steps],
        "step_filters": [s["filter"] for s in steps],
    }
    n_out = math.ceil(cfg.size / cfg.samples_per_shard)
    done_dir = runtime.join(work, "done")
    runtime.makedirs(done_dir)
    runtime.makedirs(runtime.join(work, "lineage"))
    todo = [j for j in range(n_out) if not runtime.exists(runtime.join(done_dir, f"{j:08d}.json"))]
    execute.run(
        _write_shard_task,
        todo,
        wplan,
        work,
        label=f"subset:{name} write",
        unit="samples",
        weight=lambda j: min(cfg.samples_per_shard, cfg.size - j * cfg.samples_per_shard),
        max_inflight=2 * execute.current().cpus(),
        retries=2,
        deadline_s=3600,
        log=log,
    ).raise_if_failed(f"subset {name} (write)")
    shard_stats = [runtime.read_json(runtime.join(done_dir, f"{j:08d}.json")) for j in range(n_out)]

    # lineage: the per-shard parts, streamed into one file
    import pyarrow.parquet as pq

    fs, lpath = runtime.fs_path(runtime.join(out, "lineage.parquet"))
    with fs.open(lpath, "wb") as f, pq.ParquetWriter(f, schema.LINEAGE) as writer:
        for j in range(n_out):
            writer.write_table(
                runtime.read_parquet(runtime.join(work, "lineage", f"{j:08d}.parquet")).cast(schema.LINEAGE)
            )
    manifest = _manifest(
        pool, decisions, rule, cfg, out, plan, phash, kept, repeat, cut, exclude, shard_stats, previous
    )
    runtime.write_json(runtime.join(out, "manifest.json"), manifest)
    runtime.remove(work, recursive=True)
    mb = sum(s["bytes"] for s in shard_stats) / 1e6
    log(f"[subset:{name}] {cfg.size} samples in {n_out} shard(s), {mb:.1f} MB -> {out} ({time.time() - t0:.1f}s)")
    return manifest


def _manifest(pool, decisions, rule, cfg, out, plan, phash, kept, repeat, cut, exclude, shard_stats, previous):
    """Everything in it is a function of the inputs (no times, no output path): the same inputs and
    seed give a byte-identical manifest."""
    pool_manifest = runtime.read_json(Pool(pool).manifest)
    counts = pool_manifest["counts"]
    funnel = [{"stage": "download", "in": counts["rows"], "out": counts["status"].get("success", 0)}]
    funnel += [
        {"stage": f"filter:{f['step']}", "filter": f["filter"], "in": f["in"], "out": f["out"]}
        for f in decisions["funnel"]
    ]
    if exclude:
        funnel.append({"stage": "exclude", "in": decisions["kept"], "out": kept})
    funnel.append({"stage": "select", "in": kept, "out": cfg.size})
    return {
        "kind": "thresher.subset",
        "format": 1,
        "recipe": decisions["recipe"],
        "recipe_resolved": decisions["recipe_resolved"],
        "recipe_sha256": decisions["recipe_sha256"],
        "decisions_manifest_sha256": plan["decisions_sha256"],
        "thresholds": decisions["thresholds"],
        "inputs": decisions.get("inputs", {}),
        "pool": {
            "path": str(pool),
            "manifest_sha256": runtime.file_sha256(Pool(pool).manifest),
            "input_sha256": pool_manifest["input"]["sha256"],
            "rows": counts["rows"],
        },
        "size": cfg.size,
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "draw": {"index": plan.get("draw", 0), "of": cfg.draws, "distinct": rule.mode == "uniform" and kept > cfg.size},
        "selection": {
            **rule.describe(),
            "kept_by_recipe": kept,
            "cut_key": cut.key,
            "cut_uid": cut.uid,
            "allow_repeat": cfg.allow_repeat,
            "repeat": repeat,
        },
        "exclusion": ({**exclude.describe(), "sha256": plan["exclusion_sha256"]} if exclude else None),
        "shards": shard_stats,
        "lineage": {"file": "lineage.parquet", "sha256": runtime.file_sha256(runtime.join(out, "lineage.parquet"))},
        "funnel": funnel,
        "previous": previous,
        "plan_sha256": phash,
        "code": runtime.code_version(),
        "packages": runtime.package_versions(),
        "config": to_dict(cfg),
    }


def read_lineage(subset: str, columns: list[str] | None = None) -> pa.Table:
    return runtime.read_parquet(runtime.join(subset, "lineage.parquet"), columns=columns)


def read_manifest(subset: str) -> dict:
    path = runtime.join(subset, "manifest.json")
    if not runtime.exists(path):
        raise InputError(f"{subset} is not a subset (no manifest.json); make one with `thresher subset`")
    m = runtime.read_json(path)
    if m.get("kind") != "thresher.subset":
        raise InputError(f"{path} is not a subset manifest (kind {m.get('kind')!r})")
    return m
