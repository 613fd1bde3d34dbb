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
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance

from thresher.algo.hashes import make_uid, pdq_hash, url_hash
from thresher.core import schema
from thresher.core.config import config_hash, opt
from thresher.core.errors import InputError
from thresher.exec import execute

# ---------------------------------------------------------------------------------------------------
# The visual world

KINDS = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent", "arrow"]
PLURAL = {"cross": "crosses"}
COLORS = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 70, 215),
    "yellow": (245, 215, 35),
    "purple": (130, 50, 170),
    "orange": (245, 135, 25),
    "pink": (240, 120, 180),
    "brown": (120, 75, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "beige": (225, 210, 180),
    "light blue": (170, 205, 235),
    "teal": (30, 125, 125),
    "navy": (25, 35, 90),
    "cream": (250, 245, 220),
    "olive": (110, 115, 50),
    "lavender": (200, 185, 230),
    "charcoal": (55, 58, 62),
    "sand": (205, 180, 130),
}
TEXTURES = ["plain", "striped", "dotted", "checkered", "grainy", "faded"]
POSITIONS = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.27, 0.27),
    "bottom right": (0.73, 0.73),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

EN_TEMPLATES = [
    "a photo of {n} {size} {color} {kinds} on a {texture} {bg} background",
    "{N} {color} {kinds} arranged on a {texture} {bg} surface",
    "an illustration of {n} {color} {kinds} against a {texture} {bg} backdrop",
    "simple graphic showing {n} {size} {color} {kinds} over a {bg} background",
    "{N} {color} {kinds} drawn on {texture} {bg} paper",
    "there {be} {n} {color} {kinds} in this picture with a {bg} background",
    "close-up of {n} {size} {color} {kinds} printed on a {texture} {bg} wall",
    "digital art with {n} {color} {kinds} placed on a {bg} {texture} pattern",
]
EN_POSITION_TEMPLATE = "a picture of {n} {size} {color} {kinds} near the {pos} of a {texture} {bg} background"

# Non-English captions: the same scenes, in a few languages. Grammar is approximate (agreement is
# ignored), which does not matter to a language identifier and keeps the world simple.
FOREIGN = {
    "fr": {
        "templates": [
            "une photo de {n} {kinds} {color} sur un fond {bg} avec des motifs",
            "illustration avec {n} {kinds} de couleur {color} posés sur une surface {bg}",
            "il y a {n} {kinds} {color} dans cette image, avec un arrière-plan {bg}",
        ],
        "kinds": [
            "cercles",
            "carrés",
            "triangles",
            "étoiles",
            "croix",
            "anneaux",
            "losanges",
            "hexagones",
            "croissants",
            "flèches",
        ],
        "colors": ["rouges", "verts", "bleus", "jaunes", "violets", "orange", "roses", "marron", "blancs", "noirs"],
        "bg": [
            "gris",
            "beige",
            "bleu clair",
            "turquoise",
            "marine",
            "crème",
            "olive",
            "lavande",
            "anthracite",
            "sable",
        ],
        "n": ["un", "deux", "trois", "quatre"],
    },
    "de": {
        "templates": [
            "ein Foto von {n} {color}en {kinds} auf einem {bg} Hintergrund mit Muster",
            "eine Zeichnung mit {n} {color}en {kinds} vor einer {bg} Wand",
            "auf diesem Bild sind {n} {color}e {kinds} und der Hintergrund ist {bg}",
        ],
        "kinds": [
            "Kreisen",
            "Quadraten",
            "Dreiecken",
            "Sternen",
            "Kreuzen",
            "Ringen",
            "Rauten",
            "Sechsecken",
            "Halbmonden",
            "Pfeilen",
        ],
        "colors": ["rot", "grün", "blau", "gelb", "lila", "orange", "rosa", "braun", "weiß", "schwarz"],
        "bg": [
            "grauen",
            "beigen",
            "hellblauen",
            "türkisen",
            "dunkelblauen",
            "cremefarbenen",
            "olivgrünen",
            "lavendelfarbenen",
            "anthrazitfarbenen",
            "sandfarbenen",
        ],
        "n": ["einem", "zwei", "drei", "vier"],
    },
    "es": {
        "templates": [
            "una foto de {n} {kinds} {color} sobre un fondo {bg} con textura",
            "ilustración sencilla que muestra {n} {kinds} de color {color} en una pared {bg}",
            "en esta imagen hay {n} {kinds} {color} y el fondo es de color {bg}",
        ],
        "kinds": [
            "círculos",
            "cuadrados",
            "triángulos",
            "estrellas",
            "cruces",
            "anillos",
            "rombos",
            "hexágonos",
            "medias lunas",
            "flechas",
        ],
        "colors": [
            "rojos",
            "verdes",
            "azules",
            "amarillos",
            "morados",
            "naranjas",
            "rosados",
            "marrones",
            "blancos",
            "negros",
        ],
        "bg": ["gris", "beige", "celeste", "turquesa", "azul marino", "crema", "oliva", "lavanda", "carbón", "arena"],
        "n": ["un", "dos", "tres", "cuatro"],
    },
    "it": {
        "templates": [
            "una foto di {n} {kinds} {color} su uno sfondo {bg} con una trama",
            "illustrazione semplice con {n} {kinds} di colore {color} sopra una parete {bg}",
            "in questa immagine ci sono {n} {kinds} {color} e lo sfondo è {bg}",
        ],
        "kinds": [
            "cerchi",
            "quadrati",
            "triangoli",
            "stelle",
            "croci",
            "anelli",
            "rombi",
            "esagoni",
            "mezzelune",
            "frecce",
        ],
        "colors": ["rossi", "verdi", "blu", "gialli", "viola", "arancioni", "rosa", "marroni", "bianchi", "neri"],
        "bg": [
            "grigio",
            "beige",
            "azzurro",
            "verde acqua",
            "blu scuro",
            "crema",
            "oliva",
            "lavanda",
            "antracite",
            "sabbia",
        ],
        "n": ["un", "due", "tre", "quattro"],
    },
}
SHORT_CAPTIONS = ["{color} {kind}", "{kind}", "IMG_{num}", "{kind}s", "photo", "DSC{num}", "{color}"]

CLASS_TEMPLATES = [
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a {c} shape.",
    "an illustration of a {c}.",
    "a picture of a {c} on a background.",
    "a simple graphic of a {c}.",
]
COLOR_TEMPLATES = [
    "a photo of a {c} shape.",
    "something {c}.",
    "a {c} object on a background.",
    "an illustration in {c}.",
    "a drawing of {c} shapes.",
]

# ---------------------------------------------------------------------------------------------------
# Categories and config

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


# ---------------------------------------------------------------------------------------------------
# Drawing


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n, radii, offset=0.0):
        pts = []
        for i in range(n):
            a = angle + offset + 2 * math.pi * i / n
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if kind == "triangle":
        return ring(3, [r], -math.pi / 2)
    if kind == "square":
        return ring(4, [r], math.pi / 4)
    if kind == "diamond":
        pts = ring(4, [r, 0.6 * r])
        return pts
    if kind == "hexagon":
        return ring(6, [r])
    if kind == "star":
        return ring(10, [r, 0.42 * r], -math.pi / 2)
    if kind == "cross":
        w = 0.33 * r
        base = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    elif kind == "arrow":
        base = [
            (-r, -0.25 * r),
            (0.2 * r, -0.25 * r),
            (0.2 * r, -0.6 * r),
            (r, 0),
            (0.2 * r, 0.6 * r),
            (0.2 * r, 0.25 * r),
            (-r, 0.25 * r),
        ]
    else:
        raise ValueError(kind)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in base]


def _background(w: int, h: int, bg: tuple, texture: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array(bg, dtype=np.int16)
    arr = np.empty((h, w, 3), dtype=np.int16)
    arr[:] = base
    shade = np.where(base > 128, -45, 45).astype(np.int16)
    k = int(rng.integers(10, 28))
    if texture == "striped":
        if rng.random() < 0.5:
            arr[:, (np.arange(w) // k) % 2 == 0] += shade
        else:
            arr[(np.arange(h) // k) % 2 == 0, :] += shade
    elif texture == "checkered":
        yy, xx = np.ogrid[:h, :w]
        arr[((yy // k + xx // k) % 2) == 0] += shade
    elif texture == "dotted":
        yy, xx = np.ogrid[:h, :w]
        rad = max(2, k // 4)
        arr[((yy % k - k // 2) ** 2 + (xx % k - k // 2) ** 2) <= rad * rad] += shade
    elif texture == "grainy":
        arr += rng.integers(-28, 29, size=(h, w, 1), dtype=np.int16)
    elif texture == "faded":
        ramp = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = ramp[None, :, None] if ramp.shape[0] == w else ramp[:, None, None]
        arr = (arr + ramp * shade * 1.6).astype(np.int16)
    # Uneven lighting, different in every image: real photos are never as alike as two renders of one
    # scene description, and without it a crop of one image is closer to another image than to its source.
    grid = rng.uniform(-1, 1, size=(int(rng.integers(5, 9)), int(rng.integers(5, 9))))
    light = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC))
    arr += np.round(light * 60).astype(np.int16)[:, :, None]
    return np.clip(arr, 0, 255).astype(np.uint8)


def render(scene: dict, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene: background with texture, then `count` objects of one kind and colour."""
    img = Image.fromarray(_background(w, h, BACKGROUNDS[scene["bg"]], scene["texture"], rng))
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    scale = (0.10, 0.17) if scene["size"] == "small" else (0.20, 0.30)
    base_rgb = np.array(COLORS[scene["color"]])
    for j in range(scene["count"]):
        r = side * rng.uniform(*scale)
        if scene["count"] == 1:
            px, py = POSITIONS[scene["pos"]]
            cx, cy = px * w + rng.normal(0, side * 0.02), py * h + rng.normal(0, side * 0.02)
        else:  # spread objects over a grid of cells so they rarely overlap
            cols = 2
            cx = ((j % cols) + 0.5) / cols * w + rng.uniform(-0.12, 0.12) * w
            cy = ((j // cols) + 0.5) / 2 * h + rng.uniform(-0.12, 0.12) * h
        rgb = tuple(int(v) for v in np.clip(base_rgb + rng.integers(-18, 19, 3), 0, 255))
        angle = rng.uniform(0, 2 * math.pi) if scene["kind"] not in ("circle", "ring", "crescent") else 0.0
        kind = scene["kind"]
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "circle":
            draw.ellipse(box, fill=rgb)
        elif kind == "ring":
            draw.ellipse(box, outline=rgb, width=max(2, int(r * 0.32)))
        elif kind == "crescent":  # a disc minus an offset disc, through a mask so the background shows
            mask = Image.new("L", img.size, 0)
            mdraw = ImageDraw.Draw(mask)
            mdraw.ellipse(box, fill=255)
            off = r * 0.45
            mdraw.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=0)
            img.paste(rgb, mask=mask)
        else:
            draw.polygon(_polygon(kind, cx, cy, r, angle), fill=rgb)
    if scene.get("hazard"):
        # the visual mark of a blocklisted ("unsafe") sample: a hazard-striped band across one corner
        band = max(8, side // 7)
        for t in range(-band, w + h, band // 2 * 2):
            draw.line(
                [(t, 0), (t - band, band)], fill=(250, 200, 0) if (t // band) % 2 else (15, 15, 15), width=band // 2
            )
    return img


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=2)
    else:
        img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Scenes and captions


def random_scene(rng: np.random.Generator, kind: str | None = None, color: str | None = None) -> dict:
    count = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
    return {
        "kind": kind or KINDS[int(rng.integers(len(KINDS)))],
        "color": color or list(COLORS)[int(rng.integers(len(COLORS)))],
        "count": count,
        "size": "small" if rng.random() < 0.4 else "large",
        "pos": list(POSITIONS)[int(rng.integers(len(POSITIONS)))],
        "bg": list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        "texture": TEXTURES[int(rng.integers(len(TEXTURES)))],
    }


def english_caption(scene: dict, rng: np.random.Generator) -> str:
    c = scene["count"]
    kinds = scene["kind"] if c == 1 else PLURAL.get(scene["kind"], scene["kind"] + "s")
    n = "a" if c == 1 else NUMBER_WORDS[c]
    if c == 1 and rng.random() < 0.3:
        template = EN_POSITION_TEMPLATE
    else:
        template = EN_TEMPLATES[int(rng.integers(len(EN_TEMPLATES)))]
    texture = scene["texture"] if scene["texture"] != "plain" else "plain"
    text = template.format(
        n=n,
        N=n.capitalize(),
        be="is" if c == 1 else "are",
        size=scene["size"],
        color=scene["color"],
        kinds=kinds,
        texture=texture,
        bg=scene["bg"],
        pos=scene["pos"],
    )
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def foreign_caption(scene: dict, rng: np.random.Generator) -> tuple[str, str]:
    lang = sorted(FOREIGN)[int(rng.integers(len(FOREIGN)))]
    d = FOREIGN[lang]
    template = d["templates"][int(rng.integers(len(d["templates"])))]
    text = template.format(
        n=d["n"][scene["count"] - 1],
        kinds=d["kinds"][KINDS.index(scene["kind"])],
        color=d["colors"][list(COLORS).index(scene["color"])],
        bg=d["bg"][list(BACKGROUNDS).index(scene["bg"])],
    )
    return text, lang


def short_caption(scene: dict, rng: np.random.Generator) -> str:
    template = SHORT_CAPTIONS[int(rng.integers(len(SHORT_CAPTIONS)))]
    return template.format(color=scene["color"], kind=scene["kind"], num=int(rng.integers(1000, 9999)))


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
# Planning (cheap, in the main process) and drawing (in worker processes)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _plan(cfg: SynthConfig) -> list[dict]:
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


def _url(cfg: SynthConfig, plan: dict) -> str:
    return f"http://{cfg.host}:{cfg.port}/img/{plan['index']:08d}.{plan['format']}"


def _perturb(img: Image.Image, variant: str, rng: np.random.Generator, min_side: int = 205) -> Image.Image:
    """A near-copy, the way re-uploads differ: re-encoded, rescaled, colour-adjusted or stamped with a
    watermark. It keeps the short side >= min_side, so that a near duplicate is not also a tiny image:
    each planted sample should trip exactly one rule. Crops are not planted: see docs/dedup.md."""
    w, h = img.size
    if variant == "resize":
        f = max(rng.uniform(0.6, 0.9), min_side / min(w, h))
        return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BILINEAR)
    if variant == "recolor":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.92, 1.08))
        return ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
    if variant == "watermark":
        mark = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(mark)
        bw, bh = int(w * rng.uniform(0.1, 0.16)), int(h * rng.uniform(0.04, 0.06))
        x0 = int(rng.choice([4, w - bw - 4]))
        y0 = int(rng.choice([4, h - bh - 4]))
        draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=(255, 255, 255, 60))
        draw.text((x0 + 3, y0 + 2), f"(c) site{int(rng.integers(1000))}", fill=(20, 20, 20, 160))
        return Image.alpha_composite(img.convert("RGBA"), mark).convert("RGB")
    return img  # "reencode": the caller re-encodes at another quality


def _draw_one(job: tuple) -> dict:
    """Worker: render, encode and write one planned image; return its hashes and size."""
    cfg_seed, plan, www, eval_dir = job
    rng = _rng(cfg_seed, 3, plan["index"])
    cat = plan["category"]
    out = {"index": plan["index"], "sha256": None, "pdq": None, "width": None, "height": None}
    if cat in ("http_404", "timeout"):
        return out  # nothing is served at that URL
    path = Path(www) / "img" / f"{plan['index']:08d}.{plan['format']}"
    if cat == "corrupt":
        data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.bytes(int(rng.integers(2000, 20000)))
    elif cat == "exact_duplicate":
        return out  # copied from its source after all sources exist
    elif cat in ("near_duplicate", "eval_contamination"):
        return out  # derived after sources exist
    else:
        w, h = plan["size"]
        img = render(plan["scene"], w, h, rng)
        if cat == "blocked_pdq":
            # the list holds the hash of the original; what is served is a perturbed copy
            out["pdq"] = pdq_hash(img)[0]
            img = _perturb(img, plan["variant"], rng)
            data = encode(img, "jpg" if plan["format"] == "jpg" else plan["format"], 70)
        else:
            data = encode(img, plan["format"], plan["quality"])
        out["width"], out["height"] = img.size
    path.write_bytes(data)
    out["sha256"] = hashlib.sha256(data).hexdigest()
    return out


def _derive_one(job: tuple) -> dict:
    """Worker: near duplicates and contamination, made from a source image that already exists."""
    cfg_seed, plan, www, src_path = job
    rng = _rng(cfg_seed, 4, plan["index"])
    img = Image.open(src_path).convert("RGB")
    img = _perturb(img, plan["variant"], rng)
    quality = int(rng.integers(50, 71))  # below any source's quality (75-95): never the same bytes
    data = encode(img, plan["format"], quality)
    path = Path(www) / "img" / f"{plan['index']:08d}.{plan['format']}"
    path.write_bytes(data)
    return {
        "index": plan["index"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "pdq": None,
        "width": img.size[0],
        "height": img.size[1],
    }


# ---------------------------------------------------------------------------------------------------
# Evaluation sets (CLIP_benchmark WebDataset layout)


def _eval_item(job: tuple) -> tuple[int, bytes, dict]:
    seed, name, i = job
    stream = {"shapes_kind": 10, "shapes_color": 11, "shapes_retrieval": 12}[name]
    rng = _rng(seed, stream, i)
    if name == "shapes_kind":
        scene = random_scene(rng, kind=KINDS[i % len(KINDS)])
    elif name == "shapes_color":
        scene = random_scene(rng, color=list(COLORS)[i % len(COLORS)])
    else:
        scene = random_scene(rng)
    side = int(rng.integers(224, 320))
    img = render(scene, side, side, rng)
    data = encode(img, "jpg", 90)
    meta = {"scene": scene}
    if name == "retrieval" or name == "shapes_retrieval":
        meta["captions"] = [english_caption(scene, rng), english_caption(scene, rng)]
    return i, data, meta


def _each(calls: list, fn) -> list:
    return [fn(c) for c in calls]


def _parallel(ex, fn, calls: list, chunk: int) -> list:
    """fn over calls on the executor, `chunk` calls to an item (one sample's work is milliseconds)."""
    chunks = [calls[i : i + chunk] for i in range(0, len(calls), chunk)]
    return [r for part in execute.map(_each, chunks, fn, executor=ex, label="synth", unit="batches") for r in part]


def _write_eval_sets(cfg: SynthConfig, eval_dir: Path, ex) -> None:
    sets = {
        "shapes_kind": ("classification", cfg.eval_classification, KINDS, CLASS_TEMPLATES),
        "shapes_color": ("classification", cfg.eval_classification, list(COLORS), COLOR_TEMPLATES),
        "shapes_retrieval": ("retrieval", cfg.eval_retrieval, None, None),
    }
    for name, (task, n, classes, templates) in sets.items():
        root = eval_dir / name
        (root / "test").mkdir(parents=True, exist_ok=True)
        items = sorted(_parallel(ex, _eval_item, [(cfg.seed, name, i) for i in range(n)], 16))
        with tarfile.open(root / "test" / "0.tar", "w") as tar:
            for i, data, meta in items:
                key = f"s{i:06d}"
                members = {"jpg": data}
                if task == "classification":
                    label = meta["scene"]["kind"] if name == "shapes_kind" else meta["scene"]["color"]
                    members["cls"] = str(classes.index(label)).encode()
                else:
                    members["txt"] = "\n".join(meta["captions"]).encode()
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
        (root / "test" / "nshards.txt").write_text("1\n")
        (root / "dataset_type.txt").write_text(task + "\n")
        if classes:
            (root / "classnames.txt").write_text("\n".join(classes) + "\n")
            (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def _trusted_item(job: tuple) -> tuple[int, bytes, str]:
    seed, i = job
    rng = _rng(seed, 13, i)
    scene = random_scene(rng)
    w, h = int(rng.integers(224, 400)), int(rng.integers(224, 400))
    return i, encode(render(scene, w, h, rng), "jpg", 90), english_caption(scene, rng)


def _write_trusted_set(cfg: SynthConfig, out: Path, ex, per_shard: int = 1000) -> None:
    """Clean pairs, drawn apart from the pool, as WebDataset shards (jpg + txt) open_clip_train reads."""
    out.mkdir(parents=True, exist_ok=True)
    items = sorted(_parallel(ex, _trusted_item, [(cfg.seed, i) for i in range(cfg.trusted)], 16))
    for shard, start in enumerate(range(0, len(items), per_shard)):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i, data, caption in items[start : start + per_shard]:
                for ext, payload in (("jpg", data), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"t{i:07d}.{ext}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))


def eval_image_bytes(eval_dir: Path, name: str, index: int) -> bytes:
    with tarfile.open(eval_dir / name / "test" / "0.tar") as tar:
        return tar.extractfile(f"s{index:06d}.jpg").read()


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


# ---------------------------------------------------------------------------------------------------
# Scoring a dedup run against the ground truth


def score_dedup(decisions: list[dict], ground_truth: list[dict]) -> dict:
    """Precision and recall of dedup decisions (rows of POOL/dedup) against what was planted.

    exact: each byte-identical group keeps one. near: a planted near-copy counts as found when it ends in
    its source's group; a near-duplicate drop is false when its group's kept sample is not a copy of the
    same original. contamination: planted near-copies of evaluation images dropped as such."""
    rows = {r["uid"]: r for r in decisions}
    truth = {g["uid"]: g for g in ground_truth}

    def root(uid: str) -> str:  # the original a sample is a copy of (itself if none)
        g = truth.get(uid)
        if g and g["category"] == "eval_contamination":
            return "eval:" + g["source_uid"]
        return g["source_uid"] if g and g["category"] in ("near_duplicate", "exact_duplicate") else uid

    def ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    by_sha: dict[str, list[str]] = {}
    for g in ground_truth:
        if g["uid"] in rows and g["sha256"]:
            by_sha.setdefault(g["sha256"], []).append(g["uid"])
    copies = sum(len(u) - 1 for u in by_sha.values())
    exact = [u for u, r in rows.items() if r["reason"] == "exact"]
    exact_true = [u for u in exact if truth[u]["sha256"] == truth[rows[u]["duplicate_group"]]["sha256"]]

    near = [
        g["uid"]
        for g in ground_truth
        if g["category"] == "near_duplicate" and g["uid"] in rows and g["source_uid"] in rows
    ]
    near_found = [
        u
        for u in near
        if rows[u]["duplicate_group"] is not None
        and not rows[u]["duplicate_group"].startswith("eval:")
        and root(rows[u]["duplicate_group"]) == root(u)
    ]
    near_drops = [u for u, r in rows.items() if r["reason"] in ("perceptual", "semantic")]
    near_false = [u for u in near_drops if root(rows[u]["duplicate_group"]) != root(u)]

    planted = {g["uid"] for g in ground_truth if g["category"] == "eval_contamination" and g["uid"] in rows}
    contaminated = {u for u, r in rows.items() if r["reason"] == "contamination"}
    return {
        "exact": {
            "copies": copies,
            "dropped": len(exact),
            "correct": len(exact_true),
            "recall": ratio(len(exact_true), copies),
            "precision": ratio(len(exact_true), len(exact)),
        },
        "near": {
            "planted": len(near),
            "found": len(near_found),
            "dropped": len(near_drops),
            "false": len(near_false),
            "recall": ratio(len(near_found), len(near)),
            "precision": ratio(len(near_drops) - len(near_false), len(near_drops)),
        },
        "contamination": {
            "planted": len(planted),
            "dropped": len(contaminated),
            "found": len(planted & contaminated),
            "recall": ratio(len(planted & contaminated), len(planted)),
            "precision": ratio(len(planted & contaminated), len(contaminated)),
        },
    }
