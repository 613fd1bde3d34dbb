"""Two pools for benchmarking `thresher browse` (issue 27), generated here, offline, from a seed.

    python benchmarks/browse_pools.py [--dir /tmp/thresher-browse-bench] [--rows 1000000] [--samples 20000]
    python benchmarks/browse_pools.py --only images --samples 200        # a small image pool

1. `metadata_pool(dir, rows, dim, seed)`: DataComp-format metadata (uid, url, text, original sizes, the B/32
   and L/14 scores, face_bboxes, sha256; 100,000 rows a file) with a `.npz` of float16 B/32 image and text
   embeddings beside each file, imported with `thresher import-metadata`, then filtered with no-pixel
   presets (datacomp-basic, datacomp-clip-b32-30pct). The embeddings are clustered (up to 1,000 centres)
   and each cluster has a subject its captions name, so nearest neighbours and text search agree; the B/32
   score is the cosine of a row's image and text embeddings; a few percent of the rows repeat another's
   sha256 and embedding, or nearly its embedding.
2. `image_pool(dir, samples, seed)`: img2dataset's output folder (`{i:05d}.tar` with KEY.jpg, KEY.txt,
   KEY.json; `{i:05d}.parquet`; `{i:05d}_stats.json`; 10,000 rows a shard) of drawn JPEGs (shapes on
   noise, 128 to 512 px, a few exact and near copies, ~3% of rows failed), adopted with `thresher
   import-pool`, then `thresher features` (base; then a random-init thresher-tiny scorer, clip_tiny:
   its scores are noise, there for the pool's shape), `thresher dedup` (exact and PDQ, over partitions)
   and `thresher filter` (datacomp-basic, and dfn-dedup on clip_tiny).

Both put HOSTILE_CAPTIONS (and HOSTILE_URLS) on a few rows unless `hostile=False`, for the browser's
escaping. Files written under --dir:

    metadata/{i:05d}.parquet, {i:05d}.npz, _SUCCESS.json     the DataComp-format source
    metadata-pool/                                          its pool (features/clip_b32 holds the embeddings)
    img2dataset/{i:05d}.tar, .parquet, _stats.json, _SUCCESS.json
    image-pool/                                             its pool (the tars stay in img2dataset/)
    logs/<pool>-<step>.log                                  each `thresher` command's output

A second run reuses what is complete (a source's _SUCCESS.json, a pool's manifest and markers) and redoes
only the rest; a directory built with other parameters is refused. Prints each part's seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root, not benchmarks/, whose select.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # would shadow the standard library's

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from thresher.core.pool import Pool

DEFAULT_DIR = "/tmp/thresher-browse-bench"
ROWS_PER_FILE = 100_000
SAMPLES_PER_SHARD = 10_000
METADATA_RECIPES = ("datacomp-basic", "datacomp-clip-b32-30pct")
IMAGE_RECIPES = ("datacomp-basic", "dfn-dedup")

HOSTILE_CAPTIONS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "</textarea></title><script>alert(document.cookie)</script>",
    "javascript:alert(1)",
    "{{constructor.constructor('alert(1)')()}} ${alert(1)}",
    "'; DROP TABLE samples; -- \" ` \\",
    "&lt;b&gt;already escaped&lt;/b&gt; &amp; <b>bold</b> &#60;i&#62;",
    "right-to-left \u202eoverride\u202c, zero\u200bwidth, emoji \U0001f408\u200d\u2b1b and\nnew\r\nlines\ttabs",
    "a very long caption " * 250,
)
# URLs the ingest check accepts (http(s), a host) that break out of an unescaped href or attribute
HOSTILE_URLS = (
    'https://evil.example/"><script>alert(1)</script>.jpg',
    "https://evil.example/a.jpg?q=<img src=x onerror=alert(1)>&r='x'",
    "http://evil.example/%3Cscript%3Ealert(1)%3C/script%3E.png#\"onmouseover='alert(1)'",
)
HOSTILE_PER_FILE = 3  # rows of each hostile caption per metadata file, or per image shard

# ---------------------------------------------------------------------------------------------------
# words: subjects in English and six other languages (lid.176 tells these apart on short captions)

LANGS = ("en", "de", "fr", "es", "it", "pt", "nl")
SUBJECTS = [
    ("dog", "Hund", "chien", "perro", "cane", "cão", "hond"),
    ("cat", "Katze", "chat", "gato", "gatto", "gato", "kat"),
    ("house", "Haus", "maison", "casa", "casa", "casa", "huis"),
    ("car", "Auto", "voiture", "coche", "automobile", "carro", "auto"),
    ("beach", "Strand", "plage", "playa", "spiaggia", "praia", "strand"),
    ("mountain", "Berg", "montagne", "montaña", "montagna", "montanha", "berg"),
    ("street", "Straße", "rue", "calle", "strada", "rua", "straat"),
    ("garden", "Garten", "jardin", "jardín", "giardino", "jardim", "tuin"),
    ("kitchen", "Küche", "cuisine", "cocina", "cucina", "cozinha", "keuken"),
    ("wedding dress", "Hochzeitskleid", "robe de mariée", "vestido de novia", "abito da sposa", "vestido de noiva", "trouwjurk"),
    ("coffee cup", "Kaffeetasse", "tasse à café", "taza de café", "tazza da caffè", "xícara de café", "koffiekop"),
    ("bicycle", "Fahrrad", "vélo", "bicicleta", "bicicletta", "bicicleta", "fiets"),
    ("lake", "See", "lac", "lago", "lago", "lago", "meer"),
    ("sunset", "Sonnenuntergang", "coucher de soleil", "puesta de sol", "tramonto", "pôr do sol", "zonsondergang"),
    ("bridge", "Brücke", "pont", "puente", "ponte", "ponte", "brug"),
    ("flower", "Blume", "fleur", "flor", "fiore", "flor", "bloem"),
    ("horse", "Pferd", "cheval", "caballo", "cavallo", "cavalo", "paard"),
    ("bird", "Vogel", "oiseau", "pájaro", "uccello", "pássaro", "vogel"),
    ("tree", "Baum", "arbre", "árbol", "albero", "árvore", "boom"),
    ("chair", "Stuhl", "chaise", "silla", "sedia", "cadeira", "stoel"),
    ("table", "Tisch", "table", "mesa", "tavolo", "mesa", "tafel"),
    ("shoes", "Schuhe", "chaussures", "zapatos", "scarpe", "sapatos", "schoenen"),
    ("cake", "Kuchen", "gâteau", "pastel", "torta", "bolo", "taart"),
    ("boat", "Boot", "bateau", "barco", "barca", "barco", "boot"),
    ("church", "Kirche", "église", "iglesia", "chiesa", "igreja", "kerk"),
    ("castle", "Burg", "château", "castillo", "castello", "castelo", "kasteel"),
    ("book", "Buch", "livre", "libro", "libro", "livro", "boek"),
    ("watch", "Armbanduhr", "montre", "reloj", "orologio", "relógio", "horloge"),
    ("train", "Zug", "train", "tren", "treno", "comboio", "trein"),
    ("living room", "Wohnzimmer", "salon", "sala de estar", "soggiorno", "sala de estar", "woonkamer"),
]  # fmt: skip
FOREIGN_TEMPLATES = {
    "de": ("Foto: {s} am Abend", "Schöne Aussicht auf {s} und die Landschaft", "Bild von {s} im Winter bei Schnee",
           "{s} kaufen – günstige Preise und schneller Versand", "Unser {s} im Urlaub, Sommer 2019"),
    "fr": ("Photo : {s} en hiver sous la neige", "Magnifique vue avec {s} et ciel bleu",
           "Acheter {s} pas cher – livraison gratuite", "Image de {s} dans la ville la nuit"),
    "es": ("Foto de {s} en la ciudad por la noche", "Hermosa vista con {s} y cielo azul",
           "Comprar {s} barato – envío gratis", "Imagen de {s} en invierno con nieve"),
    "it": ("Foto di {s} in città di notte", "Bellissima vista con {s} e cielo azzurro",
           "Acquista {s} online – spedizione gratuita", "Immagine di {s} in inverno con la neve"),
    "pt": ("Foto de {s} na cidade à noite", "Linda vista com {s} e céu azul",
           "Comprar {s} barato – frete grátis", "Imagem de {s} no inverno com neve"),
    "nl": ("Foto van {s} in de stad 's nachts", "Prachtig uitzicht met {s} en blauwe lucht",
           "Koop {s} online – gratis verzending", "Afbeelding van {s} in de winter met sneeuw"),
}  # fmt: skip
OTHER_SCRIPTS = (
    "海辺の夕日の写真",
    "東京の夜の街並み",
    "美丽的山水风景照片",
    "新款女装连衣裙 夏季 韩版",
    "Красивый закат над морем",
    "Продажа квартиры в центре города",
    "صورة غروب الشمس على الشاطئ",
    "Ηλιοβασίλεμα στη Σαντορίνη",
)
# the share of captions per language (en, de, fr, es, it, pt, nl) and in other scripts
LANG_SHARES = (0.885, 0.03, 0.025, 0.025, 0.01, 0.01, 0.007, 0.008)

ADJECTIVES = (
    "red blue green yellow white black old new small large beautiful vintage modern wooden cozy rustic "
    "bright colorful tiny huge abandoned elegant handmade"
).split()
PLACES = (
    "in the garden", "on the beach", "at sunset", "in the snow", "on a white background", "in the city",
    "near the lake", "in the kitchen", "at night", "in the park", "on the table", "in autumn", "under a blue sky",
)  # fmt: skip
BRANDS = ("Nordhaven", "Lumina", "Oak & Ash", "Velora", "Brightwell", "Casa Bella", "Kestrel", "Mira")
COLORS = ("Black", "White", "Navy", "Red", "Beige", "Grey", "Olive", "Pink")
SIZES = ("S", "M", "L", "XL", "38", "40", "42", "One Size")
SITES = ("Pinterest", "Etsy", "Flickr", "Houzz", "eBay", "Tumblr", "Blogspot")

HOST_WORDS = (
    "blue fern studio harbor kitchen pixel craft home garden north light shop photo daily travel "
    "vintage market urban nest paper moon wild coast"
).split()
TLDS = (".com", ".com", ".com", ".net", ".org", ".de", ".fr", ".co.uk", ".es", ".it", ".nl", ".com.br", ".jp")


# ---------------------------------------------------------------------------------------------------
# columns shared by both pools


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    s = rng.bytes(n * nbytes).hex()
    return [s[i * 2 * nbytes : (i + 1) * 2 * nbytes] for i in range(n)]


def _hosts(seed: int, n: int = 400) -> list[str]:
    """A fixed set of invented hosts (a CDN-style prefix, two words, a TLD): the pool's domains."""
    rng = np.random.default_rng([seed, 7])
    prefixes = ("", "www.", "images.", "cdn.", "static.", "img.", "media.", "i0.")
    return [
        f"{prefixes[p]}{HOST_WORDS[a]}{HOST_WORDS[b]}{TLDS[t]}"
        for p, a, b, t in zip(
            rng.integers(len(prefixes), size=n),
            rng.integers(len(HOST_WORDS), size=n),
            rng.integers(len(HOST_WORDS), size=n),
            rng.integers(len(TLDS), size=n),
        )
    ]


def _slug(words: str) -> str:
    return "-".join(words.lower().split())


def _urls(rng: np.random.Generator, subjects: np.ndarray, seed: int) -> list[str]:
    """Image URLs in a few common shapes (WordPress uploads, a shop's CDN, photo sites), 75% https, over
    400 hosts of unequal size; the path names the image's subject."""
    hosts = _hosts(seed)
    n = len(subjects)
    weight = 1 / (np.arange(len(hosts)) + 10.0)  # the largest host ~3% of the rows, the smallest ~0.07%
    host = rng.choice(len(hosts), size=n, p=weight / weight.sum())
    https = rng.random(n) < 0.75
    shape = rng.integers(5, size=n)
    num = rng.integers(10**6, 10**9, size=n)
    year = rng.integers(2009, 2024, size=n)
    w = rng.choice((300, 640, 768, 1024, 1200), size=n)
    out = []
    for i in range(n):
        slug = _slug(SUBJECTS[subjects[i]][0])
        k, x = shape[i], int(num[i])
        if k == 0:
            path = f"/wp-content/uploads/{year[i]}/{x % 12 + 1:02d}/{slug}-{x % 97}-{w[i]}x{w[i] * 3 // 4}.jpg"
        elif k == 1:
            path = f"/s/files/1/{x % 9000 + 1000:04d}/{x % 7919:04d}/products/{slug}_{x:x}.jpg?v={1500000000 + x}"
        elif k == 2:
            path = f"/photos/{x}/{slug}.jpeg"
        elif k == 3:
            path = f"/images/{x:08x}/{w[i]}x{w[i]}.png"
        else:
            path = f"/media/catalog/product/{slug[0]}/{x % 10}/{slug}-{x % 1000}.JPG"
        out.append(("https://" if https[i] else "http://") + hosts[host[i]] + path)
    return out


def _english(rng: np.random.Generator, subject: str, kind: int) -> str:
    """One English caption of a kind: descriptive, stock photo, product title, page title, file name, bare."""
    adj = ADJECTIVES[rng.integers(len(ADJECTIVES))]
    place = PLACES[rng.integers(len(PLACES))]
    if kind < 4:
        article = "" if subject.endswith("s") else "an " if adj[0] in "aeiou" else "a "
        return f"{article}{adj} {subject} {place}"
    if kind == 4:
        return f"{subject.capitalize()} {place} stock photo"
    if kind == 5:
        brand, color, size = BRANDS[rng.integers(len(BRANDS))], COLORS[rng.integers(8)], SIZES[rng.integers(8)]
        return f"{brand} {adj.capitalize()} {subject.title()} - {color}, Size {size}"
    if kind == 6:
        return f"{rng.integers(5, 40)} {adj} {subject} ideas you will love | {SITES[rng.integers(len(SITES))]}"
    if kind == 7:
        return ("IMG_{:04d}.JPG", "DSC{:05d}", "photo-{:06d}.jpg")[rng.integers(3)].format(rng.integers(10**4))
    return subject


def _captions(rng: np.random.Generator, subjects: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Captions naming each row's subject, in LANG_SHARES' languages; and whether each names it (file
    names and other scripts do not: their CLIP score is lower)."""
    n = len(subjects)
    lang = rng.choice(len(LANG_SHARES), size=n, p=LANG_SHARES)
    kind = rng.choice(9, size=n, p=(0.25, 0.2, 0.1, 0.1, 0.1, 0.1, 0.08, 0.04, 0.03))
    out, names = [], np.ones(n, bool)
    for i in range(n):
        if lang[i] == len(LANGS):
            out.append(OTHER_SCRIPTS[rng.integers(len(OTHER_SCRIPTS))])
            names[i] = False
        elif lang[i] == 0:
            out.append(_english(rng, SUBJECTS[subjects[i]][0], kind[i]))
            names[i] = kind[i] != 7
        else:
            templates = FOREIGN_TEMPLATES[LANGS[lang[i]]]
            out.append(templates[rng.integers(len(templates))].format(s=SUBJECTS[subjects[i]][lang[i]]))
    return out, names


def _plant(rng: np.random.Generator, values: list, planted: tuple, per: int) -> np.ndarray:
    """Puts each planted value at `per` random rows of `values` (in place); returns those rows."""
    rows = rng.choice(len(values), size=min(len(values), per * len(planted)), replace=False)
    for j, r in enumerate(rows):
        values[r] = planted[j % len(planted)]
    return rows


def _write_atomic(path: Path, write) -> None:
    """write(file) into PATH.tmp, then a rename: a killed run leaves no half file under a name that the
    importers list (*.parquet, *.tar)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _source_params(folder: Path, params: dict) -> bool:
    """True when `folder` holds a complete source of these parameters; refuses one of others."""
    done, begun = folder / "_SUCCESS.json", folder / "_params.json"
    if begun.exists() and json.loads(begun.read_text()) != params:
        raise ValueError(f"{folder} was generated with {begun.read_text().strip()}; use another --dir")
    if done.exists():
        return True
    folder.mkdir(parents=True, exist_ok=True)
    begun.write_text(json.dumps(params))
    return False


# ---------------------------------------------------------------------------------------------------
# 1. the metadata pool


def _embeddings(rng, centres, spread, assign, score, dup_of, near_of, block=20_000):
    """Image embeddings around their centres, text embeddings at cosine `score` from them (float16,
    unit length); the rows dup_of[:, 0] and near_of[:, 0] copy (or nearly copy) another row's image embedding."""
    n, dim = len(assign), centres.shape[1]
    img, txt = np.empty((n, dim), np.float16), np.empty((n, dim), np.float16)
    for lo in range(0, n, block):  # blocks: float32 temporaries of 20k rows, not of the whole file
        a, hi = assign[lo : lo + block], min(n, lo + block)
        x = centres[a] + rng.standard_normal((hi - lo, dim), np.float32) * (spread[a, None] / dim**0.5)
        img[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    img[dup_of[:, 0]] = img[dup_of[:, 1]]
    near = img[near_of[:, 1]].astype(np.float32) + rng.standard_normal((len(near_of), dim), np.float32) * (
        rng.uniform(0.05, 0.2, (len(near_of), 1)).astype(np.float32) / dim**0.5
    )
    img[near_of[:, 0]] = near / np.linalg.norm(near, axis=1, keepdims=True)
    cos = np.empty(n, np.float32)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        x = img[lo:hi].astype(np.float32)
        u = rng.standard_normal((hi - lo, dim), np.float32)
        u -= np.sum(u * x, axis=1, keepdims=True) * x  # orthogonal to the image: cos(img, txt) = score
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        s = score[lo:hi, None]
        t = (s * x + np.sqrt(1 - s * s) * u).astype(np.float16)
        txt[lo:hi] = t
        cos[lo:hi] = np.sum(x * t.astype(np.float32), axis=1) / np.linalg.norm(t.astype(np.float32), axis=1)
    return img, txt, cos


def _sizes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Original sizes as on the web: a lognormal long side around 640 px, mostly landscape, a few banners."""
    side = np.exp(rng.normal(np.log(640), 0.7, n)).clip(16, 8000)
    ratio = np.exp(rng.normal(0.15, 0.3, n))
    banner = rng.random(n) < 0.02
    ratio[banner] = rng.choice((0.25, 4.0, 6.0), size=int(banner.sum()))
    w = np.where(ratio >= 1, side, side * ratio)
    h = np.where(ratio >= 1, side / ratio, side)
    return np.maximum(1, w).astype(np.int64), np.maximum(1, h).astype(np.int64)


def _face_bboxes(rng: np.random.Generator, n: int) -> pa.Array:
    """DataComp's face boxes, [x1, y1, x2, y2] in [0, 1]: none on most rows, one to three on ~6%."""
    counts = np.where(rng.random(n) < 0.06, rng.integers(1, 4, n), 0)
    boxes = []
    for c in counts:
        one = []
        for _ in range(c):
            x, y, s = rng.uniform(0, 0.8), rng.uniform(0, 0.8), rng.uniform(0.05, 0.2)
            one.append([round(x, 4), round(y, 4), round(min(1, x + s), 4), round(min(1, y + s * 1.3), 4)])
        boxes.append(one)
    return pa.array(boxes, pa.list_(pa.list_(pa.float64())))


def _metadata_file(folder: Path, index: int, n: int, dim: int, seed: int, centres, spread, topic, hostile) -> None:
    """folder/{index:05d}.parquet and .npz: n rows of DataComp's metadata and B/32 embeddings."""
    rng = np.random.default_rng([seed, index])
    assign = rng.integers(len(centres), size=n)
    subjects = topic[assign].copy()
    # ~8% of captions are about something else than their image: the low scores a CLIP filter drops
    other = rng.random(n) < 0.08
    subjects[other] = rng.integers(len(SUBJECTS), size=int(other.sum()))
    texts, names = _captions(rng, subjects)
    score = np.where(names & ~other, rng.normal(0.31, 0.035, n), rng.normal(0.17, 0.04, n)).clip(0.02, 0.45)
    urls = _urls(rng, topic[assign], seed)
    if hostile:
        for r in _plant(rng, texts, HOSTILE_CAPTIONS, HOSTILE_PER_FILE):
            score[r] = rng.uniform(0.05, 0.15)
        _plant(rng, urls, HOSTILE_URLS, 1)
    # 1.5% exact copies (the same sha256 and image embedding) and 1.5% near copies (embedding only)
    rows = rng.permutation(n)
    k = int(n * 0.015)
    dup_of = np.stack([rows[:k], rng.integers(n, size=k)], axis=1)
    near_of = np.stack([rows[k : 2 * k], rng.integers(n, size=k)], axis=1)
    dup_of = dup_of[dup_of[:, 0] != dup_of[:, 1]]
    near_of = near_of[near_of[:, 0] != near_of[:, 1]]
    sha = np.array(_hex(rng, n, 32), dtype=object)
    sha[dup_of[:, 0]] = sha[dup_of[:, 1]]
    img, txt, cos = _embeddings(rng, centres, spread, assign, score.astype(np.float32), dup_of, near_of)
    width, height = _sizes(rng, n)
    table = pa.table(
        {
            "uid": _hex(rng, n, 16),
            "url": urls,
            "text": texts,
            "original_width": width,
            "original_height": height,
            "clip_b32_similarity_score": pa.array(cos, pa.float64()),
            # L/14 agrees with B/32 up to noise, on its own scale
            "clip_l14_similarity_score": pa.array(0.05 + 0.85 * cos + rng.normal(0, 0.02, n), pa.float64()),
            "face_bboxes": _face_bboxes(rng, n),
            "sha256": pa.array(sha.tolist(), pa.string()),
        }
    )
    stem = folder / f"{index:05d}"
    _write_atomic(stem.with_suffix(".npz"), lambda f: np.savez(f, b32_img=img, b32_txt=txt))
    _write_atomic(stem.with_suffix(".parquet"), lambda f: pq.write_table(table, f))


def _centres(rows: int, dim: int, seed: int):
    """Up to 1,000 unit cluster centres, each with a spread (its rows' cosine to it is 0.74 to 0.89) and
    the subject its captions name."""
    rng = np.random.default_rng([seed, 1 << 20])
    k = int(np.clip(rows // 1000, 8, 1000))
    centres = rng.standard_normal((k, dim), np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres, rng.uniform(0.5, 0.9, k).astype(np.float32), rng.integers(len(SUBJECTS), size=k)


def metadata_source(
    src: Path, rows: int, dim: int = 512, seed: int = 0, hostile: bool = True, per_file: int = ROWS_PER_FILE
):
    """DataComp-format metadata files with their .npz in `src` (what import-metadata reads): the files not
    there yet."""
    Path(src).mkdir(parents=True, exist_ok=True)
    centres, spread, topic = _centres(rows, dim, seed)
    for i, lo in enumerate(range(0, rows, per_file)):
        stem = Path(src) / f"{i:05d}"
        if not (stem.with_suffix(".parquet").exists() and stem.with_suffix(".npz").exists()):
            _metadata_file(Path(src), i, min(per_file, rows - lo), dim, seed, centres, spread, topic, hostile)


def metadata_pool(
    dir: str,
    rows: int = 1_000_000,
    dim: int = 512,
    seed: int = 0,
    hostile: bool = True,
    per_file: int = ROWS_PER_FILE,
    recipes: tuple[str, ...] = METADATA_RECIPES,
    log=print,
) -> str:
    """DIR/metadata (DataComp's format, with .npz) imported as DIR/metadata-pool, filtered by `recipes`;
    returns the pool's path. Reuses what a previous run finished."""
    root = Path(dir)
    src, pool = root / "metadata", root / "metadata-pool"
    params = {"rows": rows, "dim": dim, "seed": seed, "hostile": hostile, "per_file": per_file}
    t0 = time.perf_counter()
    if _source_params(src, params):
        log(f"[browse-pools] metadata: reusing {src}")
    else:
        metadata_source(src, rows, dim, seed, hostile, per_file)
        secs = time.perf_counter() - t0
        (src / "_SUCCESS.json").write_text(json.dumps({**params, "seconds": round(secs, 1)}))
        log(f"[browse-pools] metadata: generated {rows:,} rows in {secs:.1f} s -> {src}")
    scorer = "clip_b32"
    steps = [
        ("import-metadata", _imported(pool), ["import-metadata", src, "--out", pool, "--npz-dir", src]),
        ("filter", _filtered(pool, recipes), ["filter", pool, *_recipe_args(recipes, scorer)]),
    ]
    _run_steps("metadata-pool", steps, root, log)
    _funnels(pool, recipes, log)
    return str(pool)


# ---------------------------------------------------------------------------------------------------
# 2. the image pool

PALETTE = {
    "red": (205, 35, 40), "orange": (240, 140, 30), "yellow": (245, 215, 50), "green": (50, 150, 60),
    "blue": (40, 80, 200), "purple": (120, 50, 160), "pink": (240, 140, 180), "white": (245, 245, 240),
    "black": (20, 20, 25), "grey": (128, 128, 128), "brown": (120, 75, 40), "teal": (30, 140, 140),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "rectangle")
ERRORS = (  # urllib's messages, as img2dataset records them
    "HTTP Error 404: Not Found", "HTTP Error 404: Not Found", "HTTP Error 403: Forbidden",
    "<urlopen error timed out>", "The read operation timed out", "HTTP Error 500: Internal Server Error",
    "<urlopen error [Errno -2] Name or service not known>", "HTTP Error 410: Gone",
)  # fmt: skip
NAMES = list(PALETTE)


def _colour(rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    name = NAMES[rng.integers(len(NAMES))]
    return name, tuple(int(c) for c in np.clip(np.array(PALETTE[name]) + rng.integers(-20, 21, 3), 0, 255))


def _draw(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Shapes on a gradient with blotchy noise (texture enough for a PDQ hash of quality >= 50), 128 to
    512 px a side; and an English description of it."""
    w, h = (int(x) for x in rng.integers(128, 513, 2))
    bg_name, c0 = _colour(rng)
    _, c1 = _colour(rng)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    grid = int(rng.integers(6, 40))
    blotch = Image.fromarray(np.uint8(np.clip(rng.normal(128, 40, (grid, grid, 3)), 0, 255)))
    noise = np.asarray(blotch.resize((w, h), Image.BILINEAR), np.float32) - 128
    pixels = np.clip(np.float32(c0) * (1 - t) + np.float32(c1) * t + noise, 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels)
    draw = ImageDraw.Draw(im)
    named = []
    for _ in range(int(rng.integers(3, 12))):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        r = int(rng.integers(min(w, h) // 16, min(w, h) // 4))
        name, col = _colour(rng)
        kind = SHAPES[rng.integers(len(SHAPES))]
        if kind == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
        elif kind == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=col)
        elif kind == "rectangle":
            draw.rectangle([x - 2 * r, y - r // 2, x + 2 * r, y + r // 2], fill=col)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=col)
        named.append(f"{name} {kind}")
    first = named[-2:]  # the last drawn are on top, the ones a viewer sees
    text = f"a {first[-1]} and a {first[0]} on {'an' if bg_name[0] in 'aeiou' else 'a'} {bg_name} background"
    return im, text


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _near_copy(rng: np.random.Generator, data: bytes) -> bytes:
    """Another encoding of the same picture: resized to 80-95%, or cropped by 2%, or re-encoded lower."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    how = rng.integers(3)
    if how == 0:
        f = rng.uniform(0.8, 0.95)
        im = im.resize((max(16, int(im.width * f)), max(16, int(im.height * f))), Image.BILINEAR)
    elif how == 1:
        dx, dy = im.width // 50, im.height // 50
        im = im.crop((dx, dy, im.width - dx, im.height - dy))
    return _jpeg(im, int(rng.integers(50, 70)))


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)  # as webdataset's TarWriter writes them, with a fixed time (reproducible)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), mtime, 0o444, "bigdata", "bigdata"
    tar.addfile(info, io.BytesIO(data))


def _i2d_rows(rng: np.random.Generator, shard: int, n: int, per_shard: int, seed: int, hostile: bool) -> dict:
    """The columns of one img2dataset shard's Parquet before download: key, uid, caption, url, status,
    error; and which rows copy which (exact: the same bytes, near: another encoding)."""
    digits = max(1, int(np.ceil(np.log10(per_shard))))  # img2dataset's oom_sample_per_shard
    subjects = rng.integers(len(SUBJECTS), size=n)
    captions, _ = _captions(rng, subjects)
    urls = _urls(rng, subjects, seed)
    status = np.where(rng.random(n) < 0.03, "failed_to_download", "success").astype(object)
    status[(status == "success") & (rng.random(n) < 0.003)] = "failed_to_resize"
    errors = [None] * n
    for i in np.flatnonzero(status == "failed_to_download"):
        errors[i] = ERRORS[rng.integers(len(ERRORS))]
    for i in np.flatnonzero(status == "failed_to_resize"):
        errors[i] = "cannot identify image file <_io.BytesIO object at 0x7f3c2a1b9e50>"
    ok = np.flatnonzero(status == "success")
    # 2% of the images copy an earlier one of the shard: half the same bytes, half another encoding
    copies = rng.choice(ok[1:], size=min(max(0, len(ok) - 1), max(4, round(len(ok) * 0.02))), replace=False)
    copy_of = {int(i): int(rng.choice(ok[ok < i])) for i in copies}
    near = set(int(i) for i in copies[len(copies) // 2 :])
    if hostile:  # on successful rows (shown with their image) and on failed ones
        failed = np.flatnonzero(status != "success")
        for rows_of, per in ((ok, HOSTILE_PER_FILE - 1), (failed, 1)):
            sub = [captions[i] for i in rows_of]
            for r in _plant(rng, sub, HOSTILE_CAPTIONS, per) if len(rows_of) else []:
                captions[rows_of[r]] = sub[r]
        _plant(rng, urls, HOSTILE_URLS, 1)
    return {
        "key": [f"{shard:05d}{j:0{digits}d}" for j in range(n)],
        "uid": _hex(rng, n, 16),
        "caption": captions,
        "url": urls,
        "status": status.tolist(),
        "error_message": errors,
        "copy_of": copy_of,
        "near": near,
        "describe": rng.random(n) < 0.5,  # captions that describe the drawing (the others name a subject)
    }


def _i2d_shard(folder: Path, shard: int, n: int, per_shard: int, seed: int, hostile: bool) -> None:
    """folder/{shard:05d}.tar, .parquet and _stats.json as img2dataset writes them (webdataset output,
    save_additional_columns=["uid"], compute_hash="sha256"); the stats file last, as img2dataset's marker."""
    started = time.time()
    rng = np.random.default_rng([seed, 1, shard])
    cols = _i2d_rows(rng, shard, n, per_shard, seed, hostile)
    size = {c: [None] * n for c in ("width", "height", "original_width", "original_height", "sha256")}
    images: dict[int, bytes] = {}
    stem = folder / f"{shard:05d}"

    def write_tar(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(n):
                if cols["status"][i] != "success":
                    continue
                if i in cols["copy_of"]:
                    src = images[cols["copy_of"][i]]
                    data = _near_copy(rng, src) if i in cols["near"] else src
                    if rng.random() < 0.5 and cols["caption"][i] not in HOSTILE_CAPTIONS:  # re-posted as it was
                        cols["caption"][i] = cols["caption"][cols["copy_of"][i]]
                else:
                    im, text = _draw(rng)
                    data = _jpeg(im, int(rng.integers(70, 95)))
                    if cols["describe"][i] and cols["caption"][i] not in HOSTILE_CAPTIONS:
                        cols["caption"][i] = text
                images[i] = data
                w, h = Image.open(io.BytesIO(data)).size
                scale = rng.uniform(1, 4) if rng.random() < 0.3 else 1.0  # downscaled by the downloader
                for c, v in zip(size, (w, h, int(w * scale), int(h * scale), hashlib.sha256(data).hexdigest())):
                    size[c][i] = v
                meta = {c: cols[c][i] for c in ("uid", "caption", "url", "key", "status", "error_message")}
                meta.update({c: size[c][i] for c in size})
                key, mtime = cols["key"][i], 1_700_000_000 + shard
                _tar_member(tar, f"{key}.jpg", data, mtime)
                _tar_member(tar, f"{key}.json", json.dumps(meta, indent=4).encode(), mtime)
                _tar_member(tar, f"{key}.txt", cols["caption"][i].encode(), mtime)

    _write_atomic(stem.with_suffix(".tar"), write_tar)
    i32 = pa.int32()
    table = pa.table(
        {
            **{c: pa.array(cols[c], pa.string()) for c in ("uid", "caption", "url", "key", "status", "error_message")},
            **{c: pa.array(size[c], i32) for c in ("width", "height", "original_width", "original_height")},
            "sha256": pa.array(size["sha256"], pa.string()),
        }
    )
    _write_atomic(stem.with_suffix(".parquet"), lambda f: pq.write_table(table, f))
    statuses = cols["status"]
    stats = {
        "count": n,
        "successes": statuses.count("success"),
        "failed_to_download": statuses.count("failed_to_download"),
        "failed_to_resize": statuses.count("failed_to_resize"),
        "duration": time.time() - started,
        "start_time": started,
        "end_time": time.time(),
        "status_dict": {
            "success": statuses.count("success"),
            **{e: cols["error_message"].count(e) for e in set(cols["error_message"]) if e},
        },
    }
    _write_atomic(folder / f"{shard:05d}_stats.json", lambda f: f.write(json.dumps(stats, indent=4).encode()))


def image_source(src: Path, samples: int, seed: int = 0, hostile: bool = True, per_shard: int = SAMPLES_PER_SHARD):
    """img2dataset's output folder in `src` (what import-pool reads): the shards not there yet."""
    Path(src).mkdir(parents=True, exist_ok=True)
    for shard, lo in enumerate(range(0, samples, per_shard)):
        if not (Path(src) / f"{shard:05d}_stats.json").exists():
            _i2d_shard(Path(src), shard, min(per_shard, samples - lo), per_shard, seed, hostile)


def image_pool(
    dir: str,
    samples: int = 20_000,
    seed: int = 0,
    hostile: bool = True,
    per_shard: int = SAMPLES_PER_SHARD,
    clip: bool = True,
    recipes: tuple[str, ...] = IMAGE_RECIPES,
    log=print,
) -> str:
    """DIR/img2dataset (img2dataset's output) adopted as DIR/image-pool, with base features, a random-init
    thresher-tiny scorer (clip_tiny; unless clip=False), dedup and `recipes`' decisions (dfn-dedup scores
    with clip_tiny and is left out without it); returns the pool's path. Reuses what a previous run finished."""
    root = Path(dir)
    src, pool = root / "img2dataset", root / "image-pool"
    params = {"samples": samples, "seed": seed, "hostile": hostile, "per_shard": per_shard}
    t0 = time.perf_counter()
    if _source_params(src, params):
        log(f"[browse-pools] images: reusing {src}")
    else:
        image_source(src, samples, seed, hostile, per_shard)
        secs = time.perf_counter() - t0
        (src / "_SUCCESS.json").write_text(json.dumps({**params, "seconds": round(secs, 1)}))
        log(f"[browse-pools] images: generated {samples:,} rows in {secs:.1f} s -> {src}")
    scorer = "clip_tiny" if clip else None
    recipes = tuple(r for r in recipes if clip or r != "dfn-dedup")
    tiny = ["--no-base", "--model", "thresher-tiny", "--pretrained", "none", "--scorer-id", "clip_tiny"]
    # exact and PDQ dedup. Not SemDeDup: a random-init model's image embeddings are alike (median cosine
    # 0.94 measured), so at 0.95 it would call most of the pool duplicates. --partitions: the map/reduce
    # path, as on a pool too big for one process (the in-process path misfiled an adopted pool's rows
    # by int(key[:8]) until 2026-12-07: img2dataset's keys start with a 5-digit shard)
    dedup = ["--partitions", "2", "--no-semantic", *(["--scorer", "clip_tiny"] if clip else ["--keep", "first"])]
    steps = [
        ("import-pool", _imported(pool), ["import-pool", src, "--out", pool]),
        ("features base", _featured(pool, "base"), ["features", pool]),
        *([("features clip_tiny", _featured(pool, "clip_tiny"), ["features", pool, *tiny])] if clip else []),
        ("dedup", lambda: Path(Pool(pool).dedup_manifest).exists(), ["dedup", pool, *dedup]),
        ("filter", _filtered(pool, recipes), ["filter", pool, *_recipe_args(recipes, scorer)]),
    ]
    _run_steps("image-pool", steps, root, log)
    _funnels(pool, recipes, log)
    return str(pool)


# ---------------------------------------------------------------------------------------------------
# the `thresher` commands, each skipped when its output is complete

THRESHER = shutil.which("thresher", path=str(Path(sys.executable).parent)) or "thresher"


def _imported(pool: Path):
    """import-*'s output is complete: a manifest whose every shard is done."""

    def done() -> bool:
        path = Path(Pool(pool).manifest)
        if not path.exists():
            return False
        shards = json.loads(path.read_text())["shards"]
        return shards["complete"] == shards["total"] and not shards["failed"]

    return done


def _featured(pool: Path, kind: str):
    return lambda: bool(Pool(pool).shards()) and Pool(pool).completed(kind) >= set(Pool(pool).shards())


def _filtered(pool: Path, recipes):
    return lambda: all(Path(Pool(pool).decisions_manifest(r)).exists() for r in recipes)


def _recipe_args(recipes, scorer: str | None) -> list[str]:
    args = [a for r in recipes for a in ("--recipe", r)]
    if "dfn-dedup" in recipes:
        args += ["--var", f"dfn_scorer={scorer}"]
    return args


def _run_steps(name: str, steps, root: Path, log) -> None:
    """Each (step, done, args) not yet done runs as a `thresher` command, its output in
    ROOT/logs/NAME-STEP.log; prints its seconds and the command's last line."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for step, done, args in steps:
        if done():
            log(f"[browse-pools] {name} {step}: complete, reused")
            continue
        out = root / "logs" / f"{name}-{step.replace(' ', '-')}.log"
        cmd = [THRESHER, *map(str, args)]
        t0 = time.perf_counter()
        with open(out, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        secs = time.perf_counter() - t0
        lines = out.read_text(errors="replace").strip().splitlines() or [""]
        if rc:
            raise RuntimeError(
                f"`thresher {' '.join(map(str, args))}` exited {rc} (log {out}):\n  " + "\n  ".join(lines[-5:])
            )
        log(f"[browse-pools] {name} {step}: {secs:.1f} s ({lines[-1][:160]})")


def _funnels(pool: Path, recipes, log) -> None:
    """Each recipe's funnel, one line: rows in, then what each step left."""
    for r in recipes:
        path = Path(Pool(pool).stats(f"filter-{r}"))
        if path.exists():
            stats = json.loads(path.read_text())
            steps = [f"{s['step']} {s['out']:,}" for s in stats["funnel"]]
            log(f"[browse-pools] {pool.name} {r}: " + " -> ".join([f"{stats['samples']:,}", *steps]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=DEFAULT_DIR, help=f"where both pools go (default {DEFAULT_DIR})")
    ap.add_argument("--rows", type=int, default=1_000_000, help="metadata pool rows (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=512, help="embedding width (default 512, B/32's)")
    ap.add_argument("--samples", type=int, default=20_000, help="image pool rows (default 20,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("metadata", "images"), help="build one pool only")
    ap.add_argument("--no-hostile", action="store_true", help="no hostile captions or URLs")
    ap.add_argument("--no-clip", action="store_true", help="image pool without the clip_tiny scorer")
    args = ap.parse_args(argv)
    hostile = not args.no_hostile
    for part, build in (
        ("metadata", lambda: metadata_pool(args.dir, args.rows, args.dim, args.seed, hostile)),
        ("images", lambda: image_pool(args.dir, args.samples, args.seed, hostile, clip=not args.no_clip)),
    ):
        if args.only in (None, part):
            t0 = time.perf_counter()
            try:
                pool = build()
            except (ValueError, RuntimeError) as err:  # another build in --dir, or a command that failed
                print(f"[browse-pools] {part}: {err}", file=sys.stderr)
                return 1
            print(f"[browse-pools] {part}: {pool} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    peak = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"[browse-pools] peak RSS of one process (this one or a command it ran): {peak / 2**20:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
