"""Provenance and audit: `thresher audit verify|trace|explain|report|remove|recheck`.

- verify SUBSET          re-hash every shard (manifest) and every sample's image bytes (lineage); name
                         each shard or sample that is changed, missing or extra
- trace SUBSET UID       a sample's whole history: source, download, every step's score, where it is now
- explain POOL UID       why a sample is not in a recipe's output: download failure, or the step that
                         dropped it with its score against the step's threshold
- report SUBSET          one HTML page: funnel with sample galleries, domains, languages, sizes, scores,
                         opt-out compliance
- remove SUBSET          a new version without the samples of takedown / opt-out requests (--refill tops
                         it back up to N from the next-ranked candidates); its manifest links the old one
- recheck SUBSET         re-download a random sample of URLs: link rot (gone) and content drift rates
"""

from __future__ import annotations

import hashlib
import http.client
import tarfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.algo import hashes
from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import IMAGE_EXTS, Pool, member_key
from thresher.exec import execute
from thresher.stages.subset import subset

KNOWN_FILES = ("manifest.json", "lineage.parquet")


# ---------------------------------------------------------------------------------------------------
# verify


def _verify_shard(subset_dir: str, entry: dict, expected: dict[str, str]) -> list[str]:
    """Problems of one listed shard: its file hashes, then every sample's image bytes."""
    problems = []
    tar_path = runtime.join(subset_dir, entry["name"])
    for name, sha in ((entry["name"], entry["sha256"]), (entry["parquet"], entry["parquet_sha256"])):
        path = runtime.join(subset_dir, name)
        if not runtime.exists(path):
            problems.append(f"missing shard file {name}")
        elif runtime.file_sha256(path) != sha:
            problems.append(f"changed shard file {name} (sha256 differs from the manifest)")
    if not runtime.exists(tar_path):
        return problems
    seen: dict[str, str | None] = {}
    fs, path = runtime.fs_path(tar_path)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = member_key(m.name)
                seen.setdefault(key, None)
                if ext in IMAGE_EXTS and seen[key] is None:
                    seen[key] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.append(f"unreadable shard {entry['name']} ({err}); samples after the damage are unchecked")
    for key, sha in sorted(expected.items()):
        if key not in seen:
            problems.append(f"missing sample {key} in {entry['name']}")
        elif seen[key] != sha:
            problems.append(
                f"changed sample {key} in {entry['name']} (image sha256 {str(seen[key])[:12]}…, "
                f"lineage says {sha[:12]}…)"
            )
    for key in sorted(set(seen) - set(expected)):
        problems.append(f"extra sample {key} in {entry['name']}")
    return problems


def _verify_task(entry: dict, subset_dir: str) -> list[str]:
    shard = int(entry["name"].split(".")[0])
    import pyarrow.parquet as pq

    fs, path = runtime.fs_path(runtime.join(subset_dir, "lineage.parquet"))
    with fs.open(path, "rb") as f:  # row groups are written per shard, so this reads one shard's rows
        t = pq.read_table(f, columns=["subset_key", "image_sha256"], filters=[("subset_shard", "=", shard)])
    return _verify_shard(
        subset_dir, entry, dict(zip(t.column("subset_key").to_pylist(), t.column("image_sha256").to_pylist()))
    )


def verify(subset_dir: str, ray_address: str | None = None) -> dict:
    """{"ok": bool, "problems": [...], "shards": n, "samples": n}. Shards are checked as Ray tasks."""
    m = subset.read_manifest(subset_dir)
    problems = []
    lineage = runtime.join(subset_dir, "lineage.parquet")
    if not runtime.exists(lineage):
        return {
            "ok": False,
            "problems": ["missing lineage.parquet: samples cannot be checked"],
            "shards": len(m["shards"]),
            "samples": m["size"],
        }
    if runtime.file_sha256(lineage) != m["lineage"]["sha256"]:
        problems.append("changed lineage.parquet (sha256 differs from the manifest)")
    expected_files = set(KNOWN_FILES) | {s["name"] for s in m["shards"]} | {s["parquet"] for s in m["shards"]}
    present = {p.rstrip("/").rsplit("/", 1)[-1] for p in runtime.glob(runtime.join(subset_dir, "*"))}
    problems += [f"extra file {name}" for name in sorted(present - expected_files)]
    execute.start(ray_address)
    for found in execute.map(_verify_task, m["shards"], subset_dir, label="audit verify", quiet=False, unit="shards"):
        problems += found
    problems += _verify_sources(m["pool"]["path"], lineage)
    return {"ok": not problems, "problems": problems, "shards": len(m["shards"]), "samples": m["size"]}


def _verify_sources(pool: str, lineage: str) -> list[str]:
    """The adopted tars (import-pool) the subset's samples came from, re-hashed against the sha256 recorded
    at import: the lineage names their shards and keys as the source of each sample, and a tar replaced
    since then no longer is. Downloaded tars live inside the pool and have no record; a pool that is not
    here (a subset shipped elsewhere) is not checked."""
    if not runtime.exists(Pool(pool).manifest) or not Pool(pool).has_images():
        return []
    shards = sorted(set(runtime.read_parquet(lineage, columns=["pool_shard"]).column("pool_shard").to_pylist()))
    shards = [s for s in shards if runtime.exists(Pool(pool).shard_stats(s)) and Pool(pool).tar_sha256(s)]
    return [p for found in execute.map(_verify_source, shards, pool, label="audit verify sources") for p in found]


def _verify_source(shard: int, pool: str) -> list[str]:
    try:
        Pool(pool).check_tar(shard)
    except InputError as err:
        return [f"changed source: {err}"]
    except OSError as err:
        return [f"missing source tar of pool shard {shard:08d} ({err})"]
    return []


# ---------------------------------------------------------------------------------------------------
# trace and explain


def trace(subset_dir: str, uid: str) -> dict:
    uid = hashes.parse_uid(uid, "audit trace UID")  # the one uid rule: a typo is named, not "not in"
    m = subset.read_manifest(subset_dir)
    lin = subset.read_lineage(subset_dir)
    rows = lin.filter(pc.equal(lin.column("uid"), uid)).to_pylist()
    if not rows:
        raise InputError(
            f"uid {uid} is not in {subset_dir} (explain why with `thresher audit explain {m['pool']['path']} {uid}`)"
        )
    first = rows[0]
    meta = runtime.read_parquet(runtime.join(subset_dir, f"{first['subset_shard']:08d}.parquet"))
    meta = meta.filter(pc.equal(meta.column("key"), first["subset_key"])).to_pylist()[0]
    thresholds = m.get("thresholds", {})
    return {
        "uid": uid,
        "url": first["url"],
        "caption": meta.get("caption"),
        "source": {
            "pool": m["pool"]["path"],
            "pool_manifest_sha256": m["pool"]["manifest_sha256"],
            "shard": f"{first['pool_shard']:08d}",
            "key": first["pool_key"],
        },
        "download": {
            "status": first["status"],
            "downloaded_at": str(first["downloaded_at"]),
            "source_sha256": first["source_sha256"],
        },
        "recipe": {
            "name": m["recipe"],
            "sha256": m["recipe_sha256"],
            "steps": [
                {
                    **s,
                    "threshold": (thresholds.get(s["step"]) or {}).get("threshold"),
                    "params": next(
                        (x["params"] for x in m["recipe_resolved"]["steps"] if x["name"] == s["step"]), None
                    ),
                }
                for s in first["steps"]
            ],
        },
        "selection": {**m["selection"], "rank_key": first["rank_key"]},
        "in_subset": [
            {
                "shard": f"{r['subset_shard']:08d}",
                "key": r["subset_key"],
                "copy": r["copy"],
                "image_sha256": r["image_sha256"],
            }
            for r in rows
        ],
        "subset_version": {"previous": m.get("previous")},
        "features": {k: v for k, v in meta.items() if k not in ("uid", "key", "url", "caption")},
    }


def _find_in_pool(pool: str, uid: str) -> tuple[int, dict] | None:
    for s in Pool(pool).shards():
        path = Pool(pool).metadata(s)
        i = pc.index(runtime.read_parquet(path, columns=["uid"]).column("uid"), uid).as_py()
        if i >= 0:  # only the shard holding it is read whole
            return s, runtime.read_parquet(path).slice(i, 1).to_pylist()[0]
    return None


def _threshold_text(step: dict, threshold: dict | None) -> str:
    if threshold:
        t = threshold.get("threshold")
        return (
            f"top {threshold['fraction']:.0%} of {threshold['of']} ({threshold['ranked']} ranked): threshold {t:.6g}"
            if t is not None
            else "keeps all"
        )
    return (
        "rule: " + ", ".join(f"{k}={v}" for k, v in (step.get("params") or {}).items())
        if step.get("params")
        else "rule: the filter's own"
    )


def explain(pool: str, uid: str, recipes: list[str] | None = None) -> dict:
    uid = hashes.parse_uid(uid, "audit explain UID")  # the one uid rule: upper case is read as lower
    found = _find_in_pool(pool, uid)
    if found is None:
        raise InputError(f"uid {uid} is not in {pool}")
    shard, row = found
    return explain_row(pool, shard, row, recipes)


def explain_row(pool: str, shard: int, row: dict, recipes: list[str] | None = None) -> dict:
    """`explain` of the sample whose metadata row (of pool shard `shard`) is `row`: also the sample page
    of `thresher browse`, which finds the row by shard and key."""
    uid = row["uid"]
    out = {
        "uid": uid,
        "url": row["url"],
        "caption": row.get("caption"),
        "shard": f"{shard:08d}",
        "key": row["key"],
        "download": {"status": row["status"], "failure": row.get("failure"), "error": row.get("error_message")},
    }
    if row["status"] != "success":
        out["verdict"] = f"not downloaded: {row.get('failure') or row['status']} ({row.get('error_message')})"
        return out
    dd = Pool(pool).dedup(shard)
    if runtime.exists(dd):
        t = runtime.read_parquet(dd)
        r = t.filter(pc.equal(t.column("uid"), uid)).to_pylist()
        if r:
            out["dedup"] = {"keep": r[0]["keep"], "reason": r[0]["reason"], "group": r[0]["duplicate_group"]}
    names = recipes or sorted(p.rstrip("/").split("/")[-2] for p in runtime.glob(Pool(pool).decisions_manifest("*")))
    out["recipes"] = {}
    for name in names:
        mpath = Pool(pool).decisions_manifest(name)
        if not runtime.exists(mpath):
            raise InputError(f"{pool} has no decisions for recipe {name}; run `thresher filter {pool} --recipe {name}`")
        m = runtime.read_json(mpath)
        t = runtime.read_parquet(Pool(pool).decisions(name, shard))
        r = t.filter(pc.equal(t.column("uid"), uid)).to_pylist()[0]
        steps = m["recipe_resolved"]["steps"]
        scores = r.get("step_scores") or [None] * len(steps)
        dropped = next((i for i, s in enumerate(steps) if s["name"] == r["dropped_by"]), None)
        detail = []
        for i, (s, sc) in enumerate(zip(steps, scores)):
            decision = "passed" if dropped is None or i < dropped else "dropped" if i == dropped else "not reached"
            detail.append(
                {
                    "step": s["name"],
                    "filter": s["filter"],
                    "score": sc,
                    "decision": decision,
                    "rule": _threshold_text(s, m["thresholds"].get(s["name"])),
                }
            )
        if r["keep"]:
            verdict = "kept"
        else:
            d = detail[dropped]
            score = f"score {d['score']:.6g}" if d["score"] is not None else "no score"
            verdict = f"dropped by step {d['step']} ({d['filter']}): {score}; {d['rule']}"
        out["recipes"][name] = {"verdict": verdict, "steps": detail}
    return out


# ---------------------------------------------------------------------------------------------------
# remove


def remove(
    subset_dir: str,
    out: str,
    urls_file: str | None = None,
    domains_file: str | None = None,
    refill: bool = False,
    ray_address: str | None = None,
    log=print,
) -> dict:
    """A new version of `subset_dir` in `out` without the samples the requests name. Requests are cumulative:
    the new version also honours every earlier version's."""
    m = subset.read_manifest(subset_dir)
    if m["selection"].get("repeat"):
        raise InputError(
            f"{subset_dir} repeats samples (--allow-repeat); remove does not handle upsampled "
            f"subsets yet: make a new subset from the pool instead"
        )
    request = subset.read_exclusion(urls_file, domains_file)
    earlier = m.get("exclusion") or {}
    exclude = subset.Exclusion(
        urls=request.urls | set(earlier.get("url_list", [])), domains=request.domains | set(earlier.get("domains", []))
    )
    lin = subset.read_lineage(subset_dir, columns=["uid", "url"])
    hit = request.mask(lin.column("url").to_pylist())
    if not hit.any():
        raise InputError(f"no sample of {subset_dir} matches the requests: it already honours them")
    pool = m["pool"]["path"]
    dpath = Pool(pool).decisions_manifest(m["recipe"])
    if not runtime.exists(dpath) or runtime.file_sha256(dpath) != m["decisions_manifest_sha256"]:
        raise InputError(
            f"{pool}: the decisions of {m['recipe']} changed since {subset_dir} was made, so its "
            f"ranking cannot be continued; make a new subset instead"
        )
    decisions = runtime.read_json(dpath)
    removed = int(hit.sum())
    size = m["size"] if refill else m["size"] - removed
    if size < 1:
        raise InputError(f"the requests remove every sample of {subset_dir}")
    cfg = subset.SubsetConfig(size=size, seed=m["seed"], samples_per_shard=m["samples_per_shard"])
    previous = {
        "path": str(subset_dir),
        "manifest_sha256": runtime.file_sha256(runtime.join(subset_dir, "manifest.json")),
        "removed": removed,
        "removed_uids": sorted(set(lin.column("uid").filter(pa.array(hit)).to_pylist())),
        "refill": refill,
        "request": {
            "urls": urls_file,
            "domains": domains_file,
            "urls_sha256": urls_file and runtime.file_sha256(urls_file),
            "domains_sha256": domains_file and runtime.file_sha256(domains_file),
        },
    }
    execute.start(ray_address)
    log(f"[audit remove] {removed} sample(s) of {subset_dir} match; writing {size} samples to {out}")
    return subset.build(
        pool, decisions, subset.rule_for(decisions, m["seed"]), cfg, out, exclude=exclude, previous=previous, log=log
    )


# ---------------------------------------------------------------------------------------------------
# recheck

DISALLOWING = ("noai", "noimageai", "noindex", "noimageindex", "none")


def _fetch(url: str, timeout: float, allow_private: bool, allow_hosts: list[str]) -> tuple[str, str | None, str | None]:
    """(outcome, sha256 of the body, detail): outcome is ok, gone, opted_out or refused. Download's
    opener and checks (netsafety.opener); `timeout` bounds the whole fetch, redirects included, not each
    read, so a server that trickles bytes cannot hold it."""
    from thresher.core.netsafety import REFUSED, opener

    req = urllib.request.Request(url, headers={"User-Agent": "thresher-recheck"})
    sha = hashlib.sha256()
    try:
        with opener(allow_private, allow_hosts, deadline=time.monotonic() + timeout).open(req, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 16), b""):  # hashed as it arrives: any size, little memory
                sha.update(block)
            robots = ",".join(resp.headers.get_all("X-Robots-Tag") or []).lower()
    except urllib.error.HTTPError as err:
        return "gone", None, f"http_{err.code}"
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        if REFUSED in str(err):  # a private address behind the name, or a redirect to one
            return "refused", None, str(err)[:200]
        return "gone", None, f"{type(err).__name__}: {err}"[:200]
    directives = {d.strip().split(":")[-1].strip() for d in robots.split(",") if d.strip()}
    if directives & set(DISALLOWING):
        return "opted_out", sha.hexdigest(), f"X-Robots-Tag: {robots}"
    return "ok", sha.hexdigest(), None


def _recheck_task(urls: list[str], timeout: float, allow_private: bool, allow_hosts: list[str]) -> list[tuple]:
    """One item of the execution layer: a batch of URLs, fetched concurrently (the work waits on the
    network, not the CPU)."""
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda u: _fetch(u, timeout, allow_private, allow_hosts), urls))


def recheck(
    subset_dir: str,
    sample: int,
    seed: int = 0,
    timeout: float = 10.0,
    threads: int = 32,
    allow_private_addresses: bool = False,
    allow_hosts: list[str] | None = None,
    ray_address: str | None = None,
) -> dict:
    """Re-download `sample` random URLs of a subset. gone: no longer served (an HTTP error, or no whole
    answer within `timeout`); drifted: served, but the bytes differ from those downloaded
    (source_sha256); opted_out: now carries a disallowing X-Robots-Tag; refused: a private address
    (as written, resolved, connected to or redirected to), unless allowed as at download.

    URLs go to the execution layer in batches of `threads`, each fetched concurrently, with a deadline
    per batch past which it is cancelled: its URLs count as gone."""
    from thresher.stages.acquire.ingest import refusals

    if timeout <= 0 or threads < 1:
        raise InputError(f"audit recheck: --timeout must be > 0 and threads at least 1 (got {timeout}, {threads})")
    allow_hosts = list(allow_hosts or ())
    lin = subset.read_lineage(subset_dir, columns=["uid", "url", "source_sha256", "copy"])
    lin = lin.filter(pc.equal(lin.column("copy"), 0))
    if lin.num_rows == 0:
        raise InputError(f"{subset_dir} has no samples")
    k = min(sample, lin.num_rows)
    pick = np.sort(np.random.default_rng(seed).choice(lin.num_rows, size=k, replace=False))
    rows = lin.take(pa.array(pick)).to_pylist()
    # as written, before any fetch: ingest's rule, once per host
    why = [None] * k if allow_private_addresses else refusals(pa.array([r["url"] for r in rows]), allow_hosts)
    fetched: list = [("refused", None, w) if w else None for w in why]
    todo = [i for i in range(k) if fetched[i] is None]
    batches = [todo[i : i + threads] for i in range(0, len(todo), threads)]
    if batches:
        execute.start(ray_address)
        out = execute.run(
            _recheck_task,
            [[rows[i]["url"] for i in b] for b in batches],
            timeout,
            allow_private_addresses,
            allow_hosts,
            label="audit recheck",
            deadline_s=2 * timeout + 60,  # every fetch ends by `timeout`; the rest covers DNS and a worker's start
            unit="URLs",
            weight=len,
            quiet=True,
        )
        for n, batch in enumerate(batches):  # a batch cancelled past its deadline (or lost): its URLs are gone
            got = out.results[n] or [("gone", None, f"no answer: {out.failed.get(n)}"[:200])] * len(batch)
            for i, one in zip(batch, got):
                fetched[i] = one
    results, counts = [], Counter()
    for r, (outcome, sha, detail) in zip(rows, fetched):
        if outcome == "ok" and sha != r["source_sha256"]:
            outcome = "drifted"
        counts[outcome] += 1
        results.append(
            {
                "uid": r["uid"],
                "url": r["url"],
                "outcome": outcome,
                "detail": detail,
                "sha256": sha,
                "expected_sha256": r["source_sha256"],
            }
        )
    rate = {f"{o}_rate": counts[o] / k for o in ("gone", "drifted", "opted_out", "refused")}
    return {"subset": str(subset_dir), "checked": k, "seed": seed, "counts": dict(counts), **rate, "samples": results}
