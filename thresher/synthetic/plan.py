"""The plan of a synthetic pool (`thresher synth`): which planted category each sample is in, and what it shows.

CATEGORIES and DEFAULT_PROPORTIONS name the planted faults; _plan draws, cheaply and in the main process,
every sample's category, scene, caption, format, size, blocklist and duplicate source, each from its own
RNG stream (_rng: seeded by seed, stream and index), so the pool is the same whatever the number of
worker processes. _url is the URL a sample is served at. Nothing is written here: drawing.py renders
the plan, synth.py writes the source. `cfg` is synth.py's SynthConfig (synth.py imports this module,
so it is not named here).
"""

from __future__ import annotations

import numpy as np

from thresher.core.errors import InputError
from thresher.synthetic.world import english_caption, foreign_caption, random_scene, short_caption

# ---------------------------------------------------------------------------------------------------
# Categories

CATEGORIES = [
    "clean",
    "mismatched_caption",
    "non_english",
    "short_caption",
    "tiny_image",
    "extreme_aspect",
    "exact_duplicate",
    "near_duplicate",
    "blocked_url",
    "blocked_image",
    "blocked_pdq",
    "http_404",
    "timeout",
    "corrupt",
    "opted_out",
    "eval_contamination",
]
DEFAULT_PROPORTIONS = {
    "mismatched_caption": 0.08,
    "non_english": 0.05,
    "short_caption": 0.03,
    "tiny_image": 0.03,
    "extreme_aspect": 0.03,
    "exact_duplicate": 0.04,
    "near_duplicate": 0.05,
    "blocked_url": 0.01,
    "blocked_image": 0.01,
    "blocked_pdq": 0.01,
    "http_404": 0.02,
    "timeout": 0.003,
    "corrupt": 0.01,
    "opted_out": 0.02,
    "eval_contamination": 0.005,
}
# Categories whose image is a copy of another sample's (or an eval image's) bytes.
NEAR_VARIANTS = ["reencode", "resize", "recolor", "watermark"]
DERIVED = {"exact_duplicate", "near_duplicate", "eval_contamination"}
BLOCKLIST_FILES = ["url_md5", "url_sha256", "image_sha256", "image_pdq"]


def image_size(category: str, rng: np.random.Generator) -> tuple[int, int]:
    if category == "tiny_image":
        short = int(rng.integers(40, 181))
        aspect = rng.uniform(1.0, 1.8)
    elif category == "extreme_aspect":
        short = int(rng.integers(200, 261))
        aspect = rng.uniform(3.3, 5.0)
    else:
        short = int(rng.integers(224, 361))
        aspect = rng.uniform(1.0, 1.7)
    long = int(short * aspect)
    return (long, short) if rng.random() < 0.6 else (short, long)


# ---------------------------------------------------------------------------------------------------
# Planning (cheap, in the main process; drawing.py draws in worker processes)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _plan(cfg) -> list[dict]:
    n = cfg.samples
    counts = {c: int(round(cfg.proportions.get(c, 0.0) * n)) for c in CATEGORIES[1:]}
    counts["clean"] = n - sum(counts.values())
    cats = np.array([c for c in CATEGORIES for _ in range(counts[c])], dtype=object)
    _rng(cfg.seed, 0, 0).shuffle(cats)
    clean_idx = [i for i in range(n) if cats[i] == "clean"]
    plans = []
    for i in range(n):
        cat = str(cats[i])
        rng = _rng(cfg.seed, 1, i)
        scene = random_scene(rng)
        fmt = str(rng.choice(["jpg"] * 15 + ["png"] * 2 + ["webp"] * 3))
        plan = {
            "index": i,
            "category": cat,
            "scene": scene,
            "format": fmt,
            "lang": "en",
            "quality": int(rng.integers(75, 96)),
            "size": image_size(cat, rng),
            "source": None,
            "face_box": cat == "clean" and rng.random() < cfg.face_box_fraction,
            "blocklist": None,
            "variant": None,
        }
        if cat in ("exact_duplicate", "near_duplicate"):
            plan["source"] = int(clean_idx[int(rng.integers(len(clean_idx)))]) if clean_idx else None
            if plan["source"] is None:
                raise InputError("synth: duplicates need clean samples; lower the planted proportions")
        if cat == "eval_contamination":
            plan["source"] = int(rng.integers(cfg.eval_classification))
        if cat in ("near_duplicate", "eval_contamination"):
            plan["variant"] = str(rng.choice(NEAR_VARIANTS))
            if plan["format"] == "png":  # a lossless re-encode could give back the very same bytes
                plan["format"] = "jpg"
        elif cat == "blocked_pdq":
            plan["variant"] = str(rng.choice(NEAR_VARIANTS))
        # captions
        if cat == "mismatched_caption":
            other = random_scene(rng)
            while other["kind"] == scene["kind"] or other["color"] == scene["color"]:
                other = random_scene(rng)
            plan["text"] = english_caption(other, rng)
        elif cat == "non_english":
            plan["text"], plan["lang"] = foreign_caption(scene, rng)
        elif cat == "short_caption":
            plan["text"] = short_caption(scene, rng)
        else:
            plan["text"] = english_caption(scene, rng)  # duplicates get their own caption below
        if cat in ("blocked_url", "blocked_image"):
            # URL lists come as MD5 or SHA-256; image lists as SHA-256 of the bytes, the hash the download
            # records (an MD5 of the original bytes cannot be recovered once img2dataset has resized them)
            plan["blocklist"] = (
                ("url_md5" if rng.random() < 0.5 else "url_sha256") if cat == "blocked_url" else "image_sha256"
            )
        elif cat == "blocked_pdq":
            plan["blocklist"] = "image_pdq"
        plan["scene"]["hazard"] = cat.startswith("blocked_")
        plans.append(plan)
    # duplicates show their source's scene (a new caption of it) and the source's format
    for p in plans:
        if p["category"] in ("exact_duplicate", "near_duplicate"):
            src = plans[p["source"]]
            p["scene"] = dict(src["scene"])
            p["text"] = english_caption(p["scene"], _rng(cfg.seed, 2, p["index"]))
            if p["category"] == "exact_duplicate":
                p["format"], p["size"] = src["format"], src["size"]
    return plans


def _url(cfg, plan: dict) -> str:
    return f"http://{cfg.host}:{cfg.port}/img/{plan['index']:08d}.{plan['format']}"
