"""`thresher subset POOL --recipe NAME [--size N] --uids-only FILE.npy`: write_uid_file.

The selection of thresher/stages/subset/selection.py (the same cut, so with `--size N` the same N samples
a resharded subset holds; without it every sample the recipe keeps), written as DataComp's uid file: a
sorted `u8,u8` array that DataComp's resharder takes, with FILE.npy.json beside it (recipe, decisions,
pool, size, seed, the file's sha256). Nothing is resharded. While it runs, POOL/_work/uids/ID holds the
run's sort (map/ and sorted/); it is removed when the run ends, and a killed run's by the next run.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
import uuid

import numpy as np
import pyarrow as pa

from thresher.algo import hashes
from thresher.core import runtime
from thresher.core.errors import InputError, StageError
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.stages.subset.selection import (
    RANKING,
    Cut,
    Exclusion,
    _candidates,
    _chosen,
    _count,
    _cut,
    decisions_for,
    rule_for,
)


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
