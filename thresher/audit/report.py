"""`thresher audit report SUBSET --out report.html`: one self-contained page (plots embedded as PNG).

Sections: the funnel per stage and filter step, with a gallery of samples under it (a few the subset kept,
a few each filter step dropped: gallery.py), top domains, caption languages, image sizes, score
histograms, and opt-out compliance (the pool's opted-out and removed samples against the subset).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.audit import gallery as galleries
from thresher.core import decode, runtime
from thresher.core.plotting import plain
from thresher.core.pool import Pool
from thresher.stages.acquire import yields
from thresher.stages.subset import subset


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bar(labels, values, title, xlabel):
    """A bar per label: the labels are the subset's own words (filter steps, domains, languages), drawn
    as they are (plotting.plain)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.3 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, values, color="#4c72b0")
    ax.set_yticks(y, [plain(label) for label in labels])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8)
    return _png(fig)


def _hist(series: dict[str, np.ndarray], title: str, xlabel: str, bins: int = 40):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, values in series.items():
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(values, bins=bins, alpha=0.6, label=f"{plain(name)} (n={len(values):,})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _png(fig)


def _samples(subset_dir: str, m: dict, n: int) -> tuple[str, dict]:
    """The galleries' HTML (kept, then each filter step's dropped) and a summary of what they show."""
    pool = m["pool"]["path"]
    try:
        max_pixels = decode.max_pixels_of(pool)
        kept = galleries.kept(subset_dir, m, n, max_pixels)
    except galleries.READ_ERRORS as err:  # a subset missing a shard file: said on the page, as verify would
        max_pixels = decode.MAX_PIXELS
        kept = galleries.Gallery(f"Kept: {m['size']:,} samples", [], f"the subset's shards could not be read: {err}")
    dropped = galleries.dropped(pool, m, n, max_pixels)
    summary = {
        "kept": len(kept.samples),
        "dropped": {step: len(g.samples) for step, g in dropped.items()},
        "notes": {g.heading: g.note for g in [kept, *dropped.values()]},
    }
    return galleries.to_html([kept, *dropped.values()]), summary


def _yield_html(pool: str) -> str:
    """The pool's download yield (yields.py): rows by failure reason and the hosts that failed most; what
    keeps it from being shown is said instead."""
    path = Pool(pool).stats("download-yield")
    try:
        r = runtime.read_json(path) if runtime.exists(path) else yields.report(pool)
    except (OSError, ValueError) as err:
        return f"<p class='note'>{html.escape(f'the pool {pool} could not be read: {err}')}</p>"
    if not r["rows"]:
        return f"<p class='note'>{html.escape(f'the pool {pool} has no downloaded shards here')}</p>"
    reasons = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['rows']:,}</td><td>{v['share']:.1%}</td></tr>"
        for k, v in r["by_reason"].items()
    )
    hosts = "".join(
        f"<tr><td>{html.escape(h['host'])}</td><td>{h['rows']:,}</td><td>{h['failed']:,}</td>"
        f"<td>{html.escape(', '.join(f'{k} {v}' for k, v in h['reasons'].items()))}</td></tr>"
        for h in r["hosts"]
    )
    return (
        f"<p>{r['fetched']:,} of {r['rows']:,} rows fetched ({r['yield']:.1%})</p>"
        f"<table><tr><th>not fetched: reason</th><th>rows</th><th>share</th></tr>{reasons}</table>"
        + (
            f"<p><b>Hosts that failed most</b></p><table><tr><th>host</th><th>rows</th><th>failed</th>"
            f"<th>reasons</th></tr>{hosts}</table>"
            if hosts
            else ""
        )
    )


def build_report(subset_dir: str, out: str, top: int = 20, gallery: int = 8) -> dict:
    """Write the report on `subset_dir` to `out`; `gallery` samples are shown per funnel step (0: none)."""
    import matplotlib

    matplotlib.use("Agg")
    m = subset.read_manifest(subset_dir)
    meta = pa.concat_tables(
        [runtime.read_parquet(runtime.join(subset_dir, s["parquet"])) for s in m["shards"]], promote_options="default"
    )
    lin = subset.read_lineage(subset_dir, columns=["uid", "url", "copy"])
    plots, sections = {}, []

    funnel = m["funnel"]
    plots["funnel"] = _bar(
        [f["stage"] for f in funnel], [f["out"] for f in funnel], "Samples left after each stage", "samples"
    )
    rows = "".join(
        f"<tr><td>{html.escape(f['stage'])}</td><td>{f['in']:,}</td><td>{f['out']:,}</td>"
        f"<td>{f['in'] - f['out']:,}</td></tr>"
        for f in funnel
    )
    sections.append(
        ("Funnel", f"<table><tr><th>stage</th><th>in</th><th>out</th><th>removed</th></tr>{rows}</table>", "funnel")
    )
    shown = None
    if gallery > 0:
        text, shown = _samples(subset_dir, m, gallery)
        sections.append(("Samples", text, None))

    domains = Counter(yields.host(u) for u in lin.column("url").to_pylist()).most_common(top)
    plots["domains"] = _bar([d for d, _ in domains], [c for _, c in domains], f"Top {len(domains)} domains", "samples")
    sections.append(("Top domains", "", "domains"))

    if "caption_lang" in meta.column_names:
        langs = Counter(meta.column("caption_lang").to_pylist()).most_common(top)
        plots["languages"] = _bar(
            [str(k) for k, _ in langs], [c for _, c in langs], "Caption language (fastText lid.176)", "samples"
        )
        sections.append(("Languages", "", "languages"))

    sizes = {
        c: meta.column(c).to_numpy(zero_copy_only=False).astype(float)
        for c in ("original_width", "original_height")
        if c in meta.column_names
    }
    if sizes:
        plots["sizes"] = _hist(sizes, "Original image size", "pixels")
        sections.append(("Image sizes", "", "sizes"))

    score_cols = [
        c for c in meta.column_names if c.endswith("_score") and c not in ("caption_lang_score", "recipe_score")
    ]
    scores = {c: meta.column(c).to_numpy(zero_copy_only=False).astype(float) for c in score_cols}
    if scores:
        plots["scores"] = _hist(scores, "CLIP scores (cosine of image and caption embeddings)", "score")
        sections.append(("Scores", "", "scores"))

    compliance = opt_out_compliance(subset_dir, m, lin)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in compliance.items())
    sections.append(("Opt-out compliance", f"<table>{rows}</table>", None))
    sections.append(("Download yield", _yield_html(m["pool"]["path"]), None))

    head = (
        f"<h1>Subset {html.escape(m['recipe'])}: {m['size']:,} samples</h1>"
        f"<p>pool {html.escape(m['pool']['path'])} · seed {m['seed']} · {len(m['shards'])} shards · "
        f"selection {html.escape(m['selection']['mode'])} · thresher {html.escape(str(m['code']['thresher']))} "
        f"(commit {html.escape(str(m['code']['git_commit']))})</p>"
    )
    body = head + "".join(
        f"<h2>{html.escape(title)}</h2>{text}"
        + (f'<img alt="{key}" src="data:image/png;base64,{plots[key]}">' if key else "")
        for title, text, key in sections
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>thresher subset report</title><style>"
        "body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        f"{galleries.STYLE}"
        f"</style></head><body>{body}</body></html>"
    )
    fs, path = runtime.fs_path(out)
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # e.g. reports/subset.html in a fresh job
    with fs.open(path, "w") as f:
        f.write(page)
    return {"out": str(out), "plots": sorted(plots), "compliance": compliance, "gallery": shown}


def opt_out_compliance(subset_dir: str, m: dict, lin: pa.Table) -> dict:
    """The pool's opted-out URLs (refused at download) and every removal request so far, each checked
    against the subset's URLs: compliance means zero of either in it."""
    from thresher.algo.hashes import normalize_url

    pool = m["pool"]["path"]
    urls = {normalize_url(u) for u in lin.column("url").to_pylist()}
    out = {}
    opted = set()
    if runtime.exists(Pool(pool).manifest):
        for p in runtime.glob(runtime.join(pool, "shards", "*.parquet")):
            t = runtime.read_parquet(p, columns=["url", "failure"])
            opted |= {
                normalize_url(u) for u in t.filter(pc.equal(t.column("failure"), "opted_out")).column("url").to_pylist()
            }
        out["pool samples opted out at download (X-Robots-Tag)"] = len(opted)
        out["opted-out samples in this subset"] = len(opted & urls)
    else:
        out["pool"] = f"{pool} is not reachable: download opt-outs not checked"
    ex = m.get("exclusion") or {}
    ex_urls = set(ex.get("url_list", []))
    out["removal requests honoured (URLs)"] = len(ex_urls)
    out["removal requests honoured (domains)"] = ", ".join(ex.get("domains", [])) or "none"
    # the same test `audit remove` applies: normalised URL listed, or host under a listed domain
    matched = int(
        subset.Exclusion(urls=ex_urls, domains=set(ex.get("domains", []))).mask(lin.column("url").to_pylist()).sum()
    )
    out["removed samples in this subset"] = matched
    versions, prev = 0, m.get("previous")
    while prev:
        versions += 1
        pm = runtime.join(prev["path"], "manifest.json")
        prev = runtime.read_json(pm).get("previous") if runtime.exists(pm) else None
    out["earlier versions"] = versions
    out["compliant"] = "yes" if matched == 0 and not (opted & urls) else "NO"
    return out
