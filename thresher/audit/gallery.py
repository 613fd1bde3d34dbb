"""The audit report's galleries: a few samples the subset kept, and a few each filter step dropped.

Thumbnails are JPEGs embedded as `data:` URIs (the page opens offline), made past the pool's pixel-limit
check (tarindex.thumbnail). Each image is read by one ranged read through a tar's member-offset index
(tarindex), never by reading its tar whole:

- kept: the first N samples of the subset in its own order (a seeded permutation, so a random draw),
  from the subset's tars: they are the bytes the subset ships, and need no pool;
- dropped by a step: the first N samples whose decision names that step (`dropped_by`), in the pool's
  shard and key order, from the pool's tars. Decisions are read shard by shard until every step has N.

Captions are web text, and web text is hostile: every caption, uid and step name goes through
html.escape. What keeps a gallery from being shown (the pool moved, a pool without images, decisions
changed since the subset was made, an image that does not decode) is said on the page, in its place;
it never fails the report.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import decode, runtime, tarindex
from thresher.core.errors import ThresherError
from thresher.core.pool import Pool

THUMB_SIDE = 128  # pixels, the longer side of a thumbnail
CAPTION_CHARS = 160  # a caption is cut here for the page (the whole one is in the subset)
# what reading a pool's or subset's files can raise; the gallery says it instead of failing the report
READ_ERRORS = (ThresherError, OSError, ValueError, KeyError)


@dataclass
class Sample:
    uid: str
    caption: str | None
    score: str  # as shown in the tooltip: "score 0.312", "clip_score 0.1", "no score"
    thumb: bytes | None = None  # JPEG
    why: str | None = None  # why there is no thumbnail


@dataclass
class Gallery:
    heading: str
    samples: list[Sample]
    note: str = ""  # why samples are missing, or how they were picked


def _score(label: str, value: float | None) -> str:
    return f"{label} {value:.4g}" if value is not None else "no score"


def _thumbs(index: tarindex.ShardIndex, keys: list[str], samples: list[Sample], max_pixels: int) -> None:
    """Fill in each sample's thumbnail (by its key in `index`), or why it has none."""
    for key, s in zip(keys, samples):
        try:
            data = index.read(key)
            if data is None:
                s.why = f"no image for key {key} in {index.tar}"
            else:
                s.thumb = tarindex.thumbnail(data, THUMB_SIDE, max_pixels)
        except Exception as err:  # noqa: BLE001 - a bad image is shown as its reason, not fatal
            s.why = decode.failure(err)


def _index(open_index, arg, what: str, samples: list[Sample]) -> tarindex.ShardIndex | None:
    """`open_index(*arg)`, or None with every sample told why (a missing, unreadable or changed tar)."""
    try:
        return open_index(*arg)
    except READ_ERRORS as err:
        for s in samples:
            s.why = f"{what}: {err}"
        return None


def kept(subset_dir: str, m: dict, n: int, max_pixels: int) -> Gallery:
    """The first `n` samples of the subset, from its own shards."""
    samples: list[Sample] = []
    for entry in m["shards"]:
        if len(samples) >= n:
            break
        path = runtime.join(subset_dir, entry["parquet"])
        columns = [c for c in ("uid", "key", "caption", "recipe_score") if c in runtime.parquet_columns(path)]
        rows = runtime.read_parquet(path, columns=columns).slice(0, n - len(samples)).to_pylist()
        part = [Sample(r["uid"], r.get("caption"), _score("score", r.get("recipe_score"))) for r in rows]
        tar = runtime.join(subset_dir, entry["name"])
        index = _index(tarindex.tar_index, (tar,), f"subset shard {entry['name']}", part)
        if index:
            _thumbs(index, [r["key"] for r in rows], part, max_pixels)
        samples += part
    heading = f"Kept: {m['size']:,} samples"
    return Gallery(heading, samples, f"the first {len(samples)} in the subset's (shuffled) order")


def _pool_problem(pool: Pool, m: dict) -> str | None:
    """Why the pool cannot show what its steps dropped, or None."""
    if not runtime.exists(pool.manifest):
        return f"the pool {pool.root} is not reachable (moved or deleted): dropped samples are not shown"
    if not pool.has_images():
        return (
            f"the pool {pool.root} has no images (imported from metadata only, thresher import-metadata): "
            "dropped samples are not shown"
        )
    dpath = pool.decisions_manifest(m["recipe"])
    if not runtime.exists(dpath) or runtime.file_sha256(dpath) != m.get("decisions_manifest_sha256"):
        return (
            f"the pool's decisions of {m['recipe']} are missing or changed since this subset was made: "
            "the samples they drop would not be this subset's"
        )
    return None


def _dropped_in_shard(pool: Pool, recipe: str, shard: int, want: dict[str, int], steps: list[str]) -> list:
    """[(step, key, Sample)] of shard `shard`: for each step still wanting samples (`want`, step -> how
    many), its first ones in key order (a shard's decisions are row-aligned with its key-sorted rows)."""
    dec = runtime.read_parquet(pool.decisions(recipe, shard), columns=["uid", "dropped_by", "step_scores"])
    picked = [
        (step, r)
        for step, k in want.items()
        for r in dec.filter(pc.equal(dec.column("dropped_by"), step)).slice(0, k).to_pylist()
    ]
    if not picked:
        return []
    meta = runtime.read_parquet(pool.metadata(shard), columns=["uid", "key", "caption"])
    uids = pa.array([r["uid"] for _, r in picked], pa.string())
    meta = {r["uid"]: r for r in meta.filter(pc.is_in(meta.column("uid"), value_set=uids)).to_pylist()}
    out = []
    for step, r in picked:
        score = (r["step_scores"] or [None] * len(steps))[steps.index(step)]  # the step's own score
        row = meta[r["uid"]]
        out.append((step, row["key"], Sample(r["uid"], row["caption"], _score(f"{step} score", score))))
    return out


def dropped(pool_root: str, m: dict, n: int, max_pixels: int) -> dict[str, Gallery]:
    """step -> the first `n` samples that step dropped (pool shard and key order); a step that can show
    none says why in its note."""
    pool = Pool(pool_root)
    funnel = {f["stage"].removeprefix("filter:"): f for f in m["funnel"] if f["stage"].startswith("filter:")}
    galleries = {
        step: Gallery(f"Dropped by {step} ({f['filter']}): {f['in'] - f['out']:,} samples", [])
        for step, f in funnel.items()
    }
    try:
        problem = _pool_problem(pool, m)
        if problem is None:
            want = {step: min(n, f["in"] - f["out"]) for step, f in funnel.items()}
            _fill_dropped(pool, m, galleries, want, max_pixels)
    except READ_ERRORS as err:
        problem = f"the pool's decisions could not be read ({err}): dropped samples are not shown"
    for g in galleries.values():
        shown = f"the first {len(g.samples)} in the pool's shard and key order" if g.samples else "none to show"
        g.note = problem or shown
    return galleries


def _fill_dropped(pool: Pool, m: dict, galleries: dict[str, Gallery], want: dict[str, int], max_pixels: int) -> None:
    """Add to each step's gallery its first `want[step]` dropped samples, shard by shard, until every step
    has them; a shard's tar is indexed only when it holds a sample to show."""
    steps = [s["name"] for s in m["recipe_resolved"]["steps"]]
    want = {step: k for step, k in want.items() if k > 0}
    for shard in pool.shards():
        if not want:
            return
        if not runtime.exists(pool.decisions(m["recipe"], shard)):
            continue
        picks = _dropped_in_shard(pool, m["recipe"], shard, want, steps)
        if not picks:
            continue
        samples = [s for _, _, s in picks]
        index = _index(tarindex.shard_index, (pool, shard), f"pool shard {shard:08d}", samples)
        if index:
            _thumbs(index, [key for _, key, _ in picks], samples, max_pixels)
        for step, _, s in picks:
            galleries[step].samples.append(s)
            want[step] -= 1
        want = {step: k for step, k in want.items() if k > 0}


# ---------------------------------------------------------------------------------------------------
# HTML

STYLE = (
    ".gallery{display:flex;flex-wrap:wrap;gap:8px}"
    f".gallery figure{{margin:0;width:{THUMB_SIDE}px;font-size:11px;overflow-wrap:anywhere}}"
    f".gallery .nothumb{{width:{THUMB_SIDE}px;height:{THUMB_SIDE // 2}px;background:#eee;color:#a00;overflow:hidden}}"
    ".gallery figcaption{line-height:1.2;max-height:4.8em;overflow:hidden}.note{color:#555;font-size:90%}"
)


def _figure(s: Sample) -> str:
    title = html.escape(f"uid {s.uid} · {s.score}")
    caption = s.caption if s.caption is not None else "(no caption)"
    if len(caption) > CAPTION_CHARS:
        caption = caption[: CAPTION_CHARS - 1] + "…"  # cut before escaping: an entity is never cut in two
    if s.thumb is not None:
        src = base64.b64encode(s.thumb).decode()
        picture = f'<img class="thumb" alt="{html.escape(f"sample {s.uid}")}" src="data:image/jpeg;base64,{src}">'
    else:
        picture = f'<div class="nothumb">{html.escape(s.why or "no image")}</div>'
    return f'<figure title="{title}">{picture}<figcaption>{html.escape(caption)}</figcaption></figure>'


def to_html(galleries: list[Gallery]) -> str:
    return "".join(
        f"<h3>{html.escape(g.heading)}</h3>"
        + (f'<p class="note">{html.escape(g.note)}</p>' if g.note else "")
        + (f'<div class="gallery">{"".join(_figure(s) for s in g.samples)}</div>' if g.samples else "")
        for g in galleries
    )
