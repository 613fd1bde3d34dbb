"""Synthetic web-pair pool: procedurally drawn images, captions that describe them, and planted faults.

`thresher synth --out DIR --samples N --seed S` writes:

    DIR/urls.parquet           uid, url, text, face_bboxes  (DataComp metadata style; what users download)
    DIR/ground_truth.parquet   the answer key (schema.GROUND_TRUTH); never read by the pipeline
    DIR/blocklists/*.txt       url_md5, url_sha256, image_sha256, image_pdq (docs/schemas.md)
    DIR/www/img/...            the files `thresher serve DIR` serves; www/_behaviors.json lists the
                               URLs that stall and the response headers to add (X-Robots-Tag)
    DIR/eval/<name>/...        held-out labelled sets in CLIP_benchmark's WebDataset layout
    DIR/trusted/NNNNN.tar      clean image-caption pairs apart from the pool (jpg + txt): the trusted
                               set a data-filtering network is trained on
    DIR/synth.json             the config, its hash and the count of each category

Every sample is drawn from its own RNG stream seeded by (seed, index), so the output is identical for
a seed whatever the number of worker processes.

The parts: world.py (scenes and captions), plan.py (the planted categories and each sample's plan),
drawing.py (the images, in worker processes), heldout.py (eval/ and trusted/), score.py (score_dedup);
this module holds the config and generate, which writes urls.parquet, ground_truth.parquet, the
blocklists, www/_behaviors.json and synth.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.algo.hashes import make_uid, url_hash
from thresher.core import schema
from thresher.core.config import config_hash, opt
from thresher.core.errors import InputError
from thresher.exec import execute
from thresher.synthetic.drawing import _derive_one, _draw_one, _parallel, encode, render
from thresher.synthetic.heldout import _write_eval_sets, _write_trusted_set, eval_image_bytes
from thresher.synthetic.plan import BLOCKLIST_FILES, CATEGORIES, DEFAULT_PROPORTIONS, _plan, _url
from thresher.synthetic.score import score_dedup
from thresher.synthetic.world import POSITIONS, english_caption, foreign_caption, random_scene, short_caption

# the names other modules use, defined here or in its parts
__all__ = [
    "BLOCKLIST_FILES",
    "CATEGORIES",
    "DEFAULT_PROPORTIONS",
    "SynthConfig",
    "encode",
    "english_caption",
    "eval_image_bytes",
    "foreign_caption",
    "generate",
    "random_scene",
    "render",
    "score_dedup",
    "short_caption",
    "synth_config_hash",
]


@dataclass
class SynthConfig:
    samples: int = opt(10000, "samples in the pool (rows of urls.parquet)")
    seed: int = opt(0, "seed of every sample's random stream (with the same settings, the same pool)")
    port: int = opt(8765, "port the URLs point at (`thresher serve DIR --port P` must use the same)")
    host: str = opt("127.0.0.1", "host the URLs point at")
    proportions: dict[str, float] = opt(
        help="fraction of the pool in each planted category; clean takes the rest",
        factory=lambda: dict(DEFAULT_PROPORTIONS),
    )
    eval_classification: int = opt(500, "images in each classification evaluation set")
    eval_retrieval: int = opt(300, "image-caption pairs in the retrieval evaluation set")
    trusted: int = opt(2000, "clean image-caption pairs in trusted/ (a DFN's high-quality training set)")
    stall_seconds: float = opt(120.0, "how long the server holds a stalled request before closing it")
    face_box_fraction: float = opt(0.02, "share of clean samples given a box in face_bboxes (to exercise blurring)")
    workers: int = opt(0, "image-drawing processes; 0 = one per core (the output does not depend on it)")

    def validate(self) -> None:
        unknown = sorted(set(self.proportions) - set(CATEGORIES) - {"clean"})
        if unknown:
            raise InputError(f"synth: unknown categories in proportions: {unknown}; known: {CATEGORIES[1:]}")
        if any(v < 0 for v in self.proportions.values()):
            raise InputError("synth: proportions must be >= 0")
        if sum(self.proportions.values()) > 0.7:
            raise InputError(
                "synth: planted proportions add up to more than 0.7; clean samples are needed as sources of duplicates"
            )
        if self.samples < 1:
            raise InputError("synth: --samples must be at least 1")
        if self.eval_classification < 0 or self.trusted < 0:
            raise InputError("synth: --eval-classification and --trusted must be 0 or more")
        if self.eval_classification < 1 and round(self.proportions.get("eval_contamination", 0.0) * self.samples) >= 1:
            # the planted contamination is copies of evaluation images: with none, there is nothing to copy
            raise InputError(
                "synth: --eval-classification 0 leaves the planted eval_contamination samples nothing to copy; "
                "give at least 1, or --proportions eval_contamination=0"
            )


# ---------------------------------------------------------------------------------------------------


def synth_config_hash(cfg: SynthConfig) -> str:
    # the worker count changes how fast, not what, is generated
    return config_hash(dataclasses.replace(cfg, workers=0))


def generate(out: str | Path, cfg: SynthConfig, log=print) -> dict:
    """Write a synthetic pool to `out` (a local directory). Returns the summary written to synth.json."""
    cfg.validate()
    t0 = time.time()
    out = Path(out)
    if (out / "synth.json").exists():
        previous = json.loads((out / "synth.json").read_text())
        if previous.get("config_hash") == synth_config_hash(cfg):
            log(f"[synth] {out} already holds this pool (config hash {previous['config_hash'][:12]}); reusing it")
            return previous
        raise InputError(
            f"{out} already holds a synthetic pool made with another config; choose a new --out or delete it"
        )
    for sub in ("www", "eval", "blocklists", "trusted"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "www" / "img").mkdir(parents=True, exist_ok=True)
    (out / "blocklists").mkdir(parents=True, exist_ok=True)
    www, eval_dir = out / "www", out / "eval"

    plans = _plan(cfg)
    workers = cfg.workers or os.cpu_count() or 1
    ex = execute.LocalExecutor(workers)  # forked processes: a source needs no cluster
    _write_eval_sets(cfg, eval_dir, ex)
    if cfg.trusted:
        _write_trusted_set(cfg, out / "trusted", ex)
    results = {
        r["index"]: r for r in _parallel(ex, _draw_one, [(cfg.seed, p, str(www), str(eval_dir)) for p in plans], 32)
    }
    # exact duplicates: the very same bytes under another URL
    for p in plans:
        if p["category"] == "exact_duplicate":
            src = plans[p["source"]]
            src_path = www / "img" / f"{src['index']:08d}.{src['format']}"
            shutil.copyfile(src_path, www / "img" / f"{p['index']:08d}.{p['format']}")
            results[p["index"]] = {**results[src["index"]], "index": p["index"], "pdq": None}
    derived_jobs = []
    for p in plans:
        if p["category"] == "near_duplicate":
            src = plans[p["source"]]
            derived_jobs.append((cfg.seed, p, str(www), str(www / "img" / f"{src['index']:08d}.{src['format']}")))
        elif p["category"] == "eval_contamination":
            tmp = out / "www" / f".eval-src-{p['index']}.jpg"
            tmp.write_bytes(eval_image_bytes(eval_dir, "shapes_kind", p["source"]))
            derived_jobs.append((cfg.seed, p, str(www), str(tmp)))
    for r in _parallel(ex, _derive_one, derived_jobs, 8):
        results[r["index"]] = r
    for tmp in www.glob(".eval-src-*"):
        tmp.unlink()

    # urls, ground truth, blocklists, server behaviours
    urls, gt_rows = [], []
    lists: dict[str, list[str]] = {name: [] for name in BLOCKLIST_FILES}
    behaviors: dict = {"stall": [], "headers": {}, "stall_seconds": cfg.stall_seconds}
    for p in plans:
        r = results[p["index"]]
        url = _url(cfg, p)
        uid = make_uid(url, p["text"])
        path = f"/img/{p['index']:08d}.{p['format']}"
        box = []
        if p["face_box"]:
            w, h = p["size"]
            px, py = POSITIONS[p["scene"]["pos"]]
            box = [[max(0.0, px - 0.15), max(0.0, py - 0.15), min(1.0, px + 0.15), min(1.0, py + 0.15)]]
        urls.append({"uid": uid, "url": url, "text": p["text"], "face_bboxes": box})
        if p["category"] == "timeout":
            behaviors["stall"].append(path)
        if p["category"] == "opted_out":
            behaviors["headers"][path] = {"X-Robots-Tag": "noai, noimageai"}
        bl = p["blocklist"]
        if bl == "url_md5" or bl == "url_sha256":
            lists[bl].append(url_hash(url, bl.split("_")[1]))
        elif bl == "image_sha256":
            lists[bl].append(r["sha256"])
        elif bl == "image_pdq":
            lists[bl].append(r["pdq"])
        source_uid = None
        if p["category"] in ("exact_duplicate", "near_duplicate"):
            source_uid = p["source"]  # resolved to a uid below, once every uid is known
        elif p["category"] == "eval_contamination":
            source_uid = f"shapes_kind/test/s{p['source']:06d}"
        served = p["category"] not in ("http_404", "timeout")
        gt_rows.append(
            {
                "uid": uid,
                "url": url,
                "category": p["category"],
                "source_uid": source_uid,
                "kind": p["scene"]["kind"],
                "color": p["scene"]["color"],
                "count": p["scene"]["count"],
                "lang": p["lang"],
                "format": p["format"],
                "width": r["width"] if served else None,
                "height": r["height"] if served else None,
                "sha256": r["sha256"],
                "blocklist": bl,
                "variant": p["variant"],
            }
        )
    for row in gt_rows:
        if isinstance(row["source_uid"], int):
            row["source_uid"] = gt_rows[row["source_uid"]]["uid"]

    urls_schema = schema.URLS.append(pa.field("face_bboxes", pa.list_(pa.list_(pa.float64()))))
    pq.write_table(pa.Table.from_pylist(urls, schema=urls_schema), out / "urls.parquet")
    pq.write_table(pa.Table.from_pylist(gt_rows, schema=schema.GROUND_TRUTH), out / "ground_truth.parquet")
    for name, values in lists.items():
        header = f"# thresher blocklist: {name.replace('_', ' ')} (one lowercase hex digest per line)\n"
        (out / "blocklists" / f"{name}.txt").write_text(header + "".join(v + "\n" for v in sorted(values)))
    (www / "_behaviors.json").write_text(json.dumps(behaviors, indent=1, sort_keys=True))

    counts: dict[str, int] = {}
    for p in plans:
        counts[p["category"]] = counts.get(p["category"], 0) + 1
    summary = {
        "config": dataclasses.asdict(cfg),
        "config_hash": synth_config_hash(cfg),
        "counts": counts,
        "samples": cfg.samples,
        "urls": "urls.parquet",
        "ground_truth": "ground_truth.parquet",
        "eval_sets": sorted(p.name for p in eval_dir.iterdir()),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    log(
        f"[synth] wrote {cfg.samples} samples to {out} in {summary['seconds']}s: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    )
    return summary
