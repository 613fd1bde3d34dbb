"""The download's yield report: how many rows were fetched, why the others were not, and which hosts failed most.

    POOL/stats/download-yield.json     rows, fetched, yield; rows by failure reason; the hosts that failed most

Each shard's task counts its failed rows by host (`shard_hosts`, kept in its `_stats.json` as
`failed_hosts`: the SHARD_HOSTS hosts with most failures in that shard, so a marker stays small on a shard of
10,000 hosts); `write` adds them up over the pool's shards when the download ends. `thresher download` prints
it and `thresher audit report` shows it. A host is the URL's hostname, lower-cased, as the web gives it:
it is hostile text wherever it is shown.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit

import pyarrow as pa

from thresher.core import runtime
from thresher.core.pool import Pool

SHARD_HOSTS = 200  # hosts per shard marker, the most failing first
TOP_HOSTS = 20  # hosts in the report


def host(url: str | None) -> str:
    try:
        return (urlsplit(url or "").hostname or "?").lower()
    except ValueError:
        return "?"


def shard_hosts(table: pa.Table) -> dict[str, dict]:
    """host -> {rows, failed: {reason: n}} for the hosts of a shard's metadata with a failed row."""
    rows: Counter[str] = Counter()
    failed: dict[str, Counter] = {}
    for url, failure in zip(table.column("url").to_pylist(), table.column("failure").to_pylist()):
        h = host(url)
        rows[h] += 1
        if failure is not None:
            failed.setdefault(h, Counter())[failure] += 1
    worst = sorted(failed, key=lambda h: (-sum(failed[h].values()), h))[:SHARD_HOSTS]
    return {h: {"rows": rows[h], "failed": dict(failed[h])} for h in worst}


def report(pool: str) -> dict:
    """The yield of the pool's complete shards (their markers), with the hosts that failed most."""
    status: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    hosts: dict[str, Counter] = {}
    host_rows: Counter[str] = Counter()
    without = 0  # shards whose marker predates the per-host counts
    for path in runtime.glob(runtime.join(pool, "shards", "*_stats.json")):
        stats = runtime.read_json(path)
        status.update(stats.get("status") or {})
        reasons.update(stats.get("failures") or {})
        if "failed_hosts" not in stats:
            without += 1
        for h, c in (stats.get("failed_hosts") or {}).items():
            hosts.setdefault(h, Counter()).update(c["failed"])
            host_rows[h] += c["rows"]
    rows = sum(status.values())
    fetched = status.get("success", 0)
    worst = sorted(hosts, key=lambda h: (-sum(hosts[h].values()), h))[:TOP_HOSTS]
    return {
        "rows": rows,
        "fetched": fetched,
        "yield": fetched / rows if rows else None,
        "by_reason": {r: {"rows": n, "share": n / rows} for r, n in reasons.most_common()},
        "hosts": [
            {"host": h, "rows": host_rows[h], "failed": sum(hosts[h].values()), "reasons": dict(hosts[h].most_common())}
            for h in worst
        ],
        "shards_without_hosts": without,
    }


def write(pool: str) -> dict:
    out = report(pool)
    runtime.makedirs(runtime.join(pool, "stats"))
    runtime.write_json(Pool(pool).stats("download-yield"), out)
    return out


def lines(r: dict, hosts: int = 5) -> list[str]:
    """The report as a few printed lines."""
    if not r["rows"]:
        return ["yield: no rows"]
    out = [f"yield: {r['fetched']:,} of {r['rows']:,} rows fetched ({r['yield']:.1%})"]
    if r["by_reason"]:
        out.append(
            "  not fetched: " + ", ".join(f"{k} {v['rows']:,} ({v['share']:.1%})" for k, v in r["by_reason"].items())
        )
    for h in r["hosts"][:hosts]:
        why = ", ".join(f"{k} {v}" for k, v in h["reasons"].items())
        out.append(f"  host {h['host']!r}: {h['failed']:,} of {h['rows']:,} rows failed ({why})")
    return out
