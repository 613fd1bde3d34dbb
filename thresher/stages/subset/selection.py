"""Selection of `thresher subset` (and of `--uids-only` and `thresher audit remove`): which samples a subset
holds, read from a recipe's decisions (POOL/decisions/NAME).

- decisions_for: the recipe's decisions manifest, running the filter stage first when they are missing
  or stale.
- Exclusion, read_exclusion: samples no subset may hold (takedowns, opt-outs), by URL or host.
- Rule, rule_for, selection_keys: the key every candidate is ranked by (the last ranking step's score,
  or a seeded hash of the uid for a uniform draw); larger is better, ties go to the smaller uid.
- Cut, find_cut, _count, _cut: the exact-N cut, found by the one top-k search the filter's thresholds use
  (thresher/algo/topk.py): per-shard histograms merged on the driver, then only one bin's keys gathered.

Writes nothing: thresher/stages/subset/reshard.py and uids.py write what it selects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.algo import topk
from thresher.algo.hashes import normalize_url
from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.stages.filter import filter as filtering


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
